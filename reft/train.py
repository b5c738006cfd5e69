"""Local training and evaluation loops on in-memory tensors, shared by every algorithm.

Data stay as pre-loaded tensors (no DataLoader workers): for Fashion-MNIST-sized data this is
about an order of magnitude faster per epoch on a 2-core CPU than a DataLoader with ``ToTensor``.
Memory layout and batch sizes were chosen by measurement on a 2-core x86 CPU (``python -m reft.bench``):
inference runs in ``channels_last`` in batches of 128 (2.4x faster than batches of 1,000 for the dense
CNN, same outputs bit for bit); training uses ``channels_last`` only when every conv width is a multiple
of 8 (oneDNN's blocked kernels: 1.7x faster for the dense CNN), else the default layout (odd widths of
pruned models train up to 1.7x faster that way). :func:`memory_format` holds the rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """What one call of :func:`fit` did: mean loss per epoch, samples seen, wall seconds, and whether it
    stopped early on a non-finite batch loss (``diverged``; the last loss is then that batch's)."""

    losses: list[float]
    samples: int
    seconds: float
    diverged: bool = False


PREDICT_BATCH = 128


def memory_format(model: nn.Module) -> torch.memory_format:
    """The layout :func:`fit` trains ``model`` in: ``channels_last`` when every conv width is a multiple
    of 8 (or there is no conv), else ``contiguous_format`` (see the module docstring for the figures)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.channels_last if all(w % 8 == 0 for w in widths) else torch.contiguous_format


def _fmt(x: torch.Tensor, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    schedule: str = "constant",
    on_epoch: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` in place with mini-batch SGD on tensors ``x`` and targets ``y``.

    ``y`` may hold class labels (default loss: cross-entropy) or anything ``loss_fn(logits, y_batch)``
    accepts, e.g. soft targets for distillation. ``schedule`` is ``constant`` or ``cosine`` (learning
    rate annealed to 0 over all steps). ``on_epoch(epoch, mean_loss)`` is called after each epoch.
    Shuffling and any randomness in the model are seeded by ``seed``, so the same call on the same
    machine gives the same weights. A NaN or infinite batch loss stops training before that step
    (``FitResult.diverged``); the weights are left as they were, finite or not.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}.")
    if len(x) == 0:
        raise ValueError("Cannot train on an empty dataset.")
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"Need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}.")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine'; got {schedule!r}.")
    loss_fn = loss_fn or F.cross_entropy
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fmt = memory_format(model)
    model.to(device=device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps)) if schedule == "cosine" else None
    losses: list[float] = []
    seen = 0
    t0 = time.perf_counter()
    with tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total, n = 0.0, 0
            for i in range(0, len(x), batch_size):
                idx = order[i : i + batch_size]
                xb, yb = _fmt(x[idx], fmt).to(device), y[idx].to(device)
                loss = loss_fn(model(xb), yb)
                value = loss.item()
                if not math.isfinite(value):
                    return FitResult([*losses, value], seen, time.perf_counter() - t0, diverged=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += value * len(idx)
                n += len(idx)
                seen += len(idx)
                bar.update()
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_epoch is not None:
                on_epoch(len(losses), losses[-1])
    return FitResult(losses, seen, time.perf_counter() - t0)


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = PREDICT_BATCH, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (eval mode, batched), returned on the CPU."""
    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last).eval()
    try:
        out = [model(_fmt(x[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def train_central(
    model: nn.Module, splits: Any, epochs: int, seed: int = 0, progress: bool = True, **fit_kw: Any
) -> pd.DataFrame:
    """Train on all of ``splits.private_train`` (no federation): the reference every federated run is
    compared to. Returns one row per epoch: loss, test accuracy, cumulative seconds of training."""
    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def log(epoch: int, loss: float) -> None:
        t = time.perf_counter()
        acc = evaluate(model, splits.test.x, splits.test.y)
        rows.append({"epoch": epoch, "loss": loss, "test_acc": acc, "train_s": t - clock["start"] - clock["eval"]})
        clock["eval"] += time.perf_counter() - t

    x, y = splits.private_train.x, splits.private_train.y
    fit(model, x, y, epochs=epochs, seed=seed, on_epoch=log, progress=progress, desc="central", **fit_kw)
    return pd.DataFrame(rows)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = PREDICT_BATCH,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``(x, y)``."""
    if len(x) == 0:
        raise ValueError("Cannot evaluate on an empty dataset.")
    return (predict(model, x, batch_size, device).argmax(1) == y).float().mean().item()
