"""`serving up|down|status|chat|config`: the platform on a Ray cluster, and its config files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serving.cli._common import base_url, connect, load, ray_bin, ray_env, say
from serving.config import DEFAULT_CONFIG, ConfigError, PlatformConfig, load_config

STATE_FILE = Path(os.environ.get("SERVING_STATE_DIR", Path.home() / ".cache" / "serving")) / "up.json"
_STATE_RANK = {"DEPLOY_FAILED": 0, "UNHEALTHY": 1, "NOT_STARTED": 2, "DEPLOYING": 3, "DELETING": 4, "RUNNING": 5}


def _start_local_ray(cfg: PlatformConfig) -> str:
    """Start a local Ray head (detached) unless one is running; return its address."""
    if connect():
        say("using the running local Ray cluster (its Serve ingress settings were fixed when it started)")
        return "auto"
    cmd = [ray_bin(), "start", "--head", "--disable-usage-stats", "--include-dashboard=false",
           f"--metrics-export-port={cfg.ray.metrics_export_port}"]
    if cfg.ray.num_cpus:
        cmd.append(f"--num-cpus={cfg.ray.num_cpus}")
    say("starting a local Ray cluster: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=ray_env(cfg), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("[serving] could not start Ray (see above)")
    if not connect():
        raise SystemExit("[serving] Ray started but cannot be reached")
    return "auto"


def _value(x: Any) -> str:
    return str(x.value if hasattr(x, "value") else x)


def _app_state(app_name: str) -> tuple[str, dict[str, Any]]:
    """(state, {deployment: summary}) of the platform: the gateway app `app_name` and its engine apps
    (`<app_name>-engine-*`); the state is the worst of theirs (RUNNING only when all are)."""
    from ray import serve

    from serving.deploy.serve_config import engine_app_name

    status = serve.status()
    prefix = engine_app_name(app_name, "")
    apps = {n: a for n, a in status.applications.items() if n == app_name or n.startswith(prefix)}
    if app_name not in apps:
        return "NOT_DEPLOYED", {}
    deps: dict[str, Any] = {}
    for app in apps.values():
        deps.update({
            name: {"status": _value(d.status), "message": d.message,
                   "replicas": {_value(k): v for k, v in d.replica_states.items()}}
            for name, d in app.deployments.items()
        })
        if app.message:
            deps.setdefault("_message", {"message": ""})["message"] += app.message
    state = min((_value(a.status) for a in apps.values()), key=lambda st: _STATE_RANK.get(st, 2))
    return state, deps


def _wait_ready(cfg: PlatformConfig, timeout_s: float) -> None:
    start, last = time.monotonic(), ""
    while True:
        state, deps = _app_state(cfg.ray.app_name)
        summary = ", ".join(
            f"{name}: {d['status']}" + (f" {d['replicas']}" if d.get("replicas") else "")
            for name, d in deps.items() if not name.startswith("_")
        )
        line = f"{state} ({summary})" if summary else state
        if line != last:
            say(f"{time.monotonic() - start:5.0f}s  {line}")
            last = line
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            for name, d in deps.items():
                if d.get("message"):
                    print(f"  {name}: {d['message']}", file=sys.stderr)
            raise SystemExit(f"[serving] the application failed to deploy ({state})")
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"[serving] not ready after {timeout_s:.0f} s; see `serving status`")
        time.sleep(2)


def policy_problems(cfg: PlatformConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the policy layer's environment here: Redis URL and admin credential."""
    pol, env = cfg.policies, {**os.environ, **cfg.ray.env}
    errors, warnings = [], []
    has_redis = bool(pol.redis.url or env.get(pol.redis.url_env))
    if pol.needs_redis and not has_redis:
        errors.append(f"policies need Redis (API keys, limits or the cache are on): set policies.redis.url or "
                      f"{pol.redis.url_env}")
    if pol.auth.enabled and not env.get(pol.auth.admin_key_env):
        warnings.append(f"{pol.auth.admin_key_env} is not set: the admin API is off, so no API key can be created")
    return errors, warnings


def _print_ready(cfg: PlatformConfig) -> None:
    url = base_url(cfg)
    model = next(iter(cfg.model_groups))
    routes = "".join(
        f"\n  route {name}: " + " -> ".join(t.tier for t in r.tiers)
        + (f"   (gates: {', '.join(r.gates.enabled())})" if r.gated else "   (ungated)")
        for name, r in cfg.routes.items()
    )
    print(f"""
  OpenAI-compatible endpoint: {url}/v1      (models: {", ".join([*cfg.model_groups, *cfg.routes])}){routes}
  Gateway metrics:            {url}/metrics
  vLLM engine metrics:        http://127.0.0.1:{cfg.ray.metrics_export_port}/metrics  (Ray's metrics agent)

  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}/v1", api_key="unused")
  r = c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hi!"}}])
  print(r.choices[0].message.content)'

  serving chat "Tell me a joke"     serving status     serving down
""", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    errors, warnings = policy_problems(cfg)
    for w in warnings:
        say(f"warning: {w}")
    if errors:
        raise SystemExit("[serving] " + "; ".join(errors))
    # Serve reads its feature flags at import time, in this driver as in the cluster's processes.
    os.environ.update(cfg.cluster_env())
    from serving.deploy import ray_serve
    from serving.deploy.serve_config import serve_config

    t0 = time.monotonic()
    if cfg.ray.address in (None, "local"):
        _start_local_ray(cfg)
    elif not connect(cfg):
        raise SystemExit(f"[serving] cannot reach the Ray cluster at {cfg.ray.address}")
    # Build/download the models here, with progress on this terminal; the engine apps' builders then find them
    # in the cache (a local cluster shares this machine's disk).
    from serving.engines.ray_llm import resolve_model_path

    say("preparing models")
    for engine in cfg.engines.values():
        resolve_model_path(engine)
    # Every engine is its own Serve app next to the gateway app (serving.deploy.serve_config); deployed
    # declaratively, the way KubeRay deploys serveConfigV2, so a later rollout step is a lightweight update.
    say(f"deploying the gateway + {len(cfg.engines)} engine app(s) (CPU engines take 1-2 minutes to load)")
    ray_serve.deploy(serve_config(cfg))
    _wait_ready(cfg, args.timeout)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"config": str(Path(args.config or DEFAULT_CONFIG).resolve()),
                                      "url": base_url(cfg), "app": cfg.ray.app_name}))
    say(f"ready in {time.monotonic() - t0:.0f} s")
    _print_ready(cfg)
    if args.foreground:
        say("serving in the foreground; Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return cmd_down(args)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    if connect():
        try:
            serve.shutdown()
            say("Serve applications shut down")
        finally:
            ray.shutdown()
    subprocess.run([ray_bin(), "stop"], env=ray_env(), capture_output=True, text=True)
    STATE_FILE.unlink(missing_ok=True)
    say("local Ray stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    cfg = load(args.config)
    if not connect(cfg):
        print("not running (no Ray cluster); start it with `serving up`")
        return 1
    state, deps = _app_state(cfg.ray.app_name)
    engines = sum(1 for name in deps if name.startswith("engine-"))
    print(f"platform {cfg.ray.app_name}: {state}  (Serve apps: {cfg.ray.app_name} + {engines} engine app(s))")
    for name, d in deps.items():
        if name.startswith("_"):
            print(f"  {d['message']}")
            continue
        replicas = ", ".join(f"{k}={v}" for k, v in d["replicas"].items()) or "no replicas"
        print(f"  {name:28s} {d['status']:12s} {replicas}" + (f"  ({d['message']})" if d["message"] else ""))
    url = base_url(cfg)
    try:
        ready = httpx.get(f"{url}/ready", timeout=10)
        print(f"gateway {url}: {ready.json().get('status')}  engines: {ready.json().get('engines')}")
    except httpx.HTTPError as exc:
        print(f"gateway {url}: unreachable ({type(exc).__name__})")
        return 1
    return 0 if state == "RUNNING" and ready.status_code == 200 else 1


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    cfg = load(args.config)
    url = args.url or base_url(cfg)
    model = args.model or next(iter(cfg.model_groups))
    body = {"model": model, "messages": [{"role": "user", "content": args.prompt}],
            "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as resp:
            if resp.status_code != 200:
                resp.read()
                err = resp.json().get("error", {}) if resp.headers.get("content-type", "").startswith(
                    "application/json") else {"message": resp.text}
                print(f"error {resp.status_code}: {err.get('message')}", file=sys.stderr)
                return 1
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    print(f"\nerror: {chunk['error'].get('message')}", file=sys.stderr)
                    return 1
                for choice in chunk.get("choices", []):
                    sys.stdout.write(choice.get("delta", {}).get("content") or "")
                    sys.stdout.flush()
            print()
    except httpx.HTTPError as exc:
        print(f"cannot reach {url}: {exc}; is it up? (`serving up`)", file=sys.stderr)
        return 1
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    ok = True
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            ok = False
            continue
        routes = f", routes: {', '.join(cfg.routes)}" if cfg.routes else ""
        groups = ", ".join(cfg.model_groups)
        print(f"{path}: ok ({len(cfg.engines)} engine(s), model groups: {groups}{routes})", flush=True)
        for name, tier in cfg.tiers.items():
            provider = cfg.providers.get(tier.provider) if tier.provider else None
            if provider is not None and not os.environ.get(provider.key_env):
                print(f"  warning: tier {name}: {provider.key_env} is not set here; the gateway skips the tier "
                      "unless its environment has it", file=sys.stderr)
        errors, warnings = policy_problems(cfg)
        for problem in [*errors, *warnings]:
            print(f"  warning: {problem} (here; the gateway's environment may have it)", file=sys.stderr)
    return 0 if ok else 1


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load(args.file)
    print(json.dumps(cfg.model_dump(mode="json", by_alias=True), indent=2))
    return 0


def add_parsers(sub: Any) -> None:
    """Register `up`, `down`, `status`, `chat` and `config` on the `serving` parser."""
    up = sub.add_parser("up", help="start local Ray + the platform and wait until it is ready")
    up.add_argument("--config", help=f"platform config (default: {DEFAULT_CONFIG})")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for readiness")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops everything")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the Serve app and the local Ray cluster")
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="applications, deployments, replicas and readiness")
    st.add_argument("--config")
    st.set_defaults(func=cmd_status)

    chat = sub.add_parser("chat", help="send one chat message and stream the answer")
    chat.add_argument("prompt")
    chat.add_argument("--model", help="model group (default: the config's first)")
    chat.add_argument("--config")
    chat.add_argument("--url", help="gateway base URL (default: from the config)")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.set_defaults(func=cmd_chat)

    config = sub.add_parser("config", help="platform config files").add_subparsers(dest="config_cmd", required=True)
    val = config.add_parser("validate", help="validate config files; print errors with field paths")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=cmd_config_validate)
    show = config.add_parser("show", help="print a config with all defaults filled in")
    show.add_argument("file", nargs="?")
    show.set_defaults(func=cmd_config_show)
