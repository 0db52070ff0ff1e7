"""`serving drain-node`: drain this Ray node's Serve replicas, then stop Ray (the chart's worker preStop hook)."""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from serving.deploy.node_drain import drain_node


def cmd_drain_node(args: argparse.Namespace) -> int:
    ray = shutil.which("ray") or "ray"
    result = drain_node(args.deadline_s, ray=ray, stop=not args.no_stop)
    return 0 if result.replicas_left == 0 else 1


def add_parsers(sub: Any) -> None:
    """Register `drain-node` on the `serving` parser."""
    p = sub.add_parser("drain-node", help="drain this Ray node's Serve replicas (in-flight requests finish), "
                       "then `ray stop`: a pod's preStop hook")
    p.add_argument("--deadline-s", type=float, default=60.0,
                   help="longest wait for the node's replicas to finish (keep it below the pod's "
                   "terminationGracePeriodSeconds)")
    p.add_argument("--no-stop", action="store_true", help="do not run `ray stop` after the drain")
    p.set_defaults(func=cmd_drain_node)
