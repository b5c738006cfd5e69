"""Shared fixtures: a small real Fashion-MNIST subset, and outputs kept out of the repository."""

from __future__ import annotations

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
