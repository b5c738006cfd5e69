from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reft import distill, models, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_is_zero_for_identical_outputs_and_scales_with_t_squared() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    for T in (1.0, 2.0, 4.0):
        assert distill.kd_loss(t, distill.soft_targets(t, T), T).abs().item() < 1e-6
        assert distill.kd_loss(s, distill.soft_targets(t, T), T).item() > 0
    # T^2 factor: the loss equals T^2 x KL of the softened distributions
    T = 3.0
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    assert torch.allclose(distill.kd_loss(s, distill.soft_targets(t, T), T), kl * T**2)


def test_ensemble_of_logits_and_of_probabilities() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 20, 5)
    assert torch.allclose(distill.ensemble_logits(z), z.mean(0))
    T = 2.0
    out = distill.ensemble_logits(z, mode="probs", temperature=T)
    assert torch.allclose(F.softmax(out / T, 1), F.softmax(z / T, 2).mean(0), atol=1e-6)
    # weights: all the weight on one teacher gives that teacher; data-size weights are normalized
    assert torch.allclose(distill.ensemble_logits(z, weights=[0, 1, 0]), z[1])
    assert torch.allclose(distill.ensemble_logits(z, weights=[100, 300, 0]), 0.25 * z[0] + 0.75 * z[1])
    assert torch.allclose(distill.ensemble_logits(list(z)), z.mean(0))


def test_bad_distillation_settings_are_clear_errors() -> None:
    z = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill.ensemble_logits(z, temperature=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill.kd_loss(z[0], z[1].softmax(1), temperature=-1)
    with pytest.raises(ValueError, match="Valid modes: logits, probs"):
        distill.ensemble_logits(z, mode="votes")
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        distill.ensemble_logits(z, weights=[1, -1])
    m = models.build("cnn", widths=[4, 4, 4, 4])
    with pytest.raises(ValueError, match="public set is empty"):
        distill.distill(m, [m], torch.empty(0, 1, 28, 28))
    with pytest.raises(ValueError, match="at least one teacher"):
        distill.distill(m, [], torch.randn(4, 1, 28, 28))


class _Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_distillation_transfers_the_ensemble_and_runs_teachers_once(small) -> None:
    x, y = small.private_train.x[:1200], small.private_train.y[:1200]
    teachers = []
    for seed in range(2):
        torch.manual_seed(seed)
        t = models.build("cnn", widths=[8, 16, 32, 32])
        train.fit(t, x[seed * 600 : (seed + 1) * 600], y[seed * 600 : (seed + 1) * 600], epochs=2, seed=seed)
        teachers.append(_Counting(t))
    pub = small.public.x[:800]  # unlabelled
    torch.manual_seed(0)
    student = models.build("cnn", widths=[8, 16, 32, 32])
    before = train.evaluate(student, small.test.x, small.test.y)
    res = distill.distill(student, teachers, pub, temperature=2.0, epochs=4, lr=3e-3, val_fraction=0.2, seed=0)
    after = train.evaluate(student, small.test.x, small.test.y)
    ens = distill.teacher_outputs(teachers, small.test.x)
    ens_acc = (ens.argmax(1) == small.test.y).float().mean().item()
    assert after > before + 0.3 and after > ens_acc - 0.15, (before, after, ens_acc)
    assert res.best_epoch == 1 + min(range(len(res.val_losses)), key=res.val_losses.__getitem__)
    assert res.samples == res.epochs_run * (len(pub) - int(0.2 * len(pub)))
    # teachers ran once on the public set and once on the test set (one call per prediction batch)
    calls = -(-len(pub) // train.PREDICT_BATCH) + -(-len(small.test.x) // train.PREDICT_BATCH)
    assert [t.calls for t in teachers] == [calls, calls]


def test_early_stopping_keeps_the_best_epoch() -> None:
    torch.manual_seed(0)
    teacher = models.build("cnn", widths=[4, 4, 8, 8])
    student = models.build("cnn", widths=[4, 4, 8, 8])
    pub = torch.randn(200, 1, 28, 28)
    # a huge learning rate makes the validation loss jump around: training must stop early and restore the best
    res = distill.distill(student, [teacher], pub, epochs=12, lr=1.0, patience=0, val_fraction=0.3, seed=0)
    assert res.epochs_run < 12
    assert res.best_epoch == 1 + min(range(len(res.val_losses)), key=res.val_losses.__getitem__)
    targets = distill.soft_targets(distill.teacher_outputs([teacher], pub))
    val_idx = torch.randperm(len(pub), generator=torch.Generator().manual_seed(0))[: int(0.3 * len(pub))]
    final = distill.kd_loss(train.predict(student, pub[val_idx]), targets[val_idx]).item()
    assert final == pytest.approx(min(res.val_losses), rel=1e-5)


def test_early_stopping_waits_exactly_patience_epochs() -> None:
    torch.manual_seed(0)
    teacher = models.build("cnn", widths=[4, 4, 8, 8])
    pub = torch.randn(200, 1, 28, 28)
    stopped = 0
    for patience, seed in [(1, 0), (2, 0), (2, 1), (3, 2)]:
        student = models.build("cnn", widths=[4, 4, 8, 8])
        res = distill.distill(
            student, [teacher], pub, epochs=25, lr=1.0, patience=patience, val_fraction=0.3, seed=seed
        )
        losses = res.val_losses
        streaks = [i - max(j for j in range(i + 1) if losses[j] == min(losses[: i + 1])) for i in range(len(losses))]
        assert max(streaks) <= patience  # never more than `patience` epochs in a row without improvement
        if res.epochs_run < 25:
            stopped += 1
            assert streaks[-1] == patience == res.epochs_run - res.best_epoch  # stopped exactly then
    assert stopped >= 2  # a huge learning rate: the validation loss does stop improving


def test_study_runs_each_distinct_setting_once_from_the_same_start(small) -> None:
    torch.manual_seed(0)
    teacher = models.build("cnn", widths=[4, 4, 8, 8])
    made = []

    def make_student():
        student = models.build("cnn", widths=[4, 4, 8, 8])
        made.append({k: v.clone() for k, v in student.state_dict().items()})  # its weights before distillation
        return student

    settings = [{"temperature": 1.0}, {"temperature": 2.0}, {"mode": "logits"}, {"public_size": 50}]
    table = distill.study(
        make_student, [teacher], small.public.x[:100], small.test.x[:100], small.test.y[:100], settings,
        base={"epochs": 1, "temperature": 1.0, "mode": "logits"}, progress=False,
    )  # fmt: skip
    assert len(made) == 3  # {"temperature": 1.0} and {"mode": "logits"} are both the base setting
    assert table["public_size"].tolist() == [100, 100, 100, 50]
    assert table.loc[0, "distilled_acc"] == table.loc[2, "distilled_acc"]
    # students start from identical weights (seeded), whatever the setting
    assert all(torch.equal(made[0][k], made[1][k]) for k in made[0])
