"""Hardware tiers and the policies that turn a tier into a pruning ratio.

The tier table is data (``reft/tiers.csv``, or any CSV with the same columns that a user passes in):
one row per device class, strongest first, with peak compute, an efficiency factor (the fraction of
peak that small-batch CNN training reaches; an assumption, stated per row), memory, link speeds and
the source of every figure. ``sustained_flops = peak_flops x efficiency`` is computed on load.
:func:`profile_this_machine` measures the real figure on the machine it runs on, so a client can
place itself among the tiers.

Two policies map a tier to a ratio (:func:`choose_ratios`):

* ``proportional``: a client keeps a share of the dense model's FLOPs equal to its sustained compute
  relative to the strongest tier of the table it is given (the engine passes the tiers present in the
  run, so the strongest device present trains the server's width). Uniform channel pruning at ratio
  ``r`` keeps about ``(1 - r)^2`` of the FLOPs, so ``r = 1 - sqrt(c / c_max)``, rounded to 0.01 and
  clamped to ``max_ratio``.
* ``deadline``: the largest model (smallest ratio) whose simulated local round fits a deadline and
  the tier's memory. Round time = train FLOPs (3 x forward x samples x epochs) / (sustained FLOP/s x
  the pruned model's measured speed factor, :func:`reft.costs.speed_factor`) + payload bytes x 8 /
  link bit rate, down and up. The search runs over a grid of ratios with the
  FLOPs and bytes of models that were really pruned (cached, so repeated calls are quick).
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from reft import costs, measure, models

__all__ = [
    "DEFAULT_TIERS",
    "REQUIRED_COLUMNS",
    "POLICIES",
    "load_tiers",
    "assign",
    "round_time",
    "compute_time",
    "at_ratio",
    "PolicyResult",
    "choose_ratios",
    "policy_frame",
    "profile_this_machine",
]

DEFAULT_TIERS = "tiers.csv"
REQUIRED_COLUMNS = ("device", "peak_flops", "efficiency", "memory_gb", "uplink_mbps", "downlink_mbps", "source")
_POSITIVE = ("peak_flops", "efficiency", "memory_gb", "uplink_mbps", "downlink_mbps")
POLICIES = ("proportional", "deadline")
# Usable share of a device's memory for training (the OS, the runtime and other apps hold the rest).
MEMORY_FRACTION = 0.5


def load_tiers(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a tier table; ``None`` loads the one shipped with the package.

    Returns a frame indexed by ``tier`` (strongest first, by sustained FLOP/s) with at least the
    columns of :data:`REQUIRED_COLUMNS` plus ``sustained_flops`` (= ``peak_flops x efficiency``).
    """
    if path is None:
        with resources.as_file(resources.files("reft") / DEFAULT_TIERS) as p:
            return load_tiers(p)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Tier table {path} not found. Pass a CSV with columns tier, {', '.join(REQUIRED_COLUMNS)}."
        )
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"Tier table {path} is not a readable CSV: {e}") from e
    return _validate(df, str(path))


def _validate(df: pd.DataFrame, where: str) -> pd.DataFrame:
    df = df.copy()
    missing = [c for c in ("tier", *REQUIRED_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(
            f"Tier table {where} lacks column(s) {', '.join(missing)}; "
            f"needed: tier, {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(map(str, df.columns))})."
        )
    if df.empty:
        raise ValueError(f"Tier table {where} has no rows.")
    df["tier"] = df["tier"].astype(str).str.strip()
    dup = df["tier"][df["tier"].duplicated()].tolist()
    if dup or (df["tier"] == "").any():
        raise ValueError(f"Tier table {where}: tier names must be unique and non-empty (duplicates: {dup}).")
    for col in _POSITIVE:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df["tier"][~(values > 0) | ~np.isfinite(values)].tolist()
        if bad:
            raise ValueError(
                f"Tier table {where}: column {col!r} must be a positive number; bad value for tier(s) {', '.join(bad)}."
            )
        df[col] = values.astype(float)
    if (df["efficiency"] > 1).any():
        bad = df["tier"][df["efficiency"] > 1].tolist()
        raise ValueError(f"Tier table {where}: efficiency is a fraction of peak, <= 1; bad for tier(s) {bad}.")
    df["sustained_flops"] = df["peak_flops"] * df["efficiency"]
    df = df.sort_values("sustained_flops", ascending=False, kind="stable").set_index("tier")
    return df


def _check_tier(tiers: pd.DataFrame, tier: str) -> None:
    if tier not in tiers.index:
        raise ValueError(f"Unknown tier {tier!r}. Valid tiers: {', '.join(map(str, tiers.index))}.")


def assign(
    n_clients: int,
    mix: Mapping[str, float] | Sequence[str],
    tiers: pd.DataFrame | None = None,
    seed: int = 0,
) -> list[str]:
    """One tier name per client.

    ``mix`` is either a mapping ``{tier: weight}`` (counts by largest-remainder allocation of
    ``n_clients`` in proportion to the weights, then shuffled with ``seed``) or a sequence of tier
    names given client by client (cycled when shorter than ``n_clients``, not shuffled).
    """
    tiers = load_tiers() if tiers is None else tiers
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1; got {n_clients}.")
    if isinstance(mix, str):
        mix = [mix]
    if isinstance(mix, Mapping):
        if not mix:
            raise ValueError("The tier mix is empty; give at least one tier with a positive weight.")
        for t in mix:
            _check_tier(tiers, t)
        names = list(mix)
        w = np.array([float(mix[t]) for t in names])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"Tier weights must be >= 0 with a positive sum; got {dict(mix)}.")
        quota = w / w.sum() * n_clients
        counts = np.floor(quota).astype(int)
        # Largest remainders get the leftover clients; ties go to the earlier tier in the mix.
        order = sorted(range(len(names)), key=lambda i: (-(quota[i] - counts[i]), i))
        for i in order[: n_clients - counts.sum()]:
            counts[i] += 1
        out = [t for t, c in zip(names, counts, strict=True) for _ in range(c)]
        rng = np.random.default_rng(seed)
        return [out[i] for i in rng.permutation(len(out))]
    names = list(mix)
    if not names:
        raise ValueError("The tier mix is empty; give at least one tier name.")
    for t in names:
        _check_tier(tiers, t)
    return [names[i % len(names)] for i in range(n_clients)]


def round_time(
    tiers: pd.DataFrame, tier: str, train_flops: float, bytes_down: int, bytes_up: int, speed: float = 1.0
) -> float:
    """Simulated seconds of one local round on ``tier``: compute plus download and upload. Compute is
    ``train_flops / (sustained FLOP/s x speed)``, ``speed`` being the model's measured speed relative
    to its FLOPs (:func:`reft.costs.speed_factor`; 1: as fast as its FLOPs say)."""
    return sum(_round_parts(tiers, tier, train_flops, bytes_down, bytes_up, speed))


def compute_time(tiers: pd.DataFrame, tier: str, flops: float, speed: float = 1.0) -> float:
    """Simulated seconds of ``flops`` on ``tier`` at ``speed`` (see :func:`round_time`)."""
    _check_tier(tiers, tier)
    if not speed > 0:
        raise ValueError(f"speed must be > 0; got {speed}.")
    return flops / (float(tiers.loc[tier, "sustained_flops"]) * speed)


def _round_parts(
    tiers: pd.DataFrame, tier: str, train_flops: float, bytes_down: int, bytes_up: int, speed: float = 1.0
) -> tuple:
    compute = compute_time(tiers, tier, train_flops, speed)  # checks the tier
    row = tiers.loc[tier]
    down = bytes_down * 8 / (row["downlink_mbps"] * 1e6)
    up = bytes_up * 8 / (row["uplink_mbps"] * 1e6)
    return compute, down, up


@dataclass
class PolicyResult:
    """The ratio a policy chose for one tier, and the figures that explain the choice."""

    tier: str
    policy: str
    ratio: float
    round_time_s: float
    compute_s: float
    download_s: float
    upload_s: float
    params: int
    bytes: int
    forward_flops: int  # per sample
    train_flops: float  # whole local round: 3 x forward x samples x epochs
    memory_gb: float  # training memory estimate (see reft.costs.training_memory_gb)
    memory_limit_gb: float
    fits_memory: bool
    deadline_s: float | None
    fits_deadline: bool | None  # None when no deadline was given
    widths: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def policy_frame(results: Mapping[str, PolicyResult]) -> pd.DataFrame:
    """The results of :func:`choose_ratios` as a table, one row per tier."""
    return pd.DataFrame([r.as_dict() for r in results.values()]).set_index("tier")


def _ratio_grid(max_ratio: float, step: float) -> list[float]:
    return [round(r, 6) for r in np.arange(0.0, max_ratio + 1e-9, step)]


def at_ratio(
    tiers: pd.DataFrame,
    tier: str,
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    *,
    samples: int,
    epochs: int,
    deadline_s: float | None = None,
    importance: str = "l2",
    batch_size: int = 64,
    memory_fraction: float = MEMORY_FRACTION,
    policy: str = "fixed",
) -> PolicyResult:
    """The local round of ``model`` pruned at ``ratio`` on ``tier`` (``samples`` x ``epochs``): what
    :func:`choose_ratios` weighs for every candidate ratio, for one ratio chosen by hand. The pruned
    model's counts come from :func:`reft.costs.at_ratios` (cached per architecture and ratio)."""
    tiers = _validate(tiers.reset_index(), "(frame)") if "sustained_flops" not in tiers.columns else tiers
    _check_tier(tiers, tier)
    c = costs.at_ratios(model, example_input, [ratio], importance, batch_size).iloc[0]
    dense_flops = float(costs.at_ratios(model, example_input, [0.0], importance, batch_size)["forward_flops"].iloc[0])
    tf = measure.TRAIN_FLOPS_FACTOR * float(c["forward_flops"]) * samples * epochs
    speed = costs.speed_factor(model.spec["name"], float(c["forward_flops"]) / dense_flops)
    comp, down, up = _round_parts(tiers, tier, tf, int(c["bytes"]), int(c["bytes"]), speed)
    limit = float(tiers.loc[tier, "memory_gb"]) * memory_fraction
    total = comp + down + up
    return PolicyResult(
        tier=tier, policy=policy, ratio=float(ratio), round_time_s=total, compute_s=comp, download_s=down,
        upload_s=up, params=int(c["params"]), bytes=int(c["bytes"]), forward_flops=int(c["forward_flops"]),
        train_flops=tf, memory_gb=float(c["memory_gb"]), memory_limit_gb=limit,
        fits_memory=bool(c["memory_gb"] <= limit), deadline_s=deadline_s,
        fits_deadline=None if deadline_s is None else bool(total <= deadline_s), widths=list(c["widths"]),
    )  # fmt: skip


def choose_ratios(
    policy: str,
    tiers: pd.DataFrame,
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    samples: int,
    epochs: int,
    max_ratio: float = 0.9,
    deadline_s: float | None = None,
    importance: str = "l2",
    step: float = 0.05,
    batch_size: int = 64,
    memory_fraction: float = MEMORY_FRACTION,
) -> dict[str, PolicyResult]:
    """Pruning ratio for every tier of ``tiers`` under ``policy`` (``proportional`` or ``deadline``).

    ``samples`` and ``epochs`` describe one local round (the client's dataset size and local epochs).
    ``deadline``: the smallest ratio on the grid ``0, step, ..., max_ratio`` whose round time is
    within ``deadline_s`` and whose training memory fits ``memory_fraction`` of the tier's memory;
    when none fits, ``max_ratio`` with ``fits_deadline=False``. ``deadline_s=None`` picks the
    tightest deadline every tier can meet: the longest round time of any tier at ``max_ratio``.
    ``proportional``: ``1 - sqrt(c / c_max)`` rounded to 0.01, clamped to ``max_ratio``;
    its round time is reported against ``deadline_s`` when one is given.
    """
    if policy not in POLICIES:
        raise ValueError(f"Unknown policy {policy!r}. Valid policies: {', '.join(POLICIES)}.")
    if not 0 <= max_ratio < 1:
        raise ValueError(f"max_ratio must be in [0, 1); got {max_ratio}.")
    if samples < 1 or epochs < 1:
        raise ValueError(f"samples and epochs must be >= 1; got {samples}, {epochs}.")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1]; got {step}.")
    if deadline_s is not None and deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0 seconds; got {deadline_s}.")
    tiers = _validate(tiers.reset_index(), "(frame)") if "sustained_flops" not in tiers.columns else tiers
    grid = _ratio_grid(max_ratio, step)
    kw = dict(samples=samples, epochs=epochs, importance=importance, batch_size=batch_size,
              memory_fraction=memory_fraction, policy=policy)  # fmt: skip

    def result(tier: str, ratio: float, deadline: float | None) -> PolicyResult:
        return at_ratio(tiers, tier, model, example_input, ratio, deadline_s=deadline, **kw)

    out: dict[str, PolicyResult] = {}
    if policy == "proportional":  # a fine grid: tiers a few percent apart in compute still differ in width
        top = float(tiers["sustained_flops"].max())
        for tier in tiers.index:
            r = 1 - math.sqrt(float(tiers.loc[tier, "sustained_flops"]) / top)
            out[tier] = result(tier, round(min(max_ratio, round(r, 2)), 6), deadline_s)
        return out

    if deadline_s is None:  # the slowest tier's round at max_ratio (links count too, not only compute)
        deadline_s = max(result(t, grid[-1], None).round_time_s for t in tiers.index)
    for tier in tiers.index:
        chosen = None
        for r in grid:  # smallest ratio (largest model) that fits
            res = result(tier, r, deadline_s)
            if res.fits_deadline and res.fits_memory:
                chosen = res
                break
        out[tier] = chosen if chosen is not None else result(tier, grid[-1], deadline_s)
    return out


def profile_this_machine(
    model: str = "cnn",
    input_shape: Sequence[int] = (1, 28, 28),
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 2,
    uplink_mbps: float = 20.0,
    downlink_mbps: float = 100.0,
    threads: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Measure this machine's sustained training FLOP/s on real SGD steps of a ``reft.models`` model.

    Returns a one-row tier table (index ``this_machine``) in the format of :func:`load_tiers`, so it
    can be concatenated with a tier table: ``peak_flops`` is the measured figure and ``efficiency`` 1.
    Link speeds cannot be measured offline; they are the given arguments.
    """
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"Need steps >= 1, warmup >= 0, batch_size >= 1; got {steps}, {warmup}, {batch_size}.")
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        net = models.build(model, in_channels=int(input_shape[0]))
        x = torch.randn(batch_size, *input_shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, net.num_classes, (batch_size,))
        step_flops = measure.train_flops(copy.deepcopy(net), x)
        net = net.to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        sustained = step_flops / float(np.median(times))
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(prev_threads)
    mem_gb = _memory_gb()
    cpu = platform.processor() or platform.machine()
    row = {
        "tier": "this_machine",
        "device": f"{cpu} ({os.cpu_count()} CPUs, {used_threads} torch threads)",
        "peak_flops": sustained,
        "peak_basis": f"measured: median of {steps} SGD steps of {model}, batch {batch_size}, {tuple(input_shape)}",
        "efficiency": 1.0,
        "memory_gb": mem_gb,
        "uplink_mbps": uplink_mbps,
        "downlink_mbps": downlink_mbps,
        "source": "reft.tiers.profile_this_machine()",
        "link_source": "given (not measured)",
    }
    return _validate(pd.DataFrame([row]), "profile_this_machine")


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 1.0  # unknown: a conservative placeholder that still passes validation
