from __future__ import annotations

import pytest
import torch

from reft import comm, models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_every_model_runs_on_both_image_sizes(name: str, in_channels: int, size: int) -> None:
    m = models.build(name, num_classes=7, in_channels=in_channels).eval()
    assert m(torch.randn(2, in_channels, size, size)).shape == (2, 7)
    assert m.widths == models.default_widths(name)
    assert m.classifier.out_features == 7


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_custom_widths_rebuild_from_spec_through_the_wire(name: str) -> None:
    torch.manual_seed(0)
    widths = [max(1, w // 3) for w in models.default_widths(name)]
    m = models.build(name, 10, 3, widths=widths).eval()
    assert m.widths == widths
    payload = comm.encode(m)
    back = comm.decode(payload).eval()
    assert back.spec == m.spec == comm.read_spec(payload)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), back(x))


def test_bad_model_name_and_widths() -> None:
    with pytest.raises(ValueError, match="Valid model names: cnn, vgg11, vgg16, resnet18"):
        models.build("resnet50")
    with pytest.raises(ValueError, match="cnn needs 4 widths"):
        models.build("cnn", widths=[8, 8])
    with pytest.raises(ValueError, match=">= 1"):
        models.build("cnn", widths=[8, 0, 8, 8])
