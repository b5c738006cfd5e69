"""Tests for reft.tiers: the tier table, client assignment, round time and the pruning policies."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from reft import costs, models, tiers
from reft.config import RunConfig

X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return tiers.load_tiers()


@pytest.fixture(scope="module")
def cnn() -> models.ReftModel:
    return models.build("cnn")


def _write(tmp_path, df: pd.DataFrame):
    path = tmp_path / "tiers.csv"
    df.to_csv(path, index=False)
    return path


def test_default_table(table):
    assert len(table) >= 5
    assert table.index.name == "tier"
    for col in (*tiers.REQUIRED_COLUMNS, "sustained_flops"):
        assert col in table.columns
    assert (table["sustained_flops"] == table["peak_flops"] * table["efficiency"]).all()
    assert table["sustained_flops"].is_monotonic_decreasing  # strongest first
    assert table["source"].str.contains("http").all()  # every row cites where its figures come from
    devices = " ".join(table["device"])
    assert "A100" in devices and "Raspberry Pi 4" in devices
    assert table.loc["datacenter_gpu", "sustained_flops"] > 100 * table.loc["raspberry_pi_4", "sustained_flops"]


def test_user_file_round_trip(tmp_path, table):
    df = table.reset_index().iloc[[3, 0]]  # out of order on purpose
    loaded = tiers.load_tiers(_write(tmp_path, df))
    assert list(loaded.index) == [table.index[0], table.index[3]]  # re-sorted, strongest first


def test_missing_column_names_file_and_column(tmp_path, table):
    path = _write(tmp_path, table.reset_index().drop(columns=["uplink_mbps"]))
    with pytest.raises(ValueError, match=r"tiers\.csv.*uplink_mbps"):
        tiers.load_tiers(path)


@pytest.mark.parametrize("col, value", [("downlink_mbps", -5.0), ("peak_flops", 0.0), ("efficiency", float("nan"))])
def test_non_positive_values_rejected(tmp_path, table, col, value):
    df = table.reset_index()
    df.loc[1, col] = value
    with pytest.raises(ValueError, match=rf"{col}.*{df.loc[1, 'tier']}"):
        tiers.load_tiers(_write(tmp_path, df))


def test_bad_files(tmp_path, table):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        tiers.load_tiers(tmp_path / "nope.csv")
    df = table.reset_index()
    df.loc[1, "efficiency"] = 1.5
    with pytest.raises(ValueError, match="efficiency"):
        tiers.load_tiers(_write(tmp_path, df))
    df = table.reset_index()
    df.loc[1, "tier"] = df.loc[0, "tier"]
    with pytest.raises(ValueError, match="unique"):
        tiers.load_tiers(_write(tmp_path, df))


def test_assign_mapping_largest_remainder_and_seed(table):
    mix = {"datacenter_gpu": 1, "jetson_nano": 1, "raspberry_pi_4": 1}
    a = tiers.assign(10, mix, table, seed=0)
    assert len(a) == 10
    assert pd.Series(a).value_counts().to_dict() == {"datacenter_gpu": 4, "jetson_nano": 3, "raspberry_pi_4": 3}
    assert a == tiers.assign(10, mix, table, seed=0)
    assert a != tiers.assign(10, mix, table, seed=1)
    # 0.7 * 3 = 2.1, 0.3 * 3 = 0.9: floors 2 + 0, the one left goes to the larger remainder
    assert sorted(tiers.assign(3, {"phone": 0.7, "laptop": 0.3}, table)) == ["laptop", "phone", "phone"]


def test_assign_sequence_cycles(table):
    assert tiers.assign(5, ["phone", "laptop"], table) == ["phone", "laptop", "phone", "laptop", "phone"]


def test_assign_errors(table):
    with pytest.raises(ValueError, match="Valid tiers: datacenter_gpu"):
        tiers.assign(4, {"tpu_pod": 1}, table)
    with pytest.raises(ValueError, match="Unknown tier 'x'"):
        tiers.assign(4, ["phone", "x"], table)
    with pytest.raises(ValueError, match="n_clients"):
        tiers.assign(0, ["phone"], table)
    with pytest.raises(ValueError, match="positive sum"):
        tiers.assign(3, {"phone": 0}, table)


def test_run_config_checks_the_tier_mix_and_table_at_construction(tmp_path):
    """A misspelled tier or a missing tier table fails when the config is made, not when a run starts."""
    with pytest.raises(ValueError, match=r"Invalid RunConfig: tier_mix: Unknown tier 'mixd'\. Valid tiers: datacenter"):
        RunConfig(tier_mix="mixd")
    with pytest.raises(ValueError, match="tier_mix: Unknown tier 'tpu'"):
        RunConfig(tier_mix={"phone": 1, "tpu": 2})
    with pytest.raises(ValueError, match="tiers_path: Tier table .*missing.csv not found"):
        RunConfig(tiers_path=str(tmp_path / "missing.csv"))
    assert RunConfig(tier_mix=["phone", "laptop"]).tier_mix == ["phone", "laptop"]


def test_round_time_by_hand(table):
    row = table.loc["raspberry_pi_4"]
    got = tiers.round_time(table, "raspberry_pi_4", train_flops=1e12, bytes_down=1_000_000, bytes_up=500_000)
    want = 1e12 / row["sustained_flops"] + 8e6 / (row["downlink_mbps"] * 1e6) + 4e6 / (row["uplink_mbps"] * 1e6)
    assert got == pytest.approx(want)
    with pytest.raises(ValueError, match="Valid tiers"):
        tiers.round_time(table, "mainframe", 1.0, 1, 1)


def test_proportional_policy(table, cnn):
    res = tiers.choose_ratios("proportional", table, cnn, X, samples=1000, epochs=1, max_ratio=0.8)
    ratios = [res[t].ratio for t in table.index]
    assert ratios[0] == 0.0  # the strongest tier keeps the dense model
    assert ratios == sorted(ratios) and max(ratios) <= 0.8
    r = res["jetson_nano"]
    assert r.round_time_s == pytest.approx(r.compute_s + r.download_s + r.upload_s)
    assert r.train_flops == pytest.approx(3 * r.forward_flops * 1000)
    assert r.fits_deadline is None
    assert set(tiers.policy_frame(res).index) == set(table.index)


def test_proportional_policy_varies_with_every_compute_class_and_follows_the_strongest_present(table, cnn):
    res = tiers.choose_ratios("proportional", table, cnn, X, samples=100, epochs=1, max_ratio=RunConfig().max_ratio)
    widths = {tuple(r.widths) for r in res.values()}
    assert len(widths) >= table["sustained_flops"].nunique() == len(table)  # default max_ratio: one width per tier
    for tier, r in res.items():  # FLOPs kept ~ compute share (up to the 0.01 grid and channel rounding)
        share = table.loc[tier, "sustained_flops"] / table["sustained_flops"].max()
        assert r.ratio == pytest.approx(min(RunConfig().max_ratio, round(1 - share**0.5, 2)))
    weak = table.loc[["laptop", "phone", "raspberry_pi_4"]]  # no datacenter GPU in this run
    res = tiers.choose_ratios("proportional", weak, cnn, X, samples=100, epochs=1, max_ratio=0.95)
    assert res["laptop"].ratio == 0.0 and res["phone"].ratio > 0  # the strongest present trains the dense model


def test_deadline_policy_picks_largest_model_that_fits(table, cnn):
    deadline, samples, epochs = 5.0, 2000, 2
    res = tiers.choose_ratios("deadline", table, cnn, X, samples=samples, epochs=epochs, deadline_s=deadline)
    grid = [round(0.05 * i, 2) for i in range(19)]
    cost_of = costs.at_ratios(cnn, X, grid).set_index("ratio")
    for tier, r in res.items():
        assert r.fits_deadline and r.round_time_s <= deadline
        if r.ratio > 0:  # one grid step less pruning would miss the deadline
            prev = cost_of.loc[grid[grid.index(r.ratio) - 1]]
            flops = 3 * prev["forward_flops"] * samples * epochs
            speed = costs.speed_factor("cnn", prev["forward_flops"] / cost_of.loc[0.0, "forward_flops"])
            assert tiers.round_time(table, tier, flops, int(prev["bytes"]), int(prev["bytes"]), speed) > deadline
    assert res["datacenter_gpu"].ratio == 0.0
    assert 0 < res["raspberry_pi_4"].ratio < 0.9
    assert res["raspberry_pi_4"].ratio >= res["phone"].ratio >= res["laptop"].ratio


def test_deadline_default_and_impossible(table, cnn):
    res = tiers.choose_ratios("deadline", table, cnn, X, samples=500, epochs=1)  # deadline: weakest at max ratio
    assert all(r.fits_deadline for r in res.values())
    assert res["raspberry_pi_4"].ratio == pytest.approx(0.9)
    tight = tiers.choose_ratios("deadline", table, cnn, X, samples=500, epochs=1, deadline_s=1e-6)
    assert all(r.ratio == pytest.approx(0.9) and r.fits_deadline is False for r in tight.values())


def test_at_ratio_is_what_the_policies_weigh(table, cnn):
    res = tiers.choose_ratios("deadline", table, cnn, X, samples=500, epochs=2, deadline_s=3.0)
    for tier, r in res.items():
        again = tiers.at_ratio(table, tier, cnn, X, r.ratio, samples=500, epochs=2, deadline_s=3.0, policy="deadline")
        assert again == r
    raw = table.reset_index().drop(columns="sustained_flops")  # a frame as read: validated first
    by_hand = tiers.at_ratio(raw, "phone", cnn, X, 0.5, samples=500, epochs=2)
    assert by_hand.policy == "fixed" and by_hand.fits_deadline is None and by_hand.ratio == 0.5
    with pytest.raises(ValueError, match="Valid tiers"):
        tiers.at_ratio(table, "mainframe", cnn, X, 0.5, samples=1, epochs=1)


def test_deadline_respects_memory(table, cnn):
    small = table.copy()
    need_dense = costs.at_ratios(cnn, X, [0.0], batch_size=64)["memory_gb"][0]
    small.loc["datacenter_gpu", "memory_gb"] = need_dense  # half of it usable: the dense model cannot fit
    res = tiers.choose_ratios("deadline", small, cnn, X, samples=100, epochs=1, deadline_s=1e3)
    assert res["datacenter_gpu"].ratio > 0 and res["datacenter_gpu"].fits_memory


def test_policy_errors(table, cnn):
    with pytest.raises(ValueError, match="Valid policies: proportional, deadline"):
        tiers.choose_ratios("greedy", table, cnn, X, samples=10, epochs=1)
    with pytest.raises(ValueError, match="max_ratio"):
        tiers.choose_ratios("deadline", table, cnn, X, samples=10, epochs=1, max_ratio=1.0)
    with pytest.raises(ValueError, match="deadline_s"):
        tiers.choose_ratios("deadline", table, cnn, X, samples=10, epochs=1, deadline_s=-1)


def test_profile_this_machine(table):
    me = tiers.profile_this_machine(batch_size=8, steps=2, warmup=1, threads=1)
    assert list(me.index) == ["this_machine"]
    assert me.loc["this_machine", "sustained_flops"] > 1e8  # any CPU trains faster than 0.1 GFLOP/s
    both = pd.concat([table, me]).sort_values("sustained_flops", ascending=False)
    assert tiers.round_time(both, "this_machine", 1e9, 0, 0) > 0
