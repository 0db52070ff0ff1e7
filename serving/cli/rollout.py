"""`serving rollout-controller` and `serving rollout status|pause|resume|promote|abort`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from serving.cli._common import registry, say

if TYPE_CHECKING:
    from serving.rollout.registry import Registry, VersionInfo


def cmd_rollout_controller(args: argparse.Namespace) -> int:
    """Run the rollout controller until SIGTERM/Ctrl-C (a Deployment in the chart; a process locally)."""
    from serving.rollout.registry import RegistryError
    from serving.rollout.runner import ControllerOptions, build

    options = ControllerOptions(
        rayservice=args.rayservice, namespace=args.namespace, serve_configmap=args.serve_configmap,
        ray_address=args.ray_address, registry=args.registry, gateway_url=args.gateway_url, port=args.port,
        drain_s=args.drain_s,
    )
    try:
        run = build(options, say=say)
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from None
    run.run()
    return 0


def _challenger(args: argparse.Namespace) -> tuple[Registry, VersionInfo]:
    from serving.rollout.spec import CHALLENGER

    reg = registry(args)
    v = reg.by_alias(args.model, CHALLENGER)
    if v is None:
        raise SystemExit(f"error: {args.model} has no {CHALLENGER} version: nothing is rolling out")
    return reg, v


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """The rollout state of each model's challenger (and its recent history), from the registry's tags."""
    reg = registry(args)
    names = [args.model] if args.model else reg.models()
    for name in names:
        aliases = reg.aliases(name)
        print(f"{name}: " + (", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "no aliases"))
        for v in reg.versions(name)[-args.history:]:
            t = v.rollout_tags
            if not t:
                continue
            share = f" {float(t['share']):g}%" if t.get("state") == "canary" and t.get("share") else ""
            step = f" step {t.get('step')}{share}" if t.get("state") == "canary" else ""
            paused = "  PAUSED" if t.get("paused") == "true" else ""
            print(f"  v{v.version}: {t.get('state', '-')}{step}{paused}"
                  + (f"  -- {t['reason']}" if t.get("reason") else ""))
    return 0


def cmd_rollout_command(args: argparse.Namespace) -> int:
    """pause | resume | promote | abort the rollout of a model's challenger (tags the controller acts on)."""
    reg, v = _challenger(args)
    tags = {"pause": {"paused": "true"}, "resume": {"paused": "false"},
            "promote": {"command": "promote", "paused": "false"}, "abort": {"command": "abort"}}[args.action]
    reg.set_rollout_tags(v.model, v.version, tags)
    print(f"{v.model} v{v.version}: {args.action} requested (state {v.rollout_tags.get('state', 'not started')}); "
          "the controller applies it on its next pass")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `rollout-controller` and `rollout ...` on the `serving` parser."""
    rc = sub.add_parser("rollout-controller", help="run the rollout controller (registry -> canary/blue-green)")
    rc.add_argument("--rayservice", help="drive this KubeRay RayService (default: $SERVING_RAYSERVICE); else "
                                         "the local Ray cluster")
    rc.add_argument("--namespace", help="the RayService's namespace (default: $SERVING_NAMESPACE)")
    rc.add_argument("--serve-configmap", help="own the RayService's serveConfigV2, built from this ConfigMap's "
                                              "serveConfigV2.yaml (the chart's; default: $SERVING_SERVE_CONFIGMAP)")
    rc.add_argument("--ray-address", default="auto", help="local mode: the Ray cluster (default: auto)")
    rc.add_argument("--registry", help="MLflow URI (default: rollout.registry_uri, $MLFLOW_TRACKING_URI)")
    rc.add_argument("--gateway-url", help="gateway base URL for evals and metrics")
    rc.add_argument("--port", type=int, help="/healthz, /metrics and /webhook port (default: rollout.webhook_port)")
    rc.add_argument("--drain-s", type=float, default=10.0, help="wait before removing an engine out of traffic")
    rc.set_defaults(func=cmd_rollout_controller)

    ro = sub.add_parser("rollout", help="rollout state and manual control").add_subparsers(
        dest="rollout_cmd", required=True)
    rst = ro.add_parser("status", help="each model's aliases and its versions' rollout state")
    rst.add_argument("model", nargs="?")
    rst.add_argument("--history", type=int, default=5, help="versions to show per model")
    rst.add_argument("--registry")
    rst.add_argument("--config")
    rst.set_defaults(func=cmd_rollout_status)
    for action, help_ in (("pause", "hold the rollout at its current step"), ("resume", "continue a paused rollout"),
                          ("promote", "send all traffic to the challenger now and promote it"),
                          ("abort", "roll back: traffic to the champion, challenger removed")):
        cmd = ro.add_parser(action, help=help_)
        cmd.add_argument("model", help="registered model")
        cmd.add_argument("--registry")
        cmd.add_argument("--config")
        cmd.set_defaults(func=cmd_rollout_command, action=action)
