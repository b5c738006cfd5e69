"""Where a round's time goes: a phase profiler for federated runs.

The engine, the strategies and :func:`reft.distill.distill` mark their work with :func:`phase`; while a
:func:`recording` is open, each phase's wall seconds and FLOPs add up (outside one, :func:`phase` costs
one ``None`` check). :func:`reft.bench.profiler.profile` runs a config for a few rounds under a recording
and returns one row per phase: seconds, share of the rounds' wall time, GFLOP, achieved GFLOP/s and that rate as a
percentage of this machine's sustained training rate (:func:`reft.tiers.profile_this_machine`, measured
in the same process). Wall time no phase covers is the engine's own bookkeeping (history, Ledger).

    python -m reft.bench --algorithm reft --rounds 2 --out results/bench_reft.csv

This package's ``__init__`` holds only the recorder (the engine imports it); :mod:`reft.bench.profiler`
runs a config under it and holds the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from reft import measure

BOOKKEEPING = "engine bookkeeping"


@dataclass
class Recorder:
    """Seconds, FLOPs and calls per phase name, in the order phases first ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float, flops: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.flops[name] = self.flops.get(name, 0.0) + flops
        self.calls[name] = self.calls.get(name, 0) + 1


_recorder: Recorder | None = None
_forward_flops: dict[str, int] = {}


@contextmanager
def recording() -> Iterator[Recorder]:
    """Record every :func:`phase` run inside this context (not re-entrant)."""
    global _recorder
    if _recorder is not None:
        raise RuntimeError("A bench recording is already open.")
    _recorder = Recorder()
    try:
        yield _recorder
    finally:
        _recorder = None


def active() -> bool:
    """Whether a recording is open (callers may skip computing FLOPs when not)."""
    return _recorder is not None


@contextmanager
def phase(
    name: str, model: nn.Module | Sequence[nn.Module] | None = None, x: torch.Tensor | None = None,
    samples: int = 0, training: bool = False,
) -> Iterator[None]:  # fmt: skip
    """Time the block as phase ``name``; its FLOPs are ``samples`` samples shaped like ``x`` through
    ``model`` (or each of several models), counted only while recording. Phases must not nest."""
    rec = _recorder
    if rec is None:
        yield
        return
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - t
        nets = [] if model is None or x is None else [model] if isinstance(model, nn.Module) else list(model)
        rec.add(name, seconds, sum(pass_flops(m, x, samples, training) for m in nets))


def pass_flops(model: nn.Module, x: torch.Tensor, samples: int, training: bool = False) -> float:
    """FLOPs of ``samples`` samples shaped like ``x[0]`` through ``model`` (training: 3x forward).
    The forward count per sample is measured once per architecture (``model.spec``) and input shape."""
    key = json.dumps([getattr(model, "spec", repr(model)), list(x.shape[1:])], sort_keys=True, default=str)
    if key not in _forward_flops:
        _forward_flops[key] = measure.flops(model, x[:1].detach().to("cpu").clone()) if len(x) else 0
    return _forward_flops[key] * samples * (measure.TRAIN_FLOPS_FACTOR if training else 1)


def table(rec: Recorder, wall_s: float, sustained_flops: float) -> pd.DataFrame:
    """One row per phase (plus the bookkeeping rest): seconds, share, GFLOP, GFLOP/s, % of sustained."""
    rows = [
        {"phase": k, "calls": rec.calls[k], "seconds": s, "gflop": rec.flops[k] / 1e9} for k, s in rec.seconds.items()
    ]
    rest = wall_s - sum(rec.seconds.values())
    rows.append({"phase": BOOKKEEPING, "calls": 0, "seconds": max(rest, 0.0), "gflop": 0.0})
    df = pd.DataFrame(rows)
    df["share_pct"] = 100 * df["seconds"] / wall_s
    df["gflop_per_s"] = (df["gflop"] / df["seconds"].where(df["seconds"] > 0)).where(df["gflop"] > 0)
    df["pct_of_sustained"] = 100 * df["gflop_per_s"] * 1e9 / sustained_flops
    return df
