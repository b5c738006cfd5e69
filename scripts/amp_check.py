"""Does bf16 autocast change accuracy? fp32 vs bf16 (``RunConfig.amp``), paired over seeds, at notebook 03's
``fmnist`` settings (10 clients on six tiers, 20k private / 5k public / 2k per-round test images, 8 rounds,
``max_ratio`` 0.95, 5 distillation epochs; last round on the whole test set).

For each seed every method runs twice on the same split, clients and initial weights, once per precision;
``amp_check_versus.csv`` holds bf16 - fp32 per method and partition with the verdict of :mod:`reft.stats`
(on par: the 95% interval within +-1 point). Rows are written after every seed; a rerun skips the seeds
already in ``amp_check.csv``.

    python scripts/amp_check.py --seeds 0 1 2 --workers 2 --out results/fmnist     # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from reft import experiments, report, stats, train
from reft.config import RunConfig

NB03 = dict(n_clients=10, private_size=20000, public_size=5000, test_size=2000, rounds=8, max_ratio=0.95,
            distill_epochs=5, diagnostics_every=0, device="cpu", progress=False)  # fmt: skip
# FedDF is left out by default: its distillation is REFT's code path (reft.distill.distill) at 2-4x the cost.
METHODS = ["reft", "fedavg", "heterofl", "fedavg-weakest"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--partitions", nargs="+", default=["iid", "0.5"], help="iid or a Dirichlet alpha")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/fmnist"))
    a = p.parse_args(argv)
    if not train.amp_device(torch.device("cpu")):
        p.error("this CPU has no native bf16: amp would compute in fp32, so there is nothing to compare")
    partitions = [x if x == "iid" else float(x) for x in a.partitions]
    rows_path = a.out / "amp_check.csv"
    done = pd.read_csv(rows_path) if rows_path.is_file() else pd.DataFrame(columns=["seed"])
    variants = {
        (m, experiments.partition_label(part), prec): {"algorithm": m, **experiments.partition_kw(part),
                                                       "amp": prec == "bf16"}
        for part in partitions for m in a.methods for prec in ("fp32", "bf16")
    }  # fmt: skip
    for seed in a.seeds:
        if seed in set(done["seed"]):
            print(f"seed {seed}: already in {rows_path}, skipped")
            continue
        cmp = experiments.sweep(RunConfig(**NB03), None, variants, ("method", "partition", "precision"),
                                seeds=[seed], workers=a.workers)  # fmt: skip
        walls = [float(r.history["wall_s"].sum()) for r in cmp.results]  # each run's wall seconds (one thread)
        done = pd.concat([done.dropna(axis=1, how="all"), cmp.table.assign(wall_s=walls)], ignore_index=True)
        report.atomic_write(rows_path, lambda q, d=done: d.to_csv(q, index=False))
        print(f"seed {seed} done: {len(cmp.table)} runs")
    versus = stats.versus(done, "fp32", method="precision", by=("method", "partition"))
    report.atomic_write(a.out / "amp_check_versus.csv", lambda q: versus.to_csv(q, index=False))
    summary = stats.summarize(done, ["method", "partition", "precision"], ["final_acc", "wall_s"])
    print(summary[["method", "partition", "precision", "final_acc_mean", "final_acc_ci_low", "final_acc_ci_high",
                   "wall_s_mean"]].to_string(index=False, float_format="%.4f"))  # fmt: skip
    print(versus.to_string(index=False, float_format="%.4f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
