"""Front-end overhead: the platform (Ray Serve proxy -> gateway -> LLMServer) against bare vLLM, same model.

Both servers run side by side on this machine with the same model (the tiny random Llama, ~3M parameters, so
the engine is fast and front-end costs show). Rounds are interleaved (bare, platform, platform, bare, ...); while
one server is measured the other's vLLM engine processes are paused (SIGSTOP), because an idle vLLM CPU worker
busy-polls and would take one of the two cores. Each round measures, streamed, with a fixed output length
(`ignore_eos`):

* concurrency 1: TTFT p50/p95, inter-token latency (gap between content chunks) p50/p95, chunk sizes;
* concurrency 8: output tokens/s, TTFT p50/p95, chunk gap p95;
* CPU seconds spent per request by the front-end processes (bare: the api_server process; platform: the Ray
  Serve HTTP proxy, the gateway replica and the LLMServer replica process), to show where the time goes;
* optionally vLLM's own `vllm.benchmarks.serve` client against both URLs.

Writes benchmarks/results/overhead.json and overhead.png.

    .venv/bin/python benchmarks/overhead.py [--rounds 4] [--output-len 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

if __package__ in (None, ""):  # run as a script (`python benchmarks/overhead.py`): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.stats import pct
from serving.engines.ray_llm import CPU_DEFAULT_DTYPE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
WORDS = "the of and to in is was for on that with as by at from his her an were which are this be".split()


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


@dataclass
class RequestResult:
    ttft: float
    gaps: list[float]
    chunk_tokens: list[int]
    tokens: int
    latency: float
    ok: bool = True


@dataclass
class Target:
    name: str
    url: str
    model: str
    pids: list[int] = field(default_factory=list)  # front-end processes (HTTP, routing, OpenAI layer)
    engine_pids: list[int] = field(default_factory=list)  # vLLM engine core / worker processes


async def one_request(client: httpx.AsyncClient, target: Target, prompt: str, output_len: int) -> RequestResult:
    body = {"model": target.model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, last, gaps, chunk_tokens, tokens = None, None, [], [], 0
    async with client.stream("POST", f"{target.url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return RequestResult(0, [], [], 0, time.perf_counter() - t0, ok=False)
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if not choices or not choices[0].get("text"):
                continue
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
            chunk_tokens.append(1)
    return RequestResult(ttft or 0.0, gaps, chunk_tokens, tokens, time.perf_counter() - t0)


def make_prompt(rng: random.Random, n_words: int = 32) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def run_level(target: Target, concurrency: int, n_requests: int, output_len: int, seed: int,
                    max_seconds: float | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    prompts = [make_prompt(rng) for _ in range(n_requests)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    # TCP_NODELAY like aiohttp (vLLM's benchmark client): without it Nagle + delayed ACKs stall some servers.
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=nodelay)
    async with httpx.AsyncClient(timeout=120, transport=transport) as client:
        deadline = time.perf_counter() + max_seconds if max_seconds else None

        async def worker() -> None:
            while not queue.empty() and (deadline is None or time.perf_counter() < deadline):
                prompt = queue.get_nowait()
                results.append(await one_request(client, target, prompt, output_len))

        cpu0, ecpu0 = cpu_seconds(target.pids), cpu_seconds(target.engine_pids)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu1, ecpu1 = cpu_seconds(target.pids), cpu_seconds(target.engine_pids)
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in ok)
    chunks = sum(len(r.chunk_tokens) for r in ok)
    return {
        "requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
        "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p95_ms": pct(ttfts, 95) * 1e3,
        "itl_p50_ms": pct(gaps, 50) * 1e3, "itl_p95_ms": pct(gaps, 95) * 1e3,
        "output_tokens_per_s": tokens / wall if wall else 0.0,
        "tokens_per_chunk": tokens / chunks if chunks else float("nan"),
        "frontend_cpu_ms_per_request": (cpu1 - cpu0) * 1e3 / max(1, len(ok)),
        "engine_cpu_ms_per_request": (ecpu1 - ecpu0) * 1e3 / max(1, len(ok)),
    }


def profile_frontend(target: Target, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy (sampling, non-blocking) on each front-end process while a c=8 load runs; top frames per process."""
    import collections

    py_spy = Path(PY).with_name("py-spy")
    procs, raws = [], []
    for pid in target.pids:
        try:
            name = psutil.Process(pid).name()
            cmd = " ".join(psutil.Process(pid).cmdline())[:80]
        except psutil.NoSuchProcess:
            continue
        if name == "haproxy":
            continue  # C, not Python: its CPU time is in frontend_cpu_ms_per_request
        raw = out.with_name(f"{out.stem}-{pid}.txt")
        procs.append((pid, cmd, subprocess.Popen(
            [str(py_spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(raw),
             "--nonblocking", "-r", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        raws.append(raw)
    asyncio.run(run_level(target, 8, 10_000, 64, seed=7, max_seconds=seconds + 2))
    report: dict[str, Any] = {}
    lines = []
    for (pid, cmd, proc), raw in zip(procs, raws, strict=True):
        proc.wait()
        if not raw.exists():
            continue
        inclusive: collections.Counter[str] = collections.Counter()
        total = busy = 0
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            total += int(n)
            if frames[-1].startswith(("Thread.run", "select", "epoll", "_worker (concurrent")):
                continue  # idle threads waiting
            busy += int(n)
            for fr in dict.fromkeys(f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in frames):
                inclusive[fr] += int(n)
        top = [(f, round(100 * c / max(1, busy), 1)) for f, c in inclusive.most_common(40)]
        report[f"{pid} {cmd}"] = {"samples": total, "busy_share": round(busy / max(1, total), 3), "top_inclusive": top}
        lines.append(f"== {cmd} (pid {pid}): {busy}/{total} busy samples")
        lines += [f"  {pct_:5.1f}%  {frame}" for frame, pct_ in top]
        raw.unlink()
    out.write_text("\n".join(lines) + "\n")
    return report


def pause(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def measure(target: Target, others: list[Target], output_len: int, args: argparse.Namespace, r: int) -> dict:
    """One round for one target. The other targets' vLLM engine processes are paused (SIGSTOP) meanwhile:
    an idle vLLM CPU worker busy-polls its message queue and would take one of the machine's two cores."""
    for other in others:
        pause(other.engine_pids, signal.SIGSTOP)
    pause(target.engine_pids, signal.SIGCONT)
    try:
        asyncio.run(run_level(target, 2, 4, 8, seed=555))  # settle after resume
        return {
            "c1": asyncio.run(run_level(target, 1, args.c1_requests, output_len, seed=r)),
            "c8": asyncio.run(run_level(target, 8, args.c8_requests, output_len, seed=100 + r)),
        }
    finally:
        for other in others:
            pause(other.engine_pids, signal.SIGCONT)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def start_bare_vllm(model_dir: Path, port: int, logf: Path) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "tiny", "--enforce-eager", "--dtype", CPU_DEFAULT_DTYPE,
           "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port)]
    log("starting bare vLLM: " + " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, env=env, stdout=logf.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v1/models", 300, proc)
    return proc


def platform_config(port: int, ingress: str) -> str:
    return f"""
version: 1
ray: {{num_cpus: 4, metrics_export_port: 8089, app_name: bench, serve_ingress: {ingress}}}
gateway: {{host: 127.0.0.1, port: {port}, num_cpus: 0}}
policies: {{auth: {{enabled: false}}}}
engines:
  tiny:
    model: builtin:tiny-llama
    device: cpu
    max_model_len: 2048
model_groups:
  tiny: {{engines: [tiny]}}
"""


def start_platform(port: int, ingress: str, logf: Path) -> Path:
    cfg = Path(tempfile.mkdtemp()) / "bench.yaml"
    cfg.write_text(platform_config(port, ingress))
    serving = Path(PY).with_name("serving")
    log("starting the platform: serving up --config " + str(cfg))
    with logf.open("w") as out:
        rc = subprocess.run([str(serving), "up", "--config", str(cfg), "--timeout", "600"], stdout=out,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"serving up failed ({rc}); see {logf}")
    wait_http(f"http://127.0.0.1:{port}/ready", 60)
    return cfg


def platform_pids() -> tuple[list[int], list[int]]:
    """(front-end, engine) processes: HTTP proxy or HAProxy, gateway replica, LLMServer replica | vLLM core."""
    front, engine = [], []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("ray::ProxyActor" in cmd or "ray::ServeReplica:bench:gateway" in cmd or proc.info["name"] == "haproxy"
                or "ray::ServeReplica:bench:engine-tiny" in cmd):
            front.append(proc.info["pid"])
            if "engine-tiny" in cmd:
                engine += [c.pid for c in proc.children(recursive=True)]
    return front, engine


def run_vllm_bench(target: Target, concurrency: int, n: int, output_len: int, out_dir: Path) -> dict[str, Any]:
    fname = f"vllm-bench-{target.name}-c{concurrency}.json"
    cmd = [PY, "-c", "import sys; from vllm.benchmarks.serve import add_cli_args, main;"
           "from vllm.utils.argparse_utils import FlexibleArgumentParser as P;"
           "p = P(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))",
           "--backend", "openai", "--base-url", target.url, "--endpoint", "/v1/completions",
           "--model", target.model, "--tokenizer", str(target_tokenizer), "--dataset-name", "random",
           "--random-input-len", "32", "--random-output-len", str(output_len), "--ignore-eos",
           "--num-prompts", str(n), "--max-concurrency", str(concurrency),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", fname, "--disable-tqdm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    if proc.returncode != 0:
        log(f"vllm.benchmarks.serve failed for {target.name}: {proc.stderr[-2000:]}")
        return {}
    data = json.loads((out_dir / fname).read_text())
    keep = ("output_throughput", "median_ttft_ms", "p95_ttft_ms", "median_itl_ms", "p95_itl_ms",
            "median_tpot_ms", "completed")
    return {k: data.get(k) for k in keep}


target_tokenizer: Path = Path()


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tname in rounds[0]:
        out[tname] = {}
        for level in rounds[0][tname]:
            keys = rounds[0][tname][level].keys()
            out[tname][level] = {k: statistics.median(r[tname][level][k] for r in rounds) for k in keys}
    return out


def plot(summaries: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, Any]] = {}
    for ingress, summary in summaries.items():
        series.setdefault("bare vLLM", summary["bare-vllm"])  # first phase's bare numbers
        series[f"platform ({ingress})"] = summary[f"platform-{ingress}"]
    names = list(series)
    panels = [("c1", "ttft_p50_ms", "TTFT p50, c=1 (ms)"), ("c1", "itl_p95_ms", "chunk gap p95, c=1 (ms)"),
              ("c8", "output_tokens_per_s", "output tok/s, c=8"),
              ("c8", "frontend_cpu_ms_per_request", "front-end CPU ms / request, c=8")]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.5))
    colors = ["#888888", "#2b7bba", "#e08a2b", "#55a868"]
    for ax, (level, key, title) in zip(axes, panels, strict=True):
        vals = [series[n][level][key] for n in names]
        bars = ax.bar(range(len(names)), vals, color=colors[: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title(title)
    fig.suptitle("Front-end overhead: bare vLLM vs the platform, same tiny Llama on vllm-cpu (median of rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    global target_tokenizer
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--c1-requests", type=int, default=16)
    ap.add_argument("--c8-requests", type=int, default=64)
    ap.add_argument("--bare-port", type=int, default=8101)
    ap.add_argument("--platform-port", type=int, default=8100)
    ap.add_argument("--no-vllm-bench", action="store_true", help="skip vLLM's own benchmark client")
    ap.add_argument("--profile", type=float, default=10.0,
                    help="seconds of py-spy sampling of the platform's front-end under c=8 load (0: off)")
    ap.add_argument("--ingress", default="haproxy,proxy",
                    help="platform ingress modes to measure, each against bare vLLM (ray.serve_ingress)")
    args = ap.parse_args()

    from models.tiny_llama import build_tiny_llama

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_llama()
    target_tokenizer = model_dir
    serving = str(Path(PY).with_name("serving"))
    bare_proc = start_bare_vllm(model_dir, args.bare_port, RESULTS / "overhead-bare-vllm.log")
    children = [c.pid for c in psutil.Process(bare_proc.pid).children(recursive=True)]
    bare = Target("bare-vllm", f"http://127.0.0.1:{args.bare_port}", "tiny", [bare_proc.pid], children)
    all_rounds: dict[str, list[dict[str, Any]]] = {}
    vllm_bench: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    try:
        for ingress in args.ingress.split(","):
            start_platform(args.platform_port, ingress, RESULTS / f"overhead-platform-{ingress}.log")
            front, engine = platform_pids()
            platform = Target(f"platform-{ingress}", f"http://127.0.0.1:{args.platform_port}", "tiny", front, engine)
            log(f"{bare.name} pids {bare.pids}+{bare.engine_pids}; {platform.name} pids {front}+{engine}")
            targets = [bare, platform]
            for t in targets:  # warm-up
                asyncio.run(run_level(t, 8, 16, args.output_len, seed=999))
            for r in range(args.rounds):
                row: dict[str, Any] = {}
                for t in targets if r % 2 == 0 else targets[::-1]:
                    row[t.name] = measure(t, [o for o in targets if o is not t], args.output_len, args, r)
                    c1, c8 = row[t.name]["c1"], row[t.name]["c8"]
                    log(f"[{ingress}] round {r + 1} {t.name}: c1 TTFT p50 {c1['ttft_p50_ms']:.1f} ms, "
                        f"gap p95 {c1['itl_p95_ms']:.1f} ms; c8 {c8['output_tokens_per_s']:.0f} tok/s, "
                        f"front-end CPU {c8['frontend_cpu_ms_per_request']:.0f} ms/req")
                all_rounds.setdefault(ingress, []).append(row)
            if args.profile:
                out = RESULTS / f"overhead-profile-{ingress}.txt"
                log(f"profiling the front-end processes of {platform.name} for {args.profile:g} s -> {out}")
                pause(bare.engine_pids, signal.SIGSTOP)
                try:
                    profiles[platform.name] = profile_frontend(platform, args.profile, out)
                finally:
                    pause(bare.engine_pids, signal.SIGCONT)
            if not args.no_vllm_bench:
                for t in targets:
                    others = [o for o in targets if o is not t]
                    for o in others:
                        pause(o.engine_pids, signal.SIGSTOP)
                    try:
                        for c in (1, 8):
                            log(f"vllm.benchmarks.serve against {t.name}, concurrency {c}")
                            vllm_bench[f"{ingress}/{t.name}-c{c}"] = run_vllm_bench(
                                t, c, 16 if c == 1 else 64, args.output_len, RESULTS)
                    finally:
                        for o in others:
                            pause(o.engine_pids, signal.SIGCONT)
            subprocess.run([serving, "down"], capture_output=True)
    finally:
        os.killpg(bare_proc.pid, signal.SIGTERM)
        subprocess.run([serving, "down"], capture_output=True)

    summaries = {ingress: summarize(rounds) for ingress, rounds in all_rounds.items()}
    comparison = {}
    for ingress, summary in summaries.items():
        b, p = summary["bare-vllm"], summary[f"platform-{ingress}"]
        comparison[f"platform-{ingress}"] = {
            "ttft_p50_overhead_ms_c1": p["c1"]["ttft_p50_ms"] - b["c1"]["ttft_p50_ms"],
            "ttft_p95_overhead_ms_c1": p["c1"]["ttft_p95_ms"] - b["c1"]["ttft_p95_ms"],
            "itl_p50_overhead_ms_c1": p["c1"]["itl_p50_ms"] - b["c1"]["itl_p50_ms"],
            "chunk_gap_p95_ms_c1": {"bare": b["c1"]["itl_p95_ms"], "platform": p["c1"]["itl_p95_ms"]},
            "chunk_gap_p95_ms_c8": {"bare": b["c8"]["itl_p95_ms"], "platform": p["c8"]["itl_p95_ms"]},
            "tokens_per_chunk_c8": {"bare": b["c8"]["tokens_per_chunk"], "platform": p["c8"]["tokens_per_chunk"]},
            "throughput_ratio_c8": p["c8"]["output_tokens_per_s"] / b["c8"]["output_tokens_per_s"],
            "throughput_ratio_c1": p["c1"]["output_tokens_per_s"] / b["c1"]["output_tokens_per_s"],
            "frontend_cpu_ms_per_request_c8": {"bare": b["c8"]["frontend_cpu_ms_per_request"],
                                               "platform": p["c8"]["frontend_cpu_ms_per_request"]},
            "engine_cpu_ms_per_request_c8": {"bare": b["c8"]["engine_cpu_ms_per_request"],
                                             "platform": p["c8"]["engine_cpu_ms_per_request"]},
        }
    result = {
        "benchmark": "overhead", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "model": "tiny random Llama (hidden 256, 2 layers, 4096 vocab, ~3M params), vllm-cpu 0.32, enforce_eager",
        "params": vars(args), "summary_median": summaries, "comparison": comparison,
        "rounds": all_rounds, "vllm_bench": vllm_bench, "profiles": profiles,
    }
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2))
    plot(summaries, RESULTS / "overhead.png")
    log("comparison: " + json.dumps(comparison, indent=2))
    log(f"wrote {RESULTS / 'overhead.json'} and overhead.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
