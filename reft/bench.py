"""Where a round's time goes: a phase profiler for federated runs.

The engine, the strategies and :func:`reft.distill.distill` mark their work with :func:`phase`; while a
:func:`recording` is open, each phase's wall seconds and FLOPs add up (outside one, :func:`phase` costs
one ``None`` check). :func:`profile` runs a config for a few rounds under a recording and returns one
row per phase: seconds, share of the rounds' wall time, GFLOP, achieved GFLOP/s and that rate as a
percentage of this machine's sustained training rate (:func:`reft.tiers.profile_this_machine`, measured
in the same process). Wall time no phase covers is the engine's own bookkeeping (history, Ledger).

    python -m reft.bench --algorithm reft --rounds 2 --out results/bench_reft.csv
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
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


def profile(cfg, splits=None, sustained_flops: float | None = None) -> pd.DataFrame:  # noqa: ANN001
    """Run ``cfg`` (a :class:`reft.config.RunConfig`; its ``rounds`` rounds) under a recording and return
    :func:`table`. ``sustained_flops`` defaults to this machine's rate measured now on the config's model."""
    from reft import engine, tiers  # the engine imports this module

    if sustained_flops is None:
        whole = engine.source(cfg, splits)
        shape = tuple(whole.example_input.shape[1:])
        sustained_flops = float(tiers.profile_this_machine(cfg.model, shape)["sustained_flops"].iloc[0])
    with recording() as rec:
        t = time.perf_counter()
        res = engine.run(cfg, splits)
        wall = time.perf_counter() - t
    df = table(rec, wall, sustained_flops)
    acc = float(res.history["server_acc"].iloc[-1])
    df.attrs.update(wall_s=wall, sustained_gflop_per_s=sustained_flops / 1e9, final_acc=acc)
    return df.assign(algorithm=cfg.algorithm, rounds=cfg.rounds, threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    from reft.config import RunConfig

    p = argparse.ArgumentParser(prog="python -m reft.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", action="append", help="algorithm(s) to profile (repeatable; default: reft, fedavg)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n-clients", type=int, default=10)
    p.add_argument("--private-size", type=int, default=20000)
    p.add_argument("--public-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--distill-epochs", type=int, default=5)
    p.add_argument("--partition", default="iid")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table as CSV here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        base = RunConfig(
            dataset=a.dataset, model=a.model, n_clients=a.n_clients, private_size=a.private_size,
            public_size=a.public_size, test_size=a.test_size, rounds=a.rounds, distill_epochs=a.distill_epochs,
            partition=a.partition, alpha=a.alpha, seed=a.seed, final_test=False, progress=False,
        )  # fmt: skip
        # under ``python -m`` this file is __main__, not the reft.bench the engine records into
        bench = importlib.import_module("reft.bench")
        frames = [bench.profile(base.replace(algorithm=alg)) for alg in a.algorithm or ["reft", "fedavg"]]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.concat(frames, ignore_index=True)
    for f in frames:
        alg = f["algorithm"].iloc[0]
        print(f"\n{alg}: {f.attrs['wall_s']:.1f} s for {a.rounds} rounds, sustained training rate "
              f"{f.attrs['sustained_gflop_per_s']:.1f} GFLOP/s, final accuracy {f.attrs['final_acc']:.4f}")  # fmt: skip
        print(f.drop(columns=["algorithm", "rounds", "threads"]).to_string(index=False, float_format="%.2f"))
    if a.out:
        df.to_csv(a.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
