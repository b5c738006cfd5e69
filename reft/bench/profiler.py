"""Profile a federated run by phase: :func:`profile` and the command line ``python -m reft.bench``."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from reft import data, engine, tiers, train
from reft.bench import recording, table
from reft.config import RunConfig

PRECISIONS = ("fp32", "bf16")


def profile(cfg: RunConfig, splits: data.Splits | None = None, sustained_flops: float | None = None) -> pd.DataFrame:
    """Run ``cfg`` (a :class:`reft.config.RunConfig`; its ``rounds`` rounds) under a recording and return
    :func:`table`. ``sustained_flops`` defaults to this machine's rate measured now on the config's model."""
    if sustained_flops is None:
        whole = engine.source(cfg, splits)
        shape = tuple(whole.example_input.shape[1:])
        sustained_flops = float(tiers.profile_this_machine(cfg.model, shape)["sustained_flops"].iloc[0])
    with recording() as rec:
        t = time.perf_counter()
        res = engine.run(cfg, splits)
        wall = time.perf_counter() - t
    df = table(rec, wall, sustained_flops)
    acc = float(res.history["server_acc"].iloc[-1])
    precision = "bf16" if cfg.amp and train.amp_device(train.resolve_device(cfg.device)) else "fp32"
    df.attrs.update(wall_s=wall, sustained_gflop_per_s=sustained_flops / 1e9, final_acc=acc)
    return df.assign(algorithm=cfg.algorithm, precision=precision, rounds=cfg.rounds, threads=torch.get_num_threads(),
                     wall_s=wall, sustained_gflop_per_s=sustained_flops / 1e9, final_acc=acc)  # fmt: skip


def compare_precisions(df: pd.DataFrame) -> pd.DataFrame:
    """Per (threads, algorithm, phase): seconds and GFLOP/s in fp32 and bf16 side by side and the speed-up
    (fp32 seconds / bf16 seconds), from a :func:`main` table holding both precisions."""
    wide = df.pivot_table(index=["threads", "algorithm", "phase"], columns="precision",
                          values=["seconds", "gflop_per_s"], sort=False)  # fmt: skip
    out = pd.DataFrame({
        "fp32_s": wide[("seconds", "fp32")], "bf16_s": wide[("seconds", "bf16")],
        "fp32_gflop_per_s": wide[("gflop_per_s", "fp32")], "bf16_gflop_per_s": wide[("gflop_per_s", "bf16")],
    })  # fmt: skip
    out["speedup"] = out["fp32_s"] / out["bf16_s"]
    return out.reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reft.bench", description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", action="append", help="algorithm(s) to profile (repeatable; default: reft, fedavg)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n-clients", type=int, default=10)
    p.add_argument("--private-size", type=int, default=20000)
    p.add_argument("--public-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--distill-epochs", type=int, default=5)
    p.add_argument("--partition", default="iid")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--diagnostics-every", type=int, default=0, help="as RunConfig (notebooks 03/04: 0, last round)")
    p.add_argument(
        "--threads",
        type=int,
        action="append",
        help="torch threads (repeatable: each count in turn, in this process; default: torch's choice)",
    )
    p.add_argument(
        "--precision",
        action="append",
        choices=PRECISIONS,
        help="fp32, or bf16 autocast (RunConfig.amp; native bf16 CPUs and CUDA); repeatable (default: fp32)",
    )
    p.add_argument("--device", default="auto", help="as RunConfig.device (default auto: CUDA, MPS, else CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table as CSV here (with both precisions: also <out>_precision.csv)")
    a = p.parse_args(argv)
    precisions = a.precision or ["fp32"]
    frames = []
    try:
        if "bf16" in precisions and not train.amp_device(train.resolve_device(a.device)):
            raise ValueError(f"bf16 needs CUDA or a CPU with native bf16 (avx512_bf16, amx_bf16, Arm bf16); "
                             f"device {a.device!r} here has none")  # fmt: skip
        base = RunConfig(
            dataset=a.dataset, model=a.model, n_clients=a.n_clients, private_size=a.private_size,
            public_size=a.public_size, test_size=a.test_size, rounds=a.rounds, distill_epochs=a.distill_epochs,
            partition=a.partition, alpha=a.alpha, seed=a.seed, final_test=False, progress=False,
            diagnostics_every=a.diagnostics_every, device=a.device,
        )  # fmt: skip
        splits = engine.source(base)
        shape = tuple(splits.example_input.shape[1:])
        for threads in a.threads or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            sustained = float(tiers.profile_this_machine(a.model, shape)["sustained_flops"].iloc[0])
            for alg in a.algorithm or ["reft", "fedavg"]:
                for precision in precisions:
                    cfg = base.replace(algorithm=alg, amp=precision == "bf16")
                    frames.append(profile(cfg, splits, sustained_flops=sustained))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.concat(frames, ignore_index=True)
    hidden = ["algorithm", "precision", "rounds", "threads", "wall_s", "sustained_gflop_per_s", "final_acc"]
    for f in frames:
        print(f"\n{f['algorithm'].iloc[0]}, {f['precision'].iloc[0]}, {f['threads'].iloc[0]} thread(s): "
              f"{f.attrs['wall_s']:.1f} s for {a.rounds} rounds, sustained fp32 training rate "
              f"{f.attrs['sustained_gflop_per_s']:.1f} GFLOP/s, final accuracy {f.attrs['final_acc']:.4f}")  # fmt: skip
        print(f.drop(columns=hidden).to_string(index=False, float_format="%.2f"))
    both = {"fp32", "bf16"} <= set(precisions)
    if both:
        cmp = compare_precisions(df)
        print("\nfp32 vs bf16 (speedup = fp32 seconds / bf16 seconds):")
        print(cmp.to_string(index=False, float_format="%.2f"))
    if a.out:
        df.to_csv(a.out, index=False)
        if both:
            cmp.to_csv(a.out.removesuffix(".csv") + "_precision.csv", index=False)
    return 0
