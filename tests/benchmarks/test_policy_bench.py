"""The policy benchmark's helpers (benchmarks/policy.py): the platform configs it runs with, policies off and on,
validate like any config."""

from __future__ import annotations

from benchmarks.policy import BenchEnv, gateway_config, policies_config
from serving.config import parse_config


def test_policy_benchmark_configs_are_valid():
    env = BenchEnv("http://127.0.0.1:9/v1", "redis://127.0.0.1:9/0")
    off, on = parse_config(gateway_config(env)), parse_config(policies_config(env))
    assert not off.policies.auth.enabled and off.policies.injection == "off" and not off.policies.audit.enabled
    assert on.policies.auth.enabled and on.policies.limits.any and on.routes["bench"].pii.action == "redact"
