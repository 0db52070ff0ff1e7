"""The local platform as benchmarks start and measure it: `serving up` with a config, resident memory of PIDs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from benchmarks.overhead import wait_http

SERVING = str(Path(sys.executable).with_name("serving"))


def serving_up(config: dict[str, Any], logf: Path, log: Any = print) -> None:
    """`serving up --config <config>` (written to a temporary file), its output in `logf`; waits for /ready."""
    cfg = Path(tempfile.mkdtemp()) / "platform.yaml"
    cfg.write_text(json.dumps(config))
    log(f"starting the platform: serving up --config {cfg}")
    with logf.open("w") as out:
        rc = subprocess.run([SERVING, "up", "--config", str(cfg), "--timeout", "600"],
                            stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"serving up failed ({rc}); see {logf}")
    gw = config["gateway"]
    wait_http(f"http://{gw['host']}:{gw['port']}/ready", 60)


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes together (those that exited count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20
