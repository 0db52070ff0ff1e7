"""The golden-set evaluation of one model version, through the gateway, pinned to its engine.

Every task is a chat request with a JSON-schema answer checked by code (`models.evals`); the challenger and the
champion answer the same tasks with temperature 0, so their accuracies compare. Requests that fail count as wrong
and are reported: an engine that errors on its eval does not go into traffic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from models.evals import Task, check, load_tasks


@dataclass
class EvalResult:
    engine: str
    tasks: int = 0
    correct: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tasks if self.tasks else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "tasks": self.tasks, "correct": self.correct, "errors": self.errors,
                "accuracy": round(self.accuracy, 4)}


def load_eval_tasks(spec: str, limit: int | None = None) -> list[Task]:
    """`builtin:<name>` (models/evals/<name>.jsonl) or a JSONL file of tasks; the first `limit` of them."""
    if spec.startswith("builtin:"):
        tasks = load_tasks(spec.removeprefix("builtin:"))
    else:
        lines = Path(spec).read_text(encoding="utf-8").splitlines()
        tasks = [Task.from_dict(json.loads(line)) for line in lines if line.strip()]
    return tasks[:limit] if limit else tasks


def evaluate(base_url: str, group: str, engine: str, tasks: list[Task], *, max_tokens: int = 64,
             timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> EvalResult:
    """Run `tasks` on `engine` of `group` through the gateway at `base_url` (pinned with `serving.engine`)."""
    result = EvalResult(engine)
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers) as client:
        for task in tasks:
            result.tasks += 1
            body = {"model": group, "messages": task.messages, "temperature": 0, "max_tokens": max_tokens,
                    "response_format": task.response_format, "serving": {"engine": engine}}
            try:
                resp = client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                result.errors += 1
                result.error_samples = [*result.error_samples, f"{task.id}: {type(exc).__name__}"][-5:]
                continue
            if resp.status_code != 200 or resp.headers.get("x-serving-model") != engine:
                result.errors += 1
                result.error_samples = [*result.error_samples, f"{task.id}: HTTP {resp.status_code}"][-5:]
                continue
            text = resp.json()["choices"][0]["message"].get("content")
            result.correct += check(task, text)
    return result
