"""The `serving` command: bring the platform up and down, inspect it, talk to it, validate configs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serving.config import DEFAULT_CONFIG, ConfigError, PlatformConfig, load_config

STATE_FILE = Path(os.environ.get("SERVING_STATE_DIR", Path.home() / ".cache" / "serving")) / "up.json"


def _say(msg: str) -> None:
    print(f"[serving] {msg}", flush=True)


def _load(path: str | None) -> PlatformConfig:
    try:
        return load_config(path or DEFAULT_CONFIG)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _ray_env(cfg: PlatformConfig | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg is not None:
        env.update(cfg.ray.cluster_env())
    return env


def _start_local_ray(cfg: PlatformConfig) -> str:
    """Start a local Ray head (detached) unless one is running; return its address."""
    if _connect():
        _say("using the running local Ray cluster (its Serve ingress settings were fixed when it started)")
        return "auto"
    cmd = [_ray_bin(), "start", "--head", "--disable-usage-stats", "--include-dashboard=false",
           f"--metrics-export-port={cfg.ray.metrics_export_port}"]
    if cfg.ray.num_cpus:
        cmd.append(f"--num-cpus={cfg.ray.num_cpus}")
    _say("starting a local Ray cluster: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=_ray_env(cfg), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("[serving] could not start Ray (see above)")
    if not _connect():
        raise SystemExit("[serving] Ray started but cannot be reached")
    return "auto"


def _connect(cfg: PlatformConfig | None = None) -> bool:
    import ray

    if ray.is_initialized():
        return True
    address = (cfg.ray.address if cfg else None) or "auto"
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return True
    except ConnectionError:
        return False


def _base_url(cfg: PlatformConfig) -> str:
    host = "127.0.0.1" if cfg.gateway.host in ("0.0.0.0", "::") else cfg.gateway.host
    return f"http://{host}:{cfg.gateway.port}{cfg.gateway.route_prefix.rstrip('/')}"


def _value(x: Any) -> str:
    return str(x.value if hasattr(x, "value") else x)


_STATE_RANK = {"DEPLOY_FAILED": 0, "UNHEALTHY": 1, "NOT_STARTED": 2, "DEPLOYING": 3, "DELETING": 4, "RUNNING": 5}


def _app_state(app_name: str) -> tuple[str, dict[str, Any]]:
    """(state, {deployment: summary}) of the platform: the gateway app `app_name` and its engine apps
    (`<app_name>-engine-*`); the state is the worst of theirs (RUNNING only when all are)."""
    from ray import serve

    from serving.app import engine_app_name

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
            _say(f"{time.monotonic() - start:5.0f}s  {line}")
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


def cmd_up(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    errors, warnings = policy_problems(cfg)
    for w in warnings:
        _say(f"warning: {w}")
    if errors:
        raise SystemExit("[serving] " + "; ".join(errors))
    # Serve reads its feature flags at import time, in this driver as in the cluster's processes.
    os.environ.update(cfg.ray.cluster_env())
    from serving import serve_deploy
    from serving.app import serve_config

    t0 = time.monotonic()
    if cfg.ray.address in (None, "local"):
        _start_local_ray(cfg)
    elif not _connect(cfg):
        raise SystemExit(f"[serving] cannot reach the Ray cluster at {cfg.ray.address}")
    # Build/download the models here, with progress on this terminal; the engine apps' builders then find them
    # in the cache (a local cluster shares this machine's disk).
    from serving.engines.ray_llm import resolve_model_path

    _say("preparing models")
    for engine in cfg.engines.values():
        resolve_model_path(engine)
    # Every engine is its own Serve app next to the gateway app (serving.app); deployed declaratively, the way
    # KubeRay deploys serveConfigV2, so a later rollout step is a lightweight update of the same config.
    _say(f"deploying the gateway + {len(cfg.engines)} engine app(s) (CPU engines take 1-2 minutes to load)")
    serve_deploy.deploy(serve_config(cfg))
    _wait_ready(cfg, args.timeout)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"config": str(Path(args.config or DEFAULT_CONFIG).resolve()),
                                      "url": _base_url(cfg), "app": cfg.ray.app_name}))
    url = _base_url(cfg)
    model = next(iter(cfg.model_groups))
    _say(f"ready in {time.monotonic() - t0:.0f} s")
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
    if args.foreground:
        _say("serving in the foreground; Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return cmd_down(args)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    if _connect():
        try:
            serve.shutdown()
            _say("Serve applications shut down")
        finally:
            ray.shutdown()
    subprocess.run([_ray_bin(), "stop"], env=_ray_env(), capture_output=True, text=True)
    STATE_FILE.unlink(missing_ok=True)
    _say("local Ray stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    cfg = _load(args.config)
    if not _connect(cfg):
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
    url = _base_url(cfg)
    try:
        ready = httpx.get(f"{url}/ready", timeout=10)
        print(f"gateway {url}: {ready.json().get('status')}  engines: {ready.json().get('engines')}")
    except httpx.HTTPError as exc:
        print(f"gateway {url}: unreachable ({type(exc).__name__})")
        return 1
    return 0 if state == "RUNNING" and ready.status_code == 200 else 1


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    cfg = _load(args.config)
    url = args.url or _base_url(cfg)
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
    cfg = _load(args.file)
    print(json.dumps(cfg.model_dump(mode="json", by_alias=True), indent=2))
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from models.loader import ModelSourceError, resolve_model_source

    try:
        print(resolve_model_source(args.source, revision=args.revision))
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from serving.rollout.registry import Registry, RegistryError

    uri = args.registry
    if uri is None and getattr(args, "config", None):
        uri = _load(args.config).rollout.registry_uri
    try:
        return Registry(uri)
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from None


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_models_register(args: argparse.Namespace) -> int:
    """Register a model version with its serving spec (weights referenced, not copied)."""
    from serving.rollout.spec import CHALLENGER, SpecError, parse_spec

    if args.from_engine:
        engine = _load(args.config).engines.get(args.from_engine)
        if engine is None:
            raise SystemExit(f"error: no engine {args.from_engine!r} in {args.config or DEFAULT_CONFIG}")
        data: dict[str, Any] = {"engine": engine.model_dump(mode="json", exclude_none=True)}
    elif args.source:
        data = {"engine": {"model": args.source}}
    else:
        raise SystemExit("error: give --source (hf:ORG/REPO, catalog:NAME, builtin:NAME, a directory) or --from-engine")
    engine_fields = {"revision": args.revision, "quantization": args.quantization, "device": args.device,
                     "dtype": args.dtype, "max_model_len": args.max_model_len}
    data["engine"].update({k: v for k, v in engine_fields.items() if v is not None})
    if args.gpus is not None:
        data["engine"].setdefault("gpu", {})["count"] = args.gpus
    if args.engine_kwarg:
        data["engine"].setdefault("engine_kwargs", {}).update(_kv(args.engine_kwarg))
    if args.eval_tasks:
        data["eval_tasks"] = args.eval_tasks
    try:
        spec = parse_spec(data, "the version's serving spec")
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    registry = _registry(args)
    info = registry.register(args.model, spec, description=args.description or "")
    print(f"registered {info.model} version {info.version}  (source {info.source})")
    if args.challenger:
        registry.set_alias(info.model, CHALLENGER, info.version)
        print(f"alias {CHALLENGER} -> version {info.version}: the rollout controller will roll it out")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """Versions, aliases and rollout state of registered models."""
    registry = _registry(args)
    names = [args.model] if args.model else registry.models()
    if not names:
        print(f"no registered models in {registry.uri}")
        return 0
    for name in names:
        versions = registry.versions(name)
        print(f"{name}  ({len(versions)} version(s), registry {registry.uri})")
        for v in versions:
            state = v.rollout_tags.get("state", "")
            detail = v.rollout_tags.get("reason", "")
            model = v.spec.engine.model if v.spec else f"INVALID SPEC: {v.spec_error}"
            print(f"  v{v.version:<4d} {','.join(v.aliases) or '-':20s} {state or '-':12s} {model}"
                  + (f"  ({detail})" if detail else ""))
    return 0


def cmd_rollout_controller(args: argparse.Namespace) -> int:
    """Run the rollout controller until SIGTERM/Ctrl-C (a Deployment in the chart; a process locally)."""
    import logging
    import signal
    import threading

    from serving.rollout import plan
    from serving.rollout.analysis import GatewayScrape, MetricsSource, PrometheusAPI, ReplicaScrape
    from serving.rollout.appliers import Applier, KubernetesApplier, LocalServeApplier
    from serving.rollout.controller import RolloutController
    from serving.rollout.registry import Registry, RegistryError
    from serving.rollout.server import ControllerServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rayservice = args.rayservice or os.environ.get("SERVING_RAYSERVICE")
    applier: Applier
    if rayservice:
        namespace = args.namespace or os.environ.get("SERVING_NAMESPACE") or "default"
        base_cm = args.serve_configmap or os.environ.get("SERVING_SERVE_CONFIGMAP") or None
        applier = KubernetesApplier(rayservice, namespace, base_configmap=base_cm)
        where = f"RayService {namespace}/{rayservice}"
        if base_cm:
            where += f" (Serve config base: ConfigMap {base_cm})"
    else:
        import ray

        ray.init(address=args.ray_address, logging_level="ERROR", log_to_driver=False)
        applier = LocalServeApplier()
        where = f"the Ray cluster at {args.ray_address}"
    platform = plan.base_platform(applier.read())
    rollout = platform.rollout
    try:
        registry = Registry(args.registry or rollout.registry_uri)
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from None
    gw = platform.gateway
    host = "127.0.0.1" if gw.host in ("0.0.0.0", "::") else gw.host
    gateway_url = (args.gateway_url or rollout.gateway_url or os.environ.get("SERVING_GATEWAY_URL")
                   or f"http://{host}:{gw.port}{gw.route_prefix.rstrip('/')}")
    replicas_url = rollout.gateway_metrics_url or os.environ.get("SERVING_GATEWAY_METRICS_URL")
    metrics: MetricsSource
    if rollout.prometheus_url:
        metrics, metrics_from = PrometheusAPI(rollout.prometheus_url), f"Prometheus {rollout.prometheus_url}"
    elif replicas_url:
        metrics, metrics_from = ReplicaScrape(replicas_url), f"every gateway replica at {replicas_url}"
    else:
        metrics, metrics_from = GatewayScrape(gateway_url), f"{gateway_url}/metrics"
    api_key = os.environ.get(rollout.gateway_api_key_env) or None
    if platform.policies.auth.enabled and not api_key:
        _say(f"warning: the gateway requires API keys and ${rollout.gateway_api_key_env} is empty: evaluations "
             "will be refused (create one: serving keys create --tenant rollout)")
    controller = RolloutController(registry, applier, metrics, gateway_url, drain_s=args.drain_s,
                                   gateway_api_key=api_key)
    stop, wake = threading.Event(), threading.Event()
    secret = os.environ.get(rollout.webhook_secret_env) if rollout.webhook_secret_env else None
    if rollout.webhook_secret_env and not secret:
        _say(f"warning: ${rollout.webhook_secret_env} is empty: the webhook is off (polling only)")
    port = args.port or int(os.environ.get("SERVING_ROLLOUT_HEALTH_PORT") or rollout.webhook_port)
    server = ControllerServer(port, secret=secret, wake=wake.set, health=controller.health).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), wake.set()))
    _say(f"rollout controller: {where}; registry {registry.uri}; gateway {gateway_url}; metrics from {metrics_from}; "
         f"managed groups: {', '.join(rollout.models) or 'none'}; /healthz"
         + (" and /webhook" if secret else "") + f" on :{server.port}; polling every {rollout.poll_interval_s:g} s")
    try:
        controller.run(stop, wake)
    finally:
        server.stop()
    return 0


def _challenger(args: argparse.Namespace) -> tuple[Any, Any]:
    from serving.rollout.spec import CHALLENGER

    registry = _registry(args)
    v = registry.by_alias(args.model, CHALLENGER)
    if v is None:
        raise SystemExit(f"error: {args.model} has no {CHALLENGER} version: nothing is rolling out")
    return registry, v


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """The rollout state of each model's challenger (and its recent history), from the registry's tags."""
    registry = _registry(args)
    names = [args.model] if args.model else registry.models()
    for name in names:
        aliases = registry.aliases(name)
        print(f"{name}: " + (", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "no aliases"))
        for v in registry.versions(name)[-args.history:]:
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
    registry, v = _challenger(args)
    tags = {"pause": {"paused": "true"}, "resume": {"paused": "false"},
            "promote": {"command": "promote", "paused": "false"}, "abort": {"command": "abort"}}[args.action]
    registry.set_rollout_tags(v.model, v.version, tags)
    print(f"{v.model} v{v.version}: {args.action} requested (state {v.rollout_tags.get('state', 'not started')}); "
          "the controller applies it on its next pass")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serving", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

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

    models = sub.add_parser("models", help="model sources").add_subparsers(dest="models_cmd", required=True)
    pull = models.add_parser("pull", help="build a builtin model or download a Hugging Face model into the cache")
    pull.add_argument("source", help="builtin:smollm2-135m-instruct, builtin:tiny-llama, catalog:NAME, hf:ORG/REPO")
    pull.add_argument("--revision")
    pull.set_defaults(func=cmd_models_pull)
    reg = models.add_parser("register", help="register a model version in MLflow with its serving spec")
    reg.add_argument("model", help="registered model name (the model group it rolls out to follows it)")
    reg.add_argument("--source", help="hf:ORG/REPO, catalog:NAME, builtin:NAME or a model directory")
    reg.add_argument("--from-engine", help="copy the spec of this engine of --config instead of --source")
    reg.add_argument("--revision", help="pinned Hugging Face revision (commit sha) for hf: sources")
    reg.add_argument("--quantization", help="awq_marlin, awq, gptq_marlin, ...")
    reg.add_argument("--device", choices=["cpu", "gpu"])
    reg.add_argument("--dtype")
    reg.add_argument("--gpus", type=int, help="GPUs per replica (tensor parallel size)")
    reg.add_argument("--max-model-len", type=int)
    reg.add_argument("--engine-kwarg", action="append", default=[], metavar="KEY=VALUE", help="extra vLLM kwarg")
    reg.add_argument("--eval-tasks", help="eval set for this version (builtin:NAME or a JSONL path)")
    reg.add_argument("--description")
    reg.add_argument("--challenger", action="store_true", help="also set the challenger alias on it")
    reg.add_argument("--registry", help="MLflow URI (default: the config's rollout.registry_uri, MLFLOW_TRACKING_URI)")
    reg.add_argument("--config", help="platform config (for --from-engine and the registry URI)")
    reg.set_defaults(func=cmd_models_register)
    lst = models.add_parser("list", help="versions, aliases and rollout state in the registry")
    lst.add_argument("model", nargs="?")
    lst.add_argument("--registry")
    lst.add_argument("--config")
    lst.set_defaults(func=cmd_models_list)

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

    from serving.cli_admin import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
