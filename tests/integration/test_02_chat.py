"""Chat completions through the gateway to real vLLM engines: answers, usage, headers, streaming, concurrency."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import pytest

from tests.integration.support import FRANCE, HELLO, SMOL_ENGINE, SMOL_GROUP, TINY_ENGINE, TINY_GROUP, sse_chunks

pytestmark = pytest.mark.integration


def test_smollm2_answers_paris(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(model=SMOL_GROUP, messages=FRANCE, temperature=0)
    assert raw.headers["x-serving-model"] == SMOL_ENGINE
    resp = raw.parse()
    choice = resp.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert resp.object == "chat.completion"
    usage = resp.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_request_id_once_and_echoed(http: httpx.Client):
    body = {"model": SMOL_GROUP, "messages": FRANCE, "max_tokens": 2}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    ids = resp.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0], resp.headers

    rid = f"itest-{uuid.uuid4().hex}"
    resp = http.post("/v1/chat/completions", json=body, headers={"x-request-id": rid})
    assert resp.status_code == 200
    assert resp.headers.get_list("x-request-id") == [rid]

    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                     headers={"X-Request-ID": rid + "-s"}) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers.get_list("x-request-id") == [rid + "-s"]
        streamed.read()

    missing = http.post("/v1/chat/completions", json={**body, "model": "no-such-model"},
                        headers={"x-request-id": rid + "-e"})
    assert missing.status_code == 404
    assert missing.headers.get_list("x-request-id") == [rid + "-e"]


def test_stream_with_usage(client: openai.OpenAI):
    full = client.chat.completions.create(model=SMOL_GROUP, messages=FRANCE, temperature=0)
    assert full.usage.completion_tokens > 5  # so that max_tokens=5 below caps the answer

    stream = client.chat.completions.create(
        model=SMOL_GROUP, messages=FRANCE, temperature=0, max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage.completion_tokens == 5
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    choice_chunks = [c for c in chunks if c.choices]
    assert all(c.object == "chat.completion.chunk" for c in choice_chunks)
    assert choice_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in choice_chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    assert text and full.choices[0].message.content.startswith(text)  # greedy: the answer's first 5 tokens


def test_stream_without_usage(client: openai.OpenAI):
    chunks = list(client.chat.completions.create(model=SMOL_GROUP, messages=FRANCE, temperature=0, stream=True))
    assert len(chunks) > 2
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_raw_sse_framing(http: httpx.Client):
    body = {"model": TINY_GROUP, "messages": HELLO, "max_tokens": 8, "stream": True, "ignore_eos": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-serving-model"] == TINY_ENGINE
        text = resp.read().decode()
    assert text.rstrip("\n").endswith("data: [DONE]")
    chunks = sse_chunks(text)
    assert all("error" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"] for c in chunks)  # usage was not asked for: the gateway drops the usage chunk
    assert len({c["id"] for c in chunks}) == 1


async def test_concurrent_async_requests(aclient: openai.AsyncOpenAI):
    async def one(i: int) -> openai.types.chat.ChatCompletion:
        return await aclient.chat.completions.create(
            model=TINY_GROUP, messages=[{"role": "user", "content": f"Request number {i}"}], max_tokens=16,
            extra_body={"ignore_eos": True},
        )

    answers = await asyncio.gather(*(one(i) for i in range(8)))
    assert len({a.id for a in answers}) == 8
    for a in answers:
        assert a.usage.completion_tokens == 16
        assert a.choices[0].finish_reason == "length"

