"""Analysis of a rollout step from the gateway's per-engine metrics.

The gateway labels its metrics with the engine that answered, and an engine is one model version, so the
challenger and the champion are compared on the same requests window: counters are read at the start of a step
and again at each check, and the differences are judged against `AnalysisConfig`'s limits.

Sources: the gateway's own `/metrics` (local; one gateway replica), every gateway replica's own metrics port found
through one DNS name (Kubernetes: the chart's headless gateway-metrics Service), or the Prometheus HTTP API (sums
over every gateway pod).
"""

from __future__ import annotations

import math
import socket
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.config import AnalysisConfig


@dataclass
class EngineStats:
    """Cumulative counters of one engine in one model group (or their difference over a window)."""

    requests: float = 0.0
    errors: float = 0.0  # answered with a 5xx
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    gate_pass: float = 0.0
    gate_fail: float = 0.0
    escalated: float = 0.0
    shadow_requests: float = 0.0
    shadow_errors: float = 0.0

    def minus(self, before: EngineStats) -> EngineStats:
        """The window between `before` and this snapshot (a counter that went down restarted: take it whole)."""
        def d(now: float, then: float) -> float:
            return now - then if now >= then else now

        out = EngineStats(**{f.name: d(getattr(self, f.name), getattr(before, f.name))  # type: ignore[arg-type]
                             for f in fields(self) if f.name != "ttft_buckets"})
        out.ttft_buckets = {le: d(c, before.ttft_buckets.get(le, 0.0)) for le, c in self.ttft_buckets.items()}
        return out

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def ttft_samples(self) -> float:
        return self.ttft_buckets.get(math.inf, 0.0)

    def ttft_quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket that holds the q-th sample."""
        total = self.ttft_samples
        if total <= 0:
            return None
        rank, prev_le, prev_count = q * total, 0.0, 0.0
        for le in sorted(self.ttft_buckets):
            count = self.ttft_buckets[le]
            if count >= rank:
                if math.isinf(le):
                    return prev_le
                in_bucket = count - prev_count
                return prev_le + (le - prev_le) * ((rank - prev_count) / in_bucket if in_bucket else 1.0)
            prev_le, prev_count = le, count
        return prev_le

    @property
    def gate_pass_rate(self) -> float | None:
        n = self.gate_pass + self.gate_fail
        return self.gate_pass / n if n else None

    @property
    def escalation_rate(self) -> float | None:
        n = self.gate_pass + self.gate_fail
        return self.escalated / n if n else None


Snapshot = dict[str, EngineStats]  # engine -> stats, for one model group


class MetricsSource(Protocol):
    def snapshot(self, group: str) -> Snapshot:
        """Cumulative per-engine counters of `group` now."""
        ...


def _add_sample(out: dict[str, EngineStats], name: str, labels: dict[str, str], value: float) -> None:
    engine = labels.get("engine")
    if not engine:
        return
    st = out.setdefault(engine, EngineStats())
    if name == "serving_requests_total":
        st.requests += value
        if labels.get("status_code", "").startswith("5"):
            st.errors += value
    elif name == "serving_time_to_first_token_seconds_bucket":
        le = float(labels["le"])
        st.ttft_buckets[le] = st.ttft_buckets.get(le, 0.0) + value
    elif name == "serving_engine_answers_total":
        outcome = labels.get("outcome")
        if outcome in ("gate_pass", "gate_fail", "escalated"):
            setattr(st, outcome, getattr(st, outcome) + value)
    elif name == "serving_shadow_requests_total":
        st.shadow_requests += value
        if labels.get("status_code", "").startswith("5"):
            st.shadow_errors += value


def parse_exposition(text: str, group: str) -> Snapshot:
    """Per-engine stats of `group` from a Prometheus text exposition (the gateway's /metrics)."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model_group") == group:
                _add_sample(out, s.name, s.labels, s.value)
    return out


class GatewayScrape:
    """Reads the gateway's /metrics (one replica: the local default)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0):
        self.url = base_url.rstrip("/") + "/metrics"
        self.timeout_s = timeout_s

    def snapshot(self, group: str) -> Snapshot:
        resp = httpx.get(self.url, timeout=self.timeout_s)
        resp.raise_for_status()
        return parse_exposition(resp.text, group)


class ReplicaScrape:
    """Reads every gateway replica's own metrics port: the URL's host name resolves to one address per replica (a
    headless Service), each is scraped and the counters are summed. A replica that does not answer fails the
    snapshot (a partial sum would look like a counter reset)."""

    def __init__(self, url: str, timeout_s: float = 10.0,
                 resolve: Callable[[str, int], list[str]] | None = None):
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname or parts.port is None:
            raise ValueError(f"gateway metrics URL needs a host and a port: {url!r}")
        self.url, self.parts, self.timeout_s = url, parts, timeout_s
        self._resolve = resolve or self._addresses

    def _addresses(self, host: str, port: int) -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})

    def targets(self) -> list[str]:
        """The URL of each replica (one per address of the host name)."""
        p = self.parts
        path = p.path or "/metrics"
        out = []
        assert p.hostname is not None and p.port is not None  # checked in __init__
        for addr in self._resolve(p.hostname, p.port):
            host = f"[{addr}]" if ":" in addr else addr
            out.append(f"{p.scheme}://{host}:{p.port}{path}")
        return out

    def snapshot(self, group: str) -> Snapshot:
        targets = self.targets()
        if not targets:
            raise RuntimeError(f"no gateway replica behind {self.url}")
        snaps = []
        for target in targets:
            resp = httpx.get(target, timeout=self.timeout_s)
            resp.raise_for_status()
            snaps.append(parse_exposition(resp.text, group))
        return merge(snaps)


class PrometheusAPI:
    """Reads the same counters from Prometheus, summed over every gateway pod."""

    QUERIES = (
        ("serving_requests_total", "engine, status_code"),
        ("serving_time_to_first_token_seconds_bucket", "engine, le"),
        ("serving_engine_answers_total", "engine, outcome"),
        ("serving_shadow_requests_total", "engine, status_code"),
    )

    def __init__(self, base_url: str, timeout_s: float = 10.0):
        self.url = base_url.rstrip("/") + "/api/v1/query"
        self.timeout_s = timeout_s

    def snapshot(self, group: str) -> Snapshot:
        out: Snapshot = {}
        for metric, by in self.QUERIES:
            query = f'sum by ({by}) ({metric}{{model_group="{group}"}})'
            resp = httpx.get(self.url, params={"query": query}, timeout=self.timeout_s)
            resp.raise_for_status()
            for item in resp.json().get("data", {}).get("result", []):
                _add_sample(out, metric, item["metric"], float(item["value"][1]))
        return out


@dataclass(frozen=True)
class Verdict:
    """`pass` (limits met with enough samples), `fail` (a limit breached) or `wait` (too few samples yet)."""

    result: str
    reasons: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)


def judge(challenger: EngineStats, champion: EngineStats | None, cfg: AnalysisConfig) -> Verdict:
    """Judge the challenger's window against absolute limits and against the champion's same window."""
    figures: dict[str, Any] = {
        "requests": challenger.requests, "error_rate": challenger.error_rate,
        "ttft_p95_s": challenger.ttft_quantile(0.95), "gate_pass_rate": challenger.gate_pass_rate,
        "escalation_rate": challenger.escalation_rate,
        "champion_ttft_p95_s": champion.ttft_quantile(0.95) if champion else None,
        "champion_error_rate": champion.error_rate if champion else None,
    }
    reasons: list[str] = []
    er = challenger.error_rate
    # errors are judged as soon as they exceed what min_requests could still excuse
    if er is not None and challenger.errors > cfg.max_error_rate * max(challenger.requests, cfg.min_requests):
        reasons.append(f"error rate {er:.1%} > {cfg.max_error_rate:.1%} ({challenger.errors:g} of "
                       f"{challenger.requests:g} requests)")
    gated = challenger.gate_pass + challenger.gate_fail
    # a version serves model-group requests (counted in requests) and route tiers (counted as gated answers)
    enough = max(challenger.requests, gated) >= cfg.min_requests
    p95 = figures["ttft_p95_s"]
    if challenger.ttft_samples >= cfg.min_ttft_samples and p95 is not None:
        if cfg.max_ttft_p95_s is not None and p95 > cfg.max_ttft_p95_s:
            reasons.append(f"TTFT p95 {p95:.3f} s > {cfg.max_ttft_p95_s:g} s")
        base = figures["champion_ttft_p95_s"]
        if (cfg.max_ttft_p95_ratio is not None and base and champion is not None
                and champion.ttft_samples >= cfg.min_ttft_samples and p95 > base * cfg.max_ttft_p95_ratio):
            reasons.append(f"TTFT p95 {p95:.3f} s > {cfg.max_ttft_p95_ratio:g} x champion's {base:.3f} s")
    if gated >= cfg.min_requests:
        gpr, esc = challenger.gate_pass_rate, challenger.escalation_rate
        if cfg.min_gate_pass_rate is not None and gpr is not None and gpr < cfg.min_gate_pass_rate:
            reasons.append(f"quality-gate pass rate {gpr:.1%} < {cfg.min_gate_pass_rate:.1%}")
        if cfg.max_escalation_rate is not None and esc is not None and esc > cfg.max_escalation_rate:
            reasons.append(f"escalation rate {esc:.1%} > {cfg.max_escalation_rate:.1%}")
    if reasons:
        return Verdict("fail", tuple(reasons), figures)
    return Verdict("pass" if enough else "wait", (), figures)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum several snapshots (e.g. scrapes of several gateway replicas)."""
    out: Snapshot = {}
    for snap in snapshots:
        for engine, st in snap.items():
            acc = out.setdefault(engine, EngineStats())
            for f in fields(st):
                if f.name == "ttft_buckets":
                    for le, c in st.ttft_buckets.items():
                        acc.ttft_buckets[le] = acc.ttft_buckets.get(le, 0.0) + c
                else:
                    setattr(acc, f.name, getattr(acc, f.name) + getattr(st, f.name))
    return out
