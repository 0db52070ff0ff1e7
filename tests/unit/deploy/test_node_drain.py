"""`serving drain-node` (the worker pods' preStop hook): Ray's drain first, the node's replicas waited for up to
the deadline, `ray stop` last."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from serving.cli import build_parser
from serving.deploy.node_drain import drain_node, replica_pids


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_replica_processes_are_found_by_their_title(tmp_path: Path) -> None:
    for pid, cmd in ((11, b"ray::ServeReplica:serving:gateway\x00"), (12, b"ray::ServeController\x00"),
                     (13, b"/usr/bin/python\x00-m\x00ray\x00")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(cmd)
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # a process that exited while we looked: no cmdline
    assert replica_pids(tmp_path) == [11]


def test_drains_then_waits_for_the_replicas_then_stops_ray() -> None:
    clock, calls = Clock(), []
    left = iter([[1, 2], [1, 2], [2], []])

    def run(cmd: Sequence[str]) -> int:
        calls.append((clock.now, list(cmd)))
        return 0

    result = drain_node(60, run=run, replicas=lambda: next(left), log=lambda _: None, clock=clock,
                        sleep=clock.sleep)
    assert calls[0][1][:2] == ["ray", "drain-node"] and "--deadline-remaining-seconds" in calls[0][1]
    assert calls[0][1][calls[0][1].index("--deadline-remaining-seconds") + 1] == "60"
    assert calls[-1] == (3.0, ["ray", "stop"])  # after the last replica left, not before
    assert result.drain_accepted and result.replicas_left == 0 and result.seconds == 3.0


def test_the_deadline_bounds_the_wait_and_a_refused_drain_still_waits() -> None:
    clock, calls = Clock(), []

    def run(cmd: Sequence[str]) -> int:
        calls.append(list(cmd))
        return 1 if "drain-node" in cmd else 0

    result = drain_node(5, run=run, replicas=lambda: [7], log=lambda _: None, clock=clock, sleep=clock.sleep)
    assert not result.drain_accepted and result.replicas_left == 1 and result.seconds == 5.0
    assert calls[-1] == ["ray", "stop"]


def test_the_cli_parses_the_deadline() -> None:
    args = build_parser().parse_args(["drain-node", "--deadline-s", "90", "--no-stop"])
    assert args.deadline_s == 90 and args.no_stop
