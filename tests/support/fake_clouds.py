"""Fake cloud LLM APIs for tests: an OpenAI-compatible server and an Anthropic Messages server.

Each is a real HTTP server (uvicorn in a background thread) on 127.0.0.1 with an ephemeral port, speaking the
wire formats closely enough that the official `openai` / `anthropic` SDKs parse them:

* `FakeOpenAI`: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE `data:` chunks, the usage chunk
  with `"choices": []` when `stream_options.include_usage`, logprobs when asked, `data: [DONE]`), `GET /v1/models`.
* `FakeAnthropic`: `POST /v1/messages` (JSON or the SSE event stream with `event:` lines: message_start,
  content_block_start, ping, content_block_delta, content_block_stop, message_delta, message_stop),
  `GET /v1/models`. Like the API version the SDK speaks (`anthropic-version: 2026-10-21`), it rejects
  `temperature` / `top_p` / `top_k` with a 400. Tools: it checks `tools` (name, input_schema of type object, no
  other fields), `tool_choice`, and the history's `tool_use` / `tool_result` pairing like the API (400
  invalid_request_error otherwise). With tool_choice any / tool (or the `tool_use` behaviour) and no tool_result
  in the last user turn, it answers with `tool_use` blocks (the named tool, else the tools in turn) whose input
  fills the schema's required properties with placeholders (string "example", number 1, true, [], enum[0]),
  streamed as content_block_start(tool_use) + input_json_delta pieces + content_block_stop, stop_reason
  "tool_use"; with tool_choice auto the reply text comes first; `disable_parallel_tool_use` caps them at one.

Use as a context manager (`with FakeOpenAI() as srv: ... srv.url ...`); `srv.url` is the SDK's `base_url`
(`http://127.0.0.1:PORT/v1` for OpenAI, `http://127.0.0.1:PORT` for Anthropic). The answer is `srv.reply`
(a string or a callable `(request_json) -> str`), cut at `stop` sequences and at `max_tokens` words.

Faults are scripted per request: `srv.script("status:500", "ok")` queues behaviours consumed one per API request;
when the queue is empty `srv.default` applies (`"ok"`). A behaviour is a `Behaviour` or a spec string of
space-separated tokens:

    ok                      answer normally
    delay:<s>               sleep <s> seconds before answering (then answer like the other tokens say)
    hang                    never answer (until the server stops)
    chunk_delay:<s>         sleep <s> seconds between streamed chunks
    status:<code>           answer HTTP <code> with a provider-shaped error body
    retry-after:<s>         with status: a `retry-after: <s>` header (seconds)
    retry-after-date:<s>    with status: a `retry-after` HTTP date <s> seconds from now
    retry-after-ms:<ms>     with status: a `retry-after-ms` header
    malformed               200 with an invalid JSON body (streams: a chunk of invalid JSON)
    no_choices              200 with valid JSON but no `choices` (OpenAI) / no `content` (Anthropic)
    broken_stream           stream `after` chunks (default 2), then drop the connection
    stream_error_event      stream `after` chunks, then an in-stream error event
    after:<k>               chunks before broken_stream / stream_error_event / a malformed stream chunk
    code:<c> param:<p> type:<t>   with status: the error body's code / param / type (Anthropic: details.error_code)
    tool_use[:<n>]          Anthropic: answer with <n> (default 1) tool_use blocks when the request has tools
                            (unless tool_choice is none)
    message:<text...>       the error message (takes the rest of the spec)

`api_key=` makes the fake answer 401 to any other key (OpenAI: `Authorization: Bearer`; Anthropic: that or
`x-api-key`). Every request is recorded (`srv.requests`, `srv.last`: method, path, headers (lower-cased), json,
query); `srv.reset()` forgets requests and the queue. Helpers for tests: `parse_sse`, `drain`, `free_port`.
For another process, run
`python -m tests.support.fake_clouds openai --port 8901 [--reply TEXT] [--default SPEC] [--api-key KEY]`; it is then
scripted over HTTP: `POST /_fake/script {"script": [...], "default": "...", "reply": "..."}`,
`GET /_fake/requests`, `POST /_fake/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "The capital of France is Paris."

Reply = str | Callable[[dict[str, Any]], str]


def tokenize(text: str) -> list[str]:
    """The fakes' tokens: words with their leading whitespace (`"a b"` -> `["a", " b"]`)."""
    return re.findall(r"\s*\S+", text)


# ----------------------------------------------------------------------------------------------- behaviours


@dataclass
class Behaviour:
    """What the fake does with one request (see the module docstring for the spec-string form)."""

    kind: str = "ok"  # ok | status | malformed | no_choices | broken_stream | stream_error_event | hang
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    status: int = 200
    retry_after: str | None = None
    retry_after_ms: str | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    after: int = 2
    tool_use: int = 0  # Anthropic: this many tool_use blocks in the answer (when the request has tools)
    headers: dict[str, str] = field(default_factory=dict)

    _KINDS = ("ok", "malformed", "no_choices", "broken_stream", "stream_error_event", "hang")

    @classmethod
    def parse(cls, spec: str | Behaviour) -> Behaviour:
        if isinstance(spec, Behaviour):
            return replace(spec, headers=dict(spec.headers))
        b = cls()
        tokens = spec.split()
        for i, token in enumerate(tokens):
            key, _, value = token.partition(":")
            if key == "message":
                b.message = " ".join([value, *tokens[i + 1 :]]).strip()
                break
            if key in cls._KINDS and not value:
                b.kind = key
            elif key == "delay":
                b.delay_s = float(value)
            elif key == "chunk_delay":
                b.chunk_delay_s = float(value)
            elif key == "status":
                b.kind, b.status = "status", int(value)
            elif key == "retry-after":
                b.retry_after = value
            elif key == "retry-after-date":
                b.retry_after = email.utils.formatdate(time.time() + float(value), usegmt=True)
            elif key == "retry-after-ms":
                b.retry_after_ms = value
            elif key == "after":
                b.after = int(value)
            elif key == "tool_use":
                b.tool_use = int(value) if value else 1
            elif key == "code":
                b.code = value
            elif key == "param":
                b.param = value
            elif key == "type":
                b.error_type = value
            else:
                raise ValueError(f"unknown fake behaviour token {token!r} in {spec!r}")
        return b

    def error_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = self.retry_after_ms
        return headers


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str]


class _DropConnection(Exception):
    """Raised inside a streamed body: uvicorn then closes the connection mid-response."""


# ----------------------------------------------------------------------------------------------- base server


class _FakeServer:
    """A scriptable HTTP server in a background thread (see the module docstring)."""

    base_path = ""

    def __init__(
        self,
        *,
        reply: Reply = DEFAULT_REPLY,
        default: str | Behaviour = "ok",
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: tuple[str, ...] = (),
    ):
        self.reply = reply
        self.default = default
        self._initial = (reply, default)
        self.api_key = api_key
        self.host = host
        self.models = models or self.default_models
        self.requests: list[Recorded] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls on keep-alive
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    default_models: tuple[str, ...] = ("fake-model",)

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The SDK's `base_url` for this server."""
        return self.root + self.base_path

    # -- scripting ---------------------------------------------------------------------------------------------

    def script(self, *behaviours: str | Behaviour) -> None:
        """Queue behaviours, consumed one per API request (before `default` applies again)."""
        parsed = [Behaviour.parse(b) for b in behaviours]
        with self._lock:
            self._queue.extend(parsed)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget recorded requests and queued behaviours; back to the reply and default given at construction."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
        self.reply, self.default = self._initial

    @property
    def last(self) -> Recorded:
        assert self.requests, "the fake server received no request"
        return self.requests[-1]

    def api_requests(self, path_suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return Behaviour.parse(self.default)

    def reply_for(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else str(self.reply)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> _FakeServer:
        app = Starlette(routes=[*self._routes(), *self._control_routes()])
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="critical",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._stopping = asyncio.Event()
            loop.call_soon(started.set)
            try:
                loop.run_until_complete(self._server.serve(sockets=[self._sock]))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        started.wait(10)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self._sock.close()
        self._server = None

    def __enter__(self) -> _FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run in the foreground (the CLI) until interrupted."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- request plumbing --------------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops (so `delay`/`hang` never block shutdown)."""
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _record(self, request: Request) -> Recorded:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = Recorded(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            dict(request.query_params),
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    async def _prelude(self, request: Request) -> tuple[Recorded, Behaviour, Response | None]:
        """Record the request, pick its behaviour, apply delays and status faults."""
        rec = await self._record(request)
        b = self._next_behaviour()
        if b.kind == "hang":
            await self._sleep(3600)
            return rec, b, Response(status_code=503)
        if b.delay_s:
            await self._sleep(b.delay_s)
        if b.kind == "status":
            return rec, b, self.error_response(b.status, b, b.error_headers())
        auth = self.check_auth(rec)
        if auth is not None:
            return rec, b, auth
        return rec, b, None

    def _stream(self, events: list[str], b: Behaviour, error_event: str, malformed: str) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i, event in enumerate(events):
                if b.kind in ("broken_stream", "stream_error_event", "malformed") and i == b.after:
                    if b.kind == "broken_stream":
                        raise _DropConnection("fake: connection dropped mid-stream")
                    yield (error_event if b.kind == "stream_error_event" else malformed).encode()
                    return
                if i and b.chunk_delay_s:
                    await self._sleep(b.chunk_delay_s)
                yield event.encode()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"cache-control": "no-cache", **self.extra_headers()}
        )

    def extra_headers(self) -> dict[str, str]:
        return {}

    # -- control API (for a fake in another process) -----------------------------------------------------------

    def _control_routes(self) -> list[Route]:
        async def script(request: Request) -> Response:
            body = await request.json()
            if "reply" in body:
                self.reply = body["reply"]
            if "default" in body:
                Behaviour.parse(body["default"])
                self.default = body["default"]
            self.script(*body.get("script", []))
            return JSONResponse({"pending": self.pending})

        async def requests(request: Request) -> Response:
            with self._lock:
                recs = [r.__dict__ for r in self.requests]
            return JSONResponse(recs)

        async def reset(request: Request) -> Response:
            self.reset()
            return JSONResponse({"ok": True})

        return [
            Route("/_fake/script", script, methods=["POST"]),
            Route("/_fake/requests", requests, methods=["GET"]),
            Route("/_fake/reset", reset, methods=["POST"]),
        ]

    # -- provider specifics --------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def error_response(self, status: int, b: Behaviour | None, headers: dict[str, str]) -> Response:
        raise NotImplementedError

    def check_auth(self, rec: Recorded) -> Response | None:
        raise NotImplementedError


def _cut(text: str, stops: list[str], max_tokens: int | None) -> tuple[list[str], str, str | None]:
    """The answer's tokens after stop sequences and max_tokens, why it ended (stop | length), the stop hit."""
    hits = sorted((text.find(s), s) for s in stops if s and s in text)
    stop_hit = hits[0][1] if hits else None
    if hits:
        text = text[: hits[0][0]]
    tokens = tokenize(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length", None
    return tokens, "stop", stop_hit


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# ----------------------------------------------------------------------------------------------- OpenAI


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class FakeOpenAI(_FakeServer):
    """A fake OpenAI-compatible API (`srv.url` ends in `/v1`)."""

    base_path = "/v1"
    default_models = ("gpt-fake", "gpt-fake-mini")

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]

    def check_auth(self, rec: Recorded) -> Response | None:
        if self.api_key is None or rec.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        b = Behaviour(
            message="Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return self.error_response(401, b, {})

    def error_response(self, status: int, b: Behaviour | None, headers: dict[str, str]) -> Response:
        etype, code = _OPENAI_ERRORS.get(status, ("server_error", None))
        b = b or Behaviour()
        default_msg = {
            400: "Invalid request: 'messages' is malformed.",
            429: "Rate limit reached for requests. Please try again later.",
        }.get(status, "The server had an error while processing your request. Sorry about that!")
        body = {
            "error": {
                "message": b.message or default_msg,
                "type": b.error_type or etype,
                "param": b.param,
                "code": b.code or code,
            }
        }
        return JSONResponse(body, status_code=status, headers={"x-request-id": f"req_{uuid.uuid4().hex}", **headers})

    async def _models(self, request: Request) -> Response:
        _, b, early = await self._prelude(request)
        if early is not None:
            return early
        if b.kind == "malformed":
            return Response('{"object": "list", "data": [', media_type="application/json")
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models],
            }
        )

    # -- answers --------------------------------------------------------------------------------------------------

    @staticmethod
    def _stops(body: dict[str, Any]) -> list[str]:
        stop = body.get("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    @staticmethod
    def _chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
        def entry(t: str, lp: float) -> dict[str, Any]:
            return {"token": t, "logprob": lp, "bytes": list(t.encode())}

        return {
            "content": [
                {
                    **entry(t, -0.01 * (i + 1)),
                    "top_logprobs": [entry(t, -0.01 * (i + 1))] + [entry(f" alt{j}", -2.0 - j) for j in range(1, top)]
                    if top
                    else [],
                }
                for i, t in enumerate(tokens)
            ],
            "refusal": None,
        }

    @staticmethod
    def _completion_logprobs(tokens: list[str], top: int, offset: int = 0) -> dict[str, Any]:
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [-0.01 * (i + 1) for i in range(len(tokens))],
            "top_logprobs": [
                {t: -0.01 * (i + 1), **{f" alt{j}": -2.0 - j for j in range(1, top)}} for i, t in enumerate(tokens)
            ],
            "text_offset": offsets,
        }

    async def _chat(self, request: Request) -> Response:
        rec, b, early = await self._prelude(request)
        if early is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        model = body.get("model", "gpt-fake")
        if b.kind == "malformed" and not body.get("stream"):
            return Response(
                '{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind',
                media_type="application/json",
            )
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if b.kind == "no_choices":
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model})
        tokens, finish, _ = _cut(
            self.reply_for(body), self._stops(body), body.get("max_completion_tokens") or body.get("max_tokens")
        )
        n = body.get("n") or 1
        want_lp = bool(body.get("logprobs"))
        top = body.get("top_logprobs") or 0
        prompt_tokens = sum(len(tokenize(_text_of(m.get("content")))) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n * len(tokens),
            "total_tokens": prompt_tokens + n * len(tokens),
        }
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": self._chat_logprobs(tokens, top) if want_lp else None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ]
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                },
                headers={"x-request-id": f"req_{uuid.uuid4().hex}"},
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
                **extra,
            }
            if include_usage and "usage" not in extra:
                data["usage"] = None
            return _sse(data)

        events = []
        for i in range(n):
            events.append(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
            for t in tokens:
                lp = self._chat_logprobs([t], top) if want_lp else None
                events.append(chunk([{"index": i, "delta": {"content": t}, "logprobs": lp, "finish_reason": None}]))
            events.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}]))
        if include_usage:
            events.append(chunk([], usage=usage))
        events.append(_sse("[DONE]"))
        error = _sse(
            {
                "error": {
                    "message": b.message or "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        return self._stream(events, b, error, _sse("{not json"))

    async def _completions(self, request: Request) -> Response:
        rec, b, early = await self._prelude(request)
        if early is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        model = body.get("model", "gpt-fake")
        if b.kind == "malformed" and not body.get("stream"):
            return Response(
                '{"id": "cmpl-broken", "object": "text_completion", "choices": [', media_type="application/json"
            )
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if b.kind == "no_choices":
            return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model})
        prompt = body.get("prompt")
        prompt_text = (
            prompt if isinstance(prompt, str) else _text_of([{"text": p} for p in prompt or [] if isinstance(p, str)])
        )
        tokens, finish, _ = _cut(self.reply_for(body), self._stops(body), body.get("max_tokens", 16))
        n = body.get("n") or 1
        lp_k = body.get("logprobs")
        echo = prompt_text if body.get("echo") else ""
        prompt_tokens = len(tokenize(prompt_text))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n * len(tokens),
            "total_tokens": prompt_tokens + n * len(tokens),
        }
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "text": echo + "".join(tokens),
                    "finish_reason": finish,
                    "logprobs": self._completion_logprobs(tokens, lp_k, len(echo)) if lp_k is not None else None,
                }
                for i in range(n)
            ]
            return JSONResponse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            if include_usage and "usage" not in extra:
                data["usage"] = None
            return _sse(data)

        events = []
        for i in range(n):
            pos = 0
            if echo:
                events.append(chunk([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}]))
            for j, t in enumerate(tokens):
                last = j == len(tokens) - 1
                lp = self._completion_logprobs([t], lp_k, len(echo) + pos) if lp_k is not None else None
                events.append(
                    chunk([{"index": i, "text": t, "logprobs": lp, "finish_reason": finish if last else None}])
                )
                pos += len(t)
            if not tokens:
                events.append(chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": finish}]))
        if include_usage:
            events.append(chunk([], usage=usage))
        events.append(_sse("[DONE]"))
        error = _sse(
            {
                "error": {
                    "message": b.message or "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        return self._stream(events, b, error, _sse("{not json"))


# ----------------------------------------------------------------------------------------------- Anthropic


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

SAMPLING_API_VERSION = "2026-10-21"
"""From this `anthropic-version` on, the Messages API rejects temperature/top_p/top_k."""


class FakeAnthropic(_FakeServer):
    """A fake Anthropic Messages API (`srv.url` is the host root: the SDK adds `/v1/...`)."""

    base_path = ""
    default_models = ("claude-fake-1", "claude-fake-2")

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]

    def extra_headers(self) -> dict[str, str]:
        return {"request-id": f"req_{uuid.uuid4().hex[:24]}"}

    def check_auth(self, rec: Recorded) -> Response | None:
        if self.api_key is None:
            return None
        if rec.headers.get("x-api-key") == self.api_key or rec.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return self.error_response(401, Behaviour(message="invalid x-api-key"), {})

    def error_response(self, status: int, b: Behaviour | None, headers: dict[str, str]) -> Response:
        b = b or Behaviour()
        etype = b.error_type or _ANTHROPIC_ERRORS.get(status, "api_error")
        default_msg = {
            400: "messages: field required",
            429: "Number of request tokens has exceeded your rate limit.",
            529: "Overloaded",
        }.get(status, "Internal server error")
        error: dict[str, Any] = {"type": etype, "message": b.message or default_msg}
        if b.code:
            error["details"] = {"error_code": b.code}
        body = {"type": "error", "error": error, "request_id": f"req_{uuid.uuid4().hex[:24]}"}
        return JSONResponse(body, status_code=status, headers={**self.extra_headers(), **headers})

    def _invalid(self, message: str) -> Response:
        return self.error_response(400, Behaviour(message=message), {})

    async def _models(self, request: Request) -> Response:
        _, b, early = await self._prelude(request)
        if early is not None:
            return early
        if b.kind == "malformed":
            return Response('{"data": [', media_type="application/json")
        limit = int(request.query_params.get("limit", 20))
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"} for m in self.models
        ][:limit]
        return JSONResponse(
            {
                "data": data,
                "has_more": len(self.models) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    def _validate(self, rec: Recorded, body: dict[str, Any]) -> Response | None:
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return self._invalid(f"{key}: Field required")
        if rec.headers.get("anthropic-version", "") >= SAMPLING_API_VERSION:
            for key in ("temperature", "top_p", "top_k"):
                if key in body:
                    return self._invalid(f"{key}: Extra inputs are not permitted")
        if any(not s.strip() for s in body.get("stop_sequences") or []):
            return self._invalid("stop_sequences: each stop sequence must contain non-whitespace")
        problem = _tools_problem(body)
        if problem is not None:
            return self._invalid(problem)
        tool_uses: set[str] = set()  # ids of the previous assistant turn, each to be answered in the next turn
        for i, m in enumerate(body["messages"]):
            if m.get("role") not in ("user", "assistant"):
                return self._invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = m.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            problem = _blocks_problem(i, m["role"], blocks or [], tool_uses)
            if problem is not None:
                return self._invalid(problem)
            assistant = m["role"] == "assistant"
            tool_uses = {b["id"] for b in blocks or [] if assistant and b.get("type") == "tool_use"}
        if tool_uses:
            return self._invalid(_unanswered(len(body["messages"]) - 1, tool_uses))
        if not body["messages"]:
            return self._invalid("messages: at least one message is required")
        return None

    @staticmethod
    def _tool_calls(body: dict[str, Any], b: Behaviour) -> list[dict[str, Any]]:
        """The tool_use blocks to answer with (none: answer with text)."""
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        if not tools or choice["type"] == "none":
            return []
        last = body["messages"][-1].get("content")
        answered = isinstance(last, list) and any(isinstance(c, dict) and c.get("type") == "tool_result" for c in last)
        n = b.tool_use or (1 if choice["type"] in ("any", "tool") and not answered else 0)
        if choice.get("disable_parallel_tool_use"):
            n = min(n, 1)
        named = [t for t in tools if t["name"] == choice.get("name")] if choice["type"] == "tool" else tools
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": named[k % len(named)]["name"],
                "input": _placeholder(named[k % len(named)]["input_schema"]),
            }
            for k in range(n)
        ]

    async def _messages(self, request: Request) -> Response:
        rec, b, early = await self._prelude(request)
        if early is not None:
            return early
        body = rec.json if isinstance(rec.json, dict) else {}
        invalid = self._validate(rec, body)
        if invalid is not None:
            return invalid
        model = body["model"]
        if b.kind == "malformed" and not body.get("stream"):
            return Response('{"id": "msg_broken", "type": "message", "content": [{"ty', media_type="application/json")
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        if b.kind == "no_choices":
            return JSONResponse({"id": mid, "type": "message", "role": "assistant", "model": model})
        stops = list(body.get("stop_sequences") or [])
        tokens, finish, stop_sequence = _cut(self.reply_for(body), stops, body["max_tokens"])
        stop_reason = "max_tokens" if finish == "length" else "stop_sequence" if stop_sequence else "end_turn"
        calls = self._tool_calls(body, b)
        if calls and (body.get("tool_choice") or {"type": "auto"})["type"] != "auto":
            tokens = []  # a forced tool call comes without text
        elif finish == "length" or stop_sequence:
            calls = []  # the text ended before any tool call
        if calls:
            stop_reason, stop_sequence = "tool_use", None
        text = "".join(tokens)
        arguments = [json.dumps(c["input"]) for c in calls]
        output_tokens = len(tokens) + sum(len(tokenize(a)) for a in arguments)
        system = body.get("system") or ""
        input_tokens = len(tokenize(_text_of(system))) + sum(
            len(tokenize(_text_of(m.get("content")))) for m in body["messages"]
        )
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": ([{"type": "text", "text": text}] if text else []) + calls,
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_sequence,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
                headers=self.extra_headers(),
            )

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        events = [
            event(
                "message_start",
                {
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": input_tokens,
                            "output_tokens": 1,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                        },
                    }
                },
            ),
        ]
        index = 0
        if tokens or not calls:
            events += [
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                event("ping", {}),
                *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
                  for t in tokens),
                event("content_block_stop", {"index": 0}),
            ]
            index = 1
        for call, args in zip(calls, arguments, strict=True):
            start = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
            pieces = ["", *(args[k : k + 8] for k in range(0, len(args), 8))]  # the API sends "" first
            events += [
                event("content_block_start", {"index": index, "content_block": start}),
                *(event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta",
                                                                          "partial_json": p}})
                  for p in pieces),
                event("content_block_stop", {"index": index}),
            ]
            index += 1
        events += [
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            event("message_stop", {}),
        ]
        error = event("error", {"error": {"type": "overloaded_error", "message": b.message or "Overloaded"}})
        malformed = "event: content_block_delta\ndata: {not json\n\n"
        return self._stream(events, b, error, malformed)


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_FIELDS = frozenset({"name", "description", "input_schema", "strict", "cache_control", "type", "input_examples",
                          "defer_loading", "allowed_callers", "eager_input_streaming"})
_TOOL_CHOICE_FIELDS = {"auto": {"disable_parallel_tool_use"}, "any": {"disable_parallel_tool_use"},
                       "tool": {"name", "disable_parallel_tool_use"}, "none": set()}


def _tools_problem(body: dict[str, Any]) -> str | None:
    """What the Messages API would say about `tools` / `tool_choice` (None: they are valid)."""
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None and not isinstance(tools, list):
        return "tools: Input should be a valid list"
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}.custom"
        if not isinstance(tool, dict):
            return f"tools.{i}: Input should be a valid dictionary"
        for key in ("name", "input_schema"):
            if key not in tool:
                return f"{where}.{key}: Field required"
        extra = sorted(set(tool) - _TOOL_FIELDS)
        if extra:
            return f"{where}.{extra[0]}: Extra inputs are not permitted"
        if not isinstance(tool["name"], str) or not _TOOL_NAME.match(tool["name"]):
            return f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        schema = tool["input_schema"]
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"{where}.input_schema.type: Input should be 'object'"
        names.append(tool["name"])
    if len(set(names)) < len(names):
        return "tools: Tool names must be unique."
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICE_FIELDS:
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    extra = sorted(set(choice) - {"type"} - _TOOL_CHOICE_FIELDS[choice["type"]])
    if extra:
        return f"tool_choice.{choice['type']}.{extra[0]}: Extra inputs are not permitted"
    if choice["type"] == "tool":
        if "name" not in choice:
            return "tool_choice.tool.name: Field required"
        if choice["name"] not in names:
            return f"tool_choice: Tool '{choice['name']}' not found in tools"
    return None


def _unanswered(i: int, ids: set[str]) -> str:
    return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(sorted(ids))}. Each `tool_use` block must have a corresponding `tool_result` block in the "
            "next message.")


def _blocks_problem(i: int, role: str, blocks: list[Any], tool_uses: set[str]) -> str | None:
    """What the Messages API would say about message i's content blocks (`tool_uses`: the ids of the assistant turn
    before it, which a user turn must answer first)."""
    answered: set[str] = set()
    seen_other = False
    for j, block in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not block.get("text"):
                return f"{where}.text: text content blocks must be non-empty"
            seen_other = True
        elif kind == "tool_use":
            if role != "assistant":
                return f"{where}: tool_use blocks may only appear in assistant messages"
            for key in ("id", "name", "input"):
                if key not in block:
                    return f"{where}.tool_use.{key}: Field required"
            if not isinstance(block["id"], str) or not _TOOL_USE_ID.match(block["id"]):
                return f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
            if not isinstance(block["input"], dict):
                return f"{where}.tool_use.input: Input should be a valid dictionary"
        elif kind == "tool_result":
            if role != "user":
                return f"{where}: tool_result blocks may only appear in user messages"
            use_id = block.get("tool_use_id")
            if use_id not in tool_uses:
                return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id}. Each "
                        "`tool_result` block must have a corresponding `tool_use` block in the previous message.")
            if seen_other:
                return f"{where}: tool_result blocks must come before any other content in the user message"
            content = block.get("content")
            if content is not None and not isinstance(content, (str, list)):
                return f"{where}.tool_result.content: Input should be a valid string or list"
            answered.add(use_id)
        else:
            seen_other = True
    if tool_uses and role == "user" and tool_uses - answered:
        return _unanswered(i - 1, tool_uses - answered)
    if tool_uses and role == "assistant":
        return _unanswered(i - 1, tool_uses)
    return None


def _placeholder(schema: Any) -> Any:
    """A value satisfying a JSON schema's type and (for objects) its required properties."""
    if not isinstance(schema, dict):
        return "example"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {name: _placeholder(props.get(name)) for name in schema.get("required") or []}
    return {"string": "example", "integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(
        str(kind), "example"
    )


# ----------------------------------------------------------------------------------------------- test helpers


def parse_sse(items: list[Any]) -> list[dict[str, Any]]:
    """The JSON payloads of an engine's streamed SSE strings; asserts the framing and `[DONE]` last."""
    for item in items:
        assert isinstance(item, str) and item.startswith("data: ") and item.endswith("\n\n"), item
    payloads = [item[len("data: ") : -2] for item in items]
    assert payloads and payloads[-1] == "[DONE]", payloads[-1:]
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


async def drain(gen: AsyncIterator[Any]) -> tuple[list[Any], BaseException | None]:
    """Everything an async generator yields, and the exception it raised (None if it finished)."""
    items: list[Any] = []
    try:
        async for item in gen:
            items.append(item)
    except Exception as exc:
        return items, exc
    return items, None


def free_port() -> int:
    """A local port with nothing listening on it (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_clouds", description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", choices=["openai", "anthropic"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port (printed)")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--default", default="ok", help="behaviour spec when the script queue is empty")
    parser.add_argument("--script", nargs="*", default=[], help="behaviour specs queued at start")
    parser.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    args = parser.parse_args(argv)
    cls = FakeOpenAI if args.provider == "openai" else FakeAnthropic
    Behaviour.parse(args.default)
    srv = cls(reply=args.reply, default=args.default, api_key=args.api_key, host=args.host, port=args.port)
    srv.script(*args.script)
    print(f"fake {args.provider} API listening: base_url={srv.url}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
