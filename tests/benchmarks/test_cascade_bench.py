"""The cascade benchmark's helpers: its simulated strong model (benchmarks/standin_cloud) answering the eval task
set (models/evals), and the platform config and run configs benchmarks/cascade.py writes."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from benchmarks.standin_cloud import StandIn, make_app, serve_in_thread
from models.evals import check, load_tasks

TASKS = load_tasks()


@pytest.mark.parametrize("accuracy", [1.0, 0.0])
def test_standin_answer_logic(accuracy: float) -> None:
    standin = StandIn(TASKS, accuracy=accuracy, latency_ms=0)
    for task in TASKS:
        text, found, correct = standin.answer(task.messages)
        assert found is task and correct is (accuracy == 1.0)
        assert check(task, text) is (accuracy == 1.0), (task.id, text)
        jsonschema.validate(json.loads(text), task.schema)  # wrong answers are still well-formed


def test_standin_is_deterministic_and_near_its_accuracy() -> None:
    a = StandIn(TASKS, accuracy=0.9, seed=3, latency_ms=0)
    b = StandIn(TASKS, accuracy=0.9, seed=3, latency_ms=0)
    answers = [a.answer(t.messages)[0] for t in TASKS]
    assert answers == [b.answer(t.messages)[0] for t in TASKS]
    assert 0.75 <= sum(check(t, x) for t, x in zip(TASKS, answers, strict=True)) / len(TASKS) <= 1.0


def _post(url: str, body: dict, key: str = "k") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=10)


@pytest.mark.parametrize("accuracy", [1.0, 0.0])
def test_standin_server_answers_a_task(accuracy: float) -> None:
    task = next(t for t in TASKS if t.kind == "extraction")
    with serve_in_thread(make_app(StandIn(TASKS, accuracy=accuracy, latency_ms=5))) as url:
        resp = _post(url, {"model": "strong-model", "messages": task.messages, "logprobs": True})
        assert resp.status_code == 200
        data = resp.json()
        text = data["choices"][0]["message"]["content"]
        assert check(task, text) is (accuracy == 1.0)
        usage = data["usage"]
        assert usage["completion_tokens"] == len(data["choices"][0]["logprobs"]["content"]) >= len(text) // 4
        assert usage["prompt_tokens"] > 0
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == "strong-model"


def test_standin_server_streams_with_usage_and_handles_unknown_prompts() -> None:
    task = next(t for t in TASKS if t.kind == "classification")
    with serve_in_thread(make_app(StandIn(TASKS, accuracy=1.0, latency_ms=0), api_key="k")) as url:
        body = {"model": "m", "messages": task.messages, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                          headers={"authorization": "Bearer k"}, timeout=10) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
        assert check(task, text)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
        assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)

        judge = "Rate how correct the answer is on a scale from 1 (useless) to 10. Reply with the number only."
        assert _post(url, {"model": "m", "messages": [{"role": "user", "content": judge}]}).json()[
            "choices"][0]["message"]["content"] == "7"
        cut = _post(url, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
        assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 2
        # a follow-up turn (e.g. a self-correction request) still finds the task in an earlier user message
        follow = [*task.messages, {"role": "assistant", "content": "??"}, {"role": "user", "content": "Fix it."}]
        assert check(task, _post(url, {"model": "m", "messages": follow}).json()["choices"][0]["message"]["content"])
        assert _post(url, {"model": "m", "messages": task.messages}, key="wrong").status_code == 401
        assert httpx.get(f"{url}/stats", timeout=5).json()["correct"] >= 2


def test_cascade_benchmark_writes_a_valid_platform_config(tmp_path) -> None:
    from benchmarks.cascade import parse_thresholds, platform_yaml, run_configs
    from serving.api.protocol import RequestOverrides
    from serving.config import load_config

    args = type("A", (), {"metrics_port": 8089, "port": 8000, "strong_kind": "openai", "weak_usd_per_hour": 0.8,
                          "weak_tokens_per_s": 1500, "strong_model": "strong-model", "strong_price_in": 2.5,
                          "strong_price_out": 10.0})()
    path = tmp_path / "cascade.yaml"
    path.write_text(platform_yaml(args, "http://127.0.0.1:9100/v1", "STANDIN_API_KEY"))
    cfg = load_config(path)
    assert set(cfg.routes) == {"cascade", "weak-only", "strong-only", "weak-ungated", "tiny-ungated", "tiny-gated"}
    from benchmarks.cascade import OVERHEAD_TARGETS

    for targets in OVERHEAD_TARGETS.values():  # every overhead target is a route or a model group
        assert all(m in cfg.routes or m in cfg.model_groups for m in targets.values())
    configs = run_configs(parse_thresholds("none,-0.2"), -0.1)
    task = TASKS[0]
    by_name = {c.name: c for c in configs}
    assert by_name["always-strong"].serving(task) is None
    assert by_name["cascade-json-only"].serving(task) == {
        "gates": {"json": {"required": True, "schema": task.schema}, "confidence": None}}
    assert by_name["cascade--0.2"].serving(task)["gates"]["confidence"] == {"min_mean_logprob": -0.2}
    assert by_name["cascade-nojson--0.1"].serving(task)["gates"]["json"] is None
    for c in configs:  # the overrides validate like the config
        if (serving := c.serving(task)) is not None:
            RequestOverrides.model_validate(serving).apply(cfg.routes[c.route])
