"""Progress in batch (REFT_PROGRESS=lines): a line per round of a run and per finished run of a sweep."""

from __future__ import annotations

import pytest

from reft import data, experiments, progress
from reft.config import RunConfig


def test_lines_print_every_step_of_a_kept_bar_and_rarely_a_transient_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("REFT_PROGRESS", "lines")
    bar = progress.tqdm(range(3), desc="rounds")
    for i in bar:
        bar.set_postfix(acc=f"{i / 10:.1f}")
    with progress.tqdm(total=1000, desc="batches", leave=False) as inner:
        for _ in range(1000):
            inner.update()
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" [")[0] for line in out] == ["rounds: 1/3", "rounds: 2/3", "rounds: 3/3"]
    assert out[-1].endswith("acc=0.2")
    monkeypatch.delenv("REFT_PROGRESS")
    assert not isinstance(progress.tqdm(range(1), disable=True), progress.Lines)


def test_a_sweep_prints_its_rounds_and_runs(
    fmnist: data.Splits, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("REFT_PROGRESS", "lines")
    base = RunConfig(algorithm="fedavg", rounds=2, n_clients=2, private_size=200, public_size=0, test_size=100,
                     final_test=False, eval_clients=False)  # fmt: skip
    experiments.sweep(base, fmnist, {"a": {}, "b": {"lr": 0.01}})
    out = capsys.readouterr().out
    assert out.count("fedavg rounds: 2/2 [") == 2
    assert "runs: 1/2 [" in out and "runs: 2/2 [" in out and "last: fedavg iid seed 0, acc 0." in out
