"""Tests for reft.pruning: physically smaller models, rebuildable from their spec, and clear failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from reft import measure, models, pruning

X1 = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
X3 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cnn() -> models.ReftModel:
    torch.manual_seed(0)
    return models.build("cnn")


@pytest.fixture(scope="module")
def resnet() -> models.ReftModel:
    torch.manual_seed(0)
    return models.build("resnet18", in_channels=3)


def _rebuild(res: pruning.PruneResult) -> nn.Module:
    m = models.build(**res.spec)
    m.load_state_dict(res.model.state_dict())
    return m.eval()


@pytest.fixture(scope="module")
def halves(cnn, resnet) -> dict:
    """Each model (28x28 and 32x32 CNN, CIFAR ResNet-18) with its input and its prune at ratio 0.5."""
    cnn3 = models.build("cnn", in_channels=3)
    return {name: (m, x, pruning.prune(m, 0.5, x)) for name, m, x in
            [("cnn", cnn, X1), ("cnn3", cnn3, X3), ("resnet18", resnet, X3)]}  # fmt: skip


@pytest.mark.parametrize("name", ["cnn", "cnn3", "resnet18"])
def test_half_ratio_cuts_params_and_flops_to_40_percent(name, halves):
    model, x, res = halves[name]
    assert measure.count_params(res.model) <= 0.40 * measure.count_params(model)
    with pruning.single_thread():
        assert measure.flops(res.model, x) <= 0.40 * measure.flops(model, x)
    assert res.params == measure.count_params(res.model) and res.params_fraction <= 0.40
    assert res.spec == res.model.spec
    assert all(w < d for w, d in zip(res.model.widths, model.widths, strict=True))  # every layer lost channels
    assert res.model.classifier.out_features == model.classifier.out_features


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_rebuild_from_spec_gives_identical_outputs(name, halves):
    _, x, res = halves[name]
    batch = torch.randn(4, *x.shape[1:])
    with torch.no_grad(), pruning.single_thread():
        assert torch.equal(_rebuild(res)(batch), res.model.eval()(batch))


def test_input_model_untouched_and_mode_kept(cnn):
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    cnn.train()
    res = pruning.prune(cnn, 0.5, X1)
    assert res.model.training and res.model is not cnn
    assert cnn.widths == models.default_widths("cnn")
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())  # BN stats too


def test_ratio_zero_is_an_unpruned_copy(cnn):
    res = pruning.prune(cnn, 0, X1)
    assert res.model is not cnn and res.spec == cnn.spec and res.params == res.dense_params
    dense = cnn.state_dict()
    assert all(torch.equal(v, dense[k]) for k, v in res.model.state_dict().items())


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half"])
def test_ratio_outside_unit_interval(cnn, ratio):
    with pytest.raises(ValueError, match=r"ratio must be"):
        pruning.prune(cnn, ratio, X1)


def test_unknown_importance(cnn):
    with pytest.raises(ValueError, match="Valid importances: l1, l2, random"):
        pruning.prune(cnn, 0.5, X1, importance="taylor-swift")


def test_importance_decides_which_channels_survive(cnn):
    def kept(imp: str, seed: int = 0) -> torch.Tensor:
        return pruning.prune(cnn, 0.5, X1, importance=imp, seed=seed).model.features[0].weight

    w = cnn.features[0].weight.detach().flatten(1)
    l2 = kept("l2").detach().flatten(1)
    # magnitude pruning keeps the filters of largest norm (group importance also counts BN and the next layer)
    assert l2.norm(dim=1).mean() > w.norm(dim=1).mean()
    assert not torch.equal(kept("l2"), kept("random"))
    assert torch.equal(kept("random", 3), kept("random", 3))  # seeded
    assert not torch.equal(kept("random", 3), kept("random", 4))
    for imp in pruning.IMPORTANCES:
        assert pruning.prune(cnn, 0.5, X1, importance=imp).model.widths == [16, 32, 64, 64]


def test_frozen_parameters_are_still_pruned(cnn):
    # torch-pruning traces through autograd: frozen parameters made it prune nothing (issue 416 / 463)
    frozen = models.build("cnn")
    frozen.load_state_dict(cnn.state_dict())
    for p in frozen.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # even when called inside no_grad
        res = pruning.prune(frozen, 0.5, X1)
    assert res.model.widths == [16, 32, 64, 64]
    assert not any(p.requires_grad for p in res.model.parameters())  # flags restored


def test_pruning_that_removes_nothing_raises():
    # the trap of torch-pruning issue 416: a pruner that silently leaves the model as it was
    tiny = models.build("cnn", widths=[1, 1, 1, 1])
    with pytest.raises(pruning.PruningError, match="removed no channels"):
        pruning.prune(tiny, 0.5, X1)
    cnn = models.build("cnn")
    with pytest.raises(pruning.PruningError, match=r"removed no channels .* index \[0, 1, 2\]"):
        pruning.prune(cnn, 0.5, X1, ignored_layers=[cnn.features])
    with pytest.raises(ValueError, match="ignored_layers must be modules of the model"):
        pruning.prune(cnn, 0.5, X1, ignored_layers=[nn.Linear(2, 2)])


class _DetachedCNN(models.SmallCNN):
    """A forward pass that hides the conv stack from autograd, so torch-pruning sees only the head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.features(x)
        return self.classifier(torch.relu(self.fc(torch.flatten(x, 1))))


def test_partially_traced_model_raises():
    model = _DetachedCNN(10, 1, models.default_widths("cnn"))
    with pytest.raises(pruning.PruningError, match=r"width index \[0, 1, 2\]"):
        pruning.prune(model, 0.5, X1)


def test_untraceable_model_gives_clear_error(cnn):
    with pytest.raises(ValueError, match="could not trace SmallCNN.*shape \\(1, 3, 32, 32\\)"):
        pruning.prune(cnn, 0.5, X3)  # 3-channel input for a 1-channel model
    with pytest.raises(ValueError, match="reft.models.build"):
        pruning.prune(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2)), 0.5, X1)


def test_round_to(cnn):
    res = pruning.prune(cnn, 0.3, X1, round_to=8)
    assert all(w % 8 == 0 for w in res.model.widths)
    with pytest.raises(pruning.PruningError, match=r"removed no channels.*round_to \(8\)"):
        pruning.prune(models.build("cnn", widths=[4, 8, 8, 8]), 0.3, X1, round_to=8)


def test_prune_to_flops_meets_budget_with_least_pruning(cnn):
    dense = measure.flops(cnn, X1)
    res = pruning.prune_to_flops(cnn, 0.5 * dense, X1, tol=0.01)
    assert measure.flops(res.model, X1) <= 0.5 * dense
    assert measure.flops(pruning.prune(cnn, res.ratio - 0.02, X1).model, X1) > 0.5 * dense  # not over-pruned
    assert pruning.prune_to_flops(cnn, 2 * dense, X1).ratio == 0
    with pytest.raises(ValueError, match="Raise max_ratio"):
        pruning.prune_to_flops(cnn, 1.0, X1, max_ratio=0.5)


def test_prune_iterative_calls_finetune_between_steps(cnn):
    seen: list[list[int]] = []
    res = pruning.prune_iterative(cnn, 0.5, X1, steps=3, finetune=lambda m: seen.append(list(m.widths)))
    assert len(seen) == 3 and seen[0][0] > seen[1][0] > seen[2][0]
    assert res.model.widths == pruning.prune(cnn, 0.5, X1).model.widths and res.steps == 3
    with torch.no_grad():
        assert torch.equal(_rebuild(res)(X1), res.model.eval()(X1))


def test_accuracy_sweep_on_a_tiny_problem():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (96,), generator=g)
    x = torch.randn(96, 1, 28, 28, generator=g) + 2 * y.view(-1, 1, 1, 1)  # separable: brightness = class
    with pruning.single_thread():  # tiny batches: one thread is faster, and robust on shared cores
        df = pruning.accuracy_sweep("cnn", (x, y), (x, y), [0.0, 0.5], epochs=2, finetune_epochs=1,
                                    importances=["l2", "random"], compare_ratios=[0.5], num_classes=2,
                                    progress=False)  # fmt: skip
    assert len(df) == 2 * 1 + 2 + 2 * 2  # scratch at both ratios; l2 at both; random only at 0.5
    assert set(df.loc[df["importance"] == "random", "ratio"]) == {0.5}
    with pruning.single_thread():
        cut_only = pruning.accuracy_sweep("cnn", (x, y), (x, y), [0.5], epochs=1, importances=["l2", "random"],
                                          compare_finetune=False, num_classes=2, progress=False)  # fmt: skip
    assert list(cut_only.loc[cut_only["importance"] == "random", "method"]) == ["pruned"]
    assert set(df["method"]) == {"scratch", "pruned", "pruned+finetuned"}
    assert df["accuracy"].between(0, 1).all()
    assert df.loc[df["method"] == "scratch", "accuracy"].max() > 0.9


def test_accuracy_held_finds_where_accuracy_falls():
    df = pd.DataFrame({
        "ratio": [0.0, 0.3, 0.5, 0.7, 0.9] * 2,
        "method": ["scratch"] * 5 + ["pruned"] * 5,
        "importance": ["-"] * 5 + ["l2"] * 5,
        "accuracy": [0.90, 0.895, 0.89, 0.85, 0.70, 0.90, 0.91, 0.90, 0.895, 0.899],
    })  # fmt: skip
    held = pruning.accuracy_held(df, tolerance=0.01).set_index("method")
    assert held.loc["scratch", "held_to"] == 0.5 and held.loc["scratch", "falls_at"] == 0.7
    assert held.loc["scratch", "accuracy_at_fall"] == 0.85
    assert held.loc["pruned", "held_to"] == 0.9 and np.isnan(held.loc["pruned", "falls_at"])
