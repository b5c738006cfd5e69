"""Why a method's seeds spread under Dirichlet 0.5 (issue 25): per-class accuracy of the final server model,
seed by seed, beside the class counts of the clients that train its widest part.

Re-runs notebook 03's ``fmnist`` runs of the given methods on the Dirichlet 0.5 partition (same config, same
seeds; the committed final accuracy of ``03_comparison.csv`` is printed and saved beside the re-run's, which
is close but not bit-identical when the thread count differs from the notebook's pool), then measures the
final server model's accuracy per class on the whole test part. The test set explains a committed number
here; it chooses nothing. For HeteroFL the widest part of the model (the channels only the dense tier's
width covers) is trained by the full-width clients alone, so their class counts are printed too.

    nice -n 19 python scripts/spread_check.py --methods heterofl fedavg-weakest --seeds 0 1 2 3 4

writes ``results/fmnist/spread_check.csv`` (one row per method, seed and class).
"""

from __future__ import annotations

import argparse
import ast

import pandas as pd
import torch

from reft import data, engine, report, reproduce, train
from reft.config import RunConfig
from reft.federation import Federation

PROFILE = "fmnist"


def notebook03_config() -> RunConfig:
    """Notebook 03's RunConfig under the fmnist profile (its declared defaults, then the profile's values)."""
    (job,) = reproduce.plan(PROFILE, reproduce.load_profiles(), only=["03"])
    p = {k: ast.literal_eval(v) for k, v in reproduce.declared_parameters(job.notebook).items()} | job.parameters
    fields = set(RunConfig.__dataclass_fields__) - {"seed", "resume", "profile", "save_as"}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in p.items() if k in fields}
    return RunConfig(**kw, profile=PROFILE, progress=False)


def per_class(model: torch.nn.Module, test: data.Data, device: str) -> list[float]:
    """Accuracy of ``model`` on each class of ``test``."""
    out = []
    for c in range(int(test.y.max()) + 1):
        keep = test.y == c
        out.append(train.evaluate(model, test.x[keep], test.y[keep], device=device))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["heterofl", "fedavg-weakest"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()
    base = notebook03_config().replace(partition="dirichlet", alpha=args.alpha)
    committed = pd.read_csv(report.results_dir(PROFILE) / "03_comparison.csv")
    label = f"dirichlet({args.alpha:g})"
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            cfg = base.replace(algorithm=method, seed=seed)
            whole = engine.source(cfg)
            res = engine.run(cfg, whole)
            acc = per_class(res.strategy.server_model, whole.test, cfg.device)
            final = float(res.history["server_acc"].iloc[-1])
            ref = committed[
                (committed["method"] == method) & (committed["seed"] == seed) & (committed["partition"] == label)
            ]
            widest = set(res.clients.loc[res.clients["params"] == res.clients["params"].max(), "client"])
            fed = Federation(cfg, engine.prepare(cfg, whole))  # the run's clients: same seed, same partition
            counts = sum(torch.bincount(c.y.cpu(), minlength=len(acc)) for c in fed.clients if c.id in widest)
            print(f"{method} seed {seed}: final {100 * final:.2f}% (committed "
                  f"{100 * float(ref['final_acc'].iloc[0]):.2f}%)", flush=True)  # fmt: skip
            for c, a in enumerate(acc):
                rows.append({"method": method, "seed": seed, "class": c, "class_acc": a,
                             "widest_clients_samples": int(counts[c]), "final_acc": final,
                             "committed_final_acc": float(ref["final_acc"].iloc[0])})  # fmt: skip
    out = pd.DataFrame(rows)
    report.save_table(out, "spread_check", PROFILE)
    for col in ("class_acc", "widest_clients_samples"):
        print(col, out.pivot_table(index=["method", "seed"], columns="class", values=col).round(3), sep="\n")


if __name__ == "__main__":
    main()
