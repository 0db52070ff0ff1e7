"""The gateway's own work per request, counted deterministically: Python function calls (cProfile) and CPU time per
request through the gateway app in-process, for a model group backed by an engine that answers at once.

Wall-clock benchmarks on a shared 2-core machine move by 2x between runs (the same bare vLLM spent 96 and 194 ms of
engine CPU per request in two runs an hour apart); function calls per request do not, so this script is how a change
to the request path is compared before and after (run it in both trees; `PYTHONPATH=<tree>` picks the code):

    .venv/bin/python benchmarks/pipeline_calls.py [--requests 200] [--tokens 64] [--out benchmarks/results/x.json]

What is counted: the ASGI app of `serving.api.server.build_api` (auth off, no Redis, tracing off) serving
`POST /v1/chat/completions`, streamed and not, from an httpx client on the same event loop. The client's calls are
included in `calls_total` and the same in both trees; `calls_serving` counts only functions in `serving/`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import platform
import pstats
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig
from serving.routing.groups import GroupRouter

try:
    from serving.engines.base import Chunk, Completed
except ImportError:  # a tree from before typed engine items (issue 13): engines yielded str and response objects
    Chunk = str  # type: ignore[misc,assignment]

    def Completed(response: Any) -> Any:  # type: ignore[no-redef]
        return response


class InstantEngine:
    """An engine that answers `tokens` words at once: one SSE chunk per token when streamed, like vLLM."""

    def __init__(self, name: str, tokens: int):
        self.name, self.tokens = name, tokens

    async def generate(self, endpoint: str, request: Any) -> AsyncGenerator[Any, None]:
        rid, created = "chatcmpl-bench", int(time.time())
        if not request.stream:
            yield Completed(ChatCompletionResponse.model_validate({
                "id": rid, "created": created, "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " word" * self.tokens},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": self.tokens, "total_tokens": 8 + self.tokens}}))
            return
        head = f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},"model":"{self.name}","choices":'
        role = '{"role":"assistant","content":""}'
        yield Chunk(f'data: {head}[{{"index":0,"delta":{role},"finish_reason":null}}]}}\n\n')
        for _ in range(self.tokens):
            yield Chunk(f'data: {head}[{{"index":0,"delta":{{"content":" word"}},"finish_reason":null}}]}}\n\n')
        yield Chunk(f'data: {head}[{{"index":0,"delta":{{}},"finish_reason":"length"}}]}}\n\n')
        yield Chunk(f'data: {head}[],"usage":{{"prompt_tokens":8,"completion_tokens":{self.tokens},'
                    f'"total_tokens":{8 + self.tokens}}}}}\n\n')
        yield Chunk("data: [DONE]\n\n")

    async def check_health(self) -> None:
        return None


async def measure(stream: bool, requests: int, tokens: int) -> dict[str, Any]:
    engine = InstantEngine("e1", tokens)
    router = GroupRouter({"e1": engine}, {"g": ModelGroupConfig.model_validate({"engines": ["e1"]})})
    app = build_api(router, GatewayConfig(health_interval_s=0))
    body = {"model": "g", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": tokens}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
        async def one() -> None:
            resp = await http.post("/v1/chat/completions", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"gateway answered {resp.status_code}: {resp.text[:300]}")

        for _ in range(20):  # warm-up: imports, caches, first-request paths
            await one()
        profile = cProfile.Profile()
        cpu0 = time.process_time()
        profile.enable()
        for _ in range(requests):
            await one()
        profile.disable()
        cpu = time.process_time() - cpu0
    stats = pstats.Stats(profile)
    per_fn: dict[str, float] = {}
    serving_calls = 0
    for (path, _line, fn), (_cc, calls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if "/serving/" in path:
            serving_calls += calls
            key = f"{path.split('/serving/')[-1]}:{fn}"
            per_fn[key] = per_fn.get(key, 0) + calls / requests
    top = dict(sorted(per_fn.items(), key=lambda kv: -kv[1])[:15])
    return {"requests": requests, "tokens": tokens,
            "calls_total_per_request": stats.total_calls / requests,  # type: ignore[attr-defined]
            "calls_serving_per_request": serving_calls / requests,
            "cpu_ms_per_request_profiled": cpu / requests * 1000, "top_serving_functions": top}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "pipeline_calls.json")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    results = {kind: asyncio.run(measure(kind == "stream", args.requests, args.tokens)) for kind in ("stream", "json")}
    for kind, r in results.items():
        print(f"[calls] {kind}: {r['calls_total_per_request']:.0f} calls/request in all, "
              f"{r['calls_serving_per_request']:.0f} in serving/ ({r['cpu_ms_per_request_profiled']:.2f} ms CPU "
              "per request under the profiler)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "pipeline_calls", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "machine": platform.processor() or platform.machine(), "results": results},
                                   indent=2))
    print(f"[calls] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
