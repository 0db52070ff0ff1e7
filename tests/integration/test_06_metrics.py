"""Gateway metrics at `/metrics` and vLLM's engine metrics on Ray's metrics port, on the real stack."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.integration.support import (
    HELLO,
    SMOL_ENGINE,
    SMOL_GROUP,
    TINY_ENGINE,
    TINY_GROUP,
    TOO_LONG,
    Stack,
    metric_samples,
    metric_value,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traffic(client: openai.OpenAI, http: httpx.Client) -> None:
    """Some of every outcome, so that this module does not depend on the ones before it."""
    for group in (TINY_GROUP, SMOL_GROUP):
        list(client.chat.completions.create(model=group, messages=HELLO, max_tokens=4, stream=True,
                                            extra_body={"ignore_eos": True}))
        client.completions.create(model=group, prompt="Hello", max_tokens=4, extra_body={"ignore_eos": True})
        assert http.post("/v1/chat/completions", json={"model": group, "messages": [
            {"role": "user", "content": TOO_LONG}]}).status_code == 400
    assert http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": HELLO}).status_code == 404


def test_gateway_metrics(http: httpx.Client, traffic: None):
    resp = http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = metric_samples(resp.text)
    requests = "serving_requests_total"
    for group, engine in ((TINY_GROUP, TINY_ENGINE), (SMOL_GROUP, SMOL_ENGINE)):
        labels = {"model_group": group, "engine": engine}
        assert metric_value(samples, requests, **labels, endpoint="chat", status_code="200") >= 1
        assert metric_value(samples, requests, **labels, endpoint="completions", status_code="200") >= 1
        assert metric_value(samples, requests, **labels, endpoint="chat", status_code="400") >= 1
        assert metric_value(samples, "serving_time_to_first_token_seconds_count", **labels) > 0
        assert metric_value(samples, "serving_completion_tokens_total", **labels) > 0
        assert metric_value(samples, "serving_prompt_tokens_total", **labels) > 0
        assert metric_value(samples, "serving_request_duration_seconds_count", **labels) > 0
        assert metric_value(samples, "serving_requests_in_flight", model_group=group) == 0
    assert metric_value(samples, requests, model_group="unknown", status_code="404") >= 1
    statuses = {s.labels["status_code"] for s in samples[requests]}
    assert not {s for s in statuses if s.startswith("5")}, statuses  # nothing above failed on the server side


def test_vllm_engine_metrics_on_ray_metrics_port(stack: Stack, traffic: None):
    """Ray's metrics agent exports the engines' `ray_vllm_*` series (it may take a few export periods)."""
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    deadline, last = time.monotonic() + 60, ""
    while True:
        try:
            last = httpx.get(url, timeout=10).text
        except httpx.HTTPError as exc:
            last = repr(exc)
        samples = metric_samples(last) if "ray_vllm_" in last else {}
        engines = {s.labels.get("model_name") for s in samples.get("ray_vllm_generation_tokens_total", [])}
        if {TINY_ENGINE, SMOL_ENGINE} <= engines or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert any(line.startswith("ray_vllm_") for line in last.splitlines()), last[:2000]
    assert {TINY_ENGINE, SMOL_ENGINE} <= engines, engines
    assert metric_value(samples, "ray_vllm_generation_tokens_total", model_name=TINY_ENGINE) > 0
