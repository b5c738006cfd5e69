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

import torch
from torch import nn

from reft import bench, distill
from reft.federation import Client, Federation
from reft.strategies.base import Strategy


class REFT(Strategy):
    """Per-tier pruned client models sent once; the server distils their ensemble on public data.

    How the server model is chosen each round, all label-free (the study in notebook 02 compares them):
    ``select`` is :func:`reft.distill.distill`'s criterion for the epoch kept on the held-out public
    slice (``"kd_loss"``, ``"agreement"`` with the ensemble's top-1, or ``"last"``); ``start="warm"``
    distils into the current server model, ``"fresh"`` into the seeded initial weights every round;
    ``ema`` > 0 keeps an exponential moving average of the server weights across rounds
    (``ema * previous + (1 - ema) * distilled``; the first round takes the distilled model).
    The defaults (lowest KD loss, warm start, no EMA) are the paper-faithful behaviour; the study at
    notebook 03's fmnist settings (Dirichlet 0.5, seeds 0-2) found no variant better than it by the rule
    of :mod:`reft.stats` (fresh start worse; agreement and EMA 0.5 inconclusive), so they stay (README).
    """

    name = "reft"
    STARTS = ("warm", "fresh")

    def __init__(self, select: str = "kd_loss", start: str = "warm", ema: float = 0.0) -> None:
        if select not in distill.SELECTIONS or start not in self.STARTS or not 0 <= ema < 1:
            raise ValueError(
                f"REFT needs select in {distill.SELECTIONS}, start in {self.STARTS} and 0 <= ema < 1; "
                f"got {select!r}, {start!r}, {ema}."
            )
        self.select, self.start, self.ema = select, start, ema

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
            targets = distill.teacher_outputs(teachers, pub, w, c.ensemble, c.temperature, fed.device, fed.amp)
        ens_acc = float("nan")
        if fed.diagnose(rnd):
            with bench.phase("server: ensemble on test (diagnostic)", teachers, test.x, len(test.x)):
                ens = distill.teacher_outputs(teachers, test.x, w, c.ensemble, c.temperature, fed.device, fed.amp)
            ens_acc = (ens.argmax(1) == test.y).float().mean().item()
        flops = sum(fed.work_flops(t, len(pub)) for t in teachers)  # server work: teachers on the public set
        step = self.server_step(fed, rnd, targets)
        return {
            "ensemble_acc": ens_acc,  # diagnostic: not in server time
            "distill_epochs": step["distill_epochs"],
            "server_flops": flops + step["server_flops"],
        }

    def server_step(self, fed: Federation, rnd: int, targets: torch.Tensor) -> dict[str, float]:
        """Distil the ensemble's outputs on the public set (``targets``) into the server model as this
        strategy's ``select``, ``start`` and ``ema`` say; returns the epoch kept and the FLOPs."""
        c = fed.cfg
        prev = {k: v.clone() for k, v in self.server_model.state_dict().items()} if self.ema > 0 else None
        student = self.server_model
        if self.start == "fresh":
            with torch.random.fork_rng(devices=[]):  # dense_model() seeds the global generator
                student = fed.dense_model()
        res = distill.distill(
            student, targets, fed.public_x, select=self.select, temperature=c.temperature, epochs=c.distill_epochs,
            lr=c.distill_lr_at(rnd), batch_size=c.distill_batch_size, val_fraction=c.val_fraction, patience=c.patience,
            seed=c.seed * 1000 + rnd, device=fed.device, amp=fed.amp,
        )  # fmt: skip
        if prev is not None and self.version > 0:
            self.server_model.load_state_dict(ema_state(prev, student.state_dict(), self.ema))
        elif student is not self.server_model:
            self.server_model.load_state_dict(student.state_dict())
        self.version += 1
        self._pruned.clear()
        flops = fed.work_flops(student, res.samples, training=True) + fed.work_flops(student, res.val_samples)
        return {"distill_epochs": float(res.best_epoch), "server_flops": flops}


def ema_state(
    old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], decay: float
) -> dict[str, torch.Tensor]:
    """``decay * old + (1 - decay) * new`` for floating-point entries; integer buffers (BN's batch count)
    take ``new``'s value. The result is on ``new``'s device."""
    return {
        k: decay * old[k].to(v.device) + (1 - decay) * v if v.is_floating_point() else v.clone() for k, v in new.items()
    }
