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


# ------------------------------------------------------------------------------ augmentation (CIFAR recipe)
def _crop(x: torch.Tensor, dy: int, dx: int, flip: bool, pad: int = train.CROP_PAD) -> torch.Tensor:
    """The slow reference: one image zero-padded, cropped at (dy, dx), mirrored when ``flip``."""
    h, w = x.shape[-2:]
    c = torch.nn.functional.pad(x, (pad,) * 4)[..., dy : dy + h, dx : dx + w]
    return c.flip(-1) if flip else c


def test_crop_flip_gives_shifted_or_mirrored_copies_of_each_image() -> None:
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = train.crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    found = []
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], _crop(x[i], dy, dx, f))]  # fmt: skip
        assert len(matches) == 1, i
        found += matches
    assert {f for *_, f in found} == {False, True} and len({(dy, dx) for dy, dx, _ in found}) > 10


def test_a_bright_pixel_moves_at_most_4_pixels_and_a_flip_mirrors_it() -> None:
    x = torch.zeros(64, 1, 32, 32)
    x[:, 0, 10, 20] = 1.0
    out = train.crop_flip(x, torch.Generator().manual_seed(0))
    flips = 0
    for img in out:
        (r, c), n = torch.nonzero(img[0]).tolist()[0], int(img.sum())
        assert n == 1 and abs(r - 10) <= 4  # the pixel is more than 4 from every edge: it is always kept
        if abs(c - 20) > 4:  # only a mirrored image puts it near column 31 - 20 = 11
            assert abs(c - 11) <= 4
            flips += 1
    assert 0 < flips < 64


def test_augmentation_is_seeded(small: data.Splits) -> None:
    x = small.test.x[:16]
    a, b, c = (train.crop_flip(x, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)

    def weights(seed: int, augment: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = models.build("cnn", widths=[4, 8, 16, 16])
        train.fit(m, small.test.x[:128], small.test.y[:128], batch_size=32, seed=seed, augment=augment)
        return list(m.state_dict().values())

    same, other, plain = weights(0, True), weights(1, True), weights(0, False)
    assert all(torch.equal(p, q) for p, q in zip(weights(0, True), same, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(same, other, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(same, plain, strict=True))


def test_augmentation_is_on_for_cifar_and_off_for_fashion_mnist_unless_set() -> None:
    from reft.config import RunConfig

    assert set(data.AUGMENT_BY_DEFAULT) == set(data.DATASETS)
    assert not RunConfig().augments and RunConfig(dataset="cifar10").augments
    assert RunConfig(augment=True).augments and not RunConfig(dataset="cifar10", augment=False).augments


def test_client_training_and_the_central_baseline_augment_as_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from reft import engine
    from reft.config import RunConfig

    seen = []
    monkeypatch.setattr(train, "fit", lambda *a, **kw: seen.append(kw["augment"]))
    for dataset in ("fashion-mnist", "cifar10"):
        engine.client_update(RunConfig(dataset=dataset), None, torch.zeros(1), torch.zeros(1), 1, 0)
    assert seen == [False, True]
    monkeypatch.undo()

    gen = torch.Generator().manual_seed(0)
    part = lambda n: data.Data(torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))  # noqa: E731
    splits = data.Splits("cifar10", part(64), part(8), part(32), tuple("abcdefghij"))
    rows = []
    for augment in (False, True, None):  # None: as the dataset says (CIFAR: on)
        torch.manual_seed(0)
        m = models.build("cnn", num_classes=10, in_channels=3, widths=[4, 8, 16, 16])
        rows.append(train.train_central(m, splits, epochs=2, progress=False, augment=augment, batch_size=16))
    assert len(rows[1]) == 2 and rows[1]["test_acc"].between(0, 1).all()
    assert rows[0]["loss"].tolist() != rows[1]["loss"].tolist() == rows[2]["loss"].tolist()


@pytest.mark.parametrize(("widths", "layout"), [([32, 64, 128, 128], torch.channels_last),
                                                ([10, 20, 40, 40], torch.channels_last),
                                                ([7, 14, 28, 28], torch.contiguous_format),
                                                ([1, 3, 6, 6], torch.contiguous_format)])  # fmt: skip
def test_training_layout_follows_the_narrowest_conv(widths: list[int], layout: torch.memory_format) -> None:
    assert train.memory_format(models.build("cnn", widths=widths)) == layout
