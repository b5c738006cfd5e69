"""FedDF (Lin et al., NeurIPS 2020): clients are grouped by architecture (here: by the widths their
tier's pruning ratio gives). Every round the server sends each group's model to its clients; after
local training it averages the uploads within each group, then distils the ensemble of *all*
uploads into every group model on the public set (held-out early stopping of :mod:`reft.distill`).
Unlike REFT, a model travels down to every client every round.
"""

from __future__ import annotations

import json

from torch import nn

from reft import distill
from reft.federation import Client, Federation
from reft.strategies.base import Strategy, average


class FedDF(Strategy):
    """Per-architecture group models, averaged within groups and distilled from all uploads.

    ``distill=False`` leaves only the per-group averaging (with one group, that is FedAvg).
    """

    name = "feddf"

    def __init__(self, distill: bool = True) -> None:
        self.use_distill = distill

    def setup(self, fed: Federation) -> None:
        dense = fed.dense_model()
        self.group_of: dict[str, str] = {}
        self.groups: dict[str, nn.Module] = {}
        for tier in fed.tier_names:  # strongest first, so the first group is the largest model
            model = fed.prune(dense, fed.ratios[tier])
            key = json.dumps(model.widths)
            self.groups.setdefault(key, model)
            self.group_of[tier] = key
        self.server_model = next(iter(self.groups.values()))

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        return self.groups[self.group_of[client.tier]]

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        ids = sorted(uploads)
        for key, model in self.groups.items():
            members = [i for i in ids if self.group_of[fed.clients[i].tier] == key]
            if members:
                model.load_state_dict(average([uploads[i].state_dict() for i in members], fed.weights(members)))
        if not self.use_distill:
            return {}
        c = fed.cfg
        teachers, w = [uploads[i] for i in ids], fed.weights(ids)
        targets = distill.teacher_outputs(teachers, fed.public_x, w, c.ensemble, c.temperature)  # once per round
        test = fed.splits.test
        ens = distill.teacher_outputs(teachers, test.x, w, c.ensemble, c.temperature)
        epochs = []
        for g, model in enumerate(self.groups.values()):
            res = distill.distill(
                model, targets, fed.public_x, temperature=c.temperature, epochs=c.distill_epochs, lr=c.distill_lr,
                batch_size=c.distill_batch_size, val_fraction=c.val_fraction, patience=c.patience,
                seed=c.seed * 1000 + rnd * 10 + g,
            )  # fmt: skip
            epochs.append(res.best_epoch)
        return {
            "ensemble_acc": (ens.argmax(1) == test.y).float().mean().item(),
            "distill_epochs": float(sum(epochs)) / len(epochs),
            "groups": float(len(self.groups)),
        }
