"""The rollout controller: a state machine per managed model group, driven by the registry's aliases.

    challenger alias set on version N
      -> deploying   add engine <group>-vN (own Serve app, weight 0); wait until Serve reports it RUNNING
      -> evaluating  golden-set eval through the gateway, pinned to vN (and to the champion, to compare)
      -> shadow      blue-green only: mirror a share of the traffic to vN, answers discarded, errors checked
      -> canary      step i: vN gets steps[i] % of the traffic (sticky per caller); held >= step_hold_s and
                     >= min_requests, judged on the gateway's per-engine metrics; last step is 100 %
      -> retiring    traffic is where it ends; after a drain the engines out of traffic are removed
      -> promoted    `champion` -> N, `challenger` removed          | rolled_back: tagged with the reason
A failed eval, a breached limit (max_failures times), an engine that does not become ready, or `serving rollout
abort` roll back: traffic returns to the champion at once, the challenger's engine is removed after the drain.

All state is in the challenger version's `serving.rollout.*` tags (and an MLflow run per rollout), so a restarted
controller resumes where it stopped; only a step's metrics window restarts. Commands (`pause`, `resume`,
`promote`, `abort`) are tags too, so they work wherever the controller runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.config import ManagedModelConfig
from serving.deploy.serve_config import engine_app_name
from serving.rollout import plan
from serving.rollout.analysis import EngineStats, MetricsSource, Snapshot, judge
from serving.rollout.appliers import Applier
from serving.rollout.evaluate import EvalResult, evaluate, load_eval_tasks
from serving.rollout.registry import Registry, VersionInfo
from serving.rollout.runs import RolloutRuns
from serving.rollout.spec import CHALLENGER, CHAMPION, engine_name

logger = logging.getLogger("serving.rollout")

ACTIVE = ("deploying", "evaluating", "shadow", "canary", "retiring")
DONE = ("promoted", "rolled_back")


@dataclass
class Window:
    """The metrics baseline of the step being judged (in memory: a restart opens a new window)."""

    key: str
    baseline: Snapshot
    opened: float


@dataclass
class Event:
    group: str
    version: int
    what: str
    detail: dict[str, Any] = field(default_factory=dict)


class RolloutController:
    """One pass (`tick`) moves every managed group at most one step; `run` ticks every poll interval."""

    def __init__(self, registry: Registry, applier: Applier, metrics: MetricsSource, gateway_url: str, *,
                 clock: Callable[[], float] = time.time, drain_s: float = 5.0,
                 evaluator: Callable[..., EvalResult] = evaluate, gateway_api_key: str | None = None):
        self.registry = registry
        self.applier = applier
        self.metrics = metrics
        self.gateway_url = gateway_url
        self.clock = clock
        self.drain_s = drain_s
        self.evaluator = evaluator
        # Evaluations measure the engine, never the response cache; with API keys on they need one.
        self.eval_headers = {"cache-control": "no-cache"}
        if gateway_api_key:
            self.eval_headers["authorization"] = f"Bearer {gateway_api_key}"
        self.runs = RolloutRuns(registry, clock)
        self.windows: dict[str, Window] = {}
        self.events: list[Event] = []
        self.last_tick: float | None = None
        self._last_status: dict[str, str] = {}
        self.last_error: str | None = None

    # ---- loop ------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, wake: threading.Event | None = None, interval_s: float | None = None) -> None:
        """Tick every poll interval until `stop` is set; `wake` (a webhook delivery) triggers a tick at once."""
        wake = wake or threading.Event()
        while not stop.is_set():
            started = self.clock()
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # keep running: the next tick re-reads everything
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("rollout tick failed")
            self.last_tick = self.clock()
            interval = interval_s or self.poll_interval()
            wake.wait(max(0.2, interval - (self.clock() - started)))
            wake.clear()

    def health(self) -> dict[str, Any]:
        """For /healthz: when the last tick ran, and its error if it failed."""
        return {"status": "ok" if self.last_error is None else "degraded", "last_tick": self.last_tick,
                "last_error": self.last_error, "events": len(self.events)}

    def poll_interval(self) -> float:
        try:
            return plan.base_platform(self.applier.read()).rollout.poll_interval_s
        except Exception:
            return 10.0

    def tick(self) -> list[Event]:
        """Advance every managed model group by at most one step; returns what happened."""
        before = len(self.events)
        serve_cfg = self.applier.read()
        platform = plan.base_platform(serve_cfg)
        for group, policy in platform.rollout.models.items():
            try:
                self._advance(group, policy, platform.rollout.registered_model(group))
            except Exception as exc:
                logger.exception("rollout of %s failed to advance", group)
                self._emit(group, 0, "error", error=str(exc))
        return self.events[before:]

    # ---- the state machine -----------------------------------------------------------------------------------
    def _advance(self, group: str, policy: ManagedModelConfig, model: str) -> None:
        try:
            aliases = self.registry.aliases(model)
        except Exception:  # not registered (yet): nothing to roll out
            return
        challenger_v = aliases.get(CHALLENGER)
        if challenger_v is None or challenger_v == aliases.get(CHAMPION):
            self._abort_orphans(group, model, aliases)
            return
        v = self.registry.version(model, challenger_v)
        tags = v.rollout_tags
        state = tags.get("state")
        if state in DONE or state == "retired":
            return
        if tags.get("paused") == "true" and tags.get("command") not in ("abort",):
            return
        command = tags.get("command")
        if command and state in ACTIVE and state != "retiring":
            self.registry.set_rollout_tags(model, v.version, {"command": ""})
            if command == "abort":
                return self._rollback(group, model, v, "aborted by `serving rollout abort`")
            if command == "promote":
                return self._go_to_full(group, model, v, policy, "promoted by `serving rollout promote`")
        handler = {None: self._start, "deploying": self._deploying, "evaluating": self._evaluating,
                   "shadow": self._shadow, "canary": self._canary, "retiring": self._retiring}.get(state)
        if handler is None:
            logger.warning("%s v%s has unknown rollout state %r; ignoring", model, v.version, state)
            return
        handler(group, model, v, policy)

    def _start(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        if v.spec is None:
            self._tag(model, v, state="rolled_back", reason=f"invalid serving spec: {v.spec_error}")
            self._emit(group, v.version, "rejected", reason=v.spec_error)
            return
        name = engine_name(group, v.version)
        serve_cfg = self.applier.read()
        champions = {e: w for e, w in plan.members(serve_cfg, group).items() if e != name and w > 0}
        run_id = self.runs.start(group, v, policy.strategy.kind, self._steps(policy), champions)
        spec = v.spec
        assert spec is not None  # a challenger without a serving spec was refused before this
        self.applier.update(lambda cfg: plan.add_engine(cfg, group, name, spec.engine))
        self._tag(model, v, state="deploying", engine=name, champions=json.dumps(champions), step=0, failures=0,
                  started=self.clock(), state_since=self.clock(), run_id=run_id, reason="")
        self._emit(group, v.version, "deploying", engine=name, champions=list(champions))

    def _deploying(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        tags = v.rollout_tags
        name = tags["engine"]
        app = engine_app_name(plan.app_name(self.applier.read()), name)
        status = self.applier.app_statuses().get(app, "NOT_STARTED")
        if self._last_status.get(app) != status:
            self._last_status[app] = status
            logger.info("%s v%s: engine app %s is %s", model, v.version, app, status)
        if status == "RUNNING":
            if policy.eval.enabled:
                self._tag(model, v, state="evaluating", state_since=self.clock())
                self._emit(group, v.version, "ready")
            else:
                self._enter_traffic(group, model, v, policy)
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            return self._rollback(group, model, v, f"engine {name} failed to deploy ({status})")
        if self.clock() - float(tags.get("state_since", self.clock())) > policy.strategy.ready_timeout_s:
            return self._rollback(group, model, v, f"engine {name} not ready after "
                                                   f"{policy.strategy.ready_timeout_s:g} s ({status})")

    def _evaluating(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        tags = v.rollout_tags
        cfg = policy.eval
        tasks = load_eval_tasks(v.spec.eval_tasks if v.spec and v.spec.eval_tasks else cfg.tasks, cfg.limit)
        mine = self.evaluator(self.gateway_url, group, tags["engine"], tasks, max_tokens=cfg.max_tokens,
                              headers=self.eval_headers)
        champions = json.loads(tags.get("champions") or "{}")
        theirs = (self.evaluator(self.gateway_url, group, next(iter(champions)), tasks, max_tokens=cfg.max_tokens,
                                 headers=self.eval_headers)
                  if champions and cfg.max_drop is not None else None)
        self.runs.log(tags, {"eval_accuracy": mine.accuracy, "eval_errors": mine.errors,
                                 **({"champion_eval_accuracy": theirs.accuracy} if theirs else {})})
        reasons = []
        if mine.errors:
            reasons.append(f"{mine.errors} of {mine.tasks} eval requests failed ({'; '.join(mine.error_samples)})")
        if mine.accuracy < cfg.min_accuracy:
            reasons.append(f"eval accuracy {mine.accuracy:.1%} < {cfg.min_accuracy:.1%}")
        if theirs is not None and theirs.accuracy - mine.accuracy > (cfg.max_drop or 0.0):
            reasons.append(f"eval accuracy {mine.accuracy:.1%} is {theirs.accuracy - mine.accuracy:.1%} below the "
                           f"champion's {theirs.accuracy:.1%}")
        self._tag(model, v, eval=json.dumps({"challenger": mine.to_dict(),
                                             "champion": theirs.to_dict() if theirs else None}))
        self._emit(group, v.version, "evaluated", accuracy=mine.accuracy, errors=mine.errors,
                   champion_accuracy=theirs.accuracy if theirs else None)
        if reasons:
            return self._rollback(group, model, v, "eval: " + "; ".join(reasons))
        self._enter_traffic(group, model, v, policy)

    def _enter_traffic(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        strategy = policy.strategy
        name = v.rollout_tags["engine"]
        if strategy.kind == "blue_green" and strategy.shadow_s > 0:
            champions = json.loads(v.rollout_tags.get("champions") or "{}")
            self.applier.update(lambda cfg: plan.set_split(
                cfg, group, {name: 0.0, **champions}, sticky=policy.sticky, shadow=(name, strategy.shadow_percent)))
            self._tag(model, v, state="shadow", state_since=self.clock(), failures=0)
            self._emit(group, v.version, "shadow", percent=strategy.shadow_percent)
            return
        self._set_step(group, model, v, policy, 0)

    def _shadow(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        name = v.rollout_tags["engine"]
        window = self._window(group, f"{v.version}:shadow")
        now = self.metrics.snapshot(group)
        d = now.get(name, EngineStats()).minus(window.baseline.get(name, EngineStats()))
        shadow_as_traffic = EngineStats(requests=d.shadow_requests, errors=d.shadow_errors)
        verdict = judge(shadow_as_traffic, None, policy.analysis)
        self.runs.log(v.rollout_tags, {"shadow_requests": d.shadow_requests, "shadow_errors": d.shadow_errors})
        if verdict.result == "fail":
            return self._rollback(group, model, v, "shadow: " + "; ".join(verdict.reasons))
        if self.clock() - float(v.rollout_tags.get("state_since", 0)) >= policy.strategy.shadow_s:
            self._go_to_full(group, model, v, policy, "shadow phase passed")

    def _steps(self, policy: ManagedModelConfig) -> list[float]:
        return [100.0] if policy.strategy.kind == "blue_green" else list(policy.strategy.steps)

    def _set_step(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig, step: int) -> None:
        share = self._steps(policy)[step]
        name = v.rollout_tags["engine"]
        champions = json.loads(v.rollout_tags.get("champions") or "{}")
        total = sum(champions.values()) or 1.0
        weights = {name: share, **{e: (100.0 - share) * w / total for e, w in champions.items()}}
        self.applier.update(lambda cfg: plan.set_split(cfg, group, weights, sticky=policy.sticky))
        self._tag(model, v, state="canary", step=step, share=share, state_since=self.clock(), failures=0)
        self.windows.pop(group, None)
        self.runs.log(v.rollout_tags, {"challenger_share": share}, step=step)
        self._emit(group, v.version, "step", step=step, share=share)

    def _canary(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        tags = v.rollout_tags
        step, name = int(tags.get("step", 0)), tags["engine"]
        window = self._window(group, f"{v.version}:{step}")
        now = self.metrics.snapshot(group)
        mine = now.get(name, EngineStats()).minus(window.baseline.get(name, EngineStats()))
        champions = json.loads(tags.get("champions") or "{}")
        theirs = None
        if champions and self._steps(policy)[step] < 100:
            theirs = EngineStats()
            for e in champions:
                d = now.get(e, EngineStats()).minus(window.baseline.get(e, EngineStats()))
                theirs = _sum(theirs, d)
        verdict = judge(mine, theirs, policy.analysis)
        if verdict.result == "fail":
            failures = int(tags.get("failures", 0)) + 1
            self.runs.log(tags, {"analysis_failures": failures}, step=step)
            if failures >= policy.analysis.max_failures:
                return self._rollback(group, model, v, f"step {step} ({self._steps(policy)[step]:g}%): "
                                      + "; ".join(verdict.reasons), figures=verdict.figures)
            self._tag(model, v, failures=failures)
            self.windows[group] = Window(window.key, now, self.clock())  # judge a fresh window next
            return
        held = self.clock() - float(tags.get("state_since", 0)) >= policy.strategy.step_hold_s
        if verdict.result == "pass" and held:
            figures = {k: val for k, val in verdict.figures.items() if isinstance(val, (int, float))}
            self.runs.log(tags, figures, step=step)
            self._emit(group, v.version, "step_passed", step=step, **figures)
            if step + 1 < len(self._steps(policy)):
                self._set_step(group, model, v, policy, step + 1)
            else:
                self._promote(group, model, v)

    def _go_to_full(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig, why: str) -> None:
        """All traffic to the challenger now (blue-green switch, or a manual promote), then promote."""
        name = v.rollout_tags["engine"]
        champions = json.loads(v.rollout_tags.get("champions") or "{}")
        self.applier.update(lambda cfg: plan.set_split(cfg, group, {name: 100.0, **{e: 0.0 for e in champions}},
                                                       sticky=policy.sticky))
        self._emit(group, v.version, "switched", reason=why)
        self._promote(group, model, v)

    def _promote(self, group: str, model: str, v: VersionInfo) -> None:
        champions = json.loads(v.rollout_tags.get("champions") or "{}")
        old = self.registry.aliases(model).get(CHAMPION)
        self.registry.set_alias(model, CHAMPION, v.version)
        self.registry.delete_alias(model, CHALLENGER)
        if old is not None and old != v.version:
            self.registry.set_rollout_tags(model, old, {"state": "retired", "reason": f"replaced by v{v.version}"})
        self._tag(model, v, state="retiring", next_state="promoted", retire=json.dumps(sorted(champions)),
                  state_since=self.clock(), reason="")
        self._emit(group, v.version, "promoted", retire=sorted(champions))

    def _rollback(self, group: str, model: str, v: VersionInfo, reason: str,
                  figures: dict[str, Any] | None = None) -> None:
        tags = v.rollout_tags
        name = tags.get("engine") or engine_name(group, v.version)
        champions = json.loads(tags.get("champions") or "{}")
        live = plan.members(self.applier.read(), group)
        if name in live and champions:
            self.applier.update(lambda cfg: plan.set_split(cfg, group, {**champions, name: 0.0}))
        self._tag(model, v, state="retiring", next_state="rolled_back", retire=json.dumps([name]), reason=reason,
                  rolled_back_at=self.clock(), state_since=self.clock())
        self._emit(group, v.version, "rolled_back", reason=reason, **(figures or {}))
        logger.warning("rolled back %s v%s: %s", model, v.version, reason)

    def _retiring(self, group: str, model: str, v: VersionInfo, policy: ManagedModelConfig) -> None:
        """After the drain, remove the engines that no longer carry traffic; then the final state."""
        tags = v.rollout_tags
        if self.clock() - float(tags.get("state_since", 0)) < self.drain_s:
            return
        retire = json.loads(tags.get("retire") or "[]")

        def remove(cfg: plan.ServeConfig) -> plan.ServeConfig:
            live = plan.members(cfg, group)
            for name in retire:
                if name in live or plan.engine_spec(cfg, name) is not None:
                    cfg = plan.remove_engine(cfg, name)
            return cfg

        self.applier.update(remove)
        final = tags.get("next_state", "rolled_back")
        self._tag(model, v, state=final, finished=self.clock())
        self.runs.end(tags, "FINISHED" if final == "promoted" else "FAILED")
        self._emit(group, v.version, f"{final}_done", retired=retire)

    def _abort_orphans(self, group: str, model: str, aliases: dict[str, int]) -> None:
        """A version mid-rollout whose challenger alias was removed: roll it back."""
        for v in self.registry.versions(model):
            if v.rollout_tags.get("state") in ("deploying", "evaluating", "shadow", "canary") \
                    and aliases.get(CHALLENGER) != v.version:
                self._rollback(group, model, v, "challenger alias removed")
            elif v.rollout_tags.get("state") == "retiring":
                self._retiring(group, model, v, ManagedModelConfig())

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _window(self, group: str, key: str) -> Window:
        w = self.windows.get(group)
        if w is None or w.key != key:
            w = Window(key, self.metrics.snapshot(group), self.clock())
            self.windows[group] = w
        return w

    def _tag(self, model: str, v: VersionInfo, **tags: Any) -> None:
        tags["updated"] = self.clock()
        self.registry.set_rollout_tags(model, v.version, tags)
        v.tags.update({f"serving.rollout.{k}": str(val) for k, val in tags.items()})

    def _emit(self, group: str, version: int, what: str, **detail: Any) -> None:
        event = Event(group, version, what, detail)
        self.events.append(event)
        logger.info("rollout %s v%s: %s %s", group, version, what, detail or "")


def _sum(a: EngineStats, b: EngineStats) -> EngineStats:
    from serving.rollout.analysis import merge

    return merge([{"x": a}, {"x": b}])["x"]
