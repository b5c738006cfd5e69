"""Shared fixtures: a small real Fashion-MNIST subset, a self-made CIFAR-format folder, and outputs kept
out of the repository."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from reft import data, pruning


@pytest.fixture(autouse=True, scope="session")
def _outputs_outside_repo(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("REFT_OUTPUT", str(tmp_path_factory.mktemp("reft_output")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def fmnist() -> data.Splits:
    """Real Fashion-MNIST (the full split), loaded once per test session."""
    return data.load("fashion-mnist")


@pytest.fixture(scope="session")
def small(fmnist: data.Splits) -> data.Splits:
    """A seeded 2k/1k/1k subsample for quick training tests."""
    return fmnist.subsample(private=2000, public=1000, test=1000, seed=0)


@pytest.fixture(scope="module")
def one_thread() -> None:
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU the hand-offs cost up to
    10x: one torch thread for the module's tests (restored afterwards)."""
    with pruning.single_thread():
        yield


def _write_tiny_cifar(root: Path, n_train_per_batch: int = 20, n_test: int = 30) -> None:
    """A CIFAR-10 folder in torchvision's format (five pickled training batches, a test batch, the meta
    file) with random images: the real reader's path, not the real data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train_per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


@pytest.fixture
def write_tiny_cifar() -> Callable[..., None]:
    """``write_tiny_cifar(root, n_train_per_batch=20, n_test=30)`` writes a self-made CIFAR-10 folder."""
    return _write_tiny_cifar


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``), everything that starts Flower's
    processes (the ``flower`` tests and notebook 05) runs on one worker, one at a time, and so do the browser
    tests: the rest spreads over both workers."""
    for item in items:
        if item.get_closest_marker("flower") or item.path.name == "05_flower.ipynb":
            item.add_marker(pytest.mark.xdist_group("flower"))
        elif item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))
