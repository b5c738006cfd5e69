from __future__ import annotations

import numpy as np
import pytest
import torch

from reft import data


def test_fashion_mnist_split_sizes_and_labels(fmnist: data.Splits) -> None:
    assert (len(fmnist.private_train), len(fmnist.public), len(fmnist.test)) == (50000, 10000, 10000)
    assert fmnist.public.y is None  # the public set is unlabelled by construction
    assert fmnist.private_train.x.shape[1:] == (1, 28, 28) and fmnist.num_classes == 10
    assert torch.bincount(fmnist.test.y).tolist() == [1000] * 10
    # normalized with the dataset statistics: roughly zero mean, unit std
    assert abs(fmnist.private_train.x.mean().item()) < 0.05
    assert abs(fmnist.private_train.x.std().item() - 1) < 0.05


def test_split_is_seeded(fmnist: data.Splits) -> None:
    again = data.load("fashion-mnist")
    assert torch.equal(again.public.x, fmnist.public.x)
    other = data.load("fashion-mnist", seed=1)
    assert not torch.equal(other.public.x, fmnist.public.x)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, cifar10"):
        data.load("mnist")


def test_missing_data_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", root=tmp_path)


def test_cifar10_offline_fails_fast_with_clear_message(tmp_path) -> None:
    import time

    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="CIFAR-10 needs internet once"):
        data.load("cifar10", root=tmp_path)
    assert time.perf_counter() - t0 < 30


def test_cifar10_loading_path_on_self_made_files(tmp_path, monkeypatch, write_tiny_cifar) -> None:
    # Real torchvision CIFAR10 reader on a tiny CIFAR-format folder; only the MD5 check of the real
    # archive is bypassed, since these files are not the published ones.
    import os

    import torchvision.datasets.cifar

    write_tiny_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    s = data.load("cifar10", root=tmp_path, public_size=25)
    assert (len(s.private_train), len(s.public), len(s.test)) == (75, 25, 30)
    assert s.private_train.x.shape[1:] == (3, 32, 32) and s.in_channels == 3
    assert s.classes[0] == "airplane" and s.num_classes == 10


@pytest.mark.parametrize("scheme,kw", [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {})])
def test_partition_uses_each_sample_at_most_once(fmnist: data.Splits, scheme: str, kw: dict) -> None:
    labels = fmnist.private_train.y
    parts = data.partition(labels, 10, scheme, seed=3, **kw)
    allidx = np.concatenate(parts)
    assert len(parts) == 10 and min(len(p) for p in parts) > 0
    assert len(np.unique(allidx)) == len(allidx) <= len(labels)
    again = data.partition(labels, 10, scheme, seed=3, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_partition_skew_follows_alpha(fmnist: data.Splits) -> None:
    labels = fmnist.private_train.y

    def mean_classes_per_client(parts) -> float:
        hist = data.label_histogram(labels, parts, 10)
        return float((hist / hist.sum(axis=1).values[:, None] > 0.05).sum(axis=1).mean())

    iid = data.partition(labels, 10, "iid")
    skew = data.partition(labels, 10, "dirichlet", alpha=0.1)
    assert mean_classes_per_client(iid) == 10
    assert mean_classes_per_client(skew) < 5
    shards = data.label_histogram(labels, data.partition(labels, 10, "shards", shards_per_client=2), 10)
    classes_held = (shards > 0).sum(axis=1)
    assert (classes_held <= 4).all() and classes_held.mean() <= 3  # a shard may straddle two classes


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_clients": 101, "scheme": "iid"}, "n_clients must be between 1 and 100"),
        ({"n_clients": 0, "scheme": "iid"}, "n_clients must be between"),
        ({"n_clients": 5, "scheme": "dirichlet", "alpha": 0}, "alpha > 0"),
        ({"n_clients": 5, "scheme": "dirichlet"}, "alpha > 0"),
        ({"n_clients": 5, "scheme": "pathological"}, "Valid schemes: iid, dirichlet, shards"),
    ],
)
def test_partition_bad_input(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.partition(np.arange(100) % 10, **kw)
