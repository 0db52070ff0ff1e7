"""The platform as Serve's declarative config: one gateway app + one app per engine (serving.deploy.serve_config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve.schema import ServeDeploySchema

from serving.app import engine_builder
from serving.config import ConfigError, load_config, parse_config
from serving.deploy.serve_config import ENGINE_IMPORT_PATH, GATEWAY_IMPORT_PATH, gateway_user_config, serve_config

ROOT = Path(__file__).resolve().parents[3]


def _cfg(**engines: dict) -> dict:
    return {
        "ray": {"app_name": "llm"},
        "engines": {n: {"model": "builtin:tiny-llama", "device": "cpu", **e} for n, e in engines.items()},
        "model_groups": {"chat": {"engines": list(engines)}},
    }


def test_every_engine_is_its_own_app_without_http_route():
    cfg = parse_config(_cfg(a={}, b={"replicas": {"min": 1, "max": 3, "target_ongoing_requests": 4}}))
    sc = serve_config(cfg)
    ServeDeploySchema.model_validate(sc)  # Serve accepts it
    names = [a["name"] for a in sc["applications"]]
    assert names == ["llm", "llm-engine-a", "llm-engine-b"]
    gateway, a, b = sc["applications"]
    assert gateway["import_path"] == GATEWAY_IMPORT_PATH and gateway["route_prefix"] == "/"
    assert a["import_path"] == b["import_path"] == ENGINE_IMPORT_PATH
    assert a["route_prefix"] is None and b["route_prefix"] is None
    assert a["deployments"] == [{"name": "engine-a", "num_replicas": 1}]
    assert b["deployments"] == [{"name": "engine-b", "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4}}]
    assert b["args"]["name"] == "b" and b["args"]["engine"]["replicas"]["max"] == 3
    [gw] = gateway["deployments"]
    assert gw["user_config"] == gateway_user_config(cfg)
    assert gw["user_config"]["engines"] == {"a": "llm-engine-a", "b": "llm-engine-b"}
    assert parse_config(gateway["args"]["config"]) == cfg


def test_an_engine_app_depends_only_on_its_own_engine():
    """Serve's code version is a hash of import path + args: adding engine c must leave a's and the gateway's
    args unchanged (no restart), with the new engine reaching the gateway through user_config."""
    base = parse_config(_cfg(a={}))
    grown = parse_config(_cfg(a={}, c={"model": "builtin:tiny-llama?seed=7"}))
    before = serve_config(base)
    after = serve_config(grown, base=before["applications"][0]["args"]["config"])
    assert after["applications"][0]["args"] == before["applications"][0]["args"]
    assert after["applications"][1] == before["applications"][1]
    assert after["applications"][2]["name"] == "llm-engine-c"
    assert after["applications"][0]["deployments"][0]["user_config"]["engines"] == {
        "a": "llm-engine-a", "c": "llm-engine-c"}


def test_shipped_configs_render():
    for path in ("configs/local.yaml", "configs/gpu-llama-8b-awq.yaml"):
        cfg = load_config(ROOT / path)
        ServeDeploySchema.model_validate(serve_config(cfg))


def test_engine_builder_reports_bad_args_with_paths():
    with pytest.raises(ValueError, match=r"args\.name and args\.engine"):
        engine_builder({"engine": {}})
    with pytest.raises(ConfigError) as exc:
        engine_builder({"name": "x", "engine": {"model": "builtin:tiny-llama", "device": "cpu", "dtype": 3}})
    assert "dtype" in str(exc.value)


def test_the_gateway_drains_on_stop_and_can_autoscale():
    data = _cfg(a={"max_num_seqs": 8, "max_model_len": 1024})
    sc = serve_config(parse_config(data))
    [gw] = sc["applications"][0]["deployments"]
    assert gw["num_replicas"] == 1 and gw["graceful_shutdown_timeout_s"] == 30.0
    assert gw["graceful_shutdown_wait_loop_s"] == 1.0
    assert gw["user_config"]["capacity"] == {"a": 8} and gw["user_config"]["context"] == {"a": 1024}
    data["gateway"] = {"replicas": 2, "drain_timeout_s": 90,
                       "autoscaling": {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 32}}
    cfg = parse_config(data)
    sc = serve_config(cfg)
    ServeDeploySchema.model_validate(sc)
    [gw] = sc["applications"][0]["deployments"]
    assert "num_replicas" not in gw and gw["graceful_shutdown_timeout_s"] == 90
    assert gw["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "initial_replicas": 2,
                                        "target_ongoing_requests": 32}
    assert cfg.gateway.admission_replicas == 2
    data["gateway"]["autoscaling"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ConfigError, match=r"gateway\.autoscaling"):
        parse_config(data)
