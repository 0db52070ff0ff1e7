"""Small statistics shared by the benchmarks."""

from __future__ import annotations


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of `values` with linear interpolation (NaN when empty)."""
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
