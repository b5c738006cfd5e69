"""What a model costs: parameters, bytes on the wire, FLOPs, measured CPU latency, accuracy.

FLOPs come from ``torch.utils.flop_counter`` (2 FLOPs per multiply-add, forward pass only);
a training step is counted as 3x the forward FLOPs (forward + backward of about twice the forward).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reft import comm
from reft.train import evaluate

__all__ = ["count_params", "flops", "train_flops", "model_bytes", "latency", "evaluate", "summary"]

TRAIN_FLOPS_FACTOR = 3


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Forward FLOPs of one call on ``example_inputs`` (the whole batch), 2 per multiply-add, on the
    device the model is on."""
    param = next(model.parameters(), None)
    x = example_inputs.to(param.device) if param is not None else example_inputs
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def train_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward) on ``example_inputs``: 3x forward."""
    return TRAIN_FLOPS_FACTOR * flops(model, example_inputs)


def model_bytes(model: nn.Module) -> int:
    """Size of the model as it is sent (``reft.comm.encode``: safetensors + spec), in bytes."""
    return len(comm.encode(model))


def activations(model: nn.Module, x: torch.Tensor) -> int:
    """Elements written by the leaf layers in one forward pass of ``x`` (what training keeps for backward)."""
    total = 0

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return total


def latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    repeats: int = 10,
    warmup: int = 2,
    channels_last: bool = True,
) -> float:
    """Median wall time in seconds of an inference forward pass on the CPU, warm-up runs excluded."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}.")
    fmt = torch.channels_last if channels_last and example_inputs.dim() == 4 else torch.contiguous_format
    m = copy.deepcopy(model).eval().to(memory_format=fmt)  # a copy: the caller's model is left as it was
    x = example_inputs.contiguous(memory_format=fmt)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            m(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_latency(model: nn.Module, example_inputs: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in seconds of one SGD training step (forward, cross-entropy, backward, update) on
    the batch ``example_inputs`` on the CPU, on a copy of ``model``, warm-up steps excluded."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}.")
    fmt = torch.channels_last if example_inputs.dim() == 4 else torch.contiguous_format
    m = copy.deepcopy(model).train().to(memory_format=fmt)
    x = example_inputs.contiguous(memory_format=fmt)
    y = torch.zeros(len(x), dtype=torch.long)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def summary(model: nn.Module, example_input: torch.Tensor, latency_batch: int = 128) -> dict:
    """One row of cost figures: params, bytes, forward FLOPs per sample, CPU latency per batch."""
    batch = example_input.expand(latency_batch, *example_input.shape[1:]).contiguous()
    return {
        "params": count_params(model),
        "bytes": model_bytes(model),
        "mflops_per_sample": flops(model, example_input[:1]) / 1e6,
        f"latency_ms_b{latency_batch}": 1e3 * latency(model, batch),
    }
