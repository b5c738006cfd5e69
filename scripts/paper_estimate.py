"""How long the `paper` profile's notebook 03 should take on one GPU, from FLOP counts and a stated throughput.

FLOPs per image come from ``torch.utils.flop_counter`` on the models the runs would train (ResNet-18 on
32x32 CIFAR-10 images, pruned per tier by the proportional policy, as ``reft.federation`` does); sample
counts from the profile (CIFAR-10: 40k private images split over the clients, 10k public). Training
counts 3x forward. The GPU throughput is an assumption (``--tflops``), stated in the output, unless
``--measured`` gives the ``rounds.csv`` of the prepared GPU check (``scripts/device_check.sh``): then the
throughput is the one achieved there (training and inference FLOPs over their seconds, in the chosen
precision), and methods measured there also get hours from their measured seconds per round.

    python scripts/paper_estimate.py [--tflops 15] [--out results/paper/estimate_nb03.csv]
    python scripts/paper_estimate.py --measured results/gpu/rounds.csv [--precision bf16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import yaml

from reft import measure, models, tiers

ROOT = Path(__file__).resolve().parent.parent
PRIVATE, PUBLIC = 40_000, 10_000  # reft.data's CIFAR-10 split (test: 10k)


def run_flops(method: str, per_tier: dict[str, float], dense: float, n_clients: int, rounds: int,
              local_epochs: int, distill_epochs: int) -> float:  # fmt: skip
    """Training FLOPs of one run: clients (equal shares of the private set, tiers assigned evenly), plus the
    server's teacher passes and distillation (REFT: into the dense model; FedDF: into every group model)."""
    names = list(per_tier)
    tier_of = [names[i % len(names)] for i in range(n_clients)]
    samples = PRIVATE / n_clients
    if method == "fedavg":
        client = n_clients * samples * local_epochs * 3 * dense
    elif method == "fedavg-weakest":
        client = n_clients * samples * local_epochs * 3 * min(per_tier.values())
    else:
        client = sum(samples * local_epochs * 3 * per_tier[t] for t in tier_of)
    server = 0.0
    if method in ("reft", "feddf"):
        teachers = sum(PUBLIC * per_tier[t] for t in tier_of)
        students = [dense] if method == "reft" else sorted(set(per_tier.values()))
        server = teachers + sum(distill_epochs * 0.9 * PUBLIC * 3 * f for f in students)
    return rounds * (client + server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflops", type=float, default=15.0, help="achieved training TFLOP/s assumed for the GPU")
    ap.add_argument("--measured", type=Path, help="rounds.csv of scripts/device_check.sh: use its throughput")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="which measured rows to use")
    ap.add_argument("--out", default=str(ROOT / "results" / "paper" / "estimate_nb03.csv"))
    args = ap.parse_args()
    measured = None
    if args.measured is not None:
        if not args.measured.is_file():
            ap.error(f"{args.measured} does not exist: run scripts/device_check.sh on a GPU machine first")
        m = pd.read_csv(args.measured)
        measured = m[m["precision"] == args.precision]
        if measured.empty:
            ap.error(f"{args.measured} has no {args.precision} rows (has: {', '.join(m['precision'].unique())})")
        args.tflops = float(measured["gflop"].sum() / measured["compute_s"].sum() / 1e3)
        print(f"measured on {measured['device'].iloc[0]} ({args.measured}): {args.tflops:.2f} TFLOP/s achieved "
              f"in {args.precision}")  # fmt: skip
    prof = yaml.safe_load((ROOT / "notebooks" / "profiles.yaml").read_text())["paper"]["notebooks"]
    nb = prof["03_federated_comparison"]
    x = torch.zeros(1, 3, 32, 32)
    torch.manual_seed(0)
    dense_model = models.build("resnet18", 10, 3)
    table = tiers.load_tiers()
    chosen = tiers.choose_ratios("proportional", table, dense_model, x, samples=PRIVATE // nb["n_clients"],
                                 epochs=nb["local_epochs"], max_ratio=0.95)  # fmt: skip
    per_tier = {t: measure.flops(models.build("resnet18", 10, 3, r.widths), x) for t, r in chosen.items()}
    dense = measure.flops(dense_model, x)
    methods = ["reft", "fedavg", "fedavg-weakest", "feddf", "heterofl"]
    runs = len(nb["seeds"]) * len(nb["partitions"])
    rows = []
    for m in methods:
        f = run_flops(m, per_tier, dense, nb["n_clients"], nb["rounds"], nb["local_epochs"], nb["distill_epochs"])
        rows.append({"method": m, "runs": runs, "pflop_per_run": f / 1e15, "tflops": args.tflops,
                     "tflops_source": "assumed" if measured is None else "measured",
                     "hours_per_run": f / (args.tflops * 1e12) / 3600,
                     "hours_all_runs": runs * f / (args.tflops * 1e12) / 3600})  # fmt: skip
    df = pd.DataFrame(rows).assign(dense_gflop_per_image=dense / 1e9)
    if measured is not None:
        per_round = measured.set_index("algorithm")["s_per_round"]
        df["hours_all_runs_measured"] = df["method"].map(per_round) * nb["rounds"] * runs / 3600
    df["notebook_hours"] = df["hours_all_runs"].sum()
    print(f"ResNet-18, 32x32: {dense / 1e9:.3f} GFLOP forward per image; per tier:",
          {t: round(v / 1e9, 4) for t, v in per_tier.items()})  # fmt: skip
    print(df.to_string(index=False, float_format="%.2f"))
    print(f"notebook 03 total: {df['hours_all_runs'].sum():.1f} h at {args.tflops:g} TFLOP/s achieved")
    df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
