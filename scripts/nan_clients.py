"""Final accuracy when 2 of 10 clients upload NaN weights every round, against the same run without faults.

Four algorithms, 10 clients on the six default tiers, 3k private / 1k public / 1k test Fashion-MNIST
samples, 3 rounds, seed 0, one torch thread. Writes ``results/fmnist/faults_nan_clients.csv``.

    python scripts/nan_clients.py
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from reft import data, engine, pruning, report
from reft.config import RunConfig

BAD = (0, 1)


def main() -> int:
    real = engine.client_update

    def poisoned(cfg, model, x, y, rnd, cid, *args, **kw):  # trains as usual, then uploads NaN weights
        res = real(cfg, model, x, y, rnd, cid, *args, **kw)
        if cid in BAD:
            with torch.no_grad():
                for t in model.state_dict().values():
                    if t.is_floating_point():
                        t.fill_(float("nan"))
        return res

    splits, rows = data.load("fashion-mnist"), []
    with pruning.single_thread():
        for alg in ("fedavg", "heterofl", "feddf", "reft"):
            cfg = RunConfig(algorithm=alg, n_clients=10, private_size=3000, public_size=1000, test_size=1000,
                            rounds=3, progress=False)  # fmt: skip
            t0 = time.perf_counter()
            engine.client_update = poisoned
            try:
                bad = engine.run(cfg, splits)
            finally:
                engine.client_update = real
            clean = engine.run(cfg, splits)
            finite = all(torch.isfinite(v).all() for v in bad.strategy.server_model.state_dict().values())
            rows.append({
                "algorithm": alg, "final_acc_with_nan_clients": bad.history["server_acc"].iloc[-1],
                "final_acc_clean": clean.history["server_acc"].iloc[-1],
                "rejected_per_round": " ".join(map(str, bad.history["rejected"])),
                "server_weights_finite": bool(finite), "wall_s": time.perf_counter() - t0,
            })  # fmt: skip
            print(rows[-1], flush=True)
    report.save_table(pd.DataFrame(rows), "faults_nan_clients", "fmnist")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
