"""Paired comparisons over seeds: the mean difference, its t-interval, and a verdict that follows from it.

The rule, used for every verdict the companion writes: with the 95% interval [lo, hi] of the paired
difference (B - A, in accuracy), B is **better** when lo > 0, **worse** when hi < 0, **on par** when the
whole interval lies within +-``margin`` (default 1 point), and **inconclusive** otherwise (the interval
contains 0 but is too wide to rule out a difference larger than the margin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MARGIN = 0.01


@dataclass(frozen=True)
class Paired:
    """Mean paired difference over ``n`` seeds with its ``level`` t-interval and the verdict."""

    n: int
    mean: float
    low: float
    high: float
    verdict: str


def verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """better / worse / on par / inconclusive for an interval of a difference (see the module docstring)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}.")
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "on par" if -margin <= low and high <= margin else "inconclusive"


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95, margin: float = MARGIN) -> Paired:
    """Compare ``b`` with ``a`` seed by seed (``a[i]`` and ``b[i]`` from the same seed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"Need two equally long, non-empty lists of per-seed values; got {a.shape} and {b.shape}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}.")
    d = b - a
    n, mean = len(d), float(d.mean())
    if n < 2:
        return Paired(n, mean, float("nan"), float("nan"), "inconclusive")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return Paired(n, mean, mean - half, mean + half, verdict(mean - half, mean + half, margin))
