"""One MLflow run per rollout (experiment `serving-rollouts`): its parameters, the figures of each step, and the
outcome; the run id is kept in the challenger version's rollout tags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.rollout.registry import Registry, VersionInfo

EXPERIMENT = "serving-rollouts"


class RolloutRuns:
    """Logs rollouts to MLflow through the registry's tracking client (`mlflow.MlflowClient`)."""

    def __init__(self, registry: Registry, clock: Callable[[], float]):
        self.registry = registry
        self.clock = clock

    @property
    def client(self) -> Any:
        return self.registry.client

    def start(self, group: str, v: VersionInfo, strategy: str, steps: list[float], champions: dict[str, float]) -> str:
        """A new run for rolling out `v` to `group`; its id."""
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(exp_id, run_name=f"{group} v{v.version}", tags={
            "serving.model_group": group, "serving.registered_model": v.model, "serving.version": str(v.version)})
        run_id: str = run.info.run_id
        self.client.log_param(run_id, "strategy", strategy)
        self.client.log_param(run_id, "steps", ",".join(f"{s:g}" for s in steps))
        self.client.log_param(run_id, "champions", ",".join(champions) or "-")
        return run_id

    def log(self, tags: dict[str, str], metrics: dict[str, Any], step: int = 0) -> None:
        """Log the numeric `metrics` (None and NaN skipped) to the run named in the rollout `tags`, if any."""
        run_id = tags.get("run_id")
        if not run_id:
            return
        ts = int(self.clock() * 1000)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and value == value:
                self.client.log_metric(run_id, key, float(value), timestamp=ts, step=step)

    def end(self, tags: dict[str, str], status: str) -> None:
        """Close the rollout's run as FINISHED or FAILED."""
        if run_id := tags.get("run_id"):
            self.client.set_terminated(run_id, status)
