"""Datasets (offline first), the fixed private/public/test split, and client partitioners.

``load(name)`` returns :class:`Splits`:

* ``private_train``: the labelled data that gets partitioned across clients;
* ``public``: an unlabelled set for server-side distillation (its labels are dropped here, so no
  algorithm can use them);
* ``test``: the official test set.

Where the data come from, in order: ``root`` (or the ``REFT_DATA`` environment variable, default
``~/.cache/reft``); for Fashion-MNIST the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), unpacked into ``root``; then torchvision's download.

Datasets are an open registry (:func:`register`); the partitioners live in :mod:`reft.partition`
(re-exported here).
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision

from reft.partition import (  # noqa: F401  (part of this module's interface)
    PARTITION_OPTIONS,
    SCHEMES,
    Partitioner,
    label_histogram,
    partition,
    register_partitioner,
)  # fmt: skip

# A loader: data root -> (train images, train labels, test images, test labels, class names); images are
# float32 N x C x H x W as the models will see them (normalised as the loader chooses), labels int64.
Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Sequence[str]]
Loader = Callable[[Path], Raw]
# Every dataset :func:`load` (and RunConfig) knows, by name (:func:`register` adds one's own).
DATASETS: dict[str, Loader] = {}
# Whether local training augments (random crop and flip) when RunConfig.augment is None: the published
# CIFAR recipes do; Fashion-MNIST is usually trained without (and small images gain little from crops).
AUGMENT_BY_DEFAULT: dict[str, bool] = {}
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")

# Unpacked IDX sizes (bytes): verified instead of the gz MD5s, which Debian's repacking changed.
_FMNIST_FILES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class Data:
    """Images ``x`` (float32, N x C x H x W, normalized) and labels ``y`` (int64) or ``None``."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> Data:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Data(self.x[idx], None if self.y is None else self.y[idx])

    def to(self, device: str | torch.device) -> Data:
        """The same data on ``device`` (the same tensors, not copies, when they are there already)."""
        return Data(self.x.to(device), None if self.y is None else self.y.to(device))


@dataclass(frozen=True)
class Splits:
    """The three fixed parts of a dataset, plus what a model builder needs to know about it."""

    name: str
    private_train: Data
    public: Data
    test: Data
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.test.x.shape[1]

    @property
    def example_input(self) -> torch.Tensor:
        """One test image, batch of 1: the input for FLOPs counting."""
        return self.test.x[:1]

    def subsample(
        self, private: int | None = None, public: int | None = None, test: int | None = None, seed: int = 0
    ) -> Splits:
        """A smaller copy (seeded random subsets) for quick runs; ``None`` keeps a part whole, 0 empties it."""
        gen = np.random.default_rng(seed)

        def cut(d: Data, n: int | None) -> Data:
            if n is None or n >= len(d):
                return d
            if n < 0:
                raise ValueError(f"A subsample needs at least 0 samples; got {n}.")
            if n == 0:  # e.g. no public set for an algorithm that uses none
                return d.take([])
            return d.take(np.sort(gen.choice(len(d), size=n, replace=False)))

        return replace(
            self,
            private_train=cut(self.private_train, private),
            public=cut(self.public, public),
            test=cut(self.test, test),
        )

    def describe(self) -> pd.DataFrame:
        """Sizes of the three parts (a table for notebooks)."""
        rows = [("private_train", self.private_train), ("public (unlabelled)", self.public), ("test", self.test)]
        return pd.DataFrame([{"part": p, "samples": len(d), "shape": tuple(d.x.shape[1:])} for p, d in rows]).set_index(
            "part"
        )


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else ``$REFT_DATA``, else ``~/.cache/reft``."""
    return Path(root or os.environ.get("REFT_DATA") or Path.home() / ".cache" / "reft").expanduser()


def register(name: str, loader: Loader, augment: bool = False) -> None:
    """Make a dataset available by name to :func:`load` and :class:`reft.config.RunConfig`.

    ``loader(root)`` returns ``(x_train, y_train, x_test, y_test, classes)``: images as float tensors
    N x C x H x W, already normalised as the loader chooses (e.g. with :func:`normalise`), int64 labels in
    ``0..len(classes)-1``; :func:`load` holds out the public set from the training part. ``augment``: whether
    local training augments by default (``RunConfig.augment=None``). Registering a name again replaces it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A dataset needs a non-empty name; got {name!r}.")
    if not callable(loader):
        raise TypeError(f"register({name!r}, ...) needs a callable loader(root) -> (x, y, x_test, y_test, classes).")
    DATASETS[name], AUGMENT_BY_DEFAULT[name] = loader, bool(augment)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (N x C x H x W) as float32 in [0, 1], standardised per channel by ``mean`` and ``std``."""
    m, sd = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    return (x.float().div_(255) - m) / sd


def _check_raw(name: str, raw: object) -> Raw:
    """The loader's output, or a clear error saying what is wrong with it."""
    if not (isinstance(raw, tuple) and len(raw) == 5):
        raise TypeError(f"The loader of dataset {name!r} must return (x_train, y_train, x_test, y_test, classes).")
    xtr, ytr, xte, yte, classes = raw
    for what, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4):
            raise TypeError(f"Dataset {name!r}: {what} images must be a float tensor N x C x H x W.")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)):
            raise TypeError(f"Dataset {name!r}: {what} labels must be an int64 tensor of one label per image.")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes):
            raise ValueError(f"Dataset {name!r}: {what} labels must lie in 0..{len(classes) - 1} (one per class).")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"Dataset {name!r}: train and test images differ in shape: {xtr.shape[1:]}, {xte.shape[1:]}.")
    return raw


def load(name: str, root: str | os.PathLike | None = None, public_size: int = 10000, seed: int = 0) -> Splits:
    """Load a dataset and split its training set into private (labelled) and public (unlabelled).

    Args:
        name: ``fashion-mnist`` (offline default: 50k private / 10k public / 10k test),
            ``cifar10`` (40k / 10k held out from CIFAR-10's training set / 10k test) or one of :func:`register`.
        root: data folder; default ``$REFT_DATA`` or ``~/.cache/reft``.
        public_size: samples of the training set held out as the unlabelled public set.
        seed: seed of the private/public split (fixed by default, so every run sees the same split).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}.")
    root = data_root(root)
    x, ytr, xte, yte, classes = _check_raw(name, DATASETS[name](root))
    n = len(x)
    if not 0 < public_size < n:
        raise ValueError(f"public_size must be between 1 and {n - 1}; got {public_size}.")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    pub, priv = perm[:public_size], perm[public_size:]
    return Splits(
        name=name,
        private_train=Data(x[priv], ytr[priv]),
        public=Data(x[pub], None),
        test=Data(xte, yte),
        classes=tuple(classes),
    )


def prepare_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Make sure the unpacked Fashion-MNIST IDX files are in ``root/FashionMNIST/raw``.

    Copies (never links) from the Debian package folder if needed. Returns the raw folder.
    """
    raw = data_root(root) / "FashionMNIST" / "raw"
    if all(_size_ok(raw / f, size) for f, size in _FMNIST_FILES.items()):
        return raw
    if all((DEBIAN_FMNIST / f"{f}.gz").is_file() for f in _FMNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for f, size in _FMNIST_FILES.items():
            tmp = raw / f"{f}.tmp"
            with gzip.open(DEBIAN_FMNIST / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if not _size_ok(tmp, size):
                tmp.unlink()
                raise FileNotFoundError(f"{DEBIAN_FMNIST}/{f}.gz unpacks to the wrong size; reinstall the package.")
            tmp.replace(raw / f)
        return raw
    try:
        with _fail_fast():
            torchvision.datasets.FashionMNIST(str(raw.parent.parent), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(raw.parent.parent), train=False, download=True)
    except Exception as e:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {raw} and could not be downloaded ({type(e).__name__}: {e}).\n"
            "Get it one of these ways:\n"
            "  * Debian/Ubuntu, offline: sudo apt-get install dataset-fashion-mnist\n"
            "  * with internet: python -m reft.data fashion-mnist  (torchvision downloads it)\n"
            "  * or copy the four unpacked IDX files into that folder (or set REFT_DATA)."
        ) from None
    return raw


def _size_ok(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _fashion_mnist(root: Path) -> Raw:
    prepare_fashion_mnist(root)
    parts = []
    for train in (True, False):
        ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
        parts.append((ds.data.unsqueeze(1), ds.targets.long(), ds.classes))
    (xtr, ytr, classes), (xte, yte, _) = parts
    counts = torch.bincount(ytr, minlength=10).tolist(), torch.bincount(yte, minlength=10).tolist()
    if len(xtr) != 60000 or len(xte) != 10000 or counts != ([6000] * 10, [1000] * 10):
        raise FileNotFoundError(f"Fashion-MNIST in {root} is incomplete or corrupt; delete it and run again.")
    stats = _STATS["fashion-mnist"]
    return normalise(xtr, *stats), ytr, normalise(xte, *stats), yte, classes


def _cifar10(root: Path) -> Raw:
    parts = []
    for train in (True, False):
        try:
            with _fail_fast():
                ds = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError) as e:  # no network (URLError is an OSError) or files missing
            raise FileNotFoundError(
                f"CIFAR-10 is not in {root / 'cifar-10-batches-py'} and could not be downloaded "
                f"({type(e).__name__}: {e}).\n"
                "CIFAR-10 needs internet once: run `python -m reft.data cifar10` on a machine with internet "
                "(or copy its cifar-10-batches-py folder into the data root / set REFT_DATA). "
                "Offline, use the fashion-mnist dataset."
            ) from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        parts.append((x, torch.tensor(ds.targets, dtype=torch.long), ds.classes))
    (xtr, ytr, classes), (xte, yte, _) = parts
    stats = _STATS["cifar10"]
    return normalise(xtr, *stats), ytr, normalise(xte, *stats), yte, classes


register("fashion-mnist", _fashion_mnist)
register("cifar10", _cifar10, augment=True)


class _fail_fast:
    """Bound any download's socket wait, so an offline machine fails in seconds instead of hanging."""

    def __enter__(self) -> None:
        self._old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)

    def __exit__(self, *exc: object) -> None:
        socket.setdefaulttimeout(self._old)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reft.data [NAME ...]``: prepare (unpack or download) datasets and print their split."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m reft.data", description=main.__doc__.split(": ", 1)[1])
    ap.add_argument("names", nargs="*", default=["fashion-mnist"], metavar="NAME",
                    help=f"datasets to prepare ({', '.join(DATASETS)}; default: fashion-mnist)")  # fmt: skip
    for name in ap.parse_args(argv).names:
        try:
            splits = load(name)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name} ready in {data_root()}:")
        print(splits.describe().to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
