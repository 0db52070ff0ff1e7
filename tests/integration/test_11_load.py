"""Load on the real stack (issue 14): long generations are never timeouts and cannot take a route down for other
clients; past a route's admission bounds the gateway refuses at once with a 429 the official SDK understands."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from tests.integration.support import (
    ADMIT_CONCURRENCY,
    ADMIT_QUEUE,
    ADMIT_ROUTE,
    LOAD_ROUTE,
    PROGRESS_TIER,
    Stack,
    assert_envelope,
    metric_samples,
    metric_value,
)

STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]
LONG_TOKENS = 400  # at ~30 tokens/s per sequence on a busy 2-core box: far longer than the tier's 10 s TTFT timeout


async def test_six_long_requests_complete_and_the_route_stays_up_for_others(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=600) as http:
        async def long() -> httpx.Response:
            return await http.post("/v1/chat/completions", json={
                "model": LOAD_ROUTE, "messages": STORY, "max_tokens": LONG_TOKENS, "ignore_eos": True})

        async def short() -> list[int]:
            statuses = []
            while not all(t.done() for t in longs):
                resp = await http.post("/v1/chat/completions", json={
                    "model": LOAD_ROUTE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
                statuses.append(resp.status_code)
                await asyncio.sleep(2)
            return statuses

        start = time.monotonic()
        longs = [asyncio.create_task(long()) for _ in range(6)]
        shorts = await short()
        answers = await asyncio.gather(*longs)
        took = time.monotonic() - start
        assert [r.status_code for r in answers] == [200] * 6, [r.text[:300] for r in answers]
        for r in answers:
            assert r.json()["usage"]["completion_tokens"] == LONG_TOKENS
        assert shorts and set(shorts) == {200}, shorts
        assert took > 10  # longer than the tier's time-to-first-token timeout: only progress bounded them
        samples = metric_samples((await http.get("/metrics")).text)
        assert metric_value(samples, "serving_breaker_state", tier=PROGRESS_TIER) == 0


async def test_past_the_admission_bounds_the_sdk_gets_a_fast_429(stack: Stack) -> None:
    offered = ADMIT_CONCURRENCY + ADMIT_QUEUE + 5
    async with httpx.AsyncClient(base_url=stack.url, timeout=300) as http:
        async def one() -> tuple[httpx.Response, float]:
            t0 = time.perf_counter()
            resp = await http.post("/v1/chat/completions", json={
                "model": ADMIT_ROUTE, "messages": STORY, "max_tokens": 500, "ignore_eos": True})
            return resp, time.perf_counter() - t0

        results = await asyncio.gather(*(one() for _ in range(offered)))
        ok = [r for r, _ in results if r.status_code == 200]
        shed = [(r, t) for r, t in results if r.status_code == 429]
        assert len(ok) == ADMIT_CONCURRENCY + ADMIT_QUEUE and len(shed) == offered - len(ok), \
            [r.status_code for r, _ in results]
        for r, t in shed:
            err = assert_envelope(r, 429, code="queue_full")
            assert ADMIT_ROUTE in err["message"]
            assert int(r.headers["retry-after-ms"]) > 0 and int(r.headers["retry-after"]) >= 1
            assert t < 1.0, t  # refused at once, while the admitted ones take seconds
        assert min(t for r, t in results if r.status_code == 200) > max(t for _, t in shed)
        samples = metric_samples((await http.get("/metrics")).text)
        refused = sum(s.value for s in samples["serving_admission_shed_total"] if s.labels["name"] == ADMIT_ROUTE)
        assert refused >= len(shed)


def test_the_official_sdk_sees_a_rate_limit_error_and_its_retry_hint(stack: Stack) -> None:
    async def hold() -> None:
        async with httpx.AsyncClient(base_url=stack.url, timeout=300) as http:
            await asyncio.gather(*(http.post("/v1/chat/completions", json={
                "model": ADMIT_ROUTE, "messages": STORY, "max_tokens": 1000, "ignore_eos": True})
                for _ in range(ADMIT_CONCURRENCY + ADMIT_QUEUE)))

    thread = threading.Thread(target=lambda: asyncio.run(hold()))
    thread.start()
    try:
        time.sleep(0.5)  # the route's slots and queue are taken
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
        with client, pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=ADMIT_ROUTE, messages=STORY, max_tokens=4)  # type: ignore[arg-type]
        assert refused.value.status_code == 429 and refused.value.code == "queue_full"
        assert refused.value.response.headers["retry-after-ms"]
    finally:
        thread.join(300)
