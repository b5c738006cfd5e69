"""REFT's server-model choices (select / start / ema) and the study that runs them on shared client work."""

from __future__ import annotations

import pytest
import torch

from reft import data, distill, engine, models, selection, strategies
from reft.config import RunConfig
from reft.strategies.reft import ema_state

TINY = dict(
    private_size=300, public_size=300, test_size=100, n_clients=3, rounds=3, widths=[8, 16, 32, 32],
    distill_epochs=3, patience=5, progress=False, eval_clients=False, final_test=False,
)  # fmt: skip


def _teacher_and_student() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    teacher, student = models.build("cnn", widths=[4, 4, 8, 8]), models.build("cnn", widths=[4, 4, 8, 8])
    return teacher, student, torch.randn(200, 1, 28, 28)


def test_agreement_selection_keeps_the_most_agreeing_epoch() -> None:
    teacher, student, x = _teacher_and_student()
    res = distill.distill(student, [teacher], x, epochs=4, patience=4, select="agreement", seed=0)
    best = max(range(len(res.val_agreement)), key=lambda i: (res.val_agreement[i], -i))  # first of the best
    assert res.best_epoch == best + 1 and len(res.val_agreement) == res.epochs_run == 4


def test_last_selection_runs_every_epoch_without_validation() -> None:
    teacher, student, x = _teacher_and_student()
    res = distill.distill(student, [teacher], x, epochs=3, patience=0, select="last", seed=0)
    assert res.best_epoch == res.epochs_run == 3 and res.val_losses == [] and res.val_samples == 0
    with pytest.raises(ValueError, match="Unknown select"):
        distill.distill(student, [teacher], x, select="test-accuracy")


def test_ema_state_by_hand() -> None:
    old = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    new = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(7)}
    out = ema_state(old, new, 0.75)
    assert out["w"].tolist() == [0.5, 3.0] and out["n"].item() == 7
    with pytest.raises(ValueError, match="0 <= ema < 1"):
        strategies.REFT(ema=1.0)


def test_the_study_reproduces_separate_runs_of_each_variant(small: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(algorithm="reft", tier_mix=["laptop", "raspberry_pi_4"], max_ratio=0.5, **TINY)
    variants = {"kd_loss": {}, "fresh": {"start": "fresh"}, "ema": {"ema": 0.5, "select": "agreement"}}
    h = engine.run(cfg, small, strategy=selection.SelectionStudy(variants)).history
    for label, kw in variants.items():  # paired by construction: the same numbers as a run of that variant alone
        alone = engine.run(cfg, small, strategy=strategies.REFT(**kw)).history
        assert h[f"acc[{label}]"].tolist() == alone["server_acc"].tolist(), label
    assert h["server_acc"].tolist() == h["acc[kd_loss]"].tolist()
    # the variants really differ (this tiny federation stays near chance, so compare accuracy and kept epoch)
    assert h[["acc[fresh]", "epoch[fresh]"]].values.tolist() != h[["acc[kd_loss]", "epoch[kd_loss]"]].values.tolist()


def test_study_rows_and_paired_summary(small: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(**{**TINY, "rounds": 2})
    variants = {"kd_loss": {}, "last": {"select": "last"}}
    rows, hist = selection.study(cfg, seeds=[0, 1], partitions=["iid"], variants=variants,
                                 splits_for={0: small, 1: small})  # fmt: skip
    assert len(rows) == 4 and set(rows["variant"]) == set(variants) and len(hist) == 8
    assert (rows["largest_drop"] == [max(0.0, a - b) for a, b in zip(
        hist.groupby(["seed", "variant"], sort=False)["server_acc"].first(),
        hist.groupby(["seed", "variant"], sort=False)["server_acc"].last(), strict=True)]).all()  # fmt: skip
    summ, vs = selection.summary(rows)
    assert list(summ["final_acc_n"]) == [2, 2] and list(vs["variant"]) == ["last"] and vs["seeds"].iloc[0] == 2
