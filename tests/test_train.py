from __future__ import annotations

import pytest
import torch

from reft import data, models, train


def _train(splits: data.Splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = models.build("cnn", widths=[8, 16, 32, 32])
    train.fit(m, splits.private_train.x, splits.private_train.y, epochs=1, batch_size=64, seed=seed)
    return m


def test_same_seed_same_weights_different_seed_differs(small: data.Splits) -> None:
    a, b, c = _train(small, 0), _train(small, 0), _train(small, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_learns(small: data.Splits) -> None:
    m = models.build("cnn", widths=[8, 16, 32, 32])
    before = train.evaluate(m, small.test.x, small.test.y)
    res = train.fit(m, small.private_train.x, small.private_train.y, epochs=3, seed=0)
    after = train.evaluate(m, small.test.x, small.test.y)
    assert res.losses[-1] < res.losses[0]
    assert after > max(0.6, before + 0.3)  # 10 classes: chance is 0.1


def test_fit_rejects_bad_input(small: data.Splits) -> None:
    m = models.build("cnn", widths=[4, 4, 4, 4])
    with pytest.raises(ValueError, match="differ in length"):
        train.fit(m, small.test.x, small.test.y[:10])
    with pytest.raises(ValueError, match="empty"):
        train.fit(m, small.test.x[:0], small.test.y[:0])
