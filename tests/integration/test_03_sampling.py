"""Completions and sampling parameters reach vLLM through the gateway and come back in OpenAI's shape."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.support import FRANCE, HELLO, SMOL_GROUP, TINY_GROUP

pytestmark = pytest.mark.integration

PROMPT = "The old farmer finds a red apple"


def test_completion(client: openai.OpenAI):
    resp = client.completions.create(model=TINY_GROUP, prompt=PROMPT, max_tokens=12,
                                     extra_body={"ignore_eos": True})
    assert resp.object == "text_completion"
    assert len(resp.choices) == 1
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_completion_streamed(client: openai.OpenAI):
    chunks = list(client.completions.create(
        model=TINY_GROUP, prompt=PROMPT, max_tokens=12, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ))
    text_chunks = [c for c in chunks if c.choices]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].usage.completion_tokens == 12
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in text_chunks)


def test_completion_streamed_raw(http: httpx.Client):
    body = {"model": TINY_GROUP, "prompt": PROMPT, "max_tokens": 4, "stream": True, "ignore_eos": True}
    with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in text.replace('"usage":null', "")


def test_n_choices(client: openai.OpenAI):
    resp = client.completions.create(model=TINY_GROUP, prompt=PROMPT, max_tokens=6, n=2, temperature=1.0,
                                     extra_body={"ignore_eos": True})
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert resp.usage.completion_tokens == 12


def test_completion_logprobs(client: openai.OpenAI):
    resp = client.completions.create(model=TINY_GROUP, prompt=PROMPT, max_tokens=4, logprobs=2,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert lp is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        # The 2 best plus the sampled token when it is not among them (fewer when two decode to the same text).
        assert 1 <= len(top) <= 3
        assert token in top


def test_chat_logprobs(client: openai.OpenAI):
    resp = client.chat.completions.create(model=TINY_GROUP, messages=HELLO, max_tokens=4, logprobs=True,
                                          top_logprobs=2, extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 4
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 2
        assert all(t.logprob <= 0 for t in item.top_logprobs)


def test_seed_makes_sampling_reproducible(client: openai.OpenAI):
    def sample(seed: int) -> str:
        resp = client.completions.create(model=TINY_GROUP, prompt=PROMPT, max_tokens=16, temperature=1.0,
                                         seed=seed, extra_body={"ignore_eos": True})
        return resp.choices[0].text

    first, second = sample(1234), sample(1234)
    assert first == second
    # The random-weight model samples almost uniformly from 4096 tokens: another seed gives another text,
    # which shows that temperature reached the engine (a greedy engine would repeat itself too).
    assert sample(4321) != first


def test_stop_string(http: httpx.Client):
    resp = http.post("/v1/chat/completions", json={"model": SMOL_GROUP, "messages": FRANCE, "temperature": 0,
                                                   "stop": ["Paris"]})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert "Paris" not in choice["message"]["content"]
    assert "capital" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == "Paris"  # vLLM's extra field: stopped by the stop string, not by EOS
