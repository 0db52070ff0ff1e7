"""Pure transformations of the platform's Serve config for rollout steps (no I/O; the appliers write them).

The Serve config holds the gateway app (`args.config` = the platform config as deployed, never changed here, so
the gateway's code version stays put) and one app per engine. A rollout changes only:
- the engine apps (add the challenger's, remove a retired one's), and
- the gateway deployment's `user_config` (the engine table and the model groups' weights, sticky, shadow),
which Serve applies as lightweight updates: no replica restarts anywhere.
"""

from __future__ import annotations

import copy
from typing import Any

from serving.config import EngineConfig, ModelGroupConfig, PlatformConfig, load_config, parse_config
from serving.deploy.serve_config import (
    ENGINE_IMPORT_PATH,
    GATEWAY_DEPLOYMENT,
    GATEWAY_IMPORT_PATH,
    engine_app_name,
    engine_capacity,
    engine_context,
    engine_deployment_options,
    gateway_user_config,
)

ServeConfig = dict[str, Any]


class PlanError(ValueError):
    """The Serve config does not look like this platform's (no gateway app, unknown group, ...)."""


def gateway_app(cfg: ServeConfig) -> dict[str, Any]:
    for app in cfg.get("applications") or []:
        if app.get("import_path") == GATEWAY_IMPORT_PATH:
            return app
    raise PlanError(f"no gateway application ({GATEWAY_IMPORT_PATH}) in the Serve config")


def base_platform(cfg: ServeConfig) -> PlatformConfig:
    """The platform config the gateway app was deployed with (its rollout policies included)."""
    args = gateway_app(cfg).get("args") or {}
    if "config" in args:
        return parse_config(args["config"], "gateway app args.config")
    if "config_path" in args:
        return load_config(args["config_path"])
    raise PlanError("the gateway app has neither args.config nor args.config_path")


def _gateway_deployment(app: dict[str, Any]) -> dict[str, Any]:
    deployments = app.setdefault("deployments", [])
    for d in deployments:
        if d.get("name") == GATEWAY_DEPLOYMENT:
            return d
    d = {"name": GATEWAY_DEPLOYMENT}
    deployments.append(d)
    return d


def gateway_state(cfg: ServeConfig) -> dict[str, Any]:
    """The gateway's live user_config: the override in the Serve config, else what the builder derives from
    args.config (a chart-rendered RayService carries no override until the first rollout step)."""
    app = gateway_app(cfg)
    for d in app.get("deployments") or []:
        if d.get("name") == GATEWAY_DEPLOYMENT and d.get("user_config"):
            return copy.deepcopy(d["user_config"])
    return gateway_user_config(base_platform(cfg))


def app_name(cfg: ServeConfig) -> str:
    return str(gateway_app(cfg)["name"])


def members(cfg: ServeConfig, group: str) -> dict[str, float]:
    """engine -> weight of a model group, in member order."""
    state = gateway_state(cfg)
    if group not in state["model_groups"]:
        raise PlanError(f"model group {group!r} is not served (groups: {', '.join(state['model_groups'])})")
    g = ModelGroupConfig.model_validate(state["model_groups"][group])
    return {m.engine: m.weight for m in g.engines}


def group_config(cfg: ServeConfig, group: str) -> ModelGroupConfig:
    return ModelGroupConfig.model_validate(gateway_state(cfg)["model_groups"][group])


def _with_state(cfg: ServeConfig, state: dict[str, Any]) -> ServeConfig:
    out = copy.deepcopy(cfg)
    _gateway_deployment(gateway_app(out))["user_config"] = state
    return out


def add_engine(cfg: ServeConfig, group: str, name: str, engine: EngineConfig) -> ServeConfig:
    """The engine's own Serve app, known to the gateway and listed in `group` at weight 0 (no traffic yet)."""
    from serving.engines.ray_llm import deployment_name

    state = gateway_state(cfg)
    if group not in state["model_groups"]:
        raise PlanError(f"model group {group!r} is not served")
    app = engine_app_name(app_name(cfg), name)
    out = copy.deepcopy(cfg)
    out["applications"] = [a for a in out["applications"] if a.get("name") != app]
    out["applications"].append({
        "name": app, "route_prefix": None, "import_path": ENGINE_IMPORT_PATH,
        "args": {"name": name, "engine": engine.model_dump(mode="json", exclude_none=True)},
        "deployments": [{"name": deployment_name(name), **engine_deployment_options(engine)}],
    })
    state["engines"][name] = app
    state.setdefault("capacity", {})[name] = engine_capacity(engine)
    if (context := engine_context(engine)) is not None:
        state.setdefault("context", {})[name] = context
    g = state["model_groups"][group]
    if name not in [m["engine"] if isinstance(m, dict) else m for m in g["engines"]]:
        g["engines"] = [*_as_dicts(g["engines"]), {"engine": name, "weight": 0.0}]
    return _with_state(out, state)


def _as_dicts(entries: list[Any]) -> list[dict[str, Any]]:
    return [e if isinstance(e, dict) else {"engine": e, "weight": 1.0} for e in entries]


def set_split(cfg: ServeConfig, group: str, weights: dict[str, float], *, sticky: bool | None = None,
              shadow: tuple[str, float] | None = None) -> ServeConfig:
    """Set the group's members and weights (in the given order; sticky picks give the first its growing slice),
    and its shadow engine (None: none)."""
    state = gateway_state(cfg)
    g = dict(state["model_groups"][group])
    g["engines"] = [{"engine": e, "weight": float(w)} for e, w in weights.items()]
    if sticky is not None:
        g["sticky"] = sticky
    if shadow is None:
        g.pop("shadow", None)
    else:
        g["shadow"] = {"engine": shadow[0], "percent": shadow[1]}
    unknown = [e for e in [*weights, *([shadow[0]] if shadow else [])] if e not in state["engines"]]
    if unknown:
        raise PlanError(f"engines {unknown} are not deployed")
    validated = ModelGroupConfig.model_validate(g)
    state["model_groups"][group] = validated.model_dump(mode="json", exclude_none=True)
    return _with_state(cfg, state)


def remove_engine(cfg: ServeConfig, name: str) -> ServeConfig:
    """Remove an engine's app and every mention of it in the gateway (it must carry no traffic any more)."""
    state = gateway_state(cfg)
    for gname, g in state["model_groups"].items():
        left = [m for m in _as_dicts(g["engines"]) if m["engine"] != name]
        if left and sum(m["weight"] for m in left) <= 0:
            raise PlanError(f"removing {name} would leave model group {gname!r} without traffic")
        if not left:
            raise PlanError(f"removing {name} would leave model group {gname!r} empty")
        g["engines"] = left
        if (g.get("shadow") or {}).get("engine") == name:
            g.pop("shadow")
    app = state["engines"].pop(name, None) or engine_app_name(app_name(cfg), name)
    state.get("capacity", {}).pop(name, None)
    state.get("context", {}).pop(name, None)
    out = _with_state(cfg, state)
    out["applications"] = [a for a in out["applications"] if a.get("name") != app]
    return out


def engine_spec(cfg: ServeConfig, name: str) -> EngineConfig | None:
    """The EngineConfig an engine app was deployed with (None if there is no such app)."""
    for app in cfg.get("applications") or []:
        if app.get("import_path") == ENGINE_IMPORT_PATH and (app.get("args") or {}).get("name") == name:
            return EngineConfig.model_validate(app["args"]["engine"])
    return None


def rebase(live: ServeConfig, base: ServeConfig) -> ServeConfig:
    """`base` (a new Serve config from the platform's owner: the Helm chart's ConfigMap after `helm upgrade` or
    `helm rollback`) with the rollout state of `live` kept.

    For every model group under the new base's `rollout.models`, its members (engines, weights, sticky, shadow) are
    live's: a canary in progress keeps its split, a promoted version stays promoted. Engines the base defines keep
    the base's spec (a changed seed engine is applied); engines only live has (registry versions) keep their apps.
    Engines of those groups that live no longer uses (retired by a rollout) are dropped. Everything else is the
    base's. A live config that is not this platform's (or inconsistent) yields the base unchanged.
    """
    out = copy.deepcopy(base)
    try:
        live_state = gateway_state(live)
        managed = base_platform(base).rollout.models
    except (PlanError, ValueError):
        return out
    state = gateway_state(out)
    live_apps = {a.get("name"): a for a in live.get("applications") or []}
    base_defined = set(state["engines"])
    carried: dict[str, dict[str, Any]] = {}  # engine app name -> live app
    dropped: set[str] = set()
    for group in managed:
        lg = live_state["model_groups"].get(group)
        if lg is None or group not in state["model_groups"]:
            continue
        kept = [m["engine"] for m in _as_dicts(lg["engines"])]
        kept += [lg["shadow"]["engine"]] if lg.get("shadow") else []
        if any(e not in base_defined and live_state["engines"].get(e) not in live_apps for e in kept):
            continue  # live names an engine without its app: not a state worth keeping
        before = [m["engine"] for m in _as_dicts(state["model_groups"][group]["engines"])]
        state["model_groups"][group] = copy.deepcopy(lg)
        for e in kept:
            if e not in base_defined:
                state["engines"][e] = live_state["engines"][e]
                carried[state["engines"][e]] = copy.deepcopy(live_apps[state["engines"][e]])
        dropped |= set(before) - set(kept)

    def used(engine: str) -> bool:
        return any(engine in [m["engine"] for m in _as_dicts(g["engines"])]
                   or (g.get("shadow") or {}).get("engine") == engine for g in state["model_groups"].values())

    removed_apps = set()
    for e in sorted(dropped):
        if not used(e):
            removed_apps.add(state["engines"].pop(e, None) or engine_app_name(app_name(out), e))
    out = _with_state(out, state)
    out["applications"] = [a for a in out["applications"] if a.get("name") not in removed_apps | set(carried)]
    out["applications"].extend(carried.values())
    return out
