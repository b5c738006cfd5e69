"""The package's shape: no import circle, modules of readable length, and an algorithm added from outside
the package runs through the same engine and experiments as the built-in ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from reft import data, experiments, strategies
from reft.config import RunConfig
from reft.federation import Client, Federation

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts" / "check_layout.py")
check_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layout)


def test_no_import_circle_among_reft_modules() -> None:
    g = check_layout.graph()
    assert "reft.engine" in g and "reft.strategies.reft" in g["reft.strategies"]
    assert check_layout.cycles(g) == []


def test_no_module_is_too_long() -> None:
    assert check_layout.long_modules() == {}


def test_the_checker_finds_a_circle_and_ignores_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "reft"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from reft import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from reft import c\n")
    (pkg / "c.py").write_text("import reft.a\n")
    assert check_layout.cycles(check_layout.graph(pkg)) == []
    (pkg / "b.py").write_text("from reft.c import something\n")
    assert check_layout.cycles(check_layout.graph(pkg)) == [["reft.a", "reft.b", "reft.c"]]
    (pkg / "c.py").write_text("x = 1\n" * 500)
    assert check_layout.long_modules(pkg, limit=420) == {"reft.c": 500}


class CoordinateMedian(strategies.Strategy):
    """FedAvg with the coordinate-wise median of the uploads (Yin et al., 2018): a user's own algorithm."""

    name = "median"

    def setup(self, fed: Federation) -> None:
        self.server_model = fed.dense_model()
        self.last_states: list[dict[str, torch.Tensor]] = []

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        return self.server_model

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        self.last_states = [uploads[i].state_dict() for i in sorted(uploads)]
        med = {
            k: torch.stack([s[k].float() for s in self.last_states]).median(0).values.to(v.dtype)
            for k, v in self.server_model.state_dict().items()
        }
        self.server_model.load_state_dict(med)
        return {"uploads": float(len(uploads))}


@pytest.fixture
def registered():
    strategies.register("median", CoordinateMedian)
    yield
    strategies.ALGORITHMS.pop("median", None)


def test_a_strategy_registered_from_outside_runs_through_compare(fmnist: data.Splits, one_thread, registered) -> None:
    base = RunConfig(private_size=300, public_size=100, test_size=100, n_clients=3, rounds=2, widths=[4, 8, 16, 16],
                     progress=False)  # fmt: skip
    cmp = experiments.compare(base, fmnist, methods=("median", "fedavg"), partitions=("iid",))
    assert list(cmp.table["method"]) == ["median", "fedavg"]
    assert (cmp.history.loc[cmp.history["method"] == "median", "uploads"] == 3).all()
    med, fedavg = cmp.results
    assert med.ledger.total("down") == fedavg.ledger.total("down")  # same wire, same model size
    key = next(k for k, v in med.strategy.last_states[0].items() if v.is_floating_point())  # the first weight
    want = torch.stack([s[key] for s in med.strategy.last_states]).median(0).values
    assert torch.equal(med.strategy.server_model.state_dict()[key], want)
    assert not torch.equal(want, torch.stack([s[key] for s in med.strategy.last_states]).mean(0))


def test_registry_rejects_what_is_not_a_strategy(registered) -> None:
    assert RunConfig(algorithm="median").algorithm == "median"
    with pytest.raises(ValueError, match="unknown algorithm 'nope'.*median"):
        RunConfig(algorithm="nope")
    strategies.register("broken", lambda: object())
    try:
        with pytest.raises(TypeError, match="returned object, not a Strategy"):
            strategies.create("broken")
    finally:
        strategies.ALGORITHMS.pop("broken")
    with pytest.raises(TypeError, match="needs a callable"):
        strategies.register("x", 3)
