"""Per-round diagnostics of the seed-1 Dirichlet collapse (issue 25) at notebook 03's fmnist settings.

For each method (optionally with strategy options) one run on one thread, with, every round: the dead-unit
fraction of every ReLU layer of the server model(s) and of the uploads (mean over uploads of each width),
on a fixed probe batch of public images (the first 256); FedDF's accuracy of every group model; the
clients' test accuracy per tier (the engine's ``acc[tier]``, ``diagnostics_every=1``).

Self-contained (its own dead-unit measure), so the same script runs on the code before and after the fixes:

    PYTHONPATH=<tree> nice -n 19 python scripts/collapse_diagnostics.py --label before \
        --runs feddf heterofl heterofl:scaler=False fedavg reft

A run spec is ``method[:key=value,...]``; the options go to the strategy's constructor. Writes
``results/fmnist/collapse/<label>.csv`` (one row per run and round) after every run.
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from reft import data, engine, reproduce, strategies, train
from reft.config import RunConfig

PROBE = 256


def dead_fractions(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Fraction of units of every ReLU layer (named by the conv/linear before it) that are zero on every
    sample and position of ``x``. Covers ``nn.ReLU`` modules and, in the cnn of before the fix, the
    functional ReLU after ``fc`` (its pre-activation <= 0 everywhere)."""
    labels, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            last = name
        elif isinstance(m, nn.ReLU):
            labels[name] = last
    mods = dict(model.named_modules())
    alive: dict[str, torch.Tensor] = {}

    def hook(label: str):
        def f(_m, _i, out):
            alive[label] = (out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(1)

        return f

    handles = [mods[n].register_forward_hook(hook(lab)) for n, lab in labels.items()]
    if "fc" in mods and "fc" not in labels.values():  # the head's ReLU is functional
        handles.append(mods["fc"].register_forward_hook(hook("fc")))
    try:
        train.predict(model, x)
    finally:
        for h in handles:
            h.remove()
    return {lab: 1.0 - a.float().mean().item() for lab, a in alive.items()}


def parse(spec: str) -> tuple[str, dict]:
    name, _, opts = spec.partition(":")
    kw = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in opts.split(",") if o)}
    return name, kw


def wrapped(spec: str) -> strategies.Strategy:
    name, kw = parse(spec)
    cls = {c.name: c for c in (strategies.REFT, strategies.FedAvg, strategies.FedAvgWeakest, strategies.FedDF,
                                strategies.HeteroFL)}[name]  # fmt: skip
    strat = cls(**kw)
    inner = strat.aggregate

    def aggregate(fed, rnd, uploads):
        probe = fed.public_x[:PROBE]
        cols: dict[str, float] = {}
        by_width: dict[str, list[dict]] = {}
        for i, m in uploads.items():
            by_width.setdefault(str(fed.clients[i].tier), []).append(dead_fractions(m, probe))
        for tier, ds in by_width.items():
            for lab in ds[0]:
                cols[f"up_dead[{tier}][{lab}]"] = sum(d[lab] for d in ds) / len(ds)
        extra = inner(fed, rnd, uploads)
        servers = dict(enumerate(strat.groups.values())) if hasattr(strat, "groups") else {0: strat.server_model}
        test = fed.test_for(rnd)
        for g, m in servers.items():
            for lab, v in dead_fractions(m, probe).items():
                cols[f"dead[g{g}][{lab}]"] = v
            cols[f"acc[g{g}]"] = train.evaluate(m, test.x, test.y)
            cols[f"width[g{g}]"] = float(m.widths[-1])
        return {**extra, **cols}

    strat.aggregate = aggregate
    return strat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--runs", nargs="+", default=["feddf", "heterofl", "fedavg", "reft"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=None, help="default: notebook 03's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    (job,) = reproduce.plan("fmnist", reproduce.load_profiles(), only=["03"])
    p = job.parameters
    cfg = RunConfig(
        n_clients=p["n_clients"], private_size=p["private_size"], public_size=p["public_size"],
        test_size=p["test_size"], rounds=args.rounds or p["rounds"], max_ratio=p["max_ratio"],
        distill_epochs=p["distill_epochs"], seed=args.seed, partition="dirichlet", alpha=args.alpha,
        diagnostics_every=1, progress=False,
    )  # fmt: skip
    splits = data.load(cfg.dataset, seed=cfg.seed)
    out = Path("results/fmnist/collapse") / f"{args.label}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for spec in args.runs:
        t0 = time.perf_counter()
        res = engine.run(cfg.replace(algorithm=parse(spec)[0]), splits, strategy=wrapped(spec))
        h = res.history.assign(run=spec, seed=args.seed, label=args.label, run_s=time.perf_counter() - t0)
        frames.append(h)
        pd.concat(frames, ignore_index=True).to_csv(out, index=False)
        show = [c for c in h.columns if c in ("round", "server_acc", "ensemble_acc") or c.startswith("acc[")
                or (c.startswith("dead[") and c.endswith("[fc]"))]  # fmt: skip
        print(f"== {spec} ({time.perf_counter() - t0:.0f} s)\n{h[show].round(3).to_string(index=False)}", flush=True)


if __name__ == "__main__":
    main()
