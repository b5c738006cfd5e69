from __future__ import annotations

import pytest
import torch
import torchvision

from reft import comm, measure, models


@pytest.mark.parametrize("builder,gmacs", [(torchvision.models.resnet18, 1.81), (torchvision.models.vgg16, 15.47)])
def test_flops_match_torchvision_documented_gflops(builder, gmacs: float) -> None:
    # torchvision documents GFLOPS as multiply-adds; flop_counter counts 2 FLOPs per multiply-add.
    got = measure.flops(builder(), torch.randn(1, 3, 224, 224)) / 2e9
    assert got == pytest.approx(gmacs, rel=0.01)


def test_flops_scale_with_batch_and_train_is_three_times_forward() -> None:
    m = models.build("cnn")
    one = measure.flops(m, torch.randn(1, 1, 28, 28))
    assert measure.flops(m, torch.randn(8, 1, 28, 28)) == 8 * one
    assert measure.train_flops(m, torch.randn(1, 1, 28, 28)) == 3 * one


def test_params_and_bytes_are_real() -> None:
    m = models.build("cnn")
    assert measure.count_params(m) == sum(p.numel() for p in m.parameters()) > 100_000
    n_bytes = measure.model_bytes(m)
    assert n_bytes == len(comm.encode(m))
    state_bytes = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    assert state_bytes < n_bytes < state_bytes + 8192  # tensors plus a small header


def test_latency_is_positive_and_smaller_model_is_faster() -> None:
    x = torch.randn(64, 1, 28, 28)
    big = measure.latency(models.build("cnn", widths=[64, 128, 256, 256]), x, repeats=5)
    tiny = measure.latency(models.build("cnn", widths=[4, 8, 16, 16]), x, repeats=5)
    assert 0 < tiny < big


def test_latency_leaves_the_model_as_it_was() -> None:
    m = models.build("cnn").train()
    measure.latency(m, torch.randn(4, 1, 28, 28), repeats=1)
    assert m.training and m.features[0].weight.is_contiguous()
