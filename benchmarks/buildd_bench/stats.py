"""Medians, percentiles, geometric means, and how the report writes numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def geomean(values: Sequence[float]) -> float:
    """The geometric mean; NaN unless every value is a positive finite number."""
    usable = [v for v in values if v > 0 and math.isfinite(v)]
    if not usable or len(usable) != len(values):
        return math.nan
    return math.exp(sum(math.log(v) for v in usable) / len(usable))


def pctl(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def fmt_s(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.3f}"


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def fmt_x(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def fmt_ms_signed(seconds: float) -> str:
    """A difference: "+0.6 ms", "-1.2 ms"."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:+.1f} ms"
