"""The Serve application's data: gateway user_config round trip and Ray cluster settings."""

from __future__ import annotations

from pathlib import Path

from serving.api.ingress import groups_from_user_config
from serving.config import load_config, parse_config
from serving.deploy.serve_config import gateway_user_config
from serving.routing.groups import GroupRouter
from tests.support.fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[3]


def _config(weights: dict[str, float]) -> dict:
    return {
        "engines": {name: {"model": "builtin:tiny-llama", "device": "cpu"} for name in weights},
        "model_groups": {"chat": {"engines": [{"engine": n, "weight": w} for n, w in weights.items()]}},
    }


def test_user_config_round_trip_reaches_the_router_with_weights():
    cfg = parse_config(_config({"v1": 95, "v2": 5}))
    groups = groups_from_user_config(gateway_user_config(cfg))
    router = GroupRouter({"v1": FakeEngine("v1"), "v2": FakeEngine("v2")}, groups)
    group = router.groups["chat"]
    assert [e.name for e in group.engines] == ["v1", "v2"]
    assert group.weights == (95.0, 5.0)


def _groups(weights: dict[str, float]):
    return groups_from_user_config(gateway_user_config(parse_config(_config(weights))))


def test_reconfigure_shape_moves_all_traffic():
    engines = {"v1": FakeEngine("v1"), "v2": FakeEngine("v2")}
    router = GroupRouter(engines, _groups({"v1": 1, "v2": 0}))
    assert {router.route("chat")[1].name for _ in range(50)} == {"v1"}
    router.update(_groups({"v1": 0, "v2": 1}))
    assert {router.route("chat")[1].name for _ in range(50)} == {"v2"}


def test_local_config_uses_haproxy_ingress_and_throughput_mode():
    env = load_config(ROOT / "configs" / "local.yaml").ray.cluster_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_proxy_ingress_sets_no_haproxy_flag_and_env_overrides_apply():
    cfg = parse_config({**_config({"v1": 1}),
                        "ray": {"serve_ingress": "proxy", "throughput_optimized": False, "env": {"X": "1"}}})
    env = cfg.ray.cluster_env()
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in env
    assert env["X"] == "1"
