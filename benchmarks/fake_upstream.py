"""A fast fake OpenAI-compatible upstream for gateway throughput benchmarks (``benchmarks/policy.py``).

It answers every chat completion with one fixed short completion, immediately (or after ``--delay-ms``), so
that what a benchmark measures is the proxy in front of it, not the model. It must never be the bottleneck, so
the default implementation is a raw asyncio HTTP/1.1 server (keep-alive, pipelining, Content-Length or chunked
request bodies; uvloop when installed) with pre-rendered response templates: per request it parses the JSON body
and formats one template. ``--impl starlette`` serves the same answers through uvicorn + Starlette, to compare.

Endpoints:

* ``POST /v1/chat/completions``: non-streamed: one ``chat.completion``; streamed (``"stream": true``): SSE
  chunks (role, the answer in a few content pieces, finish_reason), a usage chunk (``"choices": []``) when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``; sent with chunked transfer encoding.
  ``max_tokens`` / ``max_completion_tokens`` below the answer's length truncates it (finish_reason ``length``);
  tokens are 4-character pieces.
* ``GET /v1/models`` (one model, ``fake-model``), ``GET /health``; ``GET /stats`` (requests served).

Any API key is accepted. Run it standalone:

    python -m benchmarks.fake_upstream --port 9200 [--delay-ms 0] [--impl raw|starlette]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

ANSWER = "This is the fixed short answer of the fake upstream."
STREAM_PIECES = 4  # content chunks per streamed answer
CHARS_PER_TOKEN = 4
MODEL = "fake-model"


def _tokens(text: str) -> list[str]:
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def _prompt_tokens(messages: Any) -> int:
    chars = 0
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return max(1, chars // CHARS_PER_TOKEN)


class Answers:
    """Renders the answers (JSON bytes); independent of the HTTP server in front."""

    def __init__(self, answer: str = ANSWER, model: str = MODEL):
        self.answer, self.model = answer, model
        self.tokens = _tokens(answer)
        self.ids = itertools.count(1)
        self.served = 0

    def _parts(self, body: dict[str, Any]) -> tuple[str, str, str, dict[str, int]]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        tokens, finish = self.tokens, "stop"
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        prompt = _prompt_tokens(body.get("messages"))
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        model = body.get("model") if isinstance(body.get("model"), str) else self.model
        return "".join(tokens), finish, model, usage

    def completion(self, body: dict[str, Any]) -> bytes:
        text, finish, model, usage = self._parts(body)
        self.served += 1
        return json.dumps({
            "id": f"chatcmpl-fake{next(self.ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }, separators=(",", ":")).encode()

    def stream(self, body: dict[str, Any]) -> list[bytes]:
        """The SSE events of a streamed answer, each ``data: ...\\n\\n``."""
        text, finish, model, usage = self._parts(body)
        self.served += 1
        base = {"id": f"chatcmpl-fake{next(self.ids)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": None}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({**base, "choices": choices, **extra}, separators=(",", ":")).encode() \
                + b"\n\n"

        step = max(1, -(-len(text) // STREAM_PIECES))
        events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])]
        events += [event([{"index": 0, "delta": {"content": text[i:i + step]}, "logprobs": None,
                           "finish_reason": None}]) for i in range(0, len(text), step)]
        events.append(event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return events

    def models(self) -> bytes:
        return json.dumps({"object": "list", "data": [{"id": self.model, "object": "model", "created": 0,
                                                       "owned_by": "benchmark"}]}).encode()


# ------------------------------------------------------------------------------------------------ raw asyncio

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _response(status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (status, _REASONS[status],
                                                                              content_type, len(body)))
    return head + (b"connection: close\r\n\r\n" if close else b"\r\n") + body


def _chunked(events: list[bytes], close: bool) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n" + (b"connection: close\r\n\r\n" if close else b"\r\n"))
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _error(status: int, message: str, close: bool = False) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return _response(status, json.dumps(body).encode(), close=close)


class _Request:
    __slots__ = ("body", "close", "method", "path")

    def __init__(self, method: str, path: str, body: bytes, close: bool):
        self.method, self.path, self.body, self.close = method, path, body, close


class RawHTTPProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 server connection: enough for HTTP clients of LLM SDKs and proxies (keep-alive,
    pipelining, Content-Length or chunked bodies). Requests on one connection are answered in order."""

    MAX_HEAD = 64 * 1024

    def __init__(self, answers: Answers, delay_s: float):
        self.answers, self.delay_s = answers, delay_s
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.busy and self.transport is not None:
            try:
                req = self._parse()
            except ValueError as exc:
                self.transport.write(_error(400, str(exc), close=True))
                self.transport.close()
                return
            if req is None:
                return
            data = self._handle(req)
            if self.delay_s > 0 and req.path.startswith("/v1/chat"):
                self.busy = True
                asyncio.get_running_loop().call_later(self.delay_s, self._send_later, data, req.close)
                return
            self._send(data, req.close)

    def _send_later(self, data: bytes, close: bool) -> None:
        self.busy = False
        self._send(data, close)
        self._process()

    def _send(self, data: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.transport = None

    def _parse(self) -> _Request | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > self.MAX_HEAD:
                raise ValueError("request head too large")
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise ValueError("bad request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, consumed = self._dechunk(start)
            if body is None:
                return None
        else:
            length = int(headers.get("content-length") or 0)
            if len(self.buf) - start < length:
                return None
            body, consumed = bytes(self.buf[start:start + length]), start + length
        del self.buf[:consumed]
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        return _Request(method, target.split("?", 1)[0], body, close)

    def _dechunk(self, pos: int) -> tuple[bytes | None, int]:
        parts = []
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None, 0
            size = int(bytes(self.buf[pos:eol]).split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                trailer_end = self.buf.find(b"\r\n", pos)
                while trailer_end >= 0 and trailer_end != pos:  # skip trailer headers
                    pos = trailer_end + 2
                    trailer_end = self.buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None, 0
                return b"".join(parts), trailer_end + 2
            if len(self.buf) < pos + size + 2:
                return None, 0
            parts.append(bytes(self.buf[pos:pos + size]))
            pos += size + 2

    def _handle(self, req: _Request) -> bytes:
        a = self.answers
        if req.path in ("/v1/chat/completions", "/chat/completions"):
            if req.method != "POST":
                return _error(405, "use POST", req.close)
            try:
                body = json.loads(req.body)
            except ValueError:
                return _error(400, "the body is not JSON", req.close)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
                return _error(400, "messages must be a non-empty list", req.close)
            if body.get("stream"):
                return _chunked(a.stream(body), req.close)
            return _response(200, a.completion(body), close=req.close)
        if req.path in ("/v1/models", "/models"):
            return _response(200, a.models(), close=req.close)
        if req.path == "/health":
            return _response(200, b'{"status":"ok"}', close=req.close)
        if req.path == "/stats":
            return _response(200, json.dumps({"requests": a.served}).encode(), close=req.close)
        return _error(404, f"no route {req.path}", req.close)


async def serve_raw(host: str, port: int, answers: Answers, delay_s: float, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTPProtocol(answers, delay_s), host, port, backlog=1024,
                                      reuse_address=True)
    ready()
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------------------ uvicorn + starlette


def starlette_app(answers: Answers, delay_s: float) -> Any:
    """The same answers as an ASGI app (uvicorn + Starlette), to compare with the raw server."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "the body is not JSON"}}, 400)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if body.get("stream"):
            events = answers.stream(body)

            async def gen() -> Any:
                for e in events:
                    yield e

            return StreamingResponse(gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
        return Response(answers.completion(body), media_type="application/json")

    async def models(request: Request) -> Response:
        return Response(answers.models(), media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse({"requests": answers.served})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models), Route("/health", health), Route("/stats", stats)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9200)
    ap.add_argument("--delay-ms", type=float, default=0.0, help="wait this long before each chat answer")
    ap.add_argument("--impl", choices=("raw", "starlette"), default="raw",
                    help="raw asyncio HTTP server (default, fastest) or uvicorn + Starlette")
    args = ap.parse_args(argv)
    answers, delay_s = Answers(), args.delay_ms / 1e3

    def ready() -> None:
        print(f"[fake-upstream] {args.impl} on http://{args.host}:{args.port}/v1, delay {args.delay_ms:g} ms",
              flush=True)

    if args.impl == "starlette":
        import uvicorn

        ready()
        uvicorn.run(starlette_app(answers, delay_s), host=args.host, port=args.port, log_level="warning",
                    access_log=False, lifespan="off")
        return 0
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve_raw(args.host, args.port, answers, delay_s, ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
