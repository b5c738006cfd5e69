"""reft.costs: one measured table of what a model costs at each pruning ratio."""

import pytest
import torch

from reft import costs, measure, models, pruning

X = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cnn() -> models.ReftModel:
    torch.manual_seed(0)
    return models.build("cnn")


def test_costs_are_measured_on_really_pruned_models(cnn):
    table = costs.at_ratios(cnn, X, [0.0, 0.5]).set_index("ratio")
    pruned = pruning.prune(cnn, 0.5, X).model
    assert table.loc[0.5, "bytes"] == measure.model_bytes(pruned) < 0.3 * table.loc[0.0, "bytes"]
    assert table.loc[0.5, "forward_flops"] == measure.flops(pruned, X)
    assert table.loc[0.5, "widths"] == list(pruned.widths)
    assert table.loc[0.0, "params"] == measure.count_params(cnn)
    assert table.loc[0.5, "activations"] == measure.activations(pruned, X) < table.loc[0.0, "activations"]
    assert table.loc[0.5, "memory_gb"] < table.loc[0.0, "memory_gb"]
    assert table.loc[0.0, "flops_reduction"] == 1.0 and table.loc[0.5, "flops_reduction"] > 3
    assert table.loc[0.5, "params_fraction"] == pytest.approx(measure.count_params(pruned) / measure.count_params(cnn))
    assert "speedup" not in table  # latency only when asked


def test_memory_estimate_by_hand():
    assert costs.training_memory_gb(params=1000, activations=10, batch_size=64) == pytest.approx(
        (12 * 1000 + 8 * 10 * 64) / 1e9
    )


def test_latency_columns_when_asked(cnn):
    df = costs.at_ratios(cnn, X, [0.0, 0.5], latency_batch=8, repeats=1, rounds=1, progress=False)
    assert (df["latency_ms_b8"] > 0).all()
    assert df.loc[0, "speedup"] == 1.0
    assert df.loc[1, "speedup_vs_ideal"] == pytest.approx(df.loc[1, "speedup"] / df.loc[1, "flops_reduction"])


def test_bad_input_is_explained(cnn):
    with pytest.raises(ValueError, match="needs a model built by reft.models.build"):
        costs.at_ratios(torch.nn.Linear(2, 2), X, [0.0])
    with pytest.raises(ValueError, match="at least one ratio"):
        costs.at_ratios(cnn, X, [])
