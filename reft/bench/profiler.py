"""Profile a federated run by phase: :func:`profile` and the command line ``python -m reft.bench``."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from reft import data, engine, tiers
from reft.bench import recording, table
from reft.config import RunConfig


def profile(cfg: RunConfig, splits: data.Splits | None = None, sustained_flops: float | None = None) -> pd.DataFrame:
    """Run ``cfg`` (a :class:`reft.config.RunConfig`; its ``rounds`` rounds) under a recording and return
    :func:`table`. ``sustained_flops`` defaults to this machine's rate measured now on the config's model."""
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
    return df.assign(algorithm=cfg.algorithm, rounds=cfg.rounds, threads=torch.get_num_threads(), wall_s=wall,
                     sustained_gflop_per_s=sustained_flops / 1e9, final_acc=acc)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reft.bench", description=__doc__.splitlines()[0])
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
    p.add_argument("--diagnostics-every", type=int, default=0, help="as RunConfig (notebooks 03/04: 0, last round)")
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
            diagnostics_every=a.diagnostics_every,
        )  # fmt: skip
        frames = [profile(base.replace(algorithm=alg)) for alg in a.algorithm or ["reft", "fedavg"]]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.concat(frames, ignore_index=True)
    for f in frames:
        alg = f["algorithm"].iloc[0]
        print(f"\n{alg}: {f.attrs['wall_s']:.1f} s for {a.rounds} rounds, sustained training rate "
              f"{f.attrs['sustained_gflop_per_s']:.1f} GFLOP/s, final accuracy {f.attrs['final_acc']:.4f}")  # fmt: skip
        shown = f.drop(columns=["algorithm", "rounds", "threads", "wall_s", "sustained_gflop_per_s", "final_acc"])
        print(shown.to_string(index=False, float_format="%.2f"))
    if a.out:
        df.to_csv(a.out, index=False)
    return 0
