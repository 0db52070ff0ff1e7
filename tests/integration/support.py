"""Shared names and checks of the integration tests (the stack itself is started in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVING = str(BIN / "serving")
RAY = str(BIN / "ray")
PYTHON = sys.executable

APP = "itest"
TINY_GROUP, TINY_ENGINE = "tiny-llama", "tiny"
SMOL_GROUP, SMOL_ENGINE = "smollm2-135m-instruct", "smollm2"
MAX_MODEL_LEN = 2048
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HELLO = [{"role": "user", "content": "Hello!"}]
# Routing: SmolLM2 first, then a fake OpenAI-compatible cloud (tests/support/fake_clouds.py, run by conftest).
SMOL_TIER, CLOUD_TIER, DEAD_TIER = "smol", "fake-cloud", "dead-cloud"
CLOUD_PROVIDER, CLOUD_MODEL = "fake-openai", "fake-strong"
CLOUD_KEY_ENV, CLOUD_KEY = "ITEST_CLOUD_KEY", "itest-secret-key"
JSON_ROUTE, RESILIENT_ROUTE = "itest-json", "itest-resilient"
# Load (test_11_load.py): SmolLM2 with a short time-to-first-token timeout, and tiny-llama with small admission bounds.
PROGRESS_TIER, TINY_TIER = "smol-progress", "tiny"
LOAD_ROUTE, ADMIT_ROUTE = "itest-load", "itest-admit"
ADMIT_CONCURRENCY, ADMIT_QUEUE = 2, 1
# Chaos (test_zz_chaos.py): a second fake cloud behind a TCP fault proxy (tests/support/chaos_proxy.py) first, then
# tiny-llama; and tiny-llama with short progress timeouts first, then SmolLM2.
FLAKY_PROVIDER, FLAKY_TIER, CHAOS_CLOUD_ROUTE = "flaky-openai", "flaky-cloud", "itest-chaos-cloud"
FAILOVER_TIER, FAILOVER_ROUTE = "tiny-failover", "itest-failover"
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
CLOUD_REPLY = '{"city": "Paris", "country": "France"}'
# Policies (Redis-backed, API keys off on the loopback gateway): a rate-limited tenant, a cached one, the audit log.
LIMITED_TENANT, LIMITED_RPM, CACHED_TENANT = "itest-limited", 5, "itest-cached"
AUDIT_FILE = "audit.jsonl"
ADMIN_KEY = "itest-admin-credential"
# The agents' API (test_12_agents_api.py): the embedding model, and a route that gates tool calls before the cloud.
EMBED_GROUP, EMBED_ENGINE = "all-minilm-l6-v2", "minilm"
AGENT_ROUTE = "itest-agent"
# Far more than MAX_MODEL_LEN tokens with either tokenizer.
TOO_LONG = "hello " * 3000


@dataclass(frozen=True)
class Stack:
    """The running platform: where it answers, and how to run the `serving` CLI against it."""

    url: str
    config: Path
    metrics_port: int
    env: dict[str, str]
    log: Path
    cloud_url: str = ""  # the fake cloud's root URL (scripted over HTTP: /_fake/script, /_fake/requests)
    flaky_url: str = ""  # the flaky fake cloud's root URL (the gateway reaches it through the chaos proxy)

    def cli(self, *args: str, timeout: float = 180,
            env_override: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `serving ARGS` with the session's environment (plus `env_override`)."""
        return subprocess.run([SERVING, *args], env={**self.env, **(env_override or {})}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)


def deploy(stack: Stack, cfg: dict[str, Any], path: Path) -> None:
    """`serving up` with the platform config `cfg` (written to `path`): a change of the running stack."""
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    up = stack.cli("up", "--config", str(path), timeout=900)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]


def assert_envelope(resp: httpx.Response, status: int, *, code: str | None = None,
                    param: str | None = None) -> dict[str, Any]:
    """`resp` is an OpenAI error envelope with this status (and one x-request-id); returns `error`."""
    assert resp.status_code == status, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert len(resp.headers.get_list("x-request-id")) == 1, resp.headers
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: "):])
    return events


def sse_chunks(text: str) -> list[dict[str, Any]]:
    """The JSON chunks of a complete SSE stream, which must end with exactly one `data: [DONE]`."""
    events = sse_data(text)
    assert events[-1] == "[DONE]", events[-3:]
    assert "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


def metric_samples(text: str) -> dict[str, list[Any]]:
    """Prometheus text exposition -> {sample name: [samples]}."""
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def metric_value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))
