"""What one local SGD step costs per hardware tier, and what cuts it: the before/after table of the
fixed-cost study (`results/fmnist/step_costs.csv`).

Each tier's pruned ``cnn`` (notebook 03's ``fmnist`` set-up: six tiers, ``max_ratio`` 0.95) trains batches
of 64 real Fashion-MNIST images with the engine's recipe (SGD lr 0.05, momentum 0.9, weight decay 5e-4),
one thread. Variants, timed in one process with interleaved repeats (median ms per step):

* ``before``: the engine before this study (fp32; channels-last only when every conv width is a multiple of 8);
* ``fp32 nchw`` / ``fp32 channels_last`` / ``bf16 nchw`` / ``bf16 channels_last``: layout x precision;
* ``after fp32`` / ``after bf16``: what :func:`reft.train.fit` does now (:func:`reft.train.memory_format`),
  without and with ``amp`` (bf16 only for models whose narrowest conv has >= 8 channels: :func:`reft.train.autocast`);
* ``after bf16 foreach``: ``after bf16`` with SGD's multi-tensor (``foreach``) update instead of the per-parameter loop;
* ``after bf16 compiled``: ``after bf16`` with ``torch.compile`` of the model (inductor), and its compile seconds.

    python scripts/step_costs.py --out results/fmnist/step_costs.csv      # about 5 minutes on this CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from reft import data, engine, train
from reft.config import RunConfig
from reft.federation import Federation

BATCH = 64


def before_format(model: nn.Module) -> torch.memory_format:
    """The layout rule of the engine before this study (fp32 only)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.channels_last if all(w % 8 == 0 for w in widths) else torch.contiguous_format


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def stepper(
    batches: Batches,
    model: nn.Module,
    fmt: torch.memory_format,
    amp: bool,
    foreach: bool = False,
    engine_rule: bool = False,
) -> Callable[[int], None]:
    """One SGD step on batch ``i`` of the probe data, as :func:`reft.train.fit` takes it. ``amp`` forces bf16
    autocast, unless ``engine_rule``: then bf16 applies where :func:`reft.train.autocast` applies it."""
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=foreach)
    dev = torch.device("cpu")

    def step(i: int) -> None:
        xb, yb = batches[i % len(batches)]
        xb = xb.contiguous(memory_format=fmt)
        with train.autocast(dev, amp, model if engine_rule else None):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def median_ms(step: Callable[[int], None], steps: int) -> float:
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every variant")
    p.add_argument("--steps", type=int, default=15, help="timed steps per repeat (after 3 warm-up steps)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="time torch.compile too")
    p.add_argument("--out", type=Path, help="write the table as CSV here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = RunConfig(private_size=20000, public_size=5000, test_size=2000, max_ratio=0.95, progress=False)
    splits = engine.prepare(cfg, data.load(cfg.dataset))
    x, y = splits.private_train.x, splits.private_train.y
    batches = [(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]) for i in range(20)]
    fed = Federation(cfg, splits)
    rows = []
    for tier, widths in fed.widths.items():
        torch.manual_seed(0)
        net = fed.prune(fed.dense_model(), fed.ratios[tier])
        cl, nchw = torch.channels_last, torch.contiguous_format
        variants = {
            "before": (before_format(net), False, False),
            "fp32 nchw": (nchw, False, False),
            "fp32 channels_last": (cl, False, False),
            "bf16 nchw": (nchw, True, False),
            "bf16 channels_last": (cl, True, False),
            "after fp32": (train.memory_format(net), False, False),
            "after bf16": (train.memory_format(net), True, False, True),
            "after bf16 foreach": (train.memory_format(net), True, True, True),
        }
        steps = {k: stepper(batches, copy.deepcopy(net), *v) for k, v in variants.items()}
        for s in steps.values():
            median_ms(s, 3)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(a.repeats):
            for k, s in steps.items():
                times[k].append(median_ms(s, a.steps))
        row = {"tier": tier, "widths": widths, **{k: statistics.median(v) for k, v in times.items()}}
        if a.compile:
            fmt, amp, _, rule = variants["after bf16"]
            model = torch.compile(copy.deepcopy(net))
            t = time.perf_counter()
            s = stepper(batches, model, fmt, amp, engine_rule=rule)
            median_ms(s, 2)  # compiles forward and backward
            row["compile_s"] = time.perf_counter() - t
            row["after bf16 compiled"] = statistics.median(median_ms(s, a.steps) for _ in range(a.repeats))
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format="%.2f"), flush=True)
    df = pd.DataFrame(rows)
    df["before/after_bf16"] = df["before"] / df["after bf16"]
    print(df.to_string(index=False, float_format="%.2f"))
    if a.out:
        df.to_csv(a.out, index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
