"""Measure how fast structurally pruned models really train on this machine's CPU, and write the table
the engine and the policies use for simulated compute time: ``reft/speedups.csv``.

For each model and ratio: one SGD training step on a batch (:func:`reft.measure.train_step_latency`,
one thread, the best of interleaved rounds, :func:`reft.costs.at_ratios`), and ``speedup_vs_ideal`` =
measured speed-up / FLOPs reduction. This CPU stands in for every tier's speed-up curve: an assumption,
stated in the README (a GPU or a phone NPU has its own curve; re-run this script there to replace it).

    python scripts/measure_speedups.py                 # cnn and resnet18, about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import torch

from reft import costs, models

ROOT = Path(__file__).resolve().parent.parent
SETUPS = {  # model: (input shape, batch, rounds, repeats)
    "cnn": ((1, 1, 28, 28), 64, 10, 3),
    "resnet18": ((1, 3, 32, 32), 16, 3, 2),
}
RATIOS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def measure(name: str) -> pd.DataFrame:
    shape, batch, rounds, repeats = SETUPS[name]
    torch.manual_seed(0)
    model = models.build(name, 10, shape[1])
    df = costs.at_ratios(
        model, torch.zeros(shape), RATIOS, latency_batch=batch, rounds=rounds, repeats=repeats, training=True
    )
    return pd.DataFrame(
        {
            "model": name,
            "ratio": df["ratio"],
            "flops_fraction": df["flops_fraction"],
            "train_step_ms": df[f"train_step_ms_b{batch}"],
            "speedup": df["speedup"],
            "speedup_vs_ideal": df["speedup_vs_ideal"],
            "batch": batch,
            "threads": 1,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch {torch.__version__}",
            "date": date.today().isoformat(),
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--out", type=Path, default=ROOT / "reft" / costs.SPEEDUPS)
    args = ap.parse_args(argv)
    table = pd.concat([measure(m) for m in args.models], ignore_index=True)
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
