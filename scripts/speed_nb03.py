"""Time notebook 03 at the ``fmnist`` settings on one seed, for the engine of a given checkout.

Runs ``notebooks/03_federated_comparison.ipynb`` of ``--repo`` (a worktree of any commit) with papermill,
the ``fmnist`` profile's notebook-03 parameters from this checkout's ``notebooks/profiles.yaml``,
``seeds: [0]``, no codec study, and ``--set KEY=VALUE`` overrides (e.g. ``workers=2``); its outputs go to
a temporary folder. Appends one row per (method, partition) with the notebook's wall time to
``results/fmnist/speed_nb03.csv`` under ``--label``::

    git worktree add /tmp/before c9ac726
    python scripts/speed_nb03.py --repo /tmp/before --label before
    python scripts/speed_nb03.py --repo . --label after --set workers=2
    python scripts/speed_nb03.py --repo . --label bf16 --set workers=2 --set amp=true --out results/fmnist/x.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "fmnist" / "speed_nb03.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True, help="checkout whose notebook and reft/ are timed")
    ap.add_argument("--label", required=True, help="e.g. before / after")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a notebook parameter (YAML)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"the table to append to (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--baseline", default="before", help="the label speed-ups are computed against")
    args = ap.parse_args(argv)
    prof = yaml.safe_load((ROOT / "notebooks" / "profiles.yaml").read_text())["fmnist"]
    params = {**prof["common"], **prof["notebooks"]["03_federated_comparison"], "seeds": [0]}
    for key in ("workers", "codec_methods", "codec_seeds"):
        params.pop(key, None)  # workers only when --set asks
    params["codecs_up"] = []  # the engine alone: no codec study (a notebook without it ignores the name)
    for item in args.set:
        k, v = item.split("=", 1)
        params[k] = yaml.safe_load(v)
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        params["profile"] = "speed"
        env = {**os.environ, "REFT_OUTPUT": tmp, "PYTHONPATH": str(repo)}
        nb = str(repo / "notebooks" / "03_federated_comparison.ipynb")
        cmd = [sys.executable, "-m", "papermill", nb, f"{tmp}/out.ipynb", "-y", yaml.safe_dump(params),
               "--log-level", "ERROR", "--cwd", str(repo)]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
        table = pd.read_csv(Path(tmp) / "results" / "speed" / "03_comparison.csv")
    cols = ["method", "partition", "seed", "final_acc", "final_test_n", "mb_up", "mb_down"]
    rows = table[cols].assign(version=args.label, commit=commit.stdout.strip(), notebook_wall_s=round(wall),
                              settings=" ".join(args.set) or "-")  # fmt: skip
    old = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
    if len(old):
        old = old[old["version"] != args.label]
    out = pd.concat([old, rows], ignore_index=True)
    base = out.loc[out["version"] == args.baseline, "notebook_wall_s"]
    out["speedup_vs_before"] = (base.iloc[0] / out["notebook_wall_s"]).round(2) if len(base) else float("nan")
    out.to_csv(args.out, index=False)
    print(out.groupby(["version", "commit"], sort=False)[["notebook_wall_s", "speedup_vs_before"]].first())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
