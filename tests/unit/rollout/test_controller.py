"""The rollout controller's state machine on a real sqlite MLflow registry, with an in-memory Serve config,
settable metrics and a stand-in evaluator (the real path runs in tests/integration/test_zz_rollouts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.config import parse_config
from serving.deploy.serve_config import serve_config
from serving.rollout import plan
from serving.rollout.controller import RolloutController
from serving.rollout.evaluate import EvalResult
from serving.rollout.registry import Registry
from serving.rollout.spec import CHALLENGER, CHAMPION, parse_spec
from tests.support.rollout_fakes import FakeApplier, FakeMetrics

GROUP = "chat"


def platform(**policy: Any) -> dict[str, Any]:
    strategy = {"steps": [10, 50, 100], "step_hold_s": 30, **policy.pop("strategy", {})}
    analysis = {"min_requests": 10, "max_error_rate": 0.05, "min_ttft_samples": 5, **policy.pop("analysis", {})}
    return {
        "ray": {"app_name": "p"},
        "engines": {"base": {"model": "builtin:tiny-llama", "device": "cpu"}},
        "model_groups": {GROUP: {"engines": ["base"]}},
        "rollout": {"models": {GROUP: {"strategy": strategy, "analysis": analysis, **policy}}},
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Evaluator:
    def __init__(self) -> None:
        self.accuracy: dict[str, float] = {}
        self.errors: dict[str, int] = {}
        self.calls: list[str] = []
        self.headers: list[dict[str, str] | None] = []

    def __call__(self, url: str, group: str, engine: str, tasks: list, max_tokens: int = 64,
                 headers: dict[str, str] | None = None) -> EvalResult:
        self.calls.append(engine)
        self.headers.append(headers)
        n = len(tasks)
        return EvalResult(engine, tasks=n, correct=round(self.accuracy.get(engine, 0.5) * n),
                          errors=self.errors.get(engine, 0), error_samples=["t1: HTTP 500"] * bool(self.errors))


@pytest.fixture
def world(tmp_path: Path):
    def make(**policy: Any):
        registry = Registry(f"sqlite:///{tmp_path}/mlflow.db")
        applier = FakeApplier(serve_config(parse_config(platform(**policy))))
        metrics, clock, evaluator = FakeMetrics(), Clock(), Evaluator()
        ctl = RolloutController(registry, applier, metrics, "http://gw", clock=clock, drain_s=5, evaluator=evaluator)
        return ctl, registry, applier, metrics, clock, evaluator
    return make


def register(registry: Registry, seed: int, alias: str | None = None) -> int:
    v = registry.register("chat", parse_spec({"engine": {"model": f"builtin:tiny-llama?seed={seed}", "device": "cpu"}}))
    if alias:
        registry.set_alias("chat", alias, v.version)
    return v.version


def weights(applier: FakeApplier) -> dict[str, float]:
    return plan.members(applier.config, GROUP)


def apps(applier: FakeApplier) -> list[str]:
    return [a["name"] for a in applier.config["applications"]]


def test_canary_promotes_step_by_step(world) -> None:
    ctl, registry, applier, metrics, clock, evaluator = world()
    ctl.tick()
    assert weights(applier) == {"base": 1.0}  # no challenger: nothing happens
    v = register(registry, 1, CHALLENGER)
    ctl.tick()  # deploying: own app, weight 0
    assert "p-engine-chat-v1" in apps(applier) and weights(applier) == {"base": 1.0, "chat-v1": 0.0}
    assert registry.version("chat", v).rollout_tags["state"] == "deploying"
    ctl.tick()  # ready -> evaluating
    ctl.tick()  # eval passes -> step 0
    assert evaluator.calls == ["chat-v1"]
    assert evaluator.headers == [{"cache-control": "no-cache"}]  # an eval never reads the response cache
    assert weights(applier) == {"chat-v1": 10.0, "base": 90.0}
    assert plan.group_config(applier.config, GROUP).sticky
    for step, share in enumerate([10.0, 50.0, 100.0]):
        ctl.tick()  # opens the window
        metrics.serve("chat-v1", 20)
        metrics.serve("base", 20)
        ctl.tick()  # enough requests, not held long enough
        assert registry.version("chat", v).rollout_tags["step"] == str(step)
        clock.advance(31)
        ctl.tick()
        if share < 100:
            assert weights(applier)["chat-v1"] == [10.0, 50.0, 100.0][step + 1]
    tags = registry.version("chat", v).rollout_tags
    assert tags["state"] == "retiring" and tags["next_state"] == "promoted"
    assert registry.aliases("chat") == {CHAMPION: v}
    assert "p-engine-base" in apps(applier)  # drained before removal
    clock.advance(6)
    ctl.tick()
    assert registry.version("chat", v).rollout_tags["state"] == "promoted"
    assert apps(applier) == ["p", "p-engine-chat-v1"]
    assert weights(applier) == {"chat-v1": 100.0}
    # every write kept the gateway app's args (its code version): no gateway restart
    args = {str(w["applications"][0]["args"]) for w in applier.writes}
    assert len(args) == 1
    run = registry.client.get_run(tags["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["challenger_share"] == 100.0


def test_errors_roll_back_to_the_champion(world) -> None:
    ctl, registry, applier, metrics, clock, _ = world()
    v = register(registry, 1, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    assert weights(applier)["chat-v1"] == 10.0
    metrics.serve("chat-v1", 5, errors=2)
    metrics.serve("base", 40)
    events = ctl.tick()
    assert [e.what for e in events] == ["rolled_back"]
    assert "error rate" in events[0].detail["reason"]
    assert weights(applier) == {"base": 1.0, "chat-v1": 0.0}  # traffic back at once
    clock.advance(6)
    ctl.tick()
    tags = registry.version("chat", v).rollout_tags
    assert tags["state"] == "rolled_back" and "error rate 40.0%" in tags["reason"]
    assert apps(applier) == ["p", "p-engine-base"] and weights(applier) == {"base": 1.0}
    assert registry.aliases("chat") == {CHALLENGER: v}  # stays, tagged; a new challenger starts over
    ctl.tick()
    assert weights(applier) == {"base": 1.0}


def test_slow_challenger_rolls_back_on_ttft_ratio(world) -> None:
    ctl, registry, _applier, metrics, _clock, _ = world()
    register(registry, 1, CHALLENGER)
    for _ in range(5):
        ctl.tick()
    metrics.serve("chat-v1", 20, ttft_s=0.9)
    metrics.serve("base", 20, ttft_s=0.04)
    events = ctl.tick()
    assert events[0].what == "rolled_back" and "x champion's" in events[0].detail["reason"]


def test_failed_eval_never_gets_traffic(world) -> None:
    ctl, registry, applier, _, _, evaluator = world(eval={"max_drop": 0.1})
    evaluator.accuracy = {"chat-v1": 0.2, "base": 0.6}
    v = register(registry, 1, CHALLENGER)
    for _ in range(3):
        ctl.tick()
    tags = registry.version("chat", v).rollout_tags
    assert tags["next_state"] == "rolled_back" and "below the champion's" in tags["reason"]
    assert all(plan.members(w, GROUP).get("chat-v1", 0) == 0 for w in applier.writes)


def test_engine_that_fails_to_deploy_is_rolled_back(world) -> None:
    ctl, registry, applier, _, _, _ = world()
    v = register(registry, 1, CHALLENGER)
    ctl.tick()
    applier.statuses["p-engine-chat-v1"] = "DEPLOY_FAILED"
    ctl.tick()
    assert "failed to deploy" in registry.version("chat", v).rollout_tags["reason"]


def test_restarted_controller_resumes_mid_canary(world) -> None:
    ctl, registry, applier, metrics, clock, evaluator = world()
    v = register(registry, 1, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    ctl.tick()
    metrics.serve("chat-v1", 20)
    clock.advance(31)
    ctl.tick()
    assert registry.version("chat", v).rollout_tags["step"] == "1"
    # a new controller process: same registry, same Serve config, no memory
    ctl2 = RolloutController(registry, applier, metrics, "http://gw", clock=clock, drain_s=5, evaluator=evaluator)
    ctl2.tick()  # opens a new window at step 1
    metrics.serve("chat-v1", 20)
    clock.advance(31)
    ctl2.tick()
    assert registry.version("chat", v).rollout_tags["step"] == "2"
    assert evaluator.calls == ["chat-v1"]  # not evaluated twice


def test_pause_resume_promote_abort_commands(world) -> None:
    ctl, registry, applier, metrics, clock, _ = world()
    v = register(registry, 1, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    registry.set_rollout_tags("chat", v, {"paused": "true"})
    metrics.serve("chat-v1", 50)
    clock.advance(100)
    ctl.tick()
    ctl.tick()
    assert registry.version("chat", v).rollout_tags["step"] == "0"
    registry.set_rollout_tags("chat", v, {"paused": "false", "command": "promote"})
    ctl.tick()
    assert weights(applier) == {"chat-v1": 100.0, "base": 0.0}
    assert registry.aliases("chat")[CHAMPION] == v
    # abort of the next one
    v2 = register(registry, 2, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    registry.set_rollout_tags("chat", v2, {"command": "abort"})
    ctl.tick()
    assert registry.version("chat", v2).rollout_tags["reason"] == "aborted by `serving rollout abort`"
    assert weights(applier)["chat-v1"] == 100.0


def test_blue_green_shadows_then_switches(world) -> None:
    ctl, registry, applier, metrics, clock, _ = world(strategy={"kind": "blue_green", "shadow_s": 20,
                                                               "shadow_percent": 50})
    v = register(registry, 1, CHALLENGER)
    for _ in range(3):
        ctl.tick()
    group = plan.group_config(applier.config, GROUP)
    assert group.shadow.engine == "chat-v1" and group.shadow.percent == 50
    assert weights(applier) == {"chat-v1": 0.0, "base": 1.0}
    ctl.tick()
    metrics.serve("chat-v1", 30, shadow=True)
    clock.advance(21)
    ctl.tick()
    assert weights(applier) == {"chat-v1": 100.0, "base": 0.0}
    assert registry.aliases("chat") == {CHAMPION: v}


def test_shadow_errors_roll_back(world) -> None:
    ctl, registry, applier, metrics, _clock, _ = world(strategy={"kind": "blue_green", "shadow_s": 20})
    v = register(registry, 1, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    metrics.serve("chat-v1", 10, errors=3, shadow=True)
    ctl.tick()
    assert registry.version("chat", v).rollout_tags["next_state"] == "rolled_back"
    assert plan.group_config(applier.config, GROUP).shadow is None


def test_removing_the_challenger_alias_aborts(world) -> None:
    ctl, registry, applier, _, _, _ = world()
    v = register(registry, 1, CHALLENGER)
    for _ in range(4):
        ctl.tick()
    registry.delete_alias("chat", CHALLENGER)
    ctl.tick()
    assert registry.version("chat", v).rollout_tags["reason"] == "challenger alias removed"
    assert weights(applier) == {"base": 1.0, "chat-v1": 0.0}


def test_evaluations_send_the_controllers_gateway_key(world):
    ctl, registry, applier, metrics, _, _ = world()
    ctl = RolloutController(registry, applier, metrics, "http://gw", gateway_api_key="sk-serving-x")
    assert ctl.eval_headers == {"cache-control": "no-cache", "authorization": "Bearer sk-serving-x"}
