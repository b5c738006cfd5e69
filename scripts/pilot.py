"""The convergence pilot (issue 25, item 2): every method on both partitions for pilot seeds that are never
reported, with a candidate protocol, and the acceptance test on its curves.

Every method uses notebook 03's fmnist settings (tiers, clients, recipe, public and test subsets) except
what the flags set (private size, local epochs, rounds, distillation budget). Every round is measured on
the same fixed test subset (``final_test=False``: the last round too), so a curve's slope compares like
with like; the test set chooses nothing here: the pilot fixes the protocol, whose reported seeds (0-4) run
afterwards. Runs save a checkpoint every round and resume (``--resume``), so an interrupted pilot loses at
most a round per run, and a finished one can be extended to more rounds with the same flags.

    nice -n 19 python scripts/pilot.py run --label p50k_e1 --private-size 50000 --local-epochs 1 \
        --rounds 40 --lr-milestones 20 --distill-epochs 5 --workers 2 --resume
    python scripts/pilot.py check --label p50k_e1          # the slope table, from the CSVs alone
    python scripts/pilot.py check --history results/fmnist/03_history.csv   # the same test on the reported run
    nice -n 19 python scripts/pilot.py time --private-size 50000 --rounds 2     # per-round cost per method

``run`` writes ``results/fmnist/pilot/<label>_seed<k>.csv`` (every method and partition, one row per round:
the per-round curves) and the protocol as ``results/fmnist/pilot/<label>_protocol.json``. ``check`` prints,
per method and partition, the least-squares slope of the seed-mean server accuracy (in points, i.e.
percent) over the last ``--window`` rounds, and whether it is below ``--max-slope`` (the acceptance test:
0.1 points per round). ``time`` runs each method for a few rounds on one seed, on one thread, and prints
wall and CPU seconds (setup included; on a shared machine the CPU seconds are the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reft import engine, experiments, report, reproduce
from reft.config import RunConfig

PROFILE = "fmnist"
METHODS = ("reft", "fedavg", "feddf", "heterofl", "fedavg-weakest")
PARTITIONS: tuple[str | float, ...] = ("iid", 0.5)


def base_config(args: argparse.Namespace) -> RunConfig:
    """Notebook 03's fmnist RunConfig, with the protocol's flags."""
    (job,) = reproduce.plan(PROFILE, reproduce.load_profiles(), only=["03"])
    p = job.parameters
    return RunConfig(
        dataset=p.get("dataset", "fashion-mnist"), n_clients=p["n_clients"], public_size=p["public_size"],
        test_size=p["test_size"], max_ratio=p["max_ratio"], private_size=args.private_size,
        local_epochs=args.local_epochs, rounds=args.rounds, distill_epochs=args.distill_epochs,
        lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma, distill_lr_decay=args.distill_lr_decay,
        final_test=False, diagnostics_every=args.diagnostics_every, profile=PROFILE, resume=args.resume,
        checkpoint_every=1, progress=False,
    )  # fmt: skip


def pilot_dir() -> Path:
    return report.results_dir(PROFILE) / "pilot"


def partitions(values: list[str]) -> list[str | float]:
    return [v if v in ("iid", "shards") else float(v) for v in values]


def run(args: argparse.Namespace) -> None:
    base = base_config(args)
    keys = ("private_size", "public_size", "test_size", "local_epochs", "rounds", "distill_epochs", "n_clients",
            "max_ratio", "lr", "lr_gamma", "distill_lr_decay")  # fmt: skip
    protocol = {k: getattr(base, k) for k in keys}
    protocol |= {
        "lr_milestones": list(base.lr_milestones),
        "seeds": args.seeds,
        "methods": args.methods,
        "partitions": args.partitions,
    }
    report.atomic_write(pilot_dir() / f"{args.label}_protocol.json", lambda p: p.write_text(json.dumps(protocol)))
    t0 = time.perf_counter()
    cmp = experiments.compare(
        base, None, args.methods, partitions(args.partitions), save_prefix=f"pilot/runs/{args.label}",
        seeds=args.seeds, workers=args.workers,
    )  # fmt: skip
    for seed, h in cmp.history.groupby("seed"):
        report.save_table(h, f"pilot/{args.label}_seed{seed}", PROFILE)
    print(f"{len(cmp.results)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    print(slopes(cmp.history, args.window, args.max_slope).to_string(index=False))


def slopes(history: pd.DataFrame, window: int = 10, max_slope: float = 0.1) -> pd.DataFrame:
    """Per method and partition: the least-squares slope (points per round) of the seed-mean server accuracy
    over the last ``window`` rounds every seed has, and whether it is below ``max_slope``."""
    rows = []
    for (method, part), h in history.groupby(["method", "partition"], sort=False):
        last = h.groupby("seed")["round"].max().min()  # rounds every seed has finished
        # the fixed per-round subset in every round (a reported run measures its last round on the whole test part)
        col = "subset_acc" if "subset_acc" in h and h["subset_acc"].notna().all() else "server_acc"
        mean = h[h["round"] <= last].groupby("round")[col].mean() * 100
        tail = mean.iloc[-window:]
        slope = float(np.polyfit(tail.index.to_numpy(float), tail.to_numpy(), 1)[0]) if len(tail) >= 2 else np.nan
        rows.append({"method": method, "partition": part, "seeds": h["seed"].nunique(), "rounds": int(last),
                     "window": len(tail), "acc_last": float(mean.iloc[-1]), "slope_pts_per_round": slope,
                     "flat": bool(len(tail) == window and abs(slope) < max_slope)})  # fmt: skip
    return pd.DataFrame(rows)


def check(args: argparse.Namespace) -> None:
    files = [Path(args.history)] if args.history else sorted(pilot_dir().glob(f"{args.label}_seed*.csv"))
    if not files or not all(f.is_file() for f in files):
        sys.exit(f"No curves {args.history or f'{pilot_dir()}/{args.label}_seed*.csv'}: run the pilot or notebook 03 "
                 "first.")  # fmt: skip
    table = slopes(pd.concat(map(pd.read_csv, files), ignore_index=True), args.window, args.max_slope)
    print(table.round(3).to_string(index=False))
    print("PASS: every curve flat" if table["flat"].all() else "NOT FLAT: " + ", ".join(
        f"{r.method}/{r.partition}" for r in table.itertuples() if not r.flat))  # fmt: skip


def timing(args: argparse.Namespace) -> None:
    """Seconds per round of each method on one thread (as each of ``--workers`` processes runs)."""
    torch.set_num_threads(1)
    base = base_config(args).replace(resume=False, diagnostics_every=0)
    rows = []
    for part in partitions(args.partitions):
        for method in args.methods:
            t0, c0 = time.perf_counter(), time.process_time()
            res = engine.run(base.replace(algorithm=method, seed=args.seeds[0], **experiments.partition_kw(part)))
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            h = res.history
            rows.append({"method": method, "partition": experiments.partition_label(part), "rounds": len(h),
                         "round1_wall_s": float(h["wall_s"].iloc[0]), "later_round_wall_s":
                         float(h["wall_s"].iloc[1:].mean()) if len(h) > 1 else np.nan, "run_wall_s": total,
                         "run_cpu_s": cpu, "cpu_s_per_round": cpu / len(h)})  # fmt: skip
            print(rows[-1], flush=True)
    out = pd.DataFrame(rows)
    report.save_table(out, f"pilot/timing_{args.label}", PROFILE)
    print(out.round(1).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "check", "time"])
    ap.add_argument("--label", default="pilot", help="names the protocol's files")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="pilot seeds, never reported ones")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--partitions", nargs="+", default=["iid", "0.5"], help="iid, shards, or a Dirichlet alpha")
    ap.add_argument("--private-size", type=int, default=50_000, help="labelled images over all clients (<= 50000)")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--lr-milestones", type=int, nargs="*", default=[], help="rounds after which the local lr decays")
    ap.add_argument("--lr-gamma", type=float, default=0.1, help="the lr's factor at each milestone")
    ap.add_argument("--distill-lr-decay", action="store_true", help="the server's distillation lr decays too")
    ap.add_argument("--distill-epochs", type=int, default=5, help="server distillation budget (REFT and FedDF)")
    ap.add_argument("--diagnostics-every", type=int, default=5, help="dead units, client accuracy every k rounds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue from the round checkpoints")
    ap.add_argument("--history", help="check: a reported run's history instead (results/fmnist/03_history.csv)")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--max-slope", type=float, default=0.1, help="points per round")
    args = ap.parse_args()
    if not 1 <= args.private_size <= 50_000:
        ap.error(f"--private-size must be in 1..50000 (the private part of Fashion-MNIST); got {args.private_size}")
    {"run": run, "check": check, "time": timing}[args.command](args)


if __name__ == "__main__":
    main()
