from __future__ import annotations

import pandas as pd
import pytest
import torch

from reft import comm, data, engine, experiments, report, strategies, tiers
from reft.config import RunConfig

# 4 clients x 100 samples, a tiny CNN, 2 rounds: a whole run takes about a second.
TINY = dict(
    private_size=400, public_size=200, test_size=200, n_clients=4, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, max_ratio=0.5, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def splits(fmnist: data.Splits, one_thread: None) -> data.Splits:
    return fmnist


def _run(splits: data.Splits, **kw) -> engine.RunResult:
    return engine.run(RunConfig(**{**TINY, **kw}), splits)


def _spy_received(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload that reached the other side (a model is only ever received by decoding it)."""
    received: list[bytes] = []
    real = comm.decode

    def spy(payload: bytes, **kw):
        received.append(payload)
        return real(payload, **kw)

    monkeypatch.setattr(comm, "decode", spy)
    return received


def test_fedavg_ledger_counts_every_encoded_byte_and_broadcasts_every_round(splits, monkeypatch) -> None:
    sent = _spy_received(monkeypatch)
    res = _run(splits, algorithm="fedavg")
    led = res.ledger
    assert led.total() == sum(len(p) for p in sent)  # every byte received, and nothing else
    full = len(comm.encode(res.strategy.server_model))
    per_round = led.per_round()
    assert per_round["down"].tolist() == [4 * full] * 2  # clients x encoded full model, every round
    assert per_round["up"].tolist() == [4 * full] * 2
    h = res.history
    assert h["bytes_down"].tolist() == per_round["down"].tolist()
    assert h["cum_bytes"].iloc[-1] == led.total()


def test_reft_sends_pruned_models_once_and_refresh_sends_again(splits, monkeypatch) -> None:
    sent = _spy_received(monkeypatch)
    res = _run(splits, algorithm="reft")
    led = res.ledger.frame()
    assert res.ledger.total() == sum(len(p) for p in sent)
    down = led[led.direction == "down"]
    assert down["round"].tolist() == [1] * 4 and sorted(down["client"]) == [0, 1, 2, 3]
    # each client got exactly the model its tier's ratio asks for: weaker tiers, smaller models
    ct = res.clients.set_index("client")
    dense_bytes = len(comm.encode(res.strategy.server_model))
    assert down.set_index("client")["bytes"].to_dict() == ct["model_bytes"].to_dict()
    assert ct["model_bytes"].max() == dense_bytes and ct["model_bytes"].min() < dense_bytes / 2
    assert res.history["bytes_down"].tolist() == [down["bytes"].sum(), 0]
    assert {"ensemble_acc", "distill_epochs"} <= set(res.history.columns)

    refreshed = _run(splits, algorithm="reft", refresh_every=1).ledger.per_round()
    assert (refreshed["down"] > 0).all()


def test_weakest_baseline_runs_the_smallest_model_everywhere(splits) -> None:
    res = _run(splits, algorithm="fedavg-weakest")
    assert res.clients["widths"].map(tuple).nunique() == 1
    reft_clients = _run(splits, algorithm="reft", rounds=1).clients
    assert res.clients["params"].iloc[0] == reft_clients["params"].min()


@pytest.mark.parametrize("algorithm", sorted(strategies.ALGORITHMS))
def test_dropout_completes_and_ledger_counts_only_participants(splits, algorithm) -> None:
    res = _run(splits, algorithm=algorithm, dropout=0.3)  # 30% of 4 clients: 1 drops each round
    h, led = res.history, res.ledger.frame()
    assert len(h) == 2 and (h["participants"] == 3).all()
    for rnd in (1, 2):
        active = set(engine.participants(res.config, rnd))
        ups = led[(led["round"] == rnd) & (led.direction == "up")]
        assert sorted(ups["client"]) == sorted(active)  # one upload per participant, none from dropped clients
        assert set(led.loc[led["round"] == rnd, "client"]) <= active
    assert h["server_acc"].notna().all()


def test_same_seed_same_table_other_seed_differs(splits) -> None:
    a, b = _run(splits, algorithm="reft", dropout=0.3), _run(splits, algorithm="reft", dropout=0.3)
    c = _run(splits, algorithm="reft", dropout=0.3, seed=1)
    drop = list(engine.TIMING_COLUMNS)
    pd.testing.assert_frame_equal(a.history.drop(columns=drop), b.history.drop(columns=drop))
    pd.testing.assert_frame_equal(a.ledger.frame(), b.ledger.frame())
    table = [pd.DataFrame([experiments.summary(r, 0.5)]).drop(columns="overhead_pct") for r in (a, b)]
    pd.testing.assert_frame_equal(*table)
    sa, sb = a.strategy.server_model.state_dict(), b.strategy.server_model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not a.history.drop(columns=drop).equals(c.history.drop(columns=drop))


def test_history_is_saved_after_every_round(splits) -> None:
    res = _run(splits, algorithm="fedavg", save_as="test_fed_history", profile="test")
    saved = pd.read_csv(report.results_dir("test") / "test_fed_history.csv")
    assert len(saved) == 2
    assert saved["cum_bytes"].tolist() == res.history["cum_bytes"].tolist()
    assert 0 <= res.overhead_pct < 100


def test_bad_input_gives_clear_errors(splits) -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'fedprox'; valid algorithms: reft, fedavg, fedavg-weakest"):
        RunConfig(algorithm="fedprox")
    with pytest.raises(ValueError, match="rounds must be >= 1; got 0"):
        RunConfig(rounds=0)
    with pytest.raises(ValueError, match="temperature must be > 0; got 0"):
        RunConfig(temperature=0)
    with pytest.raises(ValueError, match="public_size=0 leaves no public set, but reft uses one"):
        RunConfig(public_size=0)
    with pytest.raises(ValueError, match="dirichlet' needs alpha > 0"):
        RunConfig(partition="dirichlet")
    with pytest.raises(ValueError, match=r"More clients \(50\) than private samples \(20\)"):
        engine.run(RunConfig(**{**TINY, "private_size": 20, "n_clients": 50}), splits)
    empty_public = data.Splits(
        "x", splits.private_train, data.Data(splits.public.x[:0], None), splits.test, splits.classes
    )
    with pytest.raises(ValueError, match="public set is empty"):
        engine.run(RunConfig(**TINY), empty_public)
    # several mistakes at once are reported together
    with pytest.raises(ValueError, match="rounds must be >= 1.*dropout must be in"):
        RunConfig(rounds=0, dropout=1.5)


def test_average_is_the_weighted_mean() -> None:
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(4)}
    out = strategies.average([a, b], [3, 1])
    assert torch.allclose(out["w"], torch.tensor([1.0, 3.0]))
    assert out["n"].dtype == torch.int64 and out["n"].item() == 2


def test_budget_and_time_to_accuracy() -> None:
    h = pd.DataFrame({"server_acc": [0.3, 0.6, 0.5], "cum_bytes": [1e6, 2e6, 3e6], "cum_sim_s": [1.0, 2.0, 3.0]})
    assert experiments.time_to_accuracy(h, 0.55) == 2.0
    assert pd.isna(experiments.time_to_accuracy(h, 0.9))
    table = experiments.budget_table({"m": h}, [0.5, 1.0, 2.5, 10])
    assert table["m"].tolist()[1:] == [0.3, 0.6, 0.5] and pd.isna(table["m"].iloc[0])  # the last round, not the best
    # default budgets: fractions of the reference method's total, the last one exactly its total
    rel = experiments.budget_table({"fedavg": h, "m": h.assign(cum_bytes=h["cum_bytes"] / 10)}, fractions=(0.1, 1.0))
    assert rel.index.tolist() == [0.3, 3.0] and rel["fedavg"].tolist()[1] == 0.5 and rel["m"].tolist() == [0.5, 0.5]


def test_client_table_says_which_tiers_cannot_afford_the_model(splits) -> None:
    res = _run(splits, algorithm="fedavg", rounds=1, deadline_s=0.01)
    ct = res.clients.set_index("tier")
    assert ct["fits_memory"].all()  # a tiny CNN fits every tier's memory
    # the same model takes longer on a weaker tier; only tiers within 10 ms meet the deadline
    assert (ct["meets_deadline"] == (ct["round_time_s"] <= 0.01)).all()
    strongest_first = [t for t in tiers.load_tiers().index if t in ct.index]
    times = ct.loc[strongest_first, "round_time_s"].tolist()
    assert times == sorted(times) and not ct["meets_deadline"].all() and ct["meets_deadline"].any()


@pytest.mark.parametrize("algorithm", ["reft", "fedavg"])
def test_last_round_is_measured_on_the_whole_test_part(splits, algorithm, monkeypatch) -> None:
    from reft import distill

    seen: list[int] = []  # sizes of the sets the ensemble is run on
    real = distill.teacher_outputs
    monkeypatch.setattr(distill, "teacher_outputs", lambda t, x, *a, **k: seen.append(len(x)) or real(t, x, *a, **k))
    res = _run(splits, algorithm=algorithm)
    h = res.history
    assert h["test_n"].tolist() == [200, len(splits.test.y)] and len(splits.test.y) == 10_000
    full = (res.strategy.server_model.eval()(splits.test.x).argmax(1) == splits.test.y).float().mean().item()
    assert h["server_acc"].iloc[-1] == pytest.approx(full, abs=1e-6)
    if algorithm == "reft":  # the ensemble's accuracy: on the 200-image subset in round 1, on all in round 2
        assert 200 in seen and 10_000 in seen and seen.index(10_000) > seen.index(200)
    off = _run(splits, algorithm=algorithm, final_test=False).history
    assert off["test_n"].tolist() == [200, 200]
    pd.testing.assert_series_equal(off["server_acc"].iloc[:1], h["server_acc"].iloc[:1])
    # the subset is measured in the last round too; the robustness column is the mean of the last five
    assert h["subset_acc"].tolist() == pytest.approx(off["server_acc"].tolist(), abs=1e-9)
    assert experiments.summary(res)["last5_subset_acc"] == pytest.approx(off["server_acc"].mean())


def test_seeds_are_paired_across_methods_and_change_everything(splits) -> None:
    base = RunConfig(**{**TINY, "rounds": 1, "distill_epochs": 1})
    cmp = experiments.compare(base, None, ["fedavg", "reft"], ["iid"], seeds=[0, 1])
    assert cmp.table[["method", "seed"]].values.tolist() == [["fedavg", 0], ["reft", 0], ["fedavg", 1], ["reft", 1]]
    c = cmp.clients
    tiers_of = {(m, s): c[(c.method == m) & (c.seed == s)]["tier"].tolist() for m in ("fedavg", "reft") for s in (0, 1)}
    samples_of = {
        (m, s): c[(c.method == m) & (c.seed == s)]["samples"].tolist() for m in ("fedavg", "reft") for s in (0, 1)
    }
    assert tiers_of["fedavg", 0] == tiers_of["reft", 0] and samples_of["fedavg", 0] == samples_of["reft", 0]
    assert tiers_of["fedavg", 0] != tiers_of["fedavg", 1] or samples_of["fedavg", 0] != samples_of["fedavg", 1]
    one = engine.run(base.replace(algorithm="fedavg", seed=1))  # the same run alone: same numbers
    assert one.history["server_acc"].tolist() == cmp.results[2].history["server_acc"].tolist()
    with pytest.raises(ValueError, match="splits=None"):
        experiments.compare(base, splits, ["fedavg"], ["iid"], seeds=[0, 1])


@pytest.mark.parametrize("algorithm", ["reft", "fedavg"])
def test_diagnostics_every_k_rounds_leave_the_training_alone(splits, algorithm) -> None:
    every = _run(splits, algorithm=algorithm, rounds=3, eval_clients=True).history
    last = _run(splits, algorithm=algorithm, rounds=3, eval_clients=True, diagnostics_every=0).history
    assert last["server_acc"].tolist() == every["server_acc"].tolist()
    assert last["client_acc_mean"].isna().tolist() == [True, True, False]
    assert last["client_acc_mean"].iloc[-1] == every["client_acc_mean"].iloc[-1]
    if algorithm == "reft":
        assert last["ensemble_acc"].isna().tolist() == [True, True, False]
        assert last["ensemble_acc"].iloc[-1] == every["ensemble_acc"].iloc[-1]


def test_worker_processes_give_the_numbers_of_one_process(splits) -> None:
    base = RunConfig(**{**TINY, "rounds": 1, "distill_epochs": 1, "progress": False})
    methods = ["fedavg", "reft", "heterofl"]
    here = experiments.compare(base, None, methods, ["iid"], seeds=[0, 1])  # one thread (the module's)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers get 2 // 2 = 1 thread each
    try:
        there = experiments.compare(base, None, methods, ["iid"], seeds=[0, 1], workers=2)
    finally:
        torch.set_num_threads(threads)
    cols = ["method", "partition", "seed", "final_acc", "mb_up", "mb_down"]
    pd.testing.assert_frame_equal(here.table[cols], there.table[cols])  # same rows, same order, same numbers
    assert here.history["server_acc"].tolist() == there.history["server_acc"].tolist()
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        experiments.compare(base, None, ["fedavg"], ["iid"], seeds=[0], workers=0)


def test_lr_milestones_decay_the_local_lr_from_the_round_after_each_milestone(splits, monkeypatch) -> None:
    cfg = RunConfig(lr=0.1, lr_milestones=(2, 4), lr_gamma=0.5)
    assert [cfg.lr_at(r) for r in range(1, 6)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    seen: list[float] = []
    real = engine.train.fit
    monkeypatch.setattr(engine.train, "fit", lambda *a, **kw: seen.append(kw["lr"]) or real(*a, **kw))
    decayed = _run(splits, algorithm="fedavg", lr_milestones=(1,), rounds=2)
    assert seen == pytest.approx([0.05] * 4 + [0.005] * 4)  # 4 clients: round 1 at lr, round 2 at lr * 0.1
    const = _run(splits, algorithm="fedavg", rounds=2)
    drop = list(engine.TIMING_COLUMNS)
    a, b = (r.history.drop(columns=drop) for r in (decayed, const))
    pd.testing.assert_frame_equal(a.iloc[:1], b.iloc[:1])  # same until the milestone
    assert not a.iloc[1:].equals(b.iloc[1:])
    with pytest.raises(ValueError, match=r"lr_milestones must be rounds >= 1; got \[0\]"):
        RunConfig(lr_milestones=[0])
    with pytest.raises(ValueError, match=r"lr_gamma must be in \(0, 1\]; got 0"):
        RunConfig(lr_gamma=0)


@pytest.mark.parametrize("algorithm", ["reft", "feddf"])
def test_distill_lr_decay_anneals_the_server_distillation_with_the_local_lr(splits, monkeypatch, algorithm) -> None:
    from reft import distill

    seen: list[float] = []
    real = distill.distill
    monkeypatch.setattr(distill, "distill", lambda *a, **kw: seen.append(kw["lr"]) or real(*a, **kw))
    _run(splits, algorithm=algorithm, lr_milestones=(1,), distill_lr_decay=True)
    per_round = len(seen) // 2  # FedDF distils every group model
    assert seen == pytest.approx([1e-3] * per_round + [1e-4] * per_round)
    seen.clear()
    _run(splits, algorithm=algorithm, lr_milestones=(1,))  # off (default): the server keeps its lr
    assert seen == pytest.approx([1e-3] * len(seen)) and seen
