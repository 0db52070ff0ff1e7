"""A SIMULATED "strong cloud model" for the cascade benchmark: an OpenAI-compatible server that knows the answers.

This machine has no network and no model bigger than SmolLM2-135M, so the strong tier of the benchmark is this
stand-in. It is a simulation: its quality is an INPUT of the benchmark (``--accuracy``), not a measurement, and
so are its latency (``--latency-ms``) and its token counts. Point the benchmark at a real provider instead with
``benchmarks/cascade.py --strong-base-url ... --strong-model ...`` to measure a real strong model.

What it does:

* ``POST /v1/chat/completions`` (non-streamed, and streamed as SSE with a final usage chunk when
  ``stream_options.include_usage`` is set) and ``GET /v1/models``; ``GET /stats`` counts what it served.
* It recognises eval tasks (``models/evals``) by matching a user message of the request (the last one first)
  against the task set's prompts, and answers the labelled JSON with probability ``accuracy``; otherwise a
  plausible wrong answer (an off-by-a-bit number, another label, a perturbed field). The choice is a fixed
  function of ``(seed, task id)``, so a task gets the same answer every time, like greedy decoding.
* Unknown prompts get a generic short answer: "7" when asked for a rating from 1 to 10 (a judge prompt),
  otherwise one fixed sentence.
* Usage is ~chars/4 tokens; the completion is cut into 4-character "tokens" (so ``max_tokens`` truncates with
  finish_reason "length"). With ``logprobs: true`` each such token gets a made-up high logprob (-0.05 to
  -0.002), the same for right and wrong answers: a confidently wrong strong model, so a confidence gate on the
  strong tier learns nothing from the simulation.
* Each answer waits ``latency-ms`` (time to first token) plus ``ms-per-token`` per token.

    python -m benchmarks.standin_cloud --port 9100 --accuracy 0.97 --latency-ms 400 --seed 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from models.evals import Task, load_tasks, normalize_prompt, task_index

GENERIC_ANSWER = "This is a generic answer from the simulated strong model."
_RATING = re.compile(r"\b(?:1\s*(?:to|-|\u2013)\s*10|scale (?:of|from) 1)\b|\brate\b", re.I)
# Capitalised words inside a sentence (not at its start): names and places to swap in for a wrong answer.
_CAPITALISED = re.compile(r"(?<=[a-z0-9,;] )[A-Z][a-z]+(?: [A-Z][a-z]+)?\b")
CHARS_PER_TOKEN = 4


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _tokens(text: str) -> list[str]:
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)] or [""]


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def wrong_answer(task: Task, rng: random.Random) -> dict[str, Any]:
    """A plausible wrong answer to ``task``: one field changed (another label, a nearby number, another name)."""
    answer = copy.deepcopy(task.expected)
    props = task.schema.get("properties", {})
    key = rng.choice(sorted(answer))
    value, spec = answer[key], props.get(key, {})
    if "enum" in spec:
        answer[key] = rng.choice([v for v in spec["enum"] if v != value])
    elif isinstance(value, bool):
        answer[key] = not value
    elif isinstance(value, int):
        answer[key] = value + rng.choice([-10, -2, -1, 1, 2, 10, value or 3])
    elif isinstance(value, float):
        answer[key] = round(value * rng.choice([0.5, 0.9, 1.1, 2.0]), 2)
    elif isinstance(value, str):
        others = [w for w in _CAPITALISED.findall(task.prompt)
                  if w.casefold() not in value.casefold() and value.casefold() not in w.casefold()]
        if others:
            answer[key] = rng.choice(others)
        else:  # a partial extraction ("Amara" for "Amara Lund"), or a plural
            answer[key] = value.rsplit(" ", 1)[0] if " " in value else value + "s"
    else:
        answer[key] = None
    if answer == task.expected:  # e.g. 0.0 scaled
        answer[key] = (value or 0) + 1 if isinstance(value, (int, float)) else None
    return answer


class StandIn:
    """The answer logic, independent of HTTP."""

    def __init__(self, tasks: Sequence[Task], *, accuracy: float = 0.97, seed: int = 0,
                 latency_ms: float = 400.0, ms_per_token: float = 0.0, model: str = "strong-model"):
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError("accuracy must be in [0, 1]")
        self.index = task_index(tasks)
        self.accuracy, self.seed, self.model = accuracy, seed, model
        self.latency_s, self.per_token_s = latency_ms / 1e3, ms_per_token / 1e3
        self.stats: Counter[str] = Counter()

    def find_task(self, messages: list[dict[str, Any]]) -> Task | None:
        for message in reversed(messages):
            if message.get("role") == "user":
                task = self.index.get(normalize_prompt(_text(message.get("content"))))
                if task is not None:
                    return task
        return None

    def answer(self, messages: list[dict[str, Any]]) -> tuple[str, Task | None, bool | None]:
        """(answer text, the task recognised or None, whether the answer is the labelled one)."""
        task = self.find_task(messages)
        if task is None:
            last = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
            self.stats["unknown"] += 1
            return ("7" if _RATING.search(last) else GENERIC_ANSWER), None, None
        rng = random.Random(f"{self.seed}:{task.id}")
        correct = rng.random() < self.accuracy
        self.stats["correct" if correct else "wrong"] += 1
        return json.dumps(task.expected if correct else wrong_answer(task, rng)), task, correct

    def logprobs(self, tokens: list[str], key: str, top: int) -> list[dict[str, Any]]:
        """Made-up, uniformly high token logprobs (independent of whether the answer is right)."""
        rng = random.Random(f"{self.seed}:lp:{key}")
        out = []
        for tok in tokens:
            lp = round(rng.uniform(-0.05, -0.002), 4)
            entry = {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
            entry["top_logprobs"] = [dict(entry)] if top else []
            out.append(entry)
        return out


def _error(status: int, message: str, type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": None}}, status)


def make_app(standin: StandIn, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``standin`` (``api_key``: require ``Authorization: Bearer <key>``)."""
    app = FastAPI(title="simulated strong model (benchmark stand-in)")

    def authorised(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return dict(standin.stats)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "invalid API key", "authentication_error")
        return {"object": "list", "data": [{"id": standin.model, "object": "model", "created": 0,
                                            "owned_by": "benchmark-standin"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "invalid API key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        standin.stats["requests"] += 1
        text, task, _ = standin.answer(messages)
        tokens = _tokens(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        text = "".join(tokens)
        prompt_tokens = sum(count_tokens(_text(m.get("content"))) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                 "total_tokens": prompt_tokens + len(tokens)}
        want_lp = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0)
        n = int(body.get("n") or 1)
        model = body.get("model") or standin.model
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        lps = standin.logprobs(tokens, task.id if task else text, top) if want_lp else None
        delay = standin.latency_s + standin.per_token_s * len(tokens)

        if not body.get("stream"):
            await asyncio.sleep(delay)
            choices = [{"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": {"content": lps} if want_lp else None, "finish_reason": finish}
                       for i in range(n)]
            usage = {**usage, "completion_tokens": n * len(tokens), "total_tokens": prompt_tokens + n * len(tokens)}
            return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": choices, "usage": usage}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(n)])
            await asyncio.sleep(standin.latency_s)
            for k, tok in enumerate(tokens):
                if k and standin.per_token_s:
                    await asyncio.sleep(standin.per_token_s)
                for i in range(n):
                    yield chunk([{"index": i, "delta": {"content": tok},
                                  "logprobs": {"content": [lps[k]]} if lps else None, "finish_reason": None}])
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish} for i in range(n)])
            if include_usage:
                total = {**usage, "completion_tokens": n * len(tokens),
                         "total_tokens": prompt_tokens + n * len(tokens)}
                yield chunk([], usage=total)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: an ephemeral port); yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the stand-in server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--accuracy", type=float, default=0.97, help="probability of the labelled answer (an INPUT)")
    ap.add_argument("--latency-ms", type=float, default=400.0, help="time to first token of every answer")
    ap.add_argument("--ms-per-token", type=float, default=0.0, help="extra time per completion token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="strong-model", help="the model id /v1/models lists")
    ap.add_argument("--tasks", default="cascade_tasks", help="task set of models/evals to recognise")
    ap.add_argument("--api-key-env", default=None,
                    help="require 'Authorization: Bearer $VAR' (default: accept any key)")
    args = ap.parse_args(argv)

    import os

    import uvicorn

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        ap.error(f"{args.api_key_env} is not set")
    standin = StandIn(load_tasks(args.tasks), accuracy=args.accuracy, seed=args.seed, latency_ms=args.latency_ms,
                      ms_per_token=args.ms_per_token, model=args.model)
    print(f"[standin] SIMULATED strong model {args.model!r} on http://{args.host}:{args.port}/v1: "
          f"accuracy {args.accuracy} (an input), latency {args.latency_ms:g} ms, {len(standin.index)} tasks known",
          flush=True)
    uvicorn.run(make_app(standin, api_key), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
