"""REFT (Desai et al., 2023): variable pruning per hardware tier plus server-side ensemble distillation.

Each client gets its tier's structurally pruned copy of the server model once (and a freshly pruned
copy of the distilled server model every ``refresh_every`` rounds, when set). After local training the
server treats the uploads as an ensemble and distils their (weighted) mean prediction on the unlabelled
public set into the dense server model (:func:`reft.distill.distill`, held-out early stopping). No global
model travels back to every client every round, which is where REFT saves downstream bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from reft import bench, distill
from reft.federation import Client, Federation
from reft.strategies.base import Strategy


class REFT(Strategy):
    """Per-tier pruned client models sent once; the server distils their ensemble on public data."""

    name = "reft"

    def setup(self, fed: Federation) -> None:
        self.server_model = fed.dense_model()
        self.version = 0  # number of server updates so far
        self.sent: dict[int, int] = {}  # client id -> round of its last model
        self._pruned: dict[tuple[str, int], nn.Module] = {}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"version": self.version, "sent": {str(k): v for k, v in self.sent.items()}}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        self.version, self.sent = int(state["version"]), {int(k): int(v) for k, v in state["sent"].items()}

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        last, k = self.sent.get(client.id), fed.cfg.refresh_every
        if last is not None and not (k > 0 and rnd - last >= k):
            return None
        self.sent[client.id] = rnd
        key = (client.tier, self.version)
        if key not in self._pruned:  # prune once per tier and server version, not per client
            self._pruned[key] = fed.prune(self.server_model, fed.ratios[client.tier])
        return self._pruned[key]

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        c = fed.cfg
        ids = sorted(uploads)
        teachers, w = [uploads[i] for i in ids], self.weights(fed, ids)
        test, pub = fed.test_for(rnd), fed.public_x
        with bench.phase("server: teacher passes", teachers, pub, len(pub)):
            targets = distill.teacher_outputs(teachers, pub, w, c.ensemble, c.temperature)
        with bench.phase("server: ensemble on test (diagnostic)", teachers, test.x, len(test.x)):
            ens = distill.teacher_outputs(teachers, test.x, w, c.ensemble, c.temperature)
        res = distill.distill(
            self.server_model, targets, pub, temperature=c.temperature, mode=c.ensemble, weights=w,
            epochs=c.distill_epochs, lr=c.distill_lr, batch_size=c.distill_batch_size, val_fraction=c.val_fraction,
            patience=c.patience, seed=c.seed * 1000 + rnd,
        )  # fmt: skip
        self.version += 1
        self._pruned.clear()
        n_pub = len(fed.public_x)  # server work: teachers on the public set, distillation, its validation
        flops = sum(fed.work_flops(t, n_pub) for t in teachers)
        flops += fed.work_flops(self.server_model, res.samples, training=True)
        flops += fed.work_flops(self.server_model, res.val_samples)
        return {
            "ensemble_acc": (ens.argmax(1) == test.y).float().mean().item(),  # diagnostic: not in server time
            "distill_epochs": res.best_epoch,
            "server_flops": flops,
        }
