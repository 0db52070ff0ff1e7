"""Admission control: how many requests a model group or route serves at once, how many may wait, and for how
long; priority classes and the tenants' fair share of the queue (`serving.policy.admission` applies them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from serving.config.base import StrictModel

Priority = Literal["interactive", "batch"]
"""Priority classes, highest first: a waiting `interactive` request is always admitted before a `batch` one."""
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")

VLLM_DEFAULT_MAX_NUM_SEQS = {"cpu": 128, "gpu": 256}
"""vLLM's own default `max_num_seqs` for its OpenAI server (0.x `EngineArgs`: 128 on CPU, 256 on most GPUs)."""


class AdmissionConfig(StrictModel):
    """Bounds of one model group or route, per gateway replica. Past them a request is refused at once with a 429
    (`retry-after`) instead of waiting until it times out."""

    enabled: bool = True
    max_concurrency: int | None = Field(
        None, ge=1,
        description=(
            "Requests served at once. Default: the engines' capacity (max_num_seqs x max replicas, summed over the "
            "group's engines; a route: its first tier's) divided among the gateway replicas."
        ),
    )
    max_queue: int | None = Field(
        None, ge=0,
        description=(
            "Requests waiting for a slot (0: none wait). Default: a quarter of max_concurrency (at least 1): an "
            "admitted request then waits about a quarter of a mean request's time at most, so its time to first "
            "token stays close to the unloaded one while the engines stay busy."
        ),
    )
    tenant_headroom: int = Field(
        1, ge=0,
        description=(
            "Slots one tenant may not take while other tenants are active (had a request within "
            "`tenant_window_s`): this many per other tenant, at most a quarter of max_concurrency, so a tenant's "
            "burst leaves a slot free for the others' next request. 0: a tenant may take every slot."
        ),
    )
    tenant_window_s: float = Field(10.0, gt=0, description="How long a tenant counts as active after a request.")
    queue_timeout_s: float = Field(
        10.0, gt=0,
        description=(
            "Longest wait for a slot; a request whose expected wait is longer is refused at once (429 queue_full), "
            "one that waited this long gets 429 queue_timeout."
        ),
    )
