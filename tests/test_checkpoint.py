"""Round checkpoints: a run killed (SIGKILL) in the middle of a round resumes to exactly the results of
an uninterrupted run; damaged checkpoints fall back to the previous one; another run's checkpoints are
refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from reft import checkpoint, data, engine
from reft.config import RunConfig

TINY = dict(
    private_size=600, public_size=200, test_size=300, n_clients=5, rounds=4, widths=[4, 8, 16, 16],
    distill_epochs=2, max_ratio=0.5, progress=False, eval_clients=False, dropout=0.2,
)  # fmt: skip
SUBSAMPLE = dict(private=3000, public=1000, test=1000, seed=0)

# Runs in a fresh interpreter: the same data and config; with KILL_AT set, the process kills itself with
# SIGKILL in that round, after the clients trained and before the server step (the middle of a round).
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json
    import torch
    from reft import data, engine, strategies
    from reft.config import RunConfig
    torch.set_num_threads(1)
    cfg = RunConfig(**json.loads(sys.argv[1]))
    kill_at = int(os.environ.get("KILL_AT", "0"))
    strategy = strategies.create(cfg.algorithm)
    aggregate = strategy.aggregate
    def killing(fed, rnd, uploads):
        if rnd == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return aggregate(fed, rnd, uploads)
    strategy.aggregate = killing
    splits = data.load("fashion-mnist").subsample(**json.loads(sys.argv[2]))
    engine.run(cfg, splits, strategy=strategy)
    """
)


@pytest.fixture(scope="module")
def splits(fmnist: data.Splits, one_thread: None) -> data.Splits:
    return fmnist.subsample(**SUBSAMPLE)


def _subprocess(cfg: RunConfig, kill_at: int = 0) -> subprocess.CompletedProcess:
    import json
    from dataclasses import asdict

    env = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", SCRIPT, json.dumps(asdict(cfg), default=list), json.dumps(SUBSAMPLE)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _same(a: engine.RunResult, b: engine.RunResult) -> None:
    drop = list(engine.TIMING_COLUMNS)
    pd.testing.assert_frame_equal(a.history.drop(columns=drop), b.history.drop(columns=drop))
    assert a.ledger.rows == b.ledger.rows
    for (k, x), (_, y) in zip(a.strategy.server_model.state_dict().items(),
                              b.strategy.server_model.state_dict().items(), strict=True):  # fmt: skip
        assert torch.equal(x, y), k
    assert sorted(a.client_models) == sorted(b.client_models)


@pytest.mark.parametrize("algorithm", ["reft", "feddf", "heterofl", "fedavg"])
def test_killed_in_a_round_then_resumed_gives_the_uninterrupted_results(splits, algorithm) -> None:
    cfg = RunConfig(**TINY, algorithm=algorithm, save_as=f"ckpt_{algorithm}", refresh_every=2)
    killed = _subprocess(cfg, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = checkpoint.directory(cfg)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [f"round-000{r}.safetensors" for r in (1, 2)]

    resumed = engine.run(cfg, splits, resume=True)
    whole = engine.run(cfg.replace(save_as=None), splits)
    _same(resumed, whole)
    assert len(resumed.history) == 4 and [p.name for p in folder.glob("*.safetensors")] == ["round-0004.safetensors"]

    again = engine.run(cfg, splits, resume=True)  # a finished run: read back, nothing trained
    _same(again, whole)
    assert again.history["wall_s"].tolist() == resumed.history["wall_s"].tolist()


def test_a_damaged_checkpoint_falls_back_to_the_one_before(splits) -> None:
    cfg = RunConfig(**{**TINY, "rounds": 3}, algorithm="reft", save_as="ckpt_damaged")
    whole = engine.run(cfg.replace(save_as=None), splits)
    folder = checkpoint.directory(cfg)

    # killed in round 3: rounds 1 and 2 are on disk; the newest is then cut in half (a full disk, say)
    assert _subprocess(cfg, kill_at=3).returncode == -signal.SIGKILL
    newest = folder / "round-0002.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="round-0002.safetensors is damaged"):
        assert checkpoint.latest(cfg, checkpoint.fingerprint(cfg, engine.prepare(cfg, splits))).round == 1
    with pytest.warns(UserWarning, match="damaged"):
        resumed = engine.run(cfg, splits, resume=True)
    _same(resumed, whole)

    # nothing usable: a warning per file, and the run starts again from round 1
    assert _subprocess(cfg, kill_at=3).returncode == -signal.SIGKILL
    for path in folder.glob("*.safetensors"):
        path.write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning, match="damaged"):
        again = engine.run(cfg, splits, resume=True)
    _same(again, whole)


def test_checkpoints_of_another_run_are_refused(splits) -> None:
    # final_test off: an extended run keeps its old last row, which final_test measured on the whole test part
    cfg = RunConfig(**{**TINY, "rounds": 1}, algorithm="fedavg", save_as="ckpt_other", final_test=False)
    engine.run(cfg, splits)
    with pytest.raises(checkpoint.CheckpointError, match=r"different run \(lr: 0.05 there, 0.1 here"):
        engine.run(cfg.replace(lr=0.1), splits, resume=True)
    with pytest.raises(checkpoint.CheckpointError, match="same config, different data"):
        engine.run(cfg, splits.subsample(private=2000, public=1000, test=1000, seed=1), resume=True)
    more = engine.run(cfg.replace(rounds=2), splits, resume=True)  # more rounds: the same run, extended
    _same(more, engine.run(cfg.replace(rounds=2, save_as=None), splits))


def test_a_finished_run_comes_back_from_its_record_in_a_fresh_clone(splits, monkeypatch) -> None:
    """Checkpoints stay out of git; the committed record returns a finished run's numbers without training
    (nor building its Federation: no models, no tiers)."""
    import shutil

    cfg = RunConfig(**{**TINY, "rounds": 2}, algorithm="reft", save_as="ckpt_record")
    first = engine.run(cfg, splits)
    shutil.rmtree(checkpoint.directory(cfg))  # what a fresh clone has: the record, no checkpoints
    with monkeypatch.context() as m:
        m.setattr(engine, "Federation", lambda *a, **k: pytest.fail("a restored run built its Federation"))
        back = engine.run(cfg, splits, resume=True)
    assert back.restored and not first.restored and back.client_models == {}
    pd.testing.assert_frame_equal(back.history, first.history)  # wall times too: nothing ran again
    pd.testing.assert_frame_equal(back.clients, first.clients)
    assert back.ledger.rows == first.ledger.rows and back.strategy.name == first.strategy.name
    with pytest.raises(ValueError, match="keeps no models"):
        back.client_accuracy(splits.test)

    with pytest.raises(checkpoint.CheckpointError, match=r"record .* different run \(lr: 0.05 there, 0.1 here"):
        engine.run(cfg.replace(lr=0.1), splits, resume=True)
    with pytest.warns(UserWarning, match="ran 2 rounds, not 3"):  # no models to extend it from: it runs again
        longer = engine.run(cfg.replace(rounds=3), splits, resume=True)
    assert not longer.restored and len(longer.history) == 3
