"""Engine autoscaling on queue depth on the real stack (issue 14 item 6): with `replicas: {min: 1, max: 2}` and a
low `target_ongoing_requests`, sustained load on tiny-llama starts a second vLLM replica, and it goes once the
load stops; no request fails meanwhile. Runs after the other modules (`test_zz_*`) and restores the config."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.support import HELLO, TINY_ENGINE, TINY_GROUP, Stack, deploy

pytestmark = pytest.mark.integration

SCALE_TIMEOUT_S = 420  # a vLLM-CPU replica starts in 1-3 minutes on a busy 2-core box
DOWNSCALE_DELAY_S = 15


def _running(stack: Stack) -> int:
    """RUNNING replicas of the tiny engine, from `serving status`."""
    out = stack.cli("status", "--config", str(stack.config), timeout=120).stdout
    for line in out.splitlines():
        if line.strip().startswith(f"engine-{TINY_ENGINE} "):
            found = re.search(r"RUNNING=(\d+)", line)
            return int(found.group(1)) if found else 0
    raise AssertionError(f"engine-{TINY_ENGINE} is not in `serving status`:\n{out}")


def _wait_for(stack: Stack, replicas: int, what: str) -> float:
    start = time.monotonic()
    while _running(stack) != replicas:
        assert time.monotonic() - start < SCALE_TIMEOUT_S, f"{what}: not {replicas} replicas in {SCALE_TIMEOUT_S} s"
        time.sleep(3)
    return time.monotonic() - start


def test_sustained_load_adds_an_engine_replica_and_it_goes_after(stack: Stack, tmp_path: Any) -> None:
    original = yaml.safe_load(stack.config.read_text())
    scaled = yaml.safe_load(stack.config.read_text())
    scaled["engines"][TINY_ENGINE]["replicas"] = {
        "min": 1, "max": 2, "target_ongoing_requests": 2, "upscale_delay_s": 2,
        "downscale_delay_s": DOWNSCALE_DELAY_S}
    deploy(stack, scaled, tmp_path / "autoscaled.yaml")
    try:
        assert _running(stack) == 1
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=stack.url, timeout=300) as h:
                while not stop.is_set():
                    try:
                        statuses.append(h.post("/v1/chat/completions", json={
                            "model": TINY_GROUP, "messages": HELLO, "max_tokens": 400, "ignore_eos": True,
                        }).status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for c in clients:
            c.start()
        try:
            up_s = _wait_for(stack, 2, "under sustained load")
            served_before = len(statuses)
            time.sleep(10)  # both replicas serve
            assert len(statuses) > served_before
        finally:
            stop.set()
            for c in clients:
                c.join(300)
        down_s = _wait_for(stack, 1, "after the load stopped")
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        print(f"scaled up in {up_s:.0f} s under load, down in {down_s:.0f} s after it "
              f"(downscale_delay_s {DOWNSCALE_DELAY_S}); {len(statuses)} requests, all 200")
    finally:
        deploy(stack, original, tmp_path / "restored.yaml")
