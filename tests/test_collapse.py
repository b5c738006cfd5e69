"""The seed-1 Dirichlet collapse (issue 25): its three causes, each with a test that fails on the code before
the fix, and the dead-unit diagnostic that names a collapse in the history.

Dead units are counted here at the classifier's input (the hidden layer after its ReLU), which is the same
place in the ``cnn`` before and after the fix, so these tests run on both.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from reft import data, diagnostics, engine, experiments, models, strategies, train
from reft.config import RunConfig
from reft.strategies import heterofl

RECIPE = dict(epochs=1, lr=0.05, batch_size=64)  # RunConfig's shared local recipe (momentum 0.9, wd 5e-4)
TINY = dict(
    private_size=300, public_size=200, test_size=200, n_clients=3, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, progress=False, eval_clients=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def shard(fmnist: data.Splits, one_thread: None) -> data.Splits:
    """1,500 private images (a client's shard at the fmnist settings is ~2,000) and a public probe batch."""
    return fmnist.subsample(private=1500, public=256, test=500, seed=0)


def hidden_dead(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of the hidden units whose (post-ReLU) activation into the classifier is 0 on every image."""
    seen = []
    h = model.classifier.register_forward_pre_hook(lambda _m, i: seen.append(i[0] > 0))
    try:
        train.predict(model, x)
    finally:
        h.remove()
    return 1.0 - torch.cat(seen).any(0).float().mean().item()


def test_hidden_units_survive_one_local_epoch_at_the_shared_recipe(shard: data.Splits) -> None:
    # before the fix (no norm after fc): 66-93% of the 128 units dead after one epoch at notebook-03
    # settings; on this shard at seed 0, 0.57
    torch.manual_seed(0)
    model = models.build("cnn")
    train.fit(model, shard.private_train.x, shard.private_train.y, seed=0, **RECIPE)
    assert hidden_dead(model, shard.public.x) < 0.1


def test_heterofl_narrow_client_keeps_its_hidden_units(shard: data.Splits) -> None:
    # before the fix the Scaler multiplied the narrow hidden layer's output by 1/rate (4x here) with no norm
    # after it, and every hidden unit of the client died in its first epoch
    torch.manual_seed(0)
    full = models.build("cnn")
    sub = models.build("cnn", widths=[8, 16, 32, 32])  # rate 1/4, the same sub-model HeteroFL sends
    sub.load_state_dict(heterofl.leading_slice(full.state_dict(), sub.state_dict()))
    with heterofl.scaler(sub, full):
        train.fit(sub, shard.private_train.x, shard.private_train.y, seed=0, **RECIPE)
    assert hidden_dead(sub, shard.public.x) < 0.5
    assert train.evaluate(sub, shard.test.x, shard.test.y) > 0.3  # chance: 0.1


class _NoNormHead(nn.Module):
    """conv-BN-ReLU, then a hidden linear layer with no norm after it, then the classifier."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.conv, self.bn, self.fc, self.classifier = nn.Conv2d(1, c, 3), nn.BatchNorm2d(c), nn.Linear(c, hidden), \
            nn.Linear(hidden, 3)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.classifier(torch.relu(self.fc(x)))


def test_scaler_only_acts_before_a_norm_layer() -> None:
    torch.manual_seed(0)
    full, sub = _NoNormHead(8, 16), _NoNormHead(4, 4)  # conv at rate 1/2, hidden linear at rate 1/4
    x = torch.randn(6, 1, 8, 8)
    twin = copy.deepcopy(sub).train()
    sub.train()
    plain = twin(x)
    seen = {}
    with heterofl.scaler(sub, full):
        h = sub.bn.register_forward_pre_hook(lambda _m, i: seen.update(bn_in=i[0]))  # runs after the Scaler's
        scaled = sub(x)
        h.remove()
    # the Scaler divides the BN's input by the rate, which BN cancels (up to eps); the hidden linear layer,
    # with no norm after it, is left alone: the logits are those of plain training
    assert torch.allclose(seen["bn_in"], sub.conv(x) / 0.5)
    assert torch.allclose(scaled, plain, rtol=1e-3, atol=1e-5)
    # and the running statistics describe the unscaled input, as an eval-mode pass (no Scaler) reads them
    assert torch.allclose(sub.bn.running_mean, twin.bn.running_mean, atol=1e-6)
    assert torch.allclose(sub.bn.running_var, twin.bn.running_var, rtol=1e-5)


def test_scaler_on_the_cnn_scales_the_input_of_every_narrow_norm_only() -> None:
    full, sub = models.build("cnn", widths=[4, 8, 16, 16]), models.build("cnn", widths=[2, 8, 16, 4])
    with heterofl.scaler(sub, full):
        hooked = {n for n, m in sub.named_modules() if m._forward_pre_hooks or m._forward_hooks}
    assert hooked == {"features.1", "fc_norm"}  # conv1's BN (rate 1/2) and the hidden layer's norm (rate 1/4)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in sub.modules())  # removed on exit


def test_feddf_reports_every_group_model(fmnist: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(algorithm="feddf", max_ratio=0.5, **{**TINY, "distill_epochs": 1})
    res = engine.run(cfg, fmnist)
    h, n = res.history, len(res.strategy.groups)
    assert n > 1 and [f"group_acc[{g}]" for g in range(n)] == [c for c in h if c.startswith("group_acc[")]
    assert (h["group_acc[0]"] == h["server_acc"]).all()  # group 0 (the densest) is the server model
    groups = h[[f"group_acc[{g}]" for g in range(n)]]
    assert (h["group_acc_best"] == groups.max(axis=1)).all()
    assert h["group_acc_mean"].round(12).equals(groups.mean(axis=1).round(12))
    row = experiments.summary(res)
    assert row["final_group_acc_best"] >= row["final_acc"] and "final_group_acc_mean" in row


def test_feddf_previous_start_distils_into_last_rounds_group_model(fmnist: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(algorithm="feddf", max_ratio=0.5, **{**TINY, "rounds": 1, "distill_epochs": 1})
    avg = engine.run(cfg, fmnist, strategy=strategies.FedDF(start="average")).strategy.server_model.state_dict()
    prev = engine.run(cfg, fmnist, strategy=strategies.FedDF(start="previous")).strategy.server_model.state_dict()
    assert not torch.equal(avg["classifier.weight"], prev["classifier.weight"])
    with pytest.raises(ValueError, match="Unknown FedDF start"):
        strategies.FedDF(start="init")


def test_dead_units_counts_a_unit_that_never_fires() -> None:
    torch.manual_seed(0)
    model = models.build("cnn", widths=[4, 8, 16, 16])
    x = torch.randn(20, 1, 28, 28)
    assert set(diagnostics.dead_units(model, x)) == {"features.0", "features.4", "features.8", "fc"}
    update_bn([x], model)  # running statistics = this batch's: every hidden unit fires on about half of it
    assert diagnostics.dead_units(model, x)["fc"] == 0.0
    with torch.no_grad():
        model.fc_norm.bias[:3] = -100.0  # three hidden units below zero on every input
    dead = diagnostics.dead_units(model, x)
    assert dead["fc"] == pytest.approx(3 / 16) and dead["fc"] == pytest.approx(hidden_dead(model, x))
    with torch.no_grad():
        model.fc_norm.bias[:] = -100.0
    cols = diagnostics.columns(model, [model, models.build("cnn", widths=[4, 8, 16, 16])], x)
    assert cols["dead[fc]"] == 1.0 and cols["dead_uploads"] == 1.0 and 0.5 <= cols["upload_dead[fc]"] <= 1.0


def test_history_holds_dead_units_on_diagnostics_rounds(fmnist: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(algorithm="fedavg", diagnostics_every=0, **TINY)  # 2 rounds: diagnostics in the last only
    h = engine.run(cfg, fmnist).history
    cols = [c for c in h if "dead" in c]
    assert {"dead[fc]", "upload_dead[fc]", "dead_uploads", "dead[features.0]"} <= set(cols)
    assert h[cols].iloc[0].isna().all() and h[cols].iloc[1].notna().all()
    assert h[[c for c in cols if "[" in c]].iloc[1].between(0, 1).all() and h["dead_uploads"].iloc[1] <= 3


def test_hidden_norm_trains_on_a_last_batch_of_one(fmnist: data.Splits) -> None:
    torch.manual_seed(0)
    model = models.build("cnn", widths=[4, 8, 16, 16])
    train.fit(model, fmnist.private_train.x[:65], fmnist.private_train.y[:65], batch_size=64)  # 64 + 1
    before = model.fc_norm.running_mean.clone()
    model.train()
    model(fmnist.private_train.x[:1])  # one sample: normalised with the running statistics, which stay
    assert torch.equal(model.fc_norm.running_mean, before)
