"""Dead ReLU units: the diagnostic that names a collapse (issue 25).

A unit (a conv channel or a hidden neuron) is *dead* on a batch when its ReLU output is zero on every
sample (and every position) of it: it passes no signal forward and, through the ReLU, gets no gradient
back, so SGD cannot revive it. A layer with every unit dead makes the model predict one class.

:func:`dead_units` measures this on the ``nn.ReLU`` modules of a model (every ReLU of the ``cnn`` and the
VGGs; ResNet-18's blocks use the functional ReLU and are not covered). Each layer is named by the conv or
linear layer registered before its ReLU (``features.0``, ..., ``fc`` for the ``cnn``). The engine records
it on a fixed probe batch of public images (:data:`PROBE`) on the diagnostics rounds (:mod:`reft.engine`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from reft import train

#: public images the engine probes for dead units (the first ones of the public set: fixed for a run)
PROBE = 256


def relu_layers(model: nn.Module) -> dict[str, str]:
    """``nn.ReLU`` module name -> the name of the conv or linear layer registered before it."""
    out, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            last = name
        elif isinstance(m, nn.ReLU) and last is not None:
            out[name] = last
    return out


def dead_units(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, float]:
    """Fraction of dead units of every ReLU layer of ``model`` on the batch ``x`` (eval mode), by layer name."""
    mods = dict(model.named_modules())
    alive: dict[str, torch.Tensor] = {}

    def hook(layer: str):
        def record(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            fired = (out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(1)  # per unit: on any sample, anywhere
            alive[layer] = fired | alive[layer] if layer in alive else fired  # over the batches of predict()

        return record

    handles = [mods[n].register_forward_hook(hook(layer)) for n, layer in relu_layers(model).items()]
    try:
        train.predict(model, x, device=device)
    finally:
        for h in handles:
            h.remove()
    return {layer: 1.0 - a.float().mean().item() for layer, a in alive.items()}


def columns(server: nn.Module, uploads: Iterable[nn.Module], x: torch.Tensor, device: str | torch.device = "cpu"
            ) -> dict[str, float]:  # fmt: skip
    """The history's dead-unit columns: ``dead[<layer>]`` of the server model, ``upload_dead[<layer>]`` the
    mean over the uploads, and ``dead_uploads``, how many uploads have a layer with every unit dead."""
    row = {f"dead[{k}]": v for k, v in dead_units(server, x, device).items()}
    per_upload = [dead_units(m, x, device) for m in uploads]
    row.update(mean_columns(per_upload))
    row["dead_uploads"] = float(sum(any(v >= 1.0 for v in d.values()) for d in per_upload))
    return row


def mean_columns(per_model: list[Mapping[str, float]]) -> dict[str, float]:
    """``upload_dead[<layer>]``: the mean over models of each layer's dead fraction."""
    layers = dict.fromkeys(k for d in per_model for k in d)
    return {f"upload_dead[{k}]": sum(d[k] for d in per_model if k in d) / sum(k in d for d in per_model)
            for k in layers}  # fmt: skip
