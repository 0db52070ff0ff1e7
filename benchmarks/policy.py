"""Gateway throughput and latency side by side with LiteLLM's proxy (and gateway variants), one fake upstream.

What is measured: the cost of the proxy layer alone. Every target sits in front of the same fake OpenAI-compatible
upstream (`benchmarks/fake_upstream.py`, a raw asyncio server answering a fixed 13-token completion at once), so
what differs between targets is only the proxy's own work per request (HTTP in, parsing, routing, the upstream
call through its HTTP client, the answer out). Targets:

* ``upstream-direct``: the fake upstream itself, no proxy: the floor (client + upstream cost) and a check that
  neither the load generator nor the upstream is the bottleneck;
* one target per gateway *variant* (see `VARIANTS`): the gateway app standalone (no Ray) under uvicorn, 1 worker
  (uvloop + httptools when installed), built by the variant's builder from its `PlatformConfig` dict: one cloud
  tier ``cloud`` (provider ``upstream``, kind openai, retry attempts 1) behind the ungated route ``bench``;
* ``litellm``: LiteLLM's proxy (its own virtualenv, created on first use: ``--litellm-venv``, ``--litellm-spec``),
  ``litellm --config ... --num_workers 1``, model ``bench`` -> ``openai/fake-model`` at the fake upstream. Settings
  (`litellm_config`, `LITELLM_ENV`): no database (no DATABASE_URL: no spend tracking, no virtual keys; requests
  authenticate with the master key, ``LITELLM_MASTER_KEY``, which 1.106+ requires), ``callbacks``,
  ``success_callback`` and ``failure_callback`` empty, ``disable_spend_logs`` and ``disable_error_logs``,
  ``turn_off_message_logging``, ``set_verbose: false``, ``num_retries: 0`` (the gateway tier: attempts 1),
  ``LITELLM_LOG=ERROR``, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no cost-map download), ``LITELLM_MODE=PRODUCTION``
  (no .env), the tier's price as ``input/output_cost_per_token``. Its venv also gets uvloop and httptools when the
  gateway has them, so both run the same uvicorn stack (LiteLLM's CLI picks loop uvloop, http auto).

How: all servers are started once. Each round runs every target once (the order rotates between rounds), and
while one target is measured the other target servers are paused (SIGSTOP), so only one proxy is busy and idle
background work of another cannot steal one of the two cores. Per target and round, after a few settling
requests: non-streamed chat completions (``max_tokens`` 16) at each concurrency level (default 1, 8, 32;
``--requests`` each, closed loop: every virtual user sends its next request when the last one is answered), and
streamed ones (SSE, ``stream_options.include_usage``) at concurrency 8. Recorded per level: req/s, latency
p50/p90/p99 (client-side, request sent to last byte), TTFT for streams, errors (non-200, exception, wrong or
missing answer text), and CPU ms per request of the target process, of the upstream and of the load generator,
and the CPU that other processes on the machine used meanwhile (``bg cores``: a shared box skews everything; before
each target's round the run waits up to ``--wait-quiet`` s for the machine to calm down). The load generator is
aiohttp (about 0.1 ms CPU per request; httpx costs ~2 ms per request at concurrency 32 and would compete with the
proxy for the two cores).
Reported: per metric, the median over rounds (all rounds are kept in the JSON).

Outputs: benchmarks/results/policy.json and policy.png, and a table on stdout.

    .venv/bin/python -m benchmarks.policy              # full run (3 rounds x 400 requests per level)
    .venv/bin/python -m benchmarks.policy --quick      # smoke run (1 round x 60 requests per level)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.fake_upstream import ANSWER
from benchmarks.gateway_standalone import BUILDER_ENV, CONFIG_ENV, build_gateway, build_gateway_with_key
from benchmarks.stats import pct

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
T = TypeVar("T")


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_API_KEY"
"""The gateway's provider reads its (dummy) upstream API key from this variable."""
DEFAULT_LITELLM_VENV = Path.home() / ".cache" / "serving" / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]>=1.106,!=1.107.*"
"""What the LiteLLM venv installs. 1.107.0 was a compromised release (pulled from PyPI): never install it."""
LITELLM_MASTER_KEY = "sk-bench-master-key"
PROMPT = "Give me one short sentence about load testing."
ANSWER_BYTES = ANSWER.encode()


def log(msg: str) -> None:
    print(f"[policy] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class BenchEnv:
    """What a variant's config may refer to."""

    upstream_url: str  # the fake upstream's OpenAI base URL, http://127.0.0.1:PORT/v1
    redis_url: str | None = None  # --redis-url, or a throwaway redis-server when a variant needs one


@dataclass(frozen=True)
class Variant:
    """A gateway configuration to measure: a name, its `PlatformConfig` dict, and the builder that turns the dict
    into the ASGI app. The builder runs in the server process, so it must be a module-level function
    (``module:function`` is passed to `benchmarks.gateway_standalone.create_app`)."""

    name: str
    config: Callable[[BenchEnv], dict[str, Any]]
    build: Callable[[dict[str, Any]], Any] = build_gateway
    needs_redis: bool = False
    description: str = ""

    @property
    def builder_spec(self) -> str:
        return f"{self.build.__module__}:{self.build.__qualname__}"


POLICIES_OFF = {"auth": {"enabled": False}, "injection": "off", "audit": {"enabled": False},
                "anomaly": {"enabled": False}}
"""The policy layer doing nothing: no API keys, no Redis, no heuristics, no audit line."""


def gateway_config(env: BenchEnv) -> dict[str, Any]:
    """The gateway, policies off: one cloud tier at the fake upstream behind the ungated route ``bench``."""
    return {
        "policies": POLICIES_OFF,
        "version": 1,
        # parse_config needs an engine and a model group; nothing is deployed (no Ray here), they are never used.
        "engines": {"dummy": {"model": "builtin:tiny-llama", "device": "cpu"}},
        "model_groups": {"dummy": {"engines": ["dummy"]}},
        "gateway": {"health_interval_s": 0},  # no engines to probe
        "providers": {"upstream": {"kind": "openai", "base_url": env.upstream_url, "api_key_env": UPSTREAM_KEY_ENV}},
        "tiers": {"cloud": {"provider": "upstream", "model": "fake-model",
                            "price": {"input_per_1m": 0.15, "output_per_1m": 0.6},
                            "retry": {"attempts": 1}}},
        # gates: {} -> every gate null (GatesConfig.enabled() is empty): the route is ungated.
        "routes": {"bench": {"tiers": ["cloud"], "gates": {}}},
    }


HIGH = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000, "tokens_per_day": 10**12,
        "usd_per_hour": 1e6, "usd_per_day": 1e7}
"""Limits that every request checks (and settles) but none reaches."""


def policies_config(env: BenchEnv) -> dict[str, Any]:
    """Every policy on: an API key looked up in Redis, tenant limits of every kind (requests and tokens per minute,
    daily tokens, USD per hour and day) checked and settled in Redis, the runaway check, kill switches, PII redaction
    before the cloud tier, injection heuristics and an audit line per request (to a file). The response cache is on,
    but the benchmark's requests are not deterministic (no temperature 0, no seed), so it is skipped after one
    check: a cache hit would skip the upstream and be faster, not slower."""
    cfg = gateway_config(env)
    cfg["gateway"] = {**cfg["gateway"], "host": "127.0.0.1"}
    cfg["policies"] = {
        "auth": {"enabled": True},
        "redis": {"url": env.redis_url},
        "limits": HIGH,
        "anomaly": {"enabled": True, "min_requests": 10_000_000},
        "cache": {"enabled": True},
        "audit": {"enabled": True, "path": str(Path(tempfile.gettempdir()) / "bench-policy-audit.jsonl")},
        "injection": "flag",
    }
    cfg["tenants"] = {"bench": {"limits": HIGH}}
    cfg["routes"]["bench"]["pii"] = {"action": "redact"}
    return cfg


def policy_overhead(summary: dict[str, Any], on: str = "gateway+policies", off: str = "gateway") -> dict[str, Any]:
    """What the policy layer adds per level: latency (p50, p99), gateway CPU per request, and the req/s ratio."""
    if on not in summary or off not in summary:
        return {}
    out = {}
    for level, a in summary[on].items():
        b = summary[off].get(level)
        if not b:
            continue
        out[level] = {"p50_ms_added": round(a["p50_ms"] - b["p50_ms"], 3),
                      "p99_ms_added": round(a["p99_ms"] - b["p99_ms"], 3),
                      "cpu_ms_per_req_added": round(a["target_cpu_ms_per_req"] - b["target_cpu_ms_per_req"], 3),
                      "req_per_s_ratio": round(a["req_per_s"] / b["req_per_s"], 3)}
    return out


VARIANTS: list[Variant] = [
    Variant("gateway", gateway_config, description="the gateway, policy layer off"),
    Variant("gateway+policies", policies_config, build=build_gateway_with_key, needs_redis=True,
            description="the gateway, every policy on (keys, limits, budgets, runaway, kill switches, PII, injection, "
                        "audit; cache on, requests not deterministic)"),
]


# ------------------------------------------------------------------------------------------ server processes


class Processes:
    """Every server process this run started (each in its own process group); all are ended on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process group (SIGKILL after 10 s); Ctrl-C and SIGTERM are ignored meanwhile, so a second
        interrupt cannot leave servers behind."""
        if not self.procs:
            return
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            live = [(name, proc) for name, proc in self.procs if proc.poll() is None]
            for _, proc in live:
                for sig in (signal.SIGCONT, signal.SIGTERM):  # a stopped process acts on SIGTERM once continued
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + 10
            for name, proc in live:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                log(f"stopped {name} (pid {proc.pid})")
            self.procs.clear()
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def signal_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}; log {log_path}:\n"
                               + tail(log_path))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:g} s; log {log_path}:\n" + tail(log_path))


def tail(path: Path, n: int = 20) -> str:
    """The last lines of a log (without pip's warnings about this machine's absent local indexes)."""
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if not ln.startswith("WARNING: Location")]
        return "\n".join(lines[-n:])
    return ""


def start_throwaway_redis(procs: Processes, log_dir: Path) -> str | None:
    """A private ``redis-server`` on a free port (no persistence), ended with the other servers; its URL, or None
    when the binary is not installed (Debian: ``apt-get install redis-server``)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--daemonize", "no", "--dir", str(log_dir)]
    log_path = log_dir / "redis.log"
    proc = procs.start("redis-server", cmd, log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                log(f"throwaway redis-server on port {port}")
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise TimeoutError(f"redis-server on port {port} did not answer PING:\n{tail(log_path)}")


# ------------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    kind: str  # "direct" | "gateway" | "litellm"
    base_url: str  # without /v1
    headers: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None  # None: the fake upstream itself
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"


def server_stack() -> tuple[str, str]:
    """The uvicorn loop and HTTP implementation the gateway gets (and LiteLLM's venv is given the same)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def start_gateway(procs: Processes, variant: Variant, env: BenchEnv, work: Path) -> Target:
    config = variant.config(env)
    slug = variant.name.replace("+", "-")
    cfg_path = work / f"{slug}.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    port = free_port()
    loop, http = server_stack()
    cmd = [PY, "-m", "uvicorn", "--factory", "benchmarks.gateway_standalone:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--loop", loop, "--http", http, "--no-access-log",
           "--log-level", "warning", "--lifespan", "on"]
    proc_env = {**os.environ, CONFIG_ENV: str(cfg_path), BUILDER_ENV: variant.builder_spec,
                UPSTREAM_KEY_ENV: "sk-dummy-upstream-key", "PYTHONPATH": _pythonpath(), "RAY_USAGE_STATS_ENABLED": "0"}
    log_path = work / f"{slug}.log"
    log(f"starting {variant.name}: uvicorn 1 worker, loop {loop}, http {http} (config {cfg_path})")
    proc = procs.start(variant.name, cmd, log_path, proc_env)
    wait_http(f"http://127.0.0.1:{port}/health", proc, 120, log_path)
    return Target(variant.name, "gateway", f"http://127.0.0.1:{port}",
                  {"authorization": "Bearer sk-bench-client"}, proc,
                  {"description": variant.description, "builder": variant.builder_spec, "config": config,
                   "server": f"uvicorn, 1 worker, loop {loop}, http {http}", "log": str(log_path)})


def ensure_litellm(venv: Path, spec: str, work: Path) -> tuple[Path | None, str]:
    """LiteLLM's own virtualenv (created on first use): (its `litellm` executable or None, a note)."""
    exe, py = venv / "bin" / "litellm", venv / "bin" / "python"
    loop, http = server_stack()
    extras = [m for m, on in (("uvloop", loop == "uvloop"), ("httptools", http == "httptools")) if on]
    check = "import litellm.proxy.proxy_server" + "".join(f", {m}" for m in extras)

    def usable() -> bool:
        if not exe.exists():
            return False
        return subprocess.run([str(py), "-c", check], capture_output=True, timeout=300).returncode == 0

    if usable():
        return exe, "existing venv"
    log_path = work / "litellm-install.log"
    log(f"installing {spec} (+ {', '.join(extras) or 'nothing'}) into {venv} (a few minutes; log {log_path})")
    try:
        with log_path.open("wb") as out:
            if not py.exists():
                venv.parent.mkdir(parents=True, exist_ok=True)
                base = getattr(sys, "_base_executable", None) or shutil.which("python3") or PY
                subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=out, stderr=subprocess.STDOUT)
            subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", spec, *extras],
                           check=True, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        return None, f"cannot install {spec} into {venv}: {exc}; log {log_path}:\n{tail(log_path)}"
    if not usable():
        return None, f"{venv}: litellm installed but `{check}` fails; log {log_path}"
    return exe, "installed now"


def litellm_version(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json\nout = {}\n"
            "for p in ('litellm', 'uvicorn', 'fastapi', 'openai', 'httpx', 'aiohttp', 'uvloop', 'httptools'):\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def litellm_config(upstream_url: str) -> dict[str, Any]:
    """LiteLLM proxy config: one model, every callback and spend/error log off, no retries, no database."""
    return {
        "model_list": [{"model_name": "bench", "litellm_params": {
            "model": "openai/fake-model", "api_base": upstream_url, "api_key": "sk-dummy-upstream-key",
            # the gateway tier's price, so both compute a cost per answer (and LiteLLM knows the model)
            "input_cost_per_token": 0.15e-6, "output_cost_per_token": 0.6e-6}}],
        "litellm_settings": {
            "callbacks": [], "success_callback": [], "failure_callback": [],  # no logging integrations
            "num_retries": 0,  # like the gateway tier's retry attempts 1
            "request_timeout": 60,
            "set_verbose": False,
            "turn_off_message_logging": True,
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",  # the proxy refuses to start without one
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }


LITELLM_ENV = {
    "LITELLM_LOG": "ERROR",  # no INFO/DEBUG logging on the hot path
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # do not fetch the model cost map from the internet at start
    "LITELLM_MODE": "PRODUCTION",  # do not load a .env file
}


def start_litellm(procs: Processes, exe: Path, upstream_url: str, work: Path) -> Target:
    import yaml

    cfg_path = work / "litellm.yaml"
    cfg_path.write_text(yaml.safe_dump(litellm_config(upstream_url), sort_keys=False))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL")}
    env.update(LITELLM_ENV, LITELLM_MASTER_KEY=LITELLM_MASTER_KEY)
    cmd = [str(exe), "--config", str(cfg_path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log_path = work / "litellm.log"
    log(f"starting litellm: {' '.join(cmd[1:])}")
    proc = procs.start("litellm", cmd, log_path, env, cwd=work)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 300, log_path)
    return Target("litellm", "litellm", f"http://127.0.0.1:{port}",
                  {"authorization": f"Bearer {LITELLM_MASTER_KEY}"}, proc,
                  {"command": " ".join(cmd[1:]), "config": litellm_config(upstream_url), "env": LITELLM_ENV,
                   "log": str(log_path)})


# ---------------------------------------------------------------------------------------------- load client


@dataclass
class Sample:
    latency: float
    ok: bool
    ttft: float | None = None
    usage: bool = False
    error: str | None = None


def request_body(stream: bool, max_tokens: int) -> bytes:
    body: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": max_tokens}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


class _StreamCheck:
    """Reads SSE lines of a chat stream: the content, TTFT, the usage chunk and [DONE]."""

    def __init__(self, t0: float):
        self.t0, self.ttft, self.text, self.usage, self.done = t0, None, [], False, False

    def line(self, raw: bytes | str) -> None:
        line = raw.strip() if isinstance(raw, bytes) else raw.strip().encode()
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        chunk = json.loads(data)
        if chunk.get("usage"):
            self.usage = True
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.t0
                self.text.append(piece)

    def sample(self) -> Sample:
        latency = time.perf_counter() - self.t0
        text = "".join(self.text)
        ok = self.done and text == ANSWER
        err = None if ok else f"stream: done={self.done} text={text[:60]!r}"
        return Sample(latency, ok, self.ttft, self.usage, err)


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, concurrency: int, timeout: float):
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout))

    async def one(self, url: str, headers: dict[str, str], body: bytes, stream: bool) -> Sample:
        t0 = time.perf_counter()
        try:
            async with self.session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    text = await resp.read()
                    return Sample(time.perf_counter() - t0, False, error=f"{resp.status}: {text[:200]!r}")
                if not stream:
                    data = await resp.read()
                    ok = ANSWER_BYTES in data
                    return Sample(time.perf_counter() - t0, ok, usage=b'"usage"' in data,
                                  error=None if ok else f"answer missing: {data[:200]!r}")
                check = _StreamCheck(t0)
                async for line in resp.content:
                    check.line(line)
                return check.sample()
        except (self._aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return Sample(time.perf_counter() - t0, False, error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self.session.close()


class HttpxClient:
    name = "httpx"

    def __init__(self, concurrency: int, timeout: float):
        import httpx

        self._httpx = httpx
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(timeout=timeout,
                                        transport=httpx.AsyncHTTPTransport(limits=limits, socket_options=nodelay))

    async def one(self, url: str, headers: dict[str, str], body: bytes, stream: bool) -> Sample:
        t0 = time.perf_counter()
        hdrs = {**headers, "content-type": "application/json"}
        try:
            async with self.client.stream("POST", url, content=body, headers=hdrs) as resp:
                if resp.status_code != 200:
                    text = await resp.aread()
                    return Sample(time.perf_counter() - t0, False, error=f"{resp.status_code}: {text[:200]!r}")
                if not stream:
                    data = await resp.aread()
                    ok = ANSWER_BYTES in data
                    return Sample(time.perf_counter() - t0, ok, usage=b'"usage"' in data,
                                  error=None if ok else f"answer missing: {data[:200]!r}")
                check = _StreamCheck(t0)
                async for line in resp.aiter_lines():
                    check.line(line)
                return check.sample()
        except (self._httpx.HTTPError, ValueError) as exc:
            return Sample(time.perf_counter() - t0, False, error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self.client.aclose()


CLIENTS = {"aiohttp": AiohttpClient, "httpx": HttpxClient}


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # type: ignore[no-any-return]


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds of a process and its children (0 without psutil)."""
    if proc is None:
        return 0.0
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    except psutil.Error:
        pass
    return total


def system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs; idle and iowait excluded), 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    t = psutil.cpu_times()
    return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")))


def wait_quiet(procs: Processes, threshold: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until processes other than this run's use less than ``threshold`` cores over a
    1 s sample; returns the last sample (cores)."""
    deadline, other = time.monotonic() + timeout, 0.0
    while True:
        own0 = sum(cpu_seconds(p) for _, p in procs.procs) + time.process_time()
        busy0, t0 = system_busy_s(), time.monotonic()
        time.sleep(1.0)
        own1 = sum(cpu_seconds(p) for _, p in procs.procs) + time.process_time()
        other = max(0.0, (system_busy_s() - busy0) - (own1 - own0)) / (time.monotonic() - t0)
        if other < threshold or time.monotonic() >= deadline:
            return other
        log(f"the machine is busy ({other:.2f} cores used by other processes): waiting for it to calm down")


async def run_level(target: Target, concurrency: int, n: int, *, stream: bool, args: argparse.Namespace,
                    upstream: subprocess.Popen[bytes]) -> dict[str, Any]:
    """``n`` requests from ``concurrency`` closed-loop virtual users; the level's statistics."""
    client = CLIENTS[args.client](concurrency, args.timeout)
    body = request_body(stream, args.max_tokens)
    headers = {**target.headers, "content-type": "application/json"}
    samples: list[Sample] = []
    remaining = n

    async def user() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            samples.append(await client.one(target.chat_url, headers, body, stream))

    try:
        cpu_t0, cpu_u0, cpu_c0 = cpu_seconds(target.proc), cpu_seconds(upstream), time.process_time()
        busy0, t0 = system_busy_s(), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        busy1 = system_busy_s()
        cpu_t1, cpu_u1, cpu_c1 = cpu_seconds(target.proc), cpu_seconds(upstream), time.process_time()
    finally:
        await client.close()
    ok = [s for s in samples if s.ok]
    lat = [s.latency * 1e3 for s in ok]
    errors = [s.error for s in samples if not s.ok]
    per_req = 1e3 / max(1, len(samples))
    stats: dict[str, Any] = {
        "requests": len(samples), "errors": len(errors), "wall_s": wall,
        "req_per_s": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "target_cpu_ms_per_req": (cpu_t1 - cpu_t0) * per_req,
        "upstream_cpu_ms_per_req": (cpu_u1 - cpu_u0) * per_req,
        "client_cpu_ms_per_req": (cpu_c1 - cpu_c0) * per_req,
        "target_cpu_util": (cpu_t1 - cpu_t0) / wall if wall > 0 else 0.0,
        # What the load generator and the fake upstream used (cores): must stay well below the spare core.
        "load_side_cores": ((cpu_u1 - cpu_u0) + (cpu_c1 - cpu_c0)) / wall if wall > 0 else 0.0,
        # CPU the rest of the machine used meanwhile (cores): other work on a shared box skews the numbers.
        "other_load_cores": max(0.0, (busy1 - busy0) - (cpu_t1 - cpu_t0) - (cpu_u1 - cpu_u0) - (cpu_c1 - cpu_c0))
        / wall if wall > 0 else 0.0,
        "missing_usage": sum(1 for s in ok if not s.usage),
    }
    if stream:
        ttft = [s.ttft * 1e3 for s in ok if s.ttft is not None]
        stats.update(ttft_p50_ms=pct(ttft, 50), ttft_p99_ms=pct(ttft, 99))
    if errors:
        stats["first_error"] = errors[0]
    return stats


# ---------------------------------------------------------------------------------------------- the run


def level_key(concurrency: int, stream: bool) -> str:
    return f"{'stream_' if stream else ''}c{concurrency}"


def measure_target(target: Target, targets: list[Target], args: argparse.Namespace,
                   upstream: subprocess.Popen[bytes]) -> dict[str, Any]:
    """One round of one target, the other target servers paused."""
    others = [t for t in targets if t is not target] if args.pause else []
    for o in others:
        signal_group(o.proc, signal.SIGSTOP)
    try:
        run_async(run_level(target, 4, args.settle, stream=False, args=args, upstream=upstream))
        out: dict[str, Any] = {}
        for c in args.levels:
            out[level_key(c, False)] = run_async(
                run_level(target, c, args.requests, stream=False, args=args, upstream=upstream))
        out[level_key(args.stream_concurrency, True)] = run_async(
            run_level(target, args.stream_concurrency, args.stream_requests, stream=True, args=args,
                      upstream=upstream))
        return out
    finally:
        for o in others:
            signal_group(o.proc, signal.SIGCONT)


def check_target(target: Target, args: argparse.Namespace, upstream: subprocess.Popen[bytes],
                 tries: int = 3) -> str | None:
    """One non-streamed and one streamed request must come back right (a few tries: a proxy may still be
    finishing its start-up); the reason if not."""
    reason = None
    for _ in range(tries):
        reason = None
        for stream in (False, True):
            stats = run_async(run_level(target, 1, 1, stream=stream, args=args, upstream=upstream))
            if stats["errors"]:
                reason = f"{'streamed' if stream else 'non-streamed'} check failed: {stats.get('first_error')}"
                break
        if reason is None:
            return None
        time.sleep(2)
    return reason


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target, level and metric: the median over rounds."""
    out: dict[str, Any] = {}
    for tname in rounds[0]:
        out[tname] = {}
        for level, first in rounds[0][tname].items():
            out[tname][level] = {}
            for key, value in first.items():
                if isinstance(value, (int, float)):
                    vals = [r[tname][level][key] for r in rounds if tname in r]
                    med = statistics.median(vals)
                    out[tname][level][key] = med if key != "errors" else int(sum(vals))
            out[tname][level]["errors_per_round"] = [r[tname][level]["errors"] for r in rounds if tname in r]
    return out


def versions() -> dict[str, str]:
    out = {}
    for p in ("serving", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "openai", "aiohttp",
              "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[p] = importlib.metadata.version(p)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()
    return info


def plot(summary: dict[str, Any], level_keys: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    labels = [k.replace("stream_c", "stream c=") if k.startswith("stream") else k.replace("c", "c=")
              for k in level_keys]
    panels = [("req_per_s", "throughput (req/s)"), ("p50_ms", "latency p50 (ms)"), ("p99_ms", "latency p99 (ms)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 4.8))
    colors = ["#888888", "#2b7bba", "#e08a2b", "#55a868", "#c44e52", "#8172b2"]
    width = 0.8 / max(1, len(names))
    for ax, (key, ptitle) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            vals = [summary[name].get(k, {}).get(key, float("nan")) for k in level_keys]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(level_keys))]
            bars = ax.bar(xs, vals, width, label=name, color=colors[i % len(colors)])
            ax.bar_label(bars, fmt="%.0f" if key == "req_per_s" else "%.1f", fontsize=7)
        ax.set_xticks(range(len(level_keys)), labels)
        if key == "req_per_s":
            ax.set_yscale("log")  # the direct upstream is one to two orders of magnitude above the proxies
        ax.set_title(ptitle)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(summary: dict[str, Any], level_keys: list[str]) -> None:
    head = (f"{'target':<18} {'level':<11} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'TTFT p50':>9} "
            f"{'errors':>6} {'CPU ms/req':>10} {'bg cores':>8}")
    print(head)
    print("-" * len(head))
    for name, levels in summary.items():
        for k in level_keys:
            s = levels.get(k)
            if s is None:
                continue
            ttft = f"{s['ttft_p50_ms']:9.2f}" if "ttft_p50_ms" in s else f"{'':>9}"
            cpu = s["target_cpu_ms_per_req"] if name != "upstream-direct" else s["upstream_cpu_ms_per_req"]
            print(f"{name:<18} {k:<11} {s['req_per_s']:8.0f} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} "
                  f"{s['p99_ms']:8.2f} {ttft} {s['errors']:6d} {cpu:10.2f} {s['other_load_cores']:8.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.policy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each target once per round (median reported)")
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels of non-streamed requests")
    ap.add_argument("--requests", type=int, default=400, help="requests per level and round")
    ap.add_argument("--stream-concurrency", type=int, default=8)
    ap.add_argument("--stream-requests", type=int, default=None, help="streamed requests per round (--requests)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests per target before the rounds")
    ap.add_argument("--settle", type=int, default=20, help="requests before each target's round (after resume)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 60 requests per level, short warm-up (CI-sized)")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp" if importlib.util.find_spec("aiohttp")
                    else "httpx", help="load generator HTTP client (default aiohttp: the cheaper one per request)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    ap.add_argument("--no-pause", dest="pause", action="store_false",
                    help="do not SIGSTOP the other target servers while one is measured")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="before each target's round, wait up to this many seconds until other processes use "
                         "less than --quiet-cores (0: do not wait)")
    ap.add_argument("--quiet-cores", type=float, default=0.25, help="see --wait-quiet")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="the fake upstream's answer delay")
    ap.add_argument("--upstream-impl", choices=("raw", "starlette"), default="raw",
                    help="fake upstream server implementation (raw asyncio is the fast one)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated gateway variants (default all: {', '.join(v.name for v in VARIANTS)})")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    ap.add_argument("--litellm-venv", type=Path, default=DEFAULT_LITELLM_VENV,
                    help="LiteLLM's virtualenv, created on first use (default %(default)s)")
    ap.add_argument("--litellm-spec", default=LITELLM_SPEC, help="pip requirement installed into that venv")
    ap.add_argument("--redis-url", default=None,
                    help="Redis for variants that need one (none does yet); default: a throwaway redis-server "
                         "on a free port when such a variant runs and the binary exists")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where policy.json / policy.png go")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs (a temp dir)")
    args = ap.parse_args(argv)
    args.levels = [int(x) for x in str(args.levels).split(",") if x]
    if args.quick:
        args.rounds, args.requests, args.warmup, args.settle, args.wait_quiet = 1, 60, 40, 8, 0.0
    if args.stream_requests is None:
        args.stream_requests = args.requests
    if args.rounds < 1 or args.requests < 1 or not args.levels:
        ap.error("--rounds, --requests and --levels must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [v.name for v in VARIANTS]
    wanted = args.variants.split(",") if args.variants else names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        log(f"unknown variant(s) {unknown}; known: {names}")
        return 2
    variants = [v for v in VARIANTS if v.name in wanted]
    t_start = time.monotonic()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    procs = Processes()
    atexit.register(procs.stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    skipped: dict[str, str] = {}
    litellm_info: dict[str, Any] = {"spec": args.litellm_spec, "venv": str(args.litellm_venv),
                                    "docs": "settings: litellm_config() and LITELLM_ENV in benchmarks/policy.py"}
    all_rounds: list[dict[str, Any]] = []
    redis_url: str | None = args.redis_url
    try:
        # The fake upstream.
        port = free_port()
        up_log = work / "fake-upstream.log"
        upstream = procs.start("fake-upstream", [PY, "-m", "benchmarks.fake_upstream", "--port", str(port),
                                                 "--delay-ms", str(args.delay_ms), "--impl", args.upstream_impl],
                               up_log, {**os.environ, "PYTHONPATH": _pythonpath()})
        wait_http(f"http://127.0.0.1:{port}/health", upstream, 30, up_log)
        env = BenchEnv(f"http://127.0.0.1:{port}/v1", args.redis_url)
        log(f"fake upstream ({args.upstream_impl}) at {env.upstream_url}; work dir {work}")
        if any(v.needs_redis for v in variants) and env.redis_url is None:
            url = start_throwaway_redis(procs, work)
            if url is None:
                for v in variants:
                    if v.needs_redis:
                        skipped[v.name] = "needs Redis: no --redis-url and no redis-server binary"
                variants = [v for v in variants if not v.needs_redis]
            env = BenchEnv(env.upstream_url, url)
        redis_url = env.redis_url

        targets = [Target("upstream-direct", "direct", f"http://127.0.0.1:{port}",
                          {"authorization": "Bearer sk-dummy-upstream-key"}, None,
                          {"description": "the fake upstream, no proxy (client + upstream floor)"})]
        for v in variants:
            try:
                targets.append(start_gateway(procs, v, env, work))
            except (RuntimeError, TimeoutError) as exc:
                skipped[v.name] = str(exc)
                log(f"SKIPPING {v.name}: {exc}")
        if args.no_litellm:
            skipped["litellm"] = "--no-litellm"
        else:
            exe, note = ensure_litellm(args.litellm_venv, args.litellm_spec, work)
            if exe is None:
                skipped["litellm"] = note
                log(f"SKIPPING litellm: {note}")
            else:
                litellm_info.update(venv_note=note, versions=litellm_version(args.litellm_venv))
                try:
                    t = start_litellm(procs, exe, env.upstream_url, work)
                    targets.append(t)
                    litellm_info.update({k: v for k, v in t.info.items() if k != "log"})
                except (RuntimeError, TimeoutError) as exc:
                    skipped["litellm"] = str(exc)
                    log(f"SKIPPING litellm: {exc}")

        for t in list(targets):
            reason = check_target(t, args, upstream)
            if reason:
                log(f"SKIPPING {t.name}: {reason}")
                skipped[t.name] = reason
                targets.remove(t)
        log("targets: " + ", ".join(f"{t.name} ({t.base_url})" for t in targets))
        for t in targets:  # warm-up: imports, connection pools, caches
            others = [o for o in targets if o is not t] if args.pause else []
            for o in others:
                signal_group(o.proc, signal.SIGSTOP)
            try:
                run_async(run_level(t, 8, args.warmup, stream=False, args=args, upstream=upstream))
                run_async(run_level(t, 8, max(8, args.warmup // 4), stream=True, args=args, upstream=upstream))
            finally:
                for o in others:
                    signal_group(o.proc, signal.SIGCONT)

        for r in range(args.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            row: dict[str, Any] = {}
            for t in order:
                if args.wait_quiet > 0:
                    wait_quiet(procs, args.quiet_cores, args.wait_quiet)
                row[t.name] = measure_target(t, targets, args, upstream)
                s = row[t.name]
                log(f"round {r + 1}/{args.rounds} {t.name}: " + ", ".join(
                    f"{k} {v['req_per_s']:.0f} req/s p50 {v['p50_ms']:.1f} ms" + (f" ({v['errors']} err)"
                                                                                   if v["errors"] else "")
                    for k, v in s.items())
                    + f"; other load {max(v['other_load_cores'] for v in s.values()):.2f} cores")
            all_rounds.append(row)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()

    level_keys = [level_key(c, False) for c in args.levels] + [level_key(args.stream_concurrency, True)]
    summary = summarize(all_rounds) if all_rounds else {}
    duration = time.monotonic() - t_start
    direct = summary.get("upstream-direct", {})
    result = {
        "benchmark": "policy", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "duration_s": round(duration, 1),
        "machine": machine(), "versions": versions(),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "method": ("closed loop, N requests per concurrency level; rounds interleave the targets (rotating order), "
                   "the other target servers SIGSTOPped while one is measured; summary: median over rounds of each "
                   "metric, errors summed over rounds"),
        "request": json.loads(request_body(False, args.max_tokens)), "answer": ANSWER,
        "fake_upstream": {"impl": args.upstream_impl, "delay_ms": args.delay_ms,
                          "direct_req_per_s": {k: v["req_per_s"] for k, v in direct.items()}},
        "targets": {t.name: {"kind": t.kind, **{k: v for k, v in t.info.items() if k not in ("config", "log")}}
                    for t in targets} if all_rounds else {},
        "gateway_configs": {t.name: t.info.get("config") for t in targets if t.kind == "gateway"},
        "litellm": litellm_info, "skipped": skipped, "redis_url": redis_url,
        "summary_median": summary, "policy_overhead": policy_overhead(summary), "rounds": all_rounds,
    }
    out_json = args.out_dir / "policy.json"
    out_json.write_text(json.dumps(result, indent=2, default=str))
    if summary:
        lv = litellm_info.get("versions", {}).get("litellm")
        title = (f"Proxy cost in front of one fake OpenAI upstream, {os.cpu_count()} CPUs, 1 worker each, "
                 f"{args.requests} req/level, median of {args.rounds} round(s)" + (f"; LiteLLM {lv}" if lv else ""))
        plot(summary, level_keys, args.out_dir / "policy.png", title)
        print()
        print_table(summary, level_keys)
    proxies = [lv for name, lv in summary.items() if name != "upstream-direct"]
    if proxies:
        worst = max(s["load_side_cores"] for lv in proxies for s in lv.values())
        busy = max(s["other_load_cores"] for lv in summary.values() for s in lv.values())
        log(f"load generator + fake upstream used at most {worst:.2f} cores while a proxy was measured; "
            f"other processes on the machine at most {busy:.2f} cores (bg cores)")
    for name, reason in skipped.items():
        log(f"skipped {name}: {reason.splitlines()[0] if reason else ''}")
    log(f"wrote {out_json} and policy.png in {duration:.0f} s")
    if args.keep_logs or any(k != "litellm" or v != "--no-litellm" for k, v in skipped.items()):
        log(f"server logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
