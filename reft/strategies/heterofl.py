"""HeteroFL (Diao et al., ICLR 2021): one global model; a client of a tier gets the leading slice
of every layer's channels at its tier's widths (the same widths REFT's pruning gives that tier, so
both approaches are compared at equal client cost); the server averages every parameter entry over
the clients that hold it. Batch norm (``bn``): HeteroFL's static BN keeps no useful running
statistics during training and recomputes them for evaluation. Here the server recomputes them after
every aggregation in one pass over its public set (``bn="public"``, the default: the server already
holds that set for REFT and FedDF, and no client traffic is needed; the paper instead queries the
clients). ``bn="averaged"`` averages the clients' running statistics entry by entry like the
weights; that is wrong for a width-sliced model (a leading channel's statistics in a narrow
sub-model describe a layer whose input lacks the trailing channels), and in the fmnist run it made
the IID server accuracy fall by 20 points in the last round (``scripts/heterofl_bn_check.py``).
Training itself never reads running statistics, so the two variants learn identical weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from reft import models
from reft.federation import Client, Federation
from reft.strategies.base import Strategy, average_overlapping


def leading_slice(state: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The leading block of every tensor of ``state`` with the shape of the same key in ``like``."""
    out = {}
    for k, ref in like.items():
        src = state[k]
        if src.dim() != ref.dim() or any(r > s for r, s in zip(ref.shape, src.shape, strict=True)):
            raise ValueError(f"{k}: a {tuple(ref.shape)} slice does not fit in {tuple(src.shape)}.")
        out[k] = src[tuple(slice(0, n) for n in ref.shape)].clone()
    return out


class HeteroFL(Strategy):
    """One global model; width-sliced sub-models per tier; per-entry averaging.

    ``bn="public"`` recomputes the global model's BN statistics on the public set after each round
    (static BN); ``bn="averaged"`` averages the clients' running statistics like the weights.
    """

    name = "heterofl"
    BN_MODES = ("public", "averaged")

    def __init__(self, bn: str = "public") -> None:
        if bn not in self.BN_MODES:
            raise ValueError(f"Unknown HeteroFL bn mode {bn!r}. Valid modes: {', '.join(self.BN_MODES)}.")
        self.bn = bn

    def setup(self, fed: Federation) -> None:
        self.server_model = fed.dense_model()
        self.tier_widths = fed.widths

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        spec = {**self.server_model.spec, "widths": self.tier_widths[client.tier]}
        sub = models.build(**spec)
        sub.load_state_dict(leading_slice(self.server_model.state_dict(), sub.state_dict()))
        return sub

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        ids = sorted(uploads)
        states = [uploads[i].state_dict() for i in ids]
        self.server_model.load_state_dict(average_overlapping(self.server_model.state_dict(), states, fed.weights(ids)))
        if self.bn == "public":
            update_bn(fed.public_x.split(fed.cfg.distill_batch_size), self.server_model)
            self.server_model.eval()
        return {}
