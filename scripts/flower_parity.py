"""The in-process vs Flower table for every algorithm (same seed): final accuracy and the Ledger's totals.

Runs :func:`reft.flower.compare.compare_algorithms` (the in-process engine, then each Flower engine, one
torch thread per process everywhere) at a small config: 3 clients on three tiers, 900 private / 500
public / 500 test Fashion-MNIST samples, 2 rounds of 1 local epoch, seed 0; ``--set KEY=VALUE`` (Flower
run-config keys, e.g. ``codec-up=int8``) changes it. Writes ``OUT_DIR/flower_parity.csv`` and prints the
table. Every Flower run happens in a child process in a loopback-only network namespace
(:func:`reft.flower.engines.run`)::

    python scripts/flower_parity.py /tmp/flower_table --engines deploy,simulate-superlink
"""

from __future__ import annotations

import argparse

import pandas as pd

from reft.flower import config as fconfig
from reft.flower.compare import ALGORITHMS, compare_algorithms, write_table
from reft.flower.launch import parse_value

TIERS = "laptop,jetson_nano,raspberry_pi_4"
SMALL = {
    "private-size": 900, "public-size": 500, "test-size": 500, "n-clients": 3, "rounds": 2, "local-epochs": 1,
    "tier-mix": TIERS, "distill-epochs": 2, "seed": 0,
}  # fmt: skip
COLUMNS = [
    "algorithm", "codec_up", "codec_down", "engine", "status", "final_acc", "bytes_up", "bytes_down",
    "same_acc", "same_bytes", "total_wall_s",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="folder for flower_parity.csv (and each run's outputs under runs/)")
    ap.add_argument("--engines", default="deploy", help="Flower engines, comma-separated (deploy, simulate, ...)")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated (default: all five)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config value (repeat)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process, every engine")
    args = ap.parse_args(argv)
    user = dict(SMALL)
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        user[k.strip()] = parse_value(v.strip())
    cfg, _ = fconfig.from_user_config(user)
    engines = ["in-process", *(e.strip() for e in args.engines.split(",") if e.strip())]
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    per_node = isinstance(cfg.tier_mix, list) and len(cfg.tier_mix) == cfg.n_clients  # one tier per SuperNode
    tiers = cfg.tier_mix if per_node else None
    table = compare_algorithms(cfg, algorithms, tiers, engines, threads=args.threads, out_dir=f"{args.out_dir}/runs")
    path = write_table(table, args.out_dir)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[[c for c in COLUMNS if c in table]].to_string(index=False))
    ok = bool(table.get("same_acc", pd.Series([False])).all() and table.get("same_bytes", pd.Series([False])).all())
    print(f"written: {path}; every engine equal to the in-process run: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
