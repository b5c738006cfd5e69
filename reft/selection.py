"""Which server model REFT keeps each round: a label-free study of the choices, on shared client work.

REFT's clients hear from the server once (``refresh_every = 0``), so what they upload does not depend on
how the server picks its model. :class:`SelectionStudy` therefore runs the clients once and applies
every variant's server step (:meth:`reft.strategies.REFT.server_step`) to the same uploads and the same
ensemble outputs: the variants are paired by construction, at the cost of one run's client work.
Nothing here sees a label: the criteria are computed on the held-out slice of the unlabelled public
set; accuracies on the test part are only reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from torch import nn

from reft import bench, data, distill, engine, stats, train
from reft.config import RunConfig
from reft.experiments import partition_kw, partition_label
from reft.federation import Client, Federation
from reft.progress import tqdm
from reft.strategies.base import Strategy
from reft.strategies.reft import REFT

#: label -> REFT options. The first is the reference the others are compared with.
VARIANTS: dict[str, dict[str, Any]] = {
    "kd_loss": {"select": "kd_loss"},
    "agreement": {"select": "agreement"},
    "last epoch": {"select": "last"},
    "fresh start": {"start": "fresh"},
    "ema 0.5": {"ema": 0.5},
}


class SelectionStudy(Strategy):
    """REFT with several server steps side by side; the engine's server model is the first variant's.
    Each round adds ``acc[<label>]`` (server accuracy of that variant) and ``epoch[<label>]`` columns."""

    name = "reft-selection"

    def __init__(self, variants: Mapping[str, Mapping[str, Any]] = VARIANTS) -> None:
        if not variants:
            raise ValueError("Need at least one variant.")
        self.variants = {label: REFT(**kw) for label, kw in variants.items()}
        self.first = next(iter(self.variants.values()))

    def setup(self, fed: Federation) -> None:
        if fed.cfg.refresh_every != 0:
            raise ValueError("The selection study shares client work, which needs refresh_every = 0.")
        for v in self.variants.values():
            v.setup(fed)
        self.server_model = self.first.server_model

    def checkpoint_models(self) -> dict[str, nn.Module]:
        return {label: v.server_model for label, v in self.variants.items()}

    def checkpoint_state(self) -> dict[str, Any]:
        return {label: v.checkpoint_state() for label, v in self.variants.items()}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        for label, v in self.variants.items():
            v.restore_state(state[label])

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        return self.first.send(fed, rnd, client)  # every variant starts from the same weights

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        c, ids = fed.cfg, sorted(uploads)
        teachers, w = [uploads[i] for i in ids], self.weights(fed, ids)
        with bench.phase("server: teacher passes", teachers, fed.public_x, len(fed.public_x)):
            targets = distill.teacher_outputs(teachers, fed.public_x, w, c.ensemble, c.temperature, fed.device, fed.amp)
        test = fed.test_for(rnd)
        out: dict[str, float] = {}
        for label, v in self.variants.items():
            step = v.server_step(fed, rnd, targets)
            with bench.phase("server evaluation", v.server_model, test.x, len(test.x)):
                out[f"acc[{label}]"] = train.evaluate(v.server_model, test.x, test.y, device=fed.device, amp=fed.amp)
            out[f"epoch[{label}]"] = step["distill_epochs"]
        return out


def study(
    base: RunConfig,
    seeds: Sequence[int],
    partitions: Sequence[str | float] = ("iid", 0.5),
    variants: Mapping[str, Mapping[str, Any]] = VARIANTS,
    splits_for: Mapping[int, data.Splits] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every variant on every (seed, partition), REFT as ``base`` says otherwise. Returns one row per
    (variant, partition, seed): final accuracy (last round, whole test part), the largest one-round
    drop of server accuracy and the mean epoch kept; and every round's history (long format).
    ``splits_for`` may hold already loaded data per seed."""
    rows, histories = [], []
    runs = [(s, p) for s in seeds for p in partitions]
    for seed, part in tqdm(runs, desc="selection study", disable=not base.progress):
        cfg = base.replace(algorithm="reft", refresh_every=0, seed=seed, **partition_kw(part))
        whole = (splits_for or {}).get(seed) or data.load(cfg.dataset, seed=seed)
        h = engine.run(cfg, whole, strategy=SelectionStudy(variants)).history
        for label in variants:
            acc = h[f"acc[{label}]"]
            drop = max(0.0, float((acc.shift(1) - acc).max())) if len(acc) > 1 else 0.0
            rows.append({"variant": label, "partition": partition_label(part), "seed": seed,
                         "final_acc": float(acc.iloc[-1]), "final_test_n": int(h["test_n"].iloc[-1]),
                         "largest_drop": drop, "mean_epoch_kept": float(h[f"epoch[{label}]"].mean())})  # fmt: skip
            histories.append(pd.DataFrame({"variant": label, "partition": partition_label(part), "seed": seed,
                                           "round": h["round"], "server_acc": acc}))  # fmt: skip
    return pd.DataFrame(rows), pd.concat(histories, ignore_index=True)


def summary(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and 95% interval per (variant, partition), and every variant against the first one, paired
    on the seed (:mod:`reft.stats`)."""
    summ = stats.summarize(rows, ["variant", "partition"], ["final_acc", "largest_drop"])
    ref = str(rows["variant"].iloc[0])
    return summ, stats.versus(rows, ref, method="variant")


__all__ = ["VARIANTS", "SelectionStudy", "study", "summary"]
