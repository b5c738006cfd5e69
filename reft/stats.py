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
import pandas as pd
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
    mean, low, high, n = t_interval(b - a, level)
    return Paired(n, mean, low, high, verdict(low, high, margin))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean, and the Student-t ``level`` interval of the mean (NaN bounds for fewer than 2 values), and n."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        raise ValueError("Need at least one value.")
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def summarize(rows: pd.DataFrame, by: Sequence[str], values: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """Per group of ``by`` (e.g. method and partition), for each column of ``values`` over the rows (one
    per seed): ``<v>_mean``, ``<v>_std``, ``<v>_n``, ``<v>_ci_low``, ``<v>_ci_high``. NaN values are left
    out (``<v>_n`` counts the others: for a time to accuracy, the seeds that reached it)."""
    out = []
    for key, g in rows.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for v in values:
            vals = g[v].dropna()  # e.g. a time to accuracy is NaN for a seed that never reached it
            mean, lo, hi, n = t_interval(vals, level) if len(vals) else (float("nan"),) * 3 + (0,)
            std = float(vals.std(ddof=1)) if n > 1 else float("nan")
            row |= {f"{v}_mean": mean, f"{v}_std": std, f"{v}_n": n, f"{v}_ci_low": lo, f"{v}_ci_high": hi}
        out.append(row)
    return pd.DataFrame(out)


def versus(
    rows: pd.DataFrame, reference: str, value: str = "final_acc", method: str = "method",
    by: Sequence[str] = ("partition",), pair: str = "seed", level: float = 0.95, margin: float = MARGIN,
) -> pd.DataFrame:  # fmt: skip
    """Every method against ``reference``, paired on ``pair`` (the seed) within each group of ``by``: the
    mean difference (method - reference), its interval and the verdict of the method against the reference."""
    out = []
    for key, g in rows.groupby(list(by), sort=False):
        ref = g[g[method] == reference].set_index(pair)[value]
        for m, gm in g[g[method] != reference].groupby(method, sort=False):
            other = gm.set_index(pair)[value]
            seeds = sorted(set(ref.index) & set(other.index))
            if not seeds:
                continue
            d = paired(ref.loc[seeds].to_numpy(), other.loc[seeds].to_numpy(), level, margin)
            out.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), method: m,
                        "reference": reference, "seeds": d.n, "diff_mean": d.mean, "diff_ci_low": d.low,
                        "diff_ci_high": d.high, "verdict": d.verdict})  # fmt: skip
    return pd.DataFrame(out)


def seeds_to_decide(
    diffs: Sequence[float], level: float = 0.95, margin: float = MARGIN, max_n: int = 1000
) -> int | None:
    """How many paired seeds would decide a comparison, if the per-seed differences ``diffs`` kept their
    mean and sd: the smallest n whose t-interval gives a verdict other than inconclusive (a planning
    estimate, not a result). ``None``: not within ``max_n``."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        raise ValueError(f"Need at least two per-seed differences; got {len(d)}.")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    for n in range(2, max_n + 1):
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
        if verdict(mean - half, mean + half, margin) != "inconclusive":
            return n
    return None
