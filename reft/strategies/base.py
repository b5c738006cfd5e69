"""What an algorithm is: a :class:`Strategy` with three hooks (``setup``, ``send``, ``aggregate``), and
the weighted averaging of model states that FedAvg, FedDF's groups and HeteroFL share.

A strategy owns its server model(s) and decides what each client gets and what the server does with
the uploads; the engine (:mod:`reft.engine`) owns clients, dropout, the wire, timing and the history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from reft.federation import Client, Federation
from reft.train import LossFn


class Strategy:
    """An algorithm: what the server sends each client each round, and what it does with the uploads.

    Subclasses set ``name`` and implement :meth:`setup` (build ``self.server_model`` and anything
    else), :meth:`send` and :meth:`aggregate`. Client models are whatever the server sends; a client
    that has received nothing yet must be sent a model.
    """

    name = "strategy"
    server_model: nn.Module
    #: how uploads are weighted when ``RunConfig.weighting`` is None: "samples" (by data size) or "uniform"
    weighting = "samples"
    #: whether the algorithm reads the unlabelled public set (``RunConfig.public_size=0`` is refused if so)
    uses_public = True

    def setup(self, fed: Federation) -> None:
        raise NotImplementedError

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        raise NotImplementedError

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        """Server step on the decoded uploads (client id -> model); returns extra history columns."""
        raise NotImplementedError

    def weights(self, fed: Federation, client_ids: Sequence[int]) -> list[float]:
        """Aggregation weights of these clients: ``RunConfig.weighting`` if set, else this algorithm's own."""
        return fed.weights(client_ids, fed.cfg.weighting or self.weighting)

    def checkpoint_models(self) -> dict[str, nn.Module]:
        """The models that carry this strategy's state from round to round, by name. A checkpoint saves
        them; on resume :meth:`setup` builds them again and their weights are loaded in place."""
        return {"server": self.server_model}

    def checkpoint_state(self) -> dict[str, Any]:
        """The rest of this strategy's state between rounds, JSON-able (nothing by default)."""
        return {}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Undo :meth:`checkpoint_state` after :meth:`setup` (nothing by default)."""

    def local_options(self, fed: Federation, client: Client) -> dict[str, Any]:
        """What a client needs to know to train as this algorithm says, beyond the model (JSON-able:
        it travels with the model on Flower). Nothing by default."""
        return {}

    def local_training(
        self, model: nn.Module, y: torch.Tensor, options: Mapping[str, Any]
    ) -> AbstractContextManager[LossFn | None]:
        """Client side: a context that prepares ``model`` for local training with ``options`` (from
        :meth:`local_options`) and yields the loss to train with (None: cross-entropy). Plain by default."""
        return nullcontext(None)


def average_overlapping(
    global_state: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    masks: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted mean, entry by entry, over the uploads whose leading slice covers the entry (HeteroFL);
    entries no upload holds keep their value in ``global_state``. When every upload has the global
    shapes this is plain weighted averaging (FedAvg): one mechanism serves both. ``masks`` (one per
    upload, optional): for some keys, a 0/1 tensor broadcastable to the upload's tensor saying which of
    its entries count (HeteroFL's classifier rows of the classes a client holds). Computed in float64 on
    the CPU (wherever the states are: MPS has no float64), cast back to each entry's dtype and returned on
    the CPU (``load_state_dict`` copies it to the model's device); integer buffers are rounded."""
    if len(states) != len(weights) or not states or (masks is not None and len(masks) != len(states)):
        raise ValueError("Need one weight (and one mask, if any) per upload, and at least one upload.")
    w = [float(x) for x in weights]
    out = {}
    for k, g in global_state.items():
        g = g.detach().cpu()
        num = torch.zeros(g.shape, dtype=torch.float64)
        den = torch.zeros(g.shape, dtype=torch.float64)
        for i, (wi, s) in enumerate(zip(w, states, strict=True)):
            t = s[k].detach().cpu()
            region = tuple(slice(0, n) for n in t.shape)
            m = masks[i].get(k) if masks is not None else None
            cover = torch.ones(t.shape, dtype=torch.float64) if m is None else m.cpu().double().expand(t.shape)
            num[region] += wi * cover * t.double()
            den[region] += wi * cover
        mean = torch.where(den > 0, num / den.clamp_min(1e-300), g.double())
        out[k] = mean.round().to(g.dtype) if not g.is_floating_point() else mean.to(g.dtype)
    return out


def average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts with identical keys and shapes (FedAvg)."""
    return average_overlapping(states[0], states, weights)
