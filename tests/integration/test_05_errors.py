"""Client errors on the real path (Ray Serve proxy -> gateway -> vLLM): OpenAI envelope, right status, no 500.

The unit tests cover every validation rule against fake engines; these check that the envelope survives the
real proxy and that errors only vLLM can detect (the context length) come back as OpenAI's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.integration.support import HELLO, SMOL_GROUP, TINY_GROUP, TOO_LONG, assert_envelope

pytestmark = pytest.mark.integration

CHAT = {"model": TINY_GROUP, "messages": HELLO, "max_tokens": 4}


@pytest.mark.parametrize(("body", "param", "code"), [
    pytest.param(b'{"model": "tiny-llama", "messages": [', None, None, id="malformed-json"),
    pytest.param({**CHAT, "messages": []}, "messages", "empty_array", id="empty-messages"),
    pytest.param({**CHAT, "max_tokens": -1}, "max_tokens", "invalid_value", id="negative-max_tokens"),
    pytest.param({**CHAT, "temperature": "hot"}, "temperature", None, id="temperature-wrong-type"),
    pytest.param({**CHAT, "messages": "hi"}, "messages", None, id="messages-wrong-type"),
])
def test_bad_chat_request_is_400(http: httpx.Client, body: Any, param: str | None, code: str | None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    err = assert_envelope(resp, 400, param=param, code=code)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_unknown_model_is_404(http: httpx.Client, path: str):
    body = {"model": "no-such-model", "messages": HELLO, "prompt": "hi"}
    err = assert_envelope(http.post(path, json=body), 404, code="model_not_found", param="model")
    assert "no-such-model" in err["message"]


def test_unknown_path_and_method(http: httpx.Client):
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.get("/v1/chat/completions"), 405)
    assert_envelope(http.get("/v1/models/no-such-model"), 404, code="model_not_found")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("group", "path"), [
    (TINY_GROUP, "/v1/chat/completions"), (TINY_GROUP, "/v1/completions"), (SMOL_GROUP, "/v1/chat/completions"),
])
def test_context_length_exceeded_is_400(http: httpx.Client, group: str, path: str, stream: bool):
    body: dict[str, Any] = {"model": group, "stream": stream, "max_tokens": 16}
    body.update({"prompt": TOO_LONG} if path == "/v1/completions" else
                {"messages": [{"role": "user", "content": TOO_LONG}]})
    resp = http.post(path, json=body)
    err = assert_envelope(resp, 400, code="context_length_exceeded")
    assert err["type"] == "invalid_request_error"
    assert "maximum context length is 2048 tokens" in err["message"]


def test_sdk_raises_openai_exceptions(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TINY_GROUP, messages=HELLO, max_tokens=-1)
    assert bad.value.status_code == 400
    assert bad.value.code == "invalid_value" and bad.value.param == "max_tokens"

    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=SMOL_GROUP, messages=[{"role": "user", "content": TOO_LONG}])
    assert too_long.value.code == "context_length_exceeded"

    with pytest.raises(openai.BadRequestError) as too_long_stream:
        client.completions.create(model=TINY_GROUP, prompt=TOO_LONG, stream=True)
    assert too_long_stream.value.code == "context_length_exceeded"

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
