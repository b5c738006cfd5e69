"""What a model costs when pruned at each ratio: one measured table, used by the tier policies and notebook 01.

:func:`at_ratios` really prunes the model at every ratio (:func:`reft.pruning.prune`) and measures the
result: parameters, serialized bytes, forward FLOPs per sample (``torch.utils.flop_counter``), the
activations one sample writes, an estimate of training memory, the widths, and, when asked, measured
CPU latency. Counts are cached per architecture and ratio: with uniform (per-layer) pruning they do not
depend on the weights, so a policy search that looks at the same ratio twice prunes once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import torch
from torch import nn

from reft import measure, models, pruning
from reft.progress import tqdm

__all__ = ["at_ratios", "speed_factor", "training_memory_gb"]


def training_memory_gb(params: int, activations: int, batch_size: int) -> float:
    """Training memory estimate: weights, gradients and momentum (3 x 4 bytes per parameter) plus twice
    the activations of a ``batch_size`` batch (kept for the backward pass, and their gradients)."""
    return (3 * 4 * params + 2 * 4 * activations * batch_size) / 1e9


def at_ratios(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: Sequence[float],
    importance: str = "l2",
    batch_size: int = 64,
    latency_batch: int | None = None,
    repeats: int = 3,
    rounds: int = 5,
    warmup: int = 1,
    threads: int | None = 1,
    progress: bool = True,
    training: bool = False,
) -> pd.DataFrame:
    """Measured cost of ``model`` pruned at each of ``ratios``, one row per ratio.

    Columns: ``ratio, params, bytes, forward_flops`` (per sample), ``activations`` (elements the layers
    write for one sample), ``memory_gb`` (:func:`training_memory_gb` at ``batch_size``), ``widths``,
    and relative to the least pruned row: ``params_fraction, bytes_fraction, flops_fraction,
    flops_reduction`` (dense FLOPs / pruned FLOPs, the ideal speedup).

    With ``latency_batch`` also ``latency_ms_b<latency_batch>``: forward passes on a batch of that many
    copies of ``example_input`` (:func:`reft.measure.latency`, median of ``repeats``), measured in
    ``rounds`` interleaved passes over all ratios and reported as the best round, as ``timeit`` does
    (on a shared machine the least disturbed measurement is the best estimate of the model's own
    speed); ``threads`` pins torch's intra-op threads while timing (1: a constrained client; ``None``
    leaves it); ``speedup`` (least pruned latency / latency) and ``speedup_vs_ideal``
    (``speedup / flops_reduction``). ``training=True`` times one SGD training step on that batch instead
    (:func:`reft.measure.train_step_latency`; column ``train_step_ms_b<latency_batch>``).
    """
    spec = json.dumps(getattr(model, "spec", None), sort_keys=True)
    if spec == "null":
        raise ValueError("costs.at_ratios() needs a model built by reft.models.build (it needs a .spec).")
    if not ratios:
        raise ValueError("costs.at_ratios() needs at least one ratio.")
    if latency_batch is not None and (latency_batch < 1 or rounds < 1):
        raise ValueError(f"latency_batch and rounds must be >= 1; got {latency_batch}, {rounds}.")
    shape = tuple(example_input[:1].shape)
    rows = []
    for r in ratios:
        params, nbytes, fl, acts, widths = _cost(spec, float(r), shape, importance)
        rows.append(dict(ratio=float(r), params=params, bytes=nbytes, forward_flops=fl, activations=acts,
                         memory_gb=training_memory_gb(params, acts, batch_size), widths=list(widths)))  # fmt: skip
    df = pd.DataFrame(rows)
    ref = df.iloc[int(df["ratio"].abs().argmin())]  # the least pruned row is the reference
    df["params_fraction"] = df["params"] / ref["params"]
    df["bytes_fraction"] = df["bytes"] / ref["bytes"]
    df["flops_fraction"] = df["forward_flops"] / ref["forward_flops"]
    df["flops_reduction"] = ref["forward_flops"] / df["forward_flops"]
    if latency_batch is None:
        return df
    lat = f"{'train_step' if training else 'latency'}_ms_b{latency_batch}"
    df[lat] = _latencies(model, example_input, ratios, importance, latency_batch, repeats, rounds, warmup, threads,
                         progress, training)  # fmt: skip
    df["speedup"] = df.loc[ref.name, lat] / df[lat]
    df["speedup_vs_ideal"] = df["speedup"] / df["flops_reduction"]
    return df


@cache
def _cost(spec_json: str, ratio: float, shape: tuple, importance: str) -> tuple:
    dense = models.build(**json.loads(spec_json))
    x = torch.zeros(shape)
    m = pruning.prune(dense, ratio, x, importance=importance).model if ratio > 0 else dense
    with pruning.single_thread():
        fl, acts = measure.flops(m, x), measure.activations(m, x)
    return measure.count_params(m), measure.model_bytes(m), fl, acts, tuple(m.widths)


def _latencies(
    model: nn.Module, example_input: torch.Tensor, ratios: Sequence[float], importance: str, batch_size: int,
    repeats: int, rounds: int, warmup: int, threads: int | None, progress: bool, training: bool = False,
) -> list[float]:  # fmt: skip
    x1 = example_input[:1]
    batch = x1.expand(batch_size, *x1.shape[1:]).contiguous()
    pruned = [pruning.prune(model, r, x1, importance).model if r > 0 else model for r in ratios]
    times: list[list[float]] = [[] for _ in pruned]
    prev = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with tqdm(total=rounds * len(pruned), desc="latency", disable=not progress, leave=False) as bar:
            for _ in range(rounds):
                for i, m in enumerate(pruned):
                    timer = measure.train_step_latency if training else measure.latency
                    times[i].append(timer(m, batch, repeats=repeats, warmup=warmup))
                    bar.update()
    finally:
        torch.set_num_threads(prev)
    return [1e3 * min(t) for t in times]


SPEEDUPS = "speedups.csv"  # package data: measured training speed of pruned models (scripts/measure_speedups.py)


@cache
def _speedup_table() -> pd.DataFrame:
    with resources.files("reft").joinpath(SPEEDUPS).open() as f:
        return pd.read_csv(f)


def speed_factor(model: str, flops_fraction: float) -> float:
    """How fast a pruned ``model`` really trains relative to what its FLOPs promise: measured speed-up /
    FLOPs reduction (1: as fast as its FLOPs say; 0.3: it takes 3.3x longer than FLOPs / rate), at the
    given fraction of the dense model's FLOPs, interpolated linearly in log(FLOPs fraction) between the
    ratios measured in ``reft/speedups.csv`` (flat beyond the ends; 1 at the dense model). A model with
    no measurement gets 1: timed by FLOPs alone."""
    if not 0 < flops_fraction <= 1 + 1e-9:
        raise ValueError(f"flops_fraction must be in (0, 1]; got {flops_fraction}.")
    table = _speedup_table()
    rows = table[table["model"] == model].sort_values("flops_fraction")
    if rows.empty or flops_fraction >= 1:
        return 1.0
    logs = np.log(rows["flops_fraction"].to_numpy())
    return float(np.interp(np.log(flops_fraction), logs, rows["speedup_vs_ideal"].to_numpy()))
