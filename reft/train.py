"""Local training and evaluation loops on in-memory tensors, shared by every algorithm.

Data stay as pre-loaded tensors (no DataLoader workers): for Fashion-MNIST-sized data this is
about an order of magnitude faster per epoch on a 2-core CPU than a DataLoader with ``ToTensor``.
Memory layout and batch sizes were chosen by measurement on a 2-core x86 CPU (``python -m reft.bench``,
``scripts/step_costs.py``): inference runs in ``channels_last`` in batches of 128 (2.4x faster than batches
of 1,000 for the dense CNN, same outputs bit for bit); training uses ``channels_last`` when the narrowest conv
has at least 8 channels (oneDNN's blocked kernels: 1.5x faster for the dense CNN, 1.4x for the laptop tier's
[10, 20, 40] widths, fp32 and bf16 alike), else the default layout (the weakest tiers' 1-6 channel convs train
up to 1.3x faster that way). :func:`memory_format` holds the rule.

Devices: every loop takes a ``device`` (``"cpu"`` by default; ``"auto"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
go through :func:`resolve_device`) and moves the model there in place; data may already be there (then
nothing is copied) or anywhere else (then each batch is moved). ``amp`` turns on bf16 autocast on CUDA and
on CPUs with native bf16 (:func:`autocast`, :func:`amp_device`). ``augment`` in :func:`fit` is the CIFAR
recipe's random crop and flip (:func:`crop_flip`), drawn from a generator of its own seeded from ``seed``.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from reft import data
from reft.progress import tqdm

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
CROP_PAD = 4  # pixels of zero padding around a CIFAR image before the random 32 x 32 crop
_DEVICE = re.compile(r"cpu|mps|cuda(:(0|[1-9][0-9]*))?")


def available_devices() -> list[str]:
    """The devices this machine has, as :func:`resolve_device` spells them (``"auto"`` aside)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a device here (unknown, or not on this machine), or None."""
    if name == "auto" or name in available_devices():
        return None
    here = ", ".join(available_devices())
    if not _DEVICE.fullmatch(name):
        return f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps (available here: {here})"
    return f"device {name!r} is not available here; available: {here}"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device ``name`` stands for; ``"auto"`` picks CUDA, then Apple MPS, then the CPU.
    Raises ``ValueError`` (listing what this machine has) for an unknown or unavailable device."""
    name = str(name)
    problem = device_problem(name)
    if problem is not None:
        raise ValueError(problem + ".")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: x86 AVX-512 BF16 or AMX, Arm's BF16 extension.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (a flag of :data:`BF16_CPU_FLAGS` in ``cpuinfo``). Without it
    oneDNN emulates bf16 in fp32 units, slower than fp32 itself, so :func:`amp_device` says no. False where
    the file is missing (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
             for f in line.split(":", 1)[1].split()}  # fmt: skip
    return any(f in flags for f in BF16_CPU_FLAGS)


def amp_device(device: torch.device) -> bool:
    """Whether bf16 autocast (``amp``) takes effect on ``device``: CUDA with bf16 support, or a CPU with
    native bf16 (:func:`cpu_has_bf16`). Elsewhere (MPS, older CPUs) a run with ``amp`` computes in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, amp: bool, model: nn.Module | None = None) -> AbstractContextManager:
    """bf16 autocast when ``amp`` and :func:`amp_device`; otherwise nothing changes (numbers stay fp32-exact).
    On a CPU, a ``model`` whose narrowest conv has fewer than 8 channels stays fp32 (:func:`memory_format`
    trains it in the default layout, where bf16 measured no faster: ``scripts/step_costs.py``; it would only
    cost precision). Weights, gradients and optimizer state stay fp32 either way; only the matmuls and
    convolutions inside (and what follows them up to the next fp32 op) run in bf16."""
    if not (amp and amp_device(device)):
        return nullcontext()
    if device.type == "cpu" and model is not None and memory_format(model) != torch.channels_last:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Each image of the batch ``x`` (N x C x H x W) randomly cropped back to H x W after ``pad`` pixels of
    zero padding (zero is the mean colour of normalized data), and mirrored left-right with probability
    1/2. Offsets and flips are drawn on the CPU from ``gen`` (the same crops on every device); one
    gather for the whole batch."""
    if x.dim() != 4:
        raise ValueError(f"Augmentation needs image batches (N x C x H x W); got shape {tuple(x.shape)}.")
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5
    rows = dy + torch.arange(h)
    cols = torch.where(flip, dx + torch.arange(w - 1, -1, -1), dx + torch.arange(w))  # a flip reads columns backwards
    rows, cols = rows.to(x.device), cols.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def _augment_generator(seed: int) -> torch.Generator:
    # A stream of its own (one LCG step from the seed): shuffling stays as without augmentation, and
    # client seeds that differ by one (cid, cid + 1) do not share a stream.
    return torch.Generator().manual_seed((seed * 6364136223846793005 + 1442695040888963407) % 2**63)


def memory_format(model: nn.Module) -> torch.memory_format:
    """The layout :func:`fit` trains ``model`` in: ``channels_last`` when its narrowest conv has at least
    8 channels (or there is no conv), else ``contiguous_format`` (see the module docstring for the figures)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.channels_last if min(widths, default=8) >= 8 else torch.contiguous_format


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
    augment: bool = False,
    amp: bool = False,
) -> FitResult:
    """Train ``model`` in place with mini-batch SGD on tensors ``x`` and targets ``y``.

    ``y`` may hold class labels (default loss: cross-entropy) or anything ``loss_fn(logits, y_batch)``
    accepts, e.g. soft targets for distillation. ``schedule`` is ``constant`` or ``cosine`` (learning
    rate annealed to 0 over all steps). ``on_epoch(epoch, mean_loss)`` is called after each epoch.
    Shuffling and any randomness in the model are seeded by ``seed``, so the same call on the same
    CPU model, torch version and thread count gives the same weights. A NaN or infinite batch loss
    stops training before that step
    (``FitResult.diverged``); the weights are left as they were, finite or not. ``augment``: every batch
    is randomly cropped and flipped (:func:`crop_flip`, seeded by ``seed`` too); ``amp``: bf16 autocast
    where the device supports it (:func:`autocast`). The model moves to ``device`` in place.
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
    dev = resolve_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    aug = _augment_generator(seed) if augment else None
    fmt = memory_format(model)
    cast = autocast(dev, amp, model)  # decided once per call, entered every step
    model.to(device=dev, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps)) if schedule == "cosine" else None
    losses: list[float] = []
    seen = 0
    t0 = time.perf_counter()
    with tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            ox, oy = order.to(x.device), order.to(y.device)  # index the data where they are
            total, n = 0.0, 0
            for i in range(0, len(x), batch_size):
                xb, yb = x[ox[i : i + batch_size]], y[oy[i : i + batch_size]]
                nb = len(yb)
                if aug is not None:
                    xb = crop_flip(xb, aug)
                xb, yb = _fmt(xb, fmt).to(dev), yb.to(dev)
                with cast:
                    logits = model(xb)
                loss = loss_fn(logits.float(), yb)  # the loss in fp32 whatever the forward ran in
                value = loss.item()
                if not math.isfinite(value):
                    return FitResult([*losses, value], seen, time.perf_counter() - t0, diverged=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += value * nb
                n += nb
                seen += nb
                bar.update()
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_epoch is not None:
                on_epoch(len(losses), losses[-1])
    return FitResult(losses, seen, time.perf_counter() - t0)


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = PREDICT_BATCH,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> torch.Tensor:
    """Float32 logits of ``model`` on ``x`` (eval mode, batched), computed and returned on ``device``
    (the model moves there in place)."""
    dev = resolve_device(device)
    was_training = model.training
    model.to(device=dev, memory_format=torch.channels_last).eval()
    try:
        with autocast(dev, amp, model):
            out = [model(_fmt(x[i : i + batch_size]).to(dev)).float() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=dev)


def train_central(
    model: nn.Module, splits: Any, epochs: int, seed: int = 0, progress: bool = True, augment: bool | None = None,
    device: str | torch.device = "auto", **fit_kw: Any,
) -> pd.DataFrame:  # fmt: skip
    """Train on all of ``splits.private_train`` (no federation): the reference every federated run is
    compared to. Returns one row per epoch: loss, test accuracy, cumulative seconds of training.
    ``augment`` as in :func:`fit`; None: as a run of that dataset would (:data:`reft.data.AUGMENT_BY_DEFAULT`,
    as ``RunConfig.augment``). ``device`` as ``RunConfig.device`` (default ``"auto"``); the data move there once."""
    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def log(epoch: int, loss: float) -> None:
        t = time.perf_counter()
        acc = evaluate(model, test.x, test.y, device=dev, amp=fit_kw.get("amp", False))
        rows.append({"epoch": epoch, "loss": loss, "test_acc": acc, "train_s": t - clock["start"] - clock["eval"]})
        clock["eval"] += time.perf_counter() - t

    dev = resolve_device(device)
    x, y = splits.private_train.x.to(dev), splits.private_train.y.to(dev)
    test = splits.test.to(dev)
    if augment is None:
        augment = data.AUGMENT_BY_DEFAULT.get(getattr(splits, "name", ""), False)
    fit(model, x, y, epochs=epochs, seed=seed, on_epoch=log, progress=progress, desc="central", augment=augment,
        device=dev, **fit_kw)  # fmt: skip
    return pd.DataFrame(rows)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = PREDICT_BATCH,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``(x, y)``, predicted on ``device``."""
    if len(x) == 0:
        raise ValueError("Cannot evaluate on an empty dataset.")
    pred = predict(model, x, batch_size, device, amp).argmax(1)
    return (pred == y.to(pred.device)).float().mean().item()
