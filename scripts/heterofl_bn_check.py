"""HeteroFL's batch-norm statistics: averaged from the clients vs recomputed on the public set.

Runs HeteroFL exactly as the fmnist profile's notebook 03 does (same data, clients, tiers, seed), once
with ``bn="averaged"`` (clients' running statistics averaged entry by entry like the weights) and once
with ``bn="public"`` (static BN: the server recomputes them on its public set after each round; the
default). Both learn identical weights; only the statistics used for evaluation differ. Writes
``results/fmnist/heterofl_bn_check.csv`` (server accuracy per round, both variants, both partitions).

    python scripts/heterofl_bn_check.py        # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import pandas as pd

from reft import data, engine, experiments, report, reproduce, strategies
from reft.config import RunConfig

PROFILE = "fmnist"


def main() -> None:
    (job,) = reproduce.plan(PROFILE, reproduce.load_profiles(), only=["03"])
    p = job.parameters
    splits = data.load(p["dataset"], seed=p["seed"])
    base = RunConfig(
        algorithm="heterofl", n_clients=p["n_clients"], rounds=p["rounds"], max_ratio=p["max_ratio"],
        private_size=p["private_size"], public_size=p["public_size"], test_size=p["test_size"],
        distill_epochs=p["distill_epochs"], seed=p["seed"], progress=False, eval_clients=False,
    )  # fmt: skip
    rows = []
    for part in p["partitions"]:
        for bn in strategies.HeteroFL.BN_MODES:
            res = engine.run(
                base.replace(**experiments.partition_kw(part)), splits, strategy=strategies.HeteroFL(bn=bn)
            )
            h = res.history[["round", "server_acc"]].assign(partition=experiments.partition_label(part), bn=bn)
            print(h.round(4).to_string(index=False))
            rows.append(h)
    report.save_table(pd.concat(rows, ignore_index=True), "heterofl_bn_check", PROFILE)


if __name__ == "__main__":
    main()
