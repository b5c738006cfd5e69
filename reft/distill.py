"""Ensemble distillation: the server learns from the ensemble of client models on unlabelled data.

Three pieces, as in FedDF and REFT:

* :func:`kd_loss`: KL divergence between temperature-softened teacher and student outputs, times T^2
  (so gradients keep their scale when T changes);
* :func:`ensemble_logits`: one teacher from many client models, by averaging their logits or their
  probabilities, optionally weighted (e.g. by client data size);
* :func:`distill`: trains a student on the public set against the ensemble's soft targets, keeping
  a held-out slice of the public set for early stopping. The teachers run once per call, not once
  per student epoch.

Both run on a ``device`` (as :mod:`reft.train`'s loops: the models move there in place; the public set
and the teacher outputs are moved there once if they are elsewhere) with optional bf16 ``amp``
(:func:`reft.train.autocast`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from reft import bench
from reft.progress import tqdm
from reft.train import autocast, evaluate, memory_format, predict, resolve_device

MODES = ("logits", "probs")
#: How :func:`distill` picks the epoch it keeps, label-free, on the held-out public slice: the lowest KD
#: loss, the highest top-1 agreement with the ensemble, or simply the last epoch (no selection).
SELECTIONS = ("kd_loss", "agreement", "last")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (1 = plain softmax, 2-4 = softer targets); got {temperature}.")


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` on temperature-softened outputs, averaged over the batch.

    ``teacher_probs`` are the teacher's probabilities *at temperature T* (rows sum to 1), as
    :func:`soft_targets` returns them.
    """
    _check_temperature(temperature)
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean") * temperature**2


def ensemble_logits(
    logits: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    mode: str = "logits",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Combine the outputs of K teachers (K x N x C, or a list of N x C) into one N x C teacher output.

    ``mode="logits"`` averages logits; ``mode="probs"`` averages the probabilities at ``temperature``
    and returns ``T * log(mean prob)``, so that ``softmax(out / T)`` is exactly that mean in both modes.
    ``weights`` (one per teacher, >= 0) default to equal; they are normalized to sum 1.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown ensemble mode {mode!r}. Valid modes: {', '.join(MODES)}.")
    _check_temperature(temperature)
    z = torch.stack(list(logits)) if not isinstance(logits, torch.Tensor) else logits
    if z.dim() != 3 or len(z) == 0:
        raise ValueError(f"Need at least one teacher's N x C outputs; got a tensor of shape {tuple(z.shape)}.")
    w = torch.ones(len(z)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (len(z),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(z)} non-negative numbers, not all zero; got {w.tolist()}.")
    w = (w / w.sum()).view(-1, 1, 1).to(z.device)
    if mode == "logits":
        return (w * z).sum(0)
    probs = (w * F.softmax(z / temperature, dim=2)).sum(0)
    return temperature * probs.clamp_min(1e-12).log()


def soft_targets(teacher_out: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's probabilities at ``temperature`` (what :func:`kd_loss` expects)."""
    _check_temperature(temperature)
    return F.softmax(teacher_out / temperature, dim=1)


def teacher_outputs(
    teachers: Sequence[nn.Module],
    x: torch.Tensor,
    weights: Sequence[float] | None = None,
    mode: str = "logits",
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> torch.Tensor:
    """Run every teacher once on ``x`` (on ``device``) and combine them with :func:`ensemble_logits`;
    the result is on ``device``."""
    if len(teachers) == 0:
        raise ValueError("Distillation needs at least one teacher model.")
    return ensemble_logits([predict(t, x, device=device, amp=amp) for t in teachers], weights, mode, temperature)


@dataclass
class DistillResult:
    """What :func:`distill` did: per epoch, the held-out KD loss and top-1 agreement with the ensemble;
    the epoch kept; samples trained on and evaluated (for the server's FLOPs), wall seconds."""

    val_losses: list[float] = field(default_factory=list)
    val_agreement: list[float] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    samples: int = 0
    val_samples: int = 0
    seconds: float = 0.0


def distill(
    student: nn.Module,
    teachers: Sequence[nn.Module] | torch.Tensor,
    public_x: torch.Tensor,
    *,
    temperature: float = 1.0,
    mode: str = "logits",
    weights: Sequence[float] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    val_fraction: float = 0.1,
    patience: int = 2,
    schedule: str = "constant",
    clip_grad: float | None = None,
    select: str = "kd_loss",
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> DistillResult:
    """Train ``student`` in place to match the ensemble of ``teachers`` on unlabelled ``public_x``.

    ``teachers`` are models (run once here) or their already combined outputs (N x C, e.g. from
    :func:`teacher_outputs`). A seeded ``val_fraction`` of the public set is held out; after every
    epoch the KD loss on it is measured, and the student ends with the weights of its best epoch
    (training stops after ``patience`` epochs in a row without improvement). Adam, as in FedDF.
    ``schedule="cosine"`` anneals the learning rate to 0 over the step budget (``epochs`` x batches
    per epoch), stepped every batch; ``clip_grad`` clips the gradient norm (FedDF's code: cosine, 5).
    Student, teachers and data work on ``device`` (the student moves there in place); ``amp``: bf16
    autocast where the device supports it (:func:`reft.train.amp_device`).
    """
    _check_temperature(temperature)
    if len(public_x) == 0:
        raise ValueError("The public set is empty: distillation needs unlabelled public samples (public_size >= 1).")
    if epochs < 1 or batch_size < 1 or lr <= 0 or patience < 0:
        raise ValueError(f"Need epochs >= 1, batch_size >= 1, lr > 0, patience >= 0; got {epochs}, {batch_size}, {lr}.")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}.")
    if select not in SELECTIONS:
        raise ValueError(f"Unknown select {select!r}; valid: {', '.join(SELECTIONS)}.")
    if schedule not in ("constant", "cosine") or (clip_grad is not None and clip_grad <= 0):
        raise ValueError(
            f"schedule must be 'constant' or 'cosine' and clip_grad > 0 or None; got {schedule!r}, {clip_grad}."
        )
    t0 = time.perf_counter()
    dev = resolve_device(device)
    public_x = public_x.to(dev)
    if isinstance(teachers, torch.Tensor):
        if len(teachers) != len(public_x):
            raise ValueError(f"Teacher outputs ({len(teachers)}) and public set ({len(public_x)}) differ in length.")
        out = teachers.to(dev)
    else:
        out = teacher_outputs(teachers, public_x, weights, mode, temperature, dev, amp)
    targets = soft_targets(out, temperature)

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(public_x), generator=gen).to(dev)
    n_val = int(len(public_x) * val_fraction) if len(public_x) > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_tr, t_tr = public_x[train_idx], targets[train_idx]
    x_val, t_val = public_x[val_idx], targets[val_idx]

    torch.manual_seed(seed)
    fmt = memory_format(student)
    cast = autocast(dev, amp, student)  # decided once per call, entered every step
    student.to(device=dev, memory_format=fmt)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    budget = epochs * -(-len(x_tr) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, budget)) if schedule == "cosine" else None
    result = DistillResult()
    best_score, best_state, bad = float("inf"), None, 0
    for epoch in tqdm(range(epochs), desc="distill", disable=not progress, leave=False):
        student.to(memory_format=fmt).train()  # each epoch: validation's predict() leaves it channels_last
        perm = torch.randperm(len(x_tr), generator=gen).to(dev)
        with bench.phase("server: distillation", student, x_tr, len(x_tr), True):
            for i in range(0, len(x_tr), batch_size):
                idx = perm[i : i + batch_size]
                xb = x_tr[idx].contiguous(memory_format=fmt) if x_tr.dim() == 4 else x_tr[idx]
                with cast:
                    logits = student(xb)
                loss = kd_loss(logits.float(), t_tr[idx], temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad is not None:
                    nn.utils.clip_grad_norm_(student.parameters(), clip_grad)
                opt.step()
                if sched is not None:
                    sched.step()
        result.samples += len(x_tr)
        result.epochs_run = epoch + 1
        if n_val == 0 or select == "last":  # nothing held out or no selection: keep the last epoch
            result.best_epoch = epoch + 1
            continue
        with bench.phase("server: distillation validation", student, x_val, n_val):
            out = predict(student, x_val, device=dev, amp=amp)
        val = kd_loss(out, t_val, temperature).item()
        result.val_samples += n_val
        result.val_losses.append(val)
        agree = (out.argmax(1) == t_val.argmax(1)).float().mean().item()
        result.val_agreement.append(agree)
        score = val if select == "kd_loss" else -agree  # lower is better
        if score < best_score:
            best_score, best_state, bad = score, copy.deepcopy(student.state_dict()), 0
            result.best_epoch = epoch + 1
        else:
            bad += 1
            if bad >= max(1, patience):  # patience epochs in a row without improvement (0 acts as 1)
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    result.seconds = time.perf_counter() - t0
    return result


def study(
    make_student,
    teachers: Sequence[nn.Module],
    public_x: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    settings: Sequence[dict],
    *,
    weights: Sequence[float] | None = None,
    base: dict | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Distil a fresh ``make_student()`` once per entry of ``settings`` and test each; one row per setting.

    Each setting overrides ``base`` (keyword arguments of :func:`distill`, plus ``public_size`` to use
    only the first that many public samples). Every student starts from the same weights (``seed``).
    Rows also carry the ensemble's own test accuracy.
    """
    base = dict(base or {})
    rows, done = [], {}
    for setting in tqdm(settings, desc="distillation settings", disable=not progress):
        kw = {"seed": seed, **base, **setting}
        n_pub = kw.pop("public_size", None)
        x_pub = public_x if n_pub is None else public_x[: int(n_pub)]
        key = (len(x_pub), *sorted(kw.items()))
        if key not in done:  # settings that resolve to the same run (e.g. the base value of each ablation) run once
            mode, temperature = kw.get("mode", "logits"), kw.get("temperature", 1.0)
            ens = teacher_outputs(teachers, test_x, weights, mode, temperature)
            torch.manual_seed(seed)
            student = make_student()
            res = distill(student, teachers, x_pub, weights=weights, **kw)
            done[key] = {
                "ensemble_acc": (ens.argmax(1) == test_y).float().mean().item(),
                "distilled_acc": evaluate(student, test_x, test_y),
                "best_epoch": res.best_epoch,
                "seconds": res.seconds,
            }
        rows.append({**setting, "public_size": len(x_pub), **done[key]})
    return pd.DataFrame(rows)
