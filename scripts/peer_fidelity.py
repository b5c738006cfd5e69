"""Peers before/after a fidelity change, over paired seeds, at the fmnist profile's notebook-03 settings.

Each seed changes the split, the partition, the tier of every client and the initial weights; for one
seed every variant sees the same clients, data and initial weights (paired). Final accuracy is the last
round's server accuracy on the full 10,000-image test set (``test_size=None``; the notebook keeps 2,000
for its per-round curves). Nothing is chosen on the test set.

    python scripts/peer_fidelity.py run --label after --seeds 0 1 2            # one CSV per label
    python scripts/peer_fidelity.py compare --before before --after after      # paired differences

``run`` writes ``results/fmnist/peer_fidelity_<label>.csv`` after every run (an interrupted sweep
keeps what it finished and skips it when started again). ``compare`` writes
``results/fmnist/peer_fidelity.csv``: per method and partition, mean final accuracy before and after,
the paired difference with its 95% t-interval, and the verdict by the rule of ``reft.stats`` (better /
worse when the interval excludes 0, on par when it lies within +-1 point, otherwise inconclusive).
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from reft import data, engine, experiments, report, reproduce, stats
from reft.config import RunConfig

PROFILE = "fmnist"


def run(label: str, seeds: list[int], methods: list[str]) -> pd.DataFrame:
    (job,) = reproduce.plan(PROFILE, reproduce.load_profiles(), only=["03"])
    p = job.parameters
    name = f"peer_fidelity_{label}"
    path = report.results_dir(PROFILE) / f"{name}.csv"
    rows = pd.read_csv(path).to_dict("records") if path.exists() else []
    done = {(r["method"], r["partition"], r["seed"]) for r in rows}
    for seed in seeds:
        splits = data.load(p["dataset"], seed=seed)
        base = RunConfig(
            n_clients=p["n_clients"], rounds=p["rounds"], max_ratio=p["max_ratio"], private_size=p["private_size"],
            public_size=p["public_size"], test_size=None, distill_epochs=p["distill_epochs"], seed=seed,
            progress=False, eval_clients=False,
        )  # fmt: skip
        for part in p["partitions"]:
            for method in methods:
                key = (method, experiments.partition_label(part), seed)
                if key in done:
                    continue
                t0 = time.perf_counter()
                res = engine.run(base.replace(algorithm=method, **experiments.partition_kw(part)), splits)
                h = res.history.iloc[-1]
                rows.append({"method": method, "partition": key[1], "seed": seed, "final_acc": h["server_acc"],
                             "ensemble_acc": h.get("ensemble_acc", float("nan")), "wall_s": time.perf_counter() - t0,
                             "group_acc_mean": h.get("group_acc_mean", float("nan")),  # FedDF: every group model
                             "group_acc_best": h.get("group_acc_best", float("nan")),
                             "label": label})  # fmt: skip
                print(rows[-1], flush=True)
                report.save_table(pd.DataFrame(rows), name, PROFILE)
    return pd.DataFrame(rows)


def compare(before: str, after: str) -> pd.DataFrame:
    d = report.results_dir(PROFILE)
    a, b = pd.read_csv(d / f"peer_fidelity_{before}.csv"), pd.read_csv(d / f"peer_fidelity_{after}.csv")
    m = a.merge(b, on=["method", "partition", "seed"], suffixes=("_before", "_after"))
    rows = []
    for (method, part), g in m.groupby(["method", "partition"], sort=False):
        d = stats.paired(g["final_acc_before"], g["final_acc_after"])
        rows.append({"method": method, "partition": part, "seeds": d.n,
                     "before_mean": g["final_acc_before"].mean(), "before_std": g["final_acc_before"].std(ddof=1),
                     "after_mean": g["final_acc_after"].mean(), "after_std": g["final_acc_after"].std(ddof=1),
                     "diff_mean": d.mean, "diff_ci95_low": d.low, "diff_ci95_high": d.high,
                     "verdict": d.verdict})  # fmt: skip
    out = pd.DataFrame(rows)
    report.save_table(out, "peer_fidelity", PROFILE)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the peers over seeds and save one CSV for this label")
    r.add_argument("--label", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--methods", nargs="+", default=["heterofl", "feddf"])
    c = sub.add_parser("compare", help="paired differences between two labels")
    c.add_argument("--before", default="before")
    c.add_argument("--after", default="after")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.label, args.seeds, args.methods)
    else:
        print(compare(args.before, args.after).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
