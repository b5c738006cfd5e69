"""The prepared GPU check: what a lent accelerator measures in a few unattended minutes.

``scripts/device_check.sh`` runs this module (``python -m reft.bench.device_check``) under a hard time limit.
Steps, each skipped when the time budget is spent (what finished is written as it finishes):

1. ``env.json``: torch, CUDA and device names, bf16 support.
2. ``device_tests.txt``: the device tests (``tests/test_device.py``, ``tests/test_train.py``) on this machine,
   so every device-parametrized test runs on CUDA too.
3. ``profile.csv`` and ``rounds.csv``: a short run of the ``paper`` profile's notebook-03 set-up (ResNet-18,
   20 clients on the six tiers, 2 local epochs, 5 distillation epochs; REFT and FedAvg) under the phase
   profiler (:mod:`reft.bench`), fp32 and bf16 autocast, in one process: seconds, TFLOP/s per phase and the
   measured seconds per round. CIFAR-10 cannot be downloaded on a lent machine, so the images are
   CIFAR-shaped (3 x 32 x 32, 40k private / 10k public / 10k test) and made here: a fixed random template per
   class plus noise, learnable but not CIFAR. Timing does not depend on the pixels; accuracy is reported
   only as a sanity check that training learns.

``scripts/paper_estimate.py --measured results/gpu/rounds.csv`` then replaces its assumed throughput by
the measured one. ``--dry-run``: the same steps on the CPU at tiny sizes (what CI tests).

    python -m reft.bench.device_check --out results/gpu --budget-s 420
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from reft import data, report, train
from reft.bench.profiler import profile
from reft.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
PAPER = dict(model="resnet18", n_clients=20, local_epochs=2, distill_epochs=5, lr=0.05, max_ratio=0.95)
DRY = dict(model="resnet18", widths=[8, 16, 32, 64, 8, 8, 16, 16, 32, 32, 64, 64], n_clients=4, local_epochs=1,
           distill_epochs=1, max_ratio=0.5)  # fmt: skip
SIZES = {"paper": (40_000, 10_000, 10_000), "dry": (240, 120, 120)}
TESTS = ["tests/test_device.py", "tests/test_train.py"]


def synthetic_cifar(private: int, public: int, test: int, seed: int = 0) -> data.Splits:
    """CIFAR-shaped splits (3 x 32 x 32, 10 classes): a fixed random template per class, scaled by 0.5,
    plus unit Gaussian noise. Learnable, so a run's accuracy rising above 10% shows training works."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 32, 32, generator=g)

    def part(n: int, labelled: bool = True) -> data.Data:
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.5 * templates[y] + torch.randn(n, 3, 32, 32, generator=g)
        return data.Data(x, y if labelled else None)

    names = tuple(f"class {i}" for i in range(10))
    return data.Splits("cifar10", part(private), part(public, labelled=False), part(test), names)


def environment(device: torch.device) -> dict:
    """What this machine is, for the record."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "device": str(device), "bf16": train.amp_device(device), "threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def device_tests(out: Path, pytest_args: list[str], timeout_s: float) -> int:
    """Run the device tests here; their output goes to ``device_tests.txt``. Returns pytest's exit code."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"{e.stdout or ''}\ntimed out after {timeout_s:.0f} s", 124
    report.atomic_write(out / "device_tests.txt", lambda p: p.write_text(" ".join(cmd) + "\n" + text))
    return code


def profile_runs(out: Path, cfg: RunConfig, splits: data.Splits, deadline: float) -> pd.DataFrame:
    """REFT and FedAvg, fp32 then bf16 (where supported), under the profiler until ``deadline``; writes
    ``profile.csv`` (one row per phase and run) and ``rounds.csv`` (one row per run) after every run."""
    precisions = ["fp32", "bf16"] if train.amp_device(train.resolve_device(cfg.device)) else ["fp32"]
    frames, rows = [], []
    for alg in ("reft", "fedavg"):
        for precision in precisions:
            if time.monotonic() > deadline:
                print(f"time budget spent: skipping {alg} {precision}", flush=True)
                continue
            df = profile(cfg.replace(algorithm=alg, amp=precision == "bf16"), splits, sustained_flops=float("nan"))
            df["tflop_per_s"] = df["gflop_per_s"] / 1e3
            frames.append(df.drop(columns=["pct_of_sustained", "sustained_gflop_per_s"]))
            trained = df[df["gflop"] > 0]
            rows.append({
                "algorithm": alg, "precision": precision, "rounds": cfg.rounds, "wall_s": df.attrs["wall_s"],
                "s_per_round": df.attrs["wall_s"] / cfg.rounds, "gflop": trained["gflop"].sum(),
                "compute_s": trained["seconds"].sum(),
                "tflop_per_s": trained["gflop"].sum() / trained["seconds"].sum() / 1e3,
                "final_acc": df.attrs["final_acc"], "device": cfg.device,
            })  # fmt: skip
            print(f"{alg} {precision}: {rows[-1]['s_per_round']:.1f} s per round, "
                  f"{rows[-1]['tflop_per_s']:.2f} TFLOP/s over the computing phases", flush=True)  # fmt: skip
            prof, per_run = pd.concat(frames, ignore_index=True), pd.DataFrame(rows)
            report.atomic_write(out / "profile.csv", lambda p, d=prof: d.to_csv(p, index=False))
            report.atomic_write(out / "rounds.csv", lambda p, d=per_run: d.to_csv(p, index=False))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reft.bench.device_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu", help="folder for the results")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new steps after this many seconds")
    p.add_argument("--rounds", type=int, default=1, help="rounds of each profiled run")
    p.add_argument("--pytest-args", default=" ".join(TESTS), help="what the device-test step runs")
    p.add_argument("--no-tests", action="store_true", help="skip the device tests")
    a = p.parse_args(argv)
    start = time.monotonic()
    device = torch.device("cpu") if a.dry_run else train.resolve_device("auto")
    if device.type != "cuda" and not a.dry_run:
        print("error: no CUDA device here; use --dry-run to run the same steps on the CPU", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    report.atomic_write(a.out / "env.json", lambda q: q.write_text(json.dumps(env, indent=1)))
    print("environment:", env, flush=True)
    code = 0
    if not a.no_tests:
        code = device_tests(a.out, a.pytest_args.split(), timeout_s=max(30.0, a.budget_s / 3))
        print(f"device tests: exit {code} (output in {a.out / 'device_tests.txt'})", flush=True)
    private, public, test = SIZES["dry" if a.dry_run else "paper"]
    splits = synthetic_cifar(private, public, test)
    cfg = RunConfig(dataset="cifar10", **(DRY if a.dry_run else PAPER), rounds=a.rounds, device=str(device),
                    diagnostics_every=0, eval_clients=False, final_test=False, progress=False)  # fmt: skip
    rounds = profile_runs(a.out, cfg, splits, deadline=start + a.budget_s)
    print(rounds.to_string(index=False, float_format="%.3f"))
    print(f"device check done in {time.monotonic() - start:.0f} s; results in {a.out}")
    return code if len(rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
