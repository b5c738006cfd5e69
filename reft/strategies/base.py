"""What an algorithm is: a :class:`Strategy` with three hooks (``setup``, ``send``, ``aggregate``), and
the weighted averaging of model states that FedAvg, FedDF's groups and HeteroFL share.

A strategy owns its server model(s) and decides what each client gets and what the server does with
the uploads; the engine (:mod:`reft.engine`) owns clients, dropout, the wire, timing and the history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from reft.federation import Client, Federation


class Strategy:
    """An algorithm: what the server sends each client each round, and what it does with the uploads.

    Subclasses set ``name`` and implement :meth:`setup` (build ``self.server_model`` and anything
    else), :meth:`send` and :meth:`aggregate`. Client models are whatever the server sends; a client
    that has received nothing yet must be sent a model.
    """

    name = "strategy"
    server_model: nn.Module

    def setup(self, fed: Federation) -> None:
        raise NotImplementedError

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        raise NotImplementedError

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        """Server step on the decoded uploads (client id -> model); returns extra history columns."""
        raise NotImplementedError


def average_overlapping(
    global_state: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Weighted mean, entry by entry, over the uploads whose leading slice covers the entry (HeteroFL);
    entries no upload holds keep their value in ``global_state``. When every upload has the global
    shapes this is plain weighted averaging (FedAvg): one mechanism serves both. Computed in float64,
    cast back; integer buffers (BN's ``num_batches_tracked``) are rounded."""
    if len(states) != len(weights) or not states:
        raise ValueError("Need one weight per upload, and at least one upload.")
    w = [float(x) for x in weights]
    out = {}
    for k, g in global_state.items():
        num = torch.zeros(g.shape, dtype=torch.float64)
        den = torch.zeros(g.shape, dtype=torch.float64)
        for wi, s in zip(w, states, strict=True):
            region = tuple(slice(0, n) for n in s[k].shape)
            num[region] += wi * s[k].double()
            den[region] += wi
        mean = torch.where(den > 0, num / den.clamp_min(1e-300), g.double())
        out[k] = mean.round().to(g.dtype) if not g.is_floating_point() else mean.to(g.dtype)
    return out


def average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts with identical keys and shapes (FedAvg)."""
    return average_overlapping(states[0], states, weights)
