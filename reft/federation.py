"""The simulated federation a run happens in: clients with their tiers and private shards, and the
helpers a strategy may use (the server's dense model, pruning, each tier's ratio and widths, weights).

:class:`Federation` is what every strategy in :mod:`reft.strategies` looks at; the engine
(:mod:`reft.engine`) builds one per run and drives the rounds. Everything here is seeded by the
run's seed: the tier of every client, its shard of the private data, the initial weights.

The data a run computes on (every client's shard, the public set, the test parts) are moved to the run's
device (:attr:`Federation.device`, from ``RunConfig.device``) once, here; models are built on the CPU and
move to the device when they train or predict.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from reft import costs, data, measure, models, pruning, train
from reft import tiers as tiers_mod

if TYPE_CHECKING:  # annotation only: the config module imports the strategies, which import this one
    from reft.config import RunConfig


@dataclass
class Client:
    """A simulated client: its tier, its private shard and (once it has received one) its model."""

    id: int
    tier: str
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module | None = None

    @property
    def n_samples(self) -> int:
        return len(self.x)

    @property
    def labels(self) -> list[int]:
        """The classes present in this client's data."""
        return sorted(int(c) for c in self.y.unique())


class Federation:
    """What a strategy may look at: config, data, clients, tiers, pruning ratios, and model helpers."""

    def __init__(
        self, cfg: RunConfig, splits: data.Splits, clients: Sequence[Client] | None = None,
        final_test: data.Data | None = None,
    ) -> None:  # fmt: skip
        """``clients`` replaces the simulated ones (e.g. remote clients that reported tier and size);
        ``final_test``: the test images of the last round (default: those of every round). ``splits`` stay
        as given (on the CPU, for checkpoints' fingerprints); the parts the run uses are copied to ``device``."""
        self.cfg = cfg
        self.splits = splits
        self.device = train.resolve_device(cfg.device)
        self.amp = cfg.amp and train.amp_device(self.device)  # bf16 where the device computes it natively
        self.test = splits.test.to(self.device)
        self.final_test = final_test.to(self.device) if final_test is not None else None
        self.tiers = tiers_mod.load_tiers(cfg.tiers_path)
        self.public_x = splits.public.x.to(self.device)
        self.example_input = splits.example_input
        self._train_flops: dict[str, int] = {}
        if clients is not None:
            self.clients = list(clients)
            return
        mix = cfg.tier_mix if cfg.tier_mix is not None else {t: 1.0 for t in self.tiers.index}
        tier_of = tiers_mod.assign(cfg.n_clients, mix, tiers=self.tiers, seed=cfg.seed)
        parts = data.partition(
            splits.private_train.y, cfg.n_clients, cfg.partition, alpha=cfg.alpha, seed=cfg.seed,
            shards_per_client=cfg.shards_per_client, min_size=cfg.min_size, max_share=cfg.max_share,
        )  # fmt: skip
        x, y = splits.private_train.x, splits.private_train.y
        self.clients = [Client(i, tier_of[i], x[p].to(self.device), y[p].to(self.device)) for i, p in enumerate(parts)]

    def test_for(self, rnd: int) -> data.Data:
        """The test images server accuracy is measured on in round ``rnd``: the whole test part in the last
        round (``RunConfig.final_test``), the per-round subset (``test_size``) before it."""
        return self.final_test if self.final_test is not None and rnd >= self.cfg.rounds else self.test

    def accuracy_columns(self, model: nn.Module, rnd: int) -> dict[str, float | int]:
        """The history's ``server_acc`` (on :meth:`test_for` of ``rnd``), ``test_n`` and ``subset_acc`` (on the
        per-round subset in every round, the last included: a robustness column over the last rounds)."""

        def accuracy(part: data.Data) -> float:
            return train.evaluate(model, part.x, part.y, device=self.device, amp=self.amp)

        test = self.test_for(rnd)
        acc = accuracy(test)
        subset = acc if test is self.test else accuracy(self.test)
        return {"server_acc": acc, "test_n": len(test.y), "subset_acc": subset}

    def diagnose(self, rnd: int) -> bool:
        """Whether round ``rnd`` measures the diagnostics that do not feed the algorithm (each client's and
        the ensemble's test accuracy): every ``diagnostics_every`` rounds and always in the last."""
        k = self.cfg.diagnostics_every
        return rnd >= self.cfg.rounds or (k > 0 and rnd % k == 0)

    def dense_model(self) -> models.ReftModel:
        """The server's dense model, initialized from the run's seed (same seed, same weights)."""
        torch.manual_seed(self.cfg.seed)
        s = self.splits
        return models.build(self.cfg.model, s.num_classes, s.in_channels, self.cfg.widths)

    def prune(self, model: nn.Module, ratio: float) -> nn.Module:
        """A physically smaller copy of ``model`` (ratio 0: a plain copy), on the CPU: torch-pruning traces
        one sample (no faster on a GPU), and the copy is sent over the wire, which carries CPU tensors."""
        if ratio <= 0:
            return copy.deepcopy(model)
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()
        return pruning.prune(model, ratio, self.example_input, importance=self.cfg.importance).model

    @cached_property
    def policy(self) -> dict[str, tiers_mod.PolicyResult]:
        """The configured policy's choice for every tier present (on the dense model)."""
        c = self.cfg
        samples = int(np.mean([cl.n_samples for cl in self.clients]))
        chosen = tiers_mod.choose_ratios(  # on the tiers present: the strongest present trains the dense model
            c.policy, self.tiers.loc[self.tier_names], self.dense_model(), self.example_input,
            samples=samples, epochs=c.local_epochs, max_ratio=c.max_ratio, deadline_s=c.deadline_s,
            importance=c.importance,
        )  # fmt: skip
        return {t: chosen[t] for t in self.tier_names}

    @property
    def ratios(self) -> dict[str, float]:
        """Pruning ratio of every tier present."""
        return {t: float(r.ratio) for t, r in self.policy.items()}

    @property
    def widths(self) -> dict[str, list[int]]:
        """Widths of every tier's pruned model, as the policy measured them (no pruning needed)."""
        return {t: list(r.widths) for t, r in self.policy.items()}

    @cached_property
    def server_tier(self) -> str:
        """The tier the server runs on: ``cfg.server_tier``, else the strongest tier of the table."""
        tier = self.cfg.server_tier or str(self.tiers["sustained_flops"].idxmax())
        if tier not in self.tiers.index:
            raise ValueError(f"Unknown server_tier {tier!r}. Valid tiers: {', '.join(self.tiers.index)}.")
        return tier

    @property
    def tier_names(self) -> list[str]:
        """Tiers that have clients in this run, strongest first."""
        present = {c.tier for c in self.clients}
        return [t for t in self.tiers.index if t in present]

    def weights(self, client_ids: Sequence[int], weighting: str = "samples") -> list[float]:
        """Aggregation weights of these clients: equal (``uniform``), or by data size (``samples``)."""
        if weighting not in ("uniform", "samples"):
            raise ValueError(f"Unknown weighting {weighting!r}; valid: uniform, samples.")
        if weighting == "uniform":
            return [1.0] * len(client_ids)
        return [float(self.clients[i].n_samples) for i in client_ids]

    def speed_factor(self, model: nn.Module) -> float:
        """Measured training speed of ``model`` relative to its FLOPs (:func:`reft.costs.speed_factor`)."""
        return costs.speed_factor(self.cfg.model, min(1.0, self.train_flops_per_sample(model) / self._dense_flops))

    @cached_property
    def _dense_flops(self) -> int:
        s = self.splits
        return self.train_flops_per_sample(models.build(self.cfg.model, s.num_classes, s.in_channels, self.cfg.widths))

    def work_flops(self, model: nn.Module, samples: int, training: bool = False) -> float:
        """Dense-equivalent FLOPs of passing ``samples`` samples through ``model`` (forward, or training at
        3x forward): FLOPs divided by the model's measured speed factor, so that FLOPs / a tier's rate
        is the simulated time."""
        per_sample = self.train_flops_per_sample(model) / (1 if training else measure.TRAIN_FLOPS_FACTOR)
        return per_sample * samples / self.speed_factor(model)

    def train_flops_per_sample(self, model: nn.Module) -> int:
        """Training FLOPs for one sample (3x forward), cached per architecture."""
        key = json.dumps(model.spec, sort_keys=True)
        if key not in self._train_flops:
            self._train_flops[key] = measure.train_flops(model, self.example_input)
        return self._train_flops[key]
