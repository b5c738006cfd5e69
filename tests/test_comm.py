from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import reft
from reft import comm, models

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like(name: str, widths: list[int] | None, seed: int) -> models.ReftModel:
    """A model with non-default weights and BN statistics (so a lost buffer would show)."""
    torch.manual_seed(seed)
    m = models.build(name, widths=widths)
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 1, 28, 28))  # updates BN running stats
    return m.eval()


def test_ledger_totals_equal_sum_of_encoded_bytes_and_decoding_is_exact() -> None:
    ledger = comm.Ledger()
    sent: list[int] = []
    x = torch.randn(4, 1, 28, 28)
    cases = [("cnn", None), ("cnn", [5, 9, 17, 11]), ("resnet18", [w // 8 for w in models.default_widths("resnet18")])]
    for rnd, (name, widths) in enumerate(cases):
        m = _trained_like(name, widths, seed=rnd)
        for client in range(3):
            down = ledger.record(rnd, client, "down", comm.encode(m))
            back = comm.decode(down).eval()
            with torch.no_grad():
                assert torch.equal(back(x), m(x))
            up = ledger.record(rnd, client, "up", comm.encode(back))
            assert up == down  # the same weights encode to the same bytes
            sent += [len(down), len(up)]
    assert ledger.total() == sum(sent)
    assert ledger.total("up") == ledger.total("down") == sum(sent) // 2
    per_round = ledger.per_round()
    assert per_round["up"].tolist() == per_round["down"].tolist()
    assert per_round.to_numpy().sum() == sum(sent)
    assert len(ledger.frame()) == len(sent)


def test_bad_payloads_and_directions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="Not a reft model payload"):
        comm.decode(b"abc")
    with pytest.raises(ValueError, match="no reft spec"):
        comm.decode(b"\x10\x00\x00\x00\x00\x00\x00\x00{}              ")
    with pytest.raises(ValueError, match="'up' or 'down'"):
        comm.Ledger().record(0, 0, "sideways", b"")
    with pytest.raises(TypeError, match="needs a .spec"):
        comm.encode(torch.nn.Linear(2, 2))


def test_no_pickle_on_received_data() -> None:
    """Nothing in the package unpickles: no pickle module, no torch.load (which unpickles by default)."""
    pkg = Path(reft.__file__).parent
    for src in pkg.glob("*.py"):
        text = src.read_text()
        assert not re.search(r"\bimport pickle|\bpickle\.|torch\.load\(", text), src.name
