"""The cnn's hidden units after one local epoch from init, with and without the norm after ``fc`` (issue 25).

On the pilot seeds (never the reported ones) and never on the test set: for each seed, a client-sized shard
of the private data (2,000 images, as at notebook 03's fmnist settings) trains one epoch at the shared
recipe's learning rate and a lower one; the dead fraction of the hidden layer is counted on the first
256 public images, and accuracy on 2,000 *held-out private* images (a validation split).

    nice -n 19 python scripts/hidden_units_check.py --seeds 100 101 --lrs 0.05 0.01
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from torch import nn

from reft import data, diagnostics, models, train


def old_cnn() -> models.SmallCNN:
    """The cnn as it was before the fix: ``fc`` with a bias, no norm after it."""
    m = models.build("cnn")
    m.fc, m.fc_norm = nn.Linear(m.fc.in_features, m.fc.out_features), nn.Identity()
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.01])
    ap.add_argument("--shard", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        s = data.load("fashion-mnist", seed=seed)
        x, y = s.private_train.x, s.private_train.y
        shard, val = slice(0, args.shard), slice(len(x) - 2000, len(x))  # disjoint: the last 2,000 validate
        probe = s.public.x[: diagnostics.PROBE]
        for lr in args.lrs:
            for name, make in (("before: no norm after fc", old_cnn), ("after: fc-BN-ReLU", models.build)):
                torch.manual_seed(seed)
                m = make() if make is old_cnn else make("cnn")
                train.fit(m, x[shard], y[shard], epochs=1, lr=lr, batch_size=64, seed=seed)
                rows.append({"seed": seed, "lr": lr, "model": name, "dead_fc": diagnostics.dead_units(m, probe)["fc"],
                             "val_acc": train.evaluate(m, x[val], y[val])})  # fmt: skip
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows).groupby(["model", "lr"])[["dead_fc", "val_acc"]].agg(["mean", "min", "max"]).round(3))


if __name__ == "__main__":
    main()
