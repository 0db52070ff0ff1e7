"""The routing part of the platform config: providers, tiers, routes, tenants, gates, prices and overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serving.api.ingress import routing_from_user_config
from serving.api.protocol import RequestOverrides
from serving.config import (
    DEFAULT_REFUSAL_PATTERNS,
    ConfigError,
    GPUHourPrice,
    PriceConfig,
    RouteConfig,
    parse_config,
)
from serving.deploy.serve_config import gateway_user_config

ROOT = Path(__file__).resolve().parents[3]
LOCAL = ROOT / "configs" / "local.yaml"
GROUP = "smollm2-135m-instruct"

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "object", "required": ["price"]}}},
    "required": ["items"],
}


def routed() -> dict[str, Any]:
    """configs/local.yaml plus providers, tiers, routes and tenants."""
    data = yaml.safe_load(LOCAL.read_text())
    data["providers"] = {
        "openai": {"kind": "openai"},
        "anthropic": {"kind": "anthropic", "api_key_env": "ANTHROPIC_KEY_PROD", "max_connections": 20},
    }
    data["tiers"] = {
        "small": {
            "model_group": GROUP,
            "price": {"gpu_hour": {"usd_per_hour": 0.80, "output_tokens_per_s": 1000}},
            "timeout_s": 10,
        },
        "mini": {
            "provider": "openai", "model": "gpt-4o-mini",
            "price": {"input_per_1m": 0.15, "output_per_1m": 0.60},
            "retry": {"attempts": 2}, "breaker": {"failure_threshold": 3, "cooldown_s": 10},
        },
        "claude": {"provider": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 1024,
                   "price": {"input_per_1m": 3, "output_per_1m": 15}},
    }
    data["routes"] = {
        "smart": {
            "tiers": ["small", "mini", {"tier": "claude", "gates": ["json", "judge"], "self_correct": False}],
            "gates": {
                "json": {"required": True, "schema": ORDER_SCHEMA},
                "rules": {"must_not_match": ["(?i)lorem ipsum"], "max_chars": 4000},
                "refusal": {},
                "empty": {"allow_truncated": False},
                "confidence": {"min_mean_logprob": -1.5},
                "judge": {"tier": "claude", "threshold": 6},
            },
            "self_correct": True,
            "on_exhausted": "error",
            "deadline_s": 30,
        },
        "cheap": {"tiers": ["small"]},
    }
    data["tenants"] = {
        "acme": {"routes": {"gpt-4o": "smart", "gpt-4o-mini": "cheap"}, "default_route": "cheap"},
        "free": {"default_route": "cheap"},
    }
    return data


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert str(info.value).startswith("test.yaml: invalid config")
    return info.value.errors


def one_error(data: dict[str, Any]) -> str:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return errors[0]


# ------------------------------------------------------------------------------------------------ valid config


def test_shipped_local_config_routes():
    cfg = parse_config(yaml.safe_load(LOCAL.read_text()))
    for name, route in cfg.routes.items():
        assert name not in cfg.model_groups
        assert all(step.tier in cfg.tiers for step in route.tiers)
    for tier in cfg.tiers.values():
        assert (tier.model_group in cfg.model_groups) if tier.is_local else (tier.provider in cfg.providers)


def test_valid_routed_config():
    cfg = parse_config(routed())

    assert cfg.providers["openai"].key_env == "OPENAI_API_KEY"
    assert cfg.providers["anthropic"].key_env == "ANTHROPIC_KEY_PROD"
    assert cfg.providers["anthropic"].max_connections == 20

    small, mini, claude = cfg.tiers["small"], cfg.tiers["mini"], cfg.tiers["claude"]
    assert small.is_local and small.model_group == GROUP and small.ttft_timeout_s == 10
    assert not mini.is_local and (mini.provider, mini.model) == ("openai", "gpt-4o-mini")
    assert mini.retry.attempts == 2 and mini.breaker.failure_threshold == 3
    assert claude.max_tokens == 1024

    smart = cfg.routes["smart"]
    assert [t.tier for t in smart.tiers] == ["small", "mini", "claude"]
    assert smart.tiers[0].gates is None and smart.tiers[0].self_correct is None
    assert smart.tiers[2].gates == ["json", "judge"] and smart.tiers[2].self_correct is False
    assert smart.self_correct is True and smart.on_exhausted == "error" and smart.deadline_s == 30
    assert smart.gated
    assert list(smart.gates.enabled()) == ["json", "rules", "refusal", "empty", "confidence", "judge"]
    assert smart.gates.json_.required and smart.gates.json_.json_schema == ORDER_SCHEMA
    assert smart.gates.refusal.patterns == list(DEFAULT_REFUSAL_PATTERNS)
    assert smart.gates.judge.tier == "claude" and smart.gates.judge.threshold == 6

    cheap = cfg.routes["cheap"]
    assert [t.tier for t in cheap.tiers] == ["small"]
    assert not cheap.gated
    assert cheap.on_exhausted == "best_effort" and cheap.allow_overrides

    assert cfg.tenants["acme"].routes == {"gpt-4o": "smart", "gpt-4o-mini": "cheap"}
    assert cfg.tenants["free"].default_route == "cheap"


# ------------------------------------------------------------------------------------------------ prices


def test_gpu_hour_price_per_token():
    price = PriceConfig(gpu_hour=GPUHourPrice(usd_per_hour=0.80, output_tokens_per_s=1000))
    per_in, per_out = price.per_token()
    assert per_out == pytest.approx(0.80 / 3600 / 1000)
    assert per_in == pytest.approx(0.80 / 3600 / 10000)  # prompt tokens default to 10x faster


def test_gpu_hour_price_with_gpus_and_input_rate():
    price = PriceConfig.model_validate(
        {"gpu_hour": {"usd_per_hour": 2.0, "gpus": 4, "output_tokens_per_s": 500, "input_tokens_per_s": 8000}}
    )
    per_in, per_out = price.per_token()
    assert per_out == pytest.approx(8.0 / 3600 / 500)
    assert per_in == pytest.approx(8.0 / 3600 / 8000)


def test_direct_price_per_token():
    assert PriceConfig(input_per_1m=0.15, output_per_1m=0.60).per_token() == pytest.approx((0.15e-6, 0.60e-6))
    assert PriceConfig(output_per_1m=2.0).per_token() == pytest.approx((0.0, 2e-6))
    assert PriceConfig().per_token() == (0.0, 0.0)


def test_price_from_the_parsed_tier():
    cfg = parse_config(routed())
    assert cfg.tiers["small"].price.per_token()[1] == pytest.approx(0.80 / 3600 / 1000)
    assert cfg.tiers["claude"].price.per_token() == pytest.approx((3e-6, 15e-6))


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_tier_in_a_route():
    data = routed()
    data["routes"]["cheap"]["tiers"].append("huge")
    assert one_error(data) == "routes.cheap.tiers.1.tier: unknown tier 'huge' (defined: claude, mini, small)"


def test_unknown_model_group_in_a_tier():
    data = routed()
    data["tiers"]["small"]["model_group"] = "llama"
    assert one_error(data) == ("tiers.small.model_group: unknown model group 'llama' "
                              f"(defined: all-minilm-l6-v2, {GROUP})")


def test_unknown_provider_in_a_tier():
    data = routed()
    data["tiers"]["mini"]["provider"] = "azure"
    assert one_error(data) == "tiers.mini.provider: unknown provider 'azure' (defined: anthropic, openai)"


def test_unknown_provider_without_providers():
    data = routed()
    data["providers"] = {}
    assert one_error(data).startswith("tiers.mini.provider: unknown provider 'openai' (defined: none)")


@pytest.mark.parametrize("change", [
    {"provider": "openai"},  # both
    {"model_group": None},  # neither
])
def test_tier_needs_exactly_one_target(change):
    data = routed()
    data["tiers"]["small"].update(change)
    data["tiers"]["small"] = {k: v for k, v in data["tiers"]["small"].items() if v is not None}
    assert one_error(data) == "tiers.small: a tier needs exactly one of model_group or provider"


def test_provider_tier_without_model():
    data = routed()
    del data["tiers"]["mini"]["model"]
    assert one_error(data) == "tiers.mini: a provider tier needs `model` (the provider's model name)"


def test_local_tier_with_model():
    data = routed()
    data["tiers"]["small"]["model"] = "gpt-4o"
    assert one_error(data) == "tiers.small: `model` is only for provider tiers"


def test_unknown_judge_tier():
    data = routed()
    data["routes"]["smart"]["gates"]["judge"]["tier"] = "oracle"
    assert one_error(data) == "routes.smart.gates.judge.tier: unknown tier 'oracle' (defined: claude, mini, small)"


def test_route_named_like_a_model_group():
    data = routed()
    data["routes"][GROUP] = {"tiers": ["small"]}
    error = one_error(data)
    assert error.startswith(f"routes.{GROUP}: a model group has the same name")


def test_tenant_naming_an_unknown_route():
    data = routed()
    data["tenants"]["acme"]["routes"]["gpt-4o"] = "genius"
    assert one_error(data) == "tenants.acme.routes.gpt-4o: unknown route 'genius' (defined: cheap, smart)"


def test_tenant_default_route_unknown():
    data = routed()
    data["tenants"]["free"]["default_route"] = "genius"
    assert one_error(data).startswith("tenants.free.default_route: unknown route 'genius'")


def test_invalid_regex_in_rules_names_the_list_index():
    data = routed()
    data["routes"]["smart"]["gates"]["rules"]["must_not_match"] = ["fine", "(unclosed"]
    error = one_error(data)
    assert error.startswith("routes.smart.gates.rules.must_not_match: [1] is not a valid regular expression: ")
    assert "missing )" in error


def test_invalid_regex_in_refusal_extra_patterns():
    data = routed()
    data["routes"]["smart"]["gates"]["refusal"] = {"extra_patterns": ["[a-"]}
    assert one_error(data).startswith(
        "routes.smart.gates.refusal.extra_patterns: [0] is not a valid regular expression"
    )


def test_invalid_json_schema_in_the_json_gate():
    data = routed()
    data["routes"]["smart"]["gates"]["json"]["schema"] = {"type": "nonsense"}
    assert one_error(data).startswith("routes.smart.gates.json.schema: not a valid JSON schema: ")


def test_confidence_gate_needs_a_threshold():
    data = routed()
    data["routes"]["smart"]["gates"]["confidence"] = {}
    assert one_error(data) == "routes.smart.gates.confidence: set min_mean_logprob and/or min_token_logprob"


def test_confidence_threshold_must_be_a_logprob():
    data = routed()
    data["routes"]["smart"]["gates"]["confidence"] = {"min_mean_logprob": 0.5}
    assert one_error(data).startswith("routes.smart.gates.confidence.min_mean_logprob: ")


@pytest.mark.parametrize(("prompt", "missing"), [
    ("Rate this: {question}", "{answer}"),
    ("Rate this: {answer}", "{question}"),
])
def test_judge_prompt_needs_both_placeholders(prompt, missing):
    data = routed()
    data["routes"]["smart"]["gates"]["judge"]["prompt"] = prompt
    assert one_error(data) == f"routes.smart.gates.judge.prompt: the judge prompt must contain {missing}"


def test_judge_threshold_range():
    data = routed()
    data["routes"]["smart"]["gates"]["judge"]["threshold"] = 11
    assert one_error(data).startswith("routes.smart.gates.judge.threshold: ")


def test_price_with_both_forms():
    data = routed()
    data["tiers"]["mini"]["price"]["gpu_hour"] = {"usd_per_hour": 1.0, "output_tokens_per_s": 100}
    assert one_error(data) == "tiers.mini.price: give either input_per_1m/output_per_1m or gpu_hour, not both"


@pytest.mark.parametrize("path", [
    ("providers", "openai"),
    ("tiers", "mini"),
    ("tiers", "mini", "price"),
    ("tiers", "mini", "retry"),
    ("tiers", "small", "price", "gpu_hour"),
    ("routes", "smart"),
    ("routes", "smart", "gates"),
    ("routes", "smart", "gates", "judge"),
    ("routes", "smart", "gates", "json"),
    ("tenants", "acme"),
])
def test_unknown_keys_are_rejected(path):
    data = routed()
    node = data
    for key in path:
        node = node[key]
    node["colour"] = "red"
    assert one_error(data) == ".".join(path) + ".colour: Extra inputs are not permitted"


def test_unknown_key_in_a_route_tier():
    data = routed()
    data["routes"]["smart"]["tiers"][2]["weight"] = 2
    assert one_error(data) == "routes.smart.tiers.2.weight: Extra inputs are not permitted"


def test_unknown_gate_kind_in_a_route_tier():
    data = routed()
    data["routes"]["smart"]["tiers"][2]["gates"] = ["json", "vibes"]
    assert one_error(data).startswith("routes.smart.tiers.2.gates.1: Input should be 'json', ")


def test_route_needs_a_tier_and_provider_a_known_kind():
    data = routed()
    data["routes"]["cheap"]["tiers"] = []
    assert one_error(data).startswith("routes.cheap.tiers: List should have at least 1 item")
    data = routed()
    data["providers"]["openai"]["kind"] = "azure"
    assert one_error(data) == "providers.openai.kind: Input should be 'openai' or 'anthropic'"


def test_invalid_route_name():
    data = routed()
    data["routes"]["Smart Route"] = {"tiers": ["small"]}
    assert one_error(data).startswith("routes: invalid name 'Smart Route'")


# ------------------------------------------------------------------------------------------------ overrides


def smart_route() -> RouteConfig:
    return parse_config(routed()).routes["smart"]


def test_override_replaces_a_gates_config():
    route = smart_route()
    new = RequestOverrides.model_validate({"gates": {"judge": {"tier": "mini", "threshold": 9}}}).apply(route)
    assert new.gates.judge.tier == "mini" and new.gates.judge.threshold == 9
    assert new.gates.json_ == route.gates.json_  # the others stay
    assert route.gates.judge.tier == "claude"  # the route itself is untouched


def test_override_replaces_not_merges():
    route = smart_route()
    new = RequestOverrides.model_validate({"gates": {"rules": {"min_chars": 10}}}).apply(route)
    assert new.gates.rules.min_chars == 10
    assert new.gates.rules.must_not_match == [] and new.gates.rules.max_chars is None


def test_override_null_turns_a_gate_off_and_new_gates_are_added():
    route = parse_config(routed()).routes["cheap"]
    assert not route.gated
    new = RequestOverrides.model_validate({
        "gates": {"json": {"schema": {"type": "object"}}, "refusal": None, "empty": {}},
    }).apply(route)
    assert list(new.gates.enabled()) == ["json", "empty"]
    assert new.gates.json_.json_schema == {"type": "object"}

    smart = smart_route()
    off = RequestOverrides.model_validate({"gates": {"judge": None, "confidence": None}}).apply(smart)
    assert list(off.gates.enabled()) == ["json", "rules", "refusal", "empty"]
    assert off.gates.json_.json_schema == ORDER_SCHEMA  # the alias survives the dump/validate in apply


def test_override_policy_fields():
    route = smart_route()
    new = RequestOverrides.model_validate(
        {"self_correct": False, "on_exhausted": "best_effort", "deadline_s": 5}
    ).apply(route)
    assert (new.self_correct, new.on_exhausted, new.deadline_s) == (False, "best_effort", 5)
    assert new.gates == route.gates and new.tiers == route.tiers


def test_empty_override_returns_the_route():
    route = smart_route()
    assert RequestOverrides.model_validate({}).apply(route) is route
    assert RequestOverrides.model_validate({"route": "cheap"}).apply(route) is route


@pytest.mark.parametrize("body", [
    {"gates": {"vibes": {}}},
    {"gates": {"confidence": {}}},
    {"gates": {"rules": {"must_match": ["("]}}},
    {"gates": {"judge": {"tier": "mini", "prompt": "no placeholders"}}},
    {"gates": {"json": {"schema": {"type": 5}}}},
    {"gates": {"empty": {"min_chars": 0}}},
    {"gates": {"refusal": {"colour": "red"}}},
    {"on_exhausted": "explode"},
    {"deadline_s": 0},
    {"self_correct": "sometimes"},
    {"temperature": 0.2},
])
def test_invalid_overrides_raise(body):
    with pytest.raises(ValidationError):
        RequestOverrides.model_validate(body)


def test_override_with_empty_gates_keeps_the_routes_gates():
    route = smart_route()
    assert RequestOverrides.model_validate({"gates": {}}).apply(route).gates == route.gates


# ------------------------------------------------------------------------------------------------ round trip


def test_gateway_user_config_round_trip():
    cfg = parse_config(routed())
    user_config = gateway_user_config(cfg)
    assert user_config["routes"]["smart"]["gates"]["json"]["schema"] == ORDER_SCHEMA
    assert "json_" not in user_config["routes"]["smart"]["gates"]
    # KubeRay/Serve carry user_config as plain data: survive a YAML dump as well
    user_config = yaml.safe_load(yaml.safe_dump(copy.deepcopy(user_config)))

    providers, tiers, routes, tenants = routing_from_user_config(user_config)
    assert providers == cfg.providers
    assert tiers == cfg.tiers
    assert routes == cfg.routes
    assert tenants == cfg.tenants
    assert routes["smart"].gates.json_.json_schema == ORDER_SCHEMA


def test_routing_from_user_config_without_routing_tables():
    data = yaml.safe_load(LOCAL.read_text())
    for key in ("providers", "tiers", "routes", "tenants"):
        data.pop(key, None)
    cfg = parse_config(data)
    assert routing_from_user_config(gateway_user_config(cfg)) == ({}, {}, {}, {})
    assert routing_from_user_config({"model_groups": {}}) == ({}, {}, {}, {})
