"""Drain a Ray node before its pod stops (the chart's preStop hook on worker pods: `serving drain-node`).

A pod being deleted (a scale-down, a node drain, a cluster replacement) would cut every request its Serve
replicas are serving if it ran `ray stop` at once. Instead: tell the GCS the node is going (Ray's drain API, the
one the autoscaler uses), so Ray Serve starts replacements elsewhere and stops the node's replicas gracefully
(no new requests; the ones in flight, streams included, finish within `graceful_shutdown_timeout_s`, the
gateway's `drain_timeout_s`); wait until no replica process is left on the node or the deadline passes; then stop
Ray on the node.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPLICA_TITLE = b"ray::ServeReplica"
"""How a Ray Serve replica actor's process is titled (`ray::ServeReplica:<app>:<deployment>`)."""

Runner = Callable[[Sequence[str]], int]


def replica_pids(proc_root: Path = Path("/proc"), title: bytes = REPLICA_TITLE) -> list[int]:
    """PIDs of the Ray Serve replica processes on this node (this container's process namespace) whose title
    starts with `title` (default: every replica; `ray::ServeReplica:<app>:<deployment>` for one deployment's)."""
    pids = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(title):
            pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class DrainResult:
    """What `drain_node` did: whether Ray accepted the drain, the replicas left at the end, the time it took."""

    drain_accepted: bool
    replicas_left: int
    seconds: float
    stopped: bool


def _run(cmd: Sequence[str]) -> int:
    return subprocess.run(list(cmd), check=False).returncode


def drain_node(
    deadline_s: float,
    *,
    ray: str = "ray",
    stop: bool = True,
    poll_s: float = 1.0,
    run: Runner = _run,
    replicas: Callable[[], list[int]] = replica_pids,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainResult:
    """Drain this node for up to `deadline_s` seconds, then (with `stop`) `ray stop` it."""
    start = clock()
    accepted = run([ray, "drain-node", "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                    "--reason-message", "the pod is terminating (serving drain-node)",
                    "--deadline-remaining-seconds", str(max(1, int(deadline_s)))]) == 0
    if not accepted:
        log("[drain] Ray did not accept the drain (the head node, or no cluster): waiting for the replicas anyway")
    left = replicas()
    last_report = -10.0
    while left and clock() - start < deadline_s:
        if clock() - last_report >= 10:
            log(f"[drain] {len(left)} Serve replica(s) still on this node "
                f"({clock() - start:.0f} s of {deadline_s:.0f} s)")
            last_report = clock()
        sleep(poll_s)
        left = replicas()
    seconds = clock() - start
    if left:
        log(f"[drain] deadline reached with {len(left)} replica(s) left: stopping anyway")
    else:
        log(f"[drain] no Serve replica left on this node after {seconds:.0f} s")
    if stop:
        run([ray, "stop"])
    return DrainResult(accepted, len(left), seconds, stop)
