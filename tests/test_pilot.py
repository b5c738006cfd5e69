"""scripts/pilot.py: the convergence check on the pilot's curves (the acceptance test of issue 25)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

_spec = importlib.util.spec_from_file_location("pilot", Path(__file__).parents[1] / "scripts" / "pilot.py")
pilot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pilot)


def curves(slope_a: float, slope_b: float, rounds: int = 15) -> pd.DataFrame:
    rows = []
    for seed, off in ((100, -0.01), (101, 0.01)):  # two seeds; their mean has the given slope
        for r in range(1, rounds + 1):
            for method, slope in (("a", slope_a), ("b", slope_b)):
                rows.append({"method": method, "partition": "iid", "seed": seed, "round": r,
                             "server_acc": 0.5 + off + slope * r / 100})  # fmt: skip
    return pd.DataFrame(rows)


def test_slopes_are_in_points_per_round_over_the_last_window() -> None:
    t = pilot.slopes(curves(0.05, 0.5), window=10, max_slope=0.1).set_index("method")
    assert t.loc["a", "slope_pts_per_round"] == pytest.approx(0.05) and t.loc["a", "flat"]
    assert t.loc["b", "slope_pts_per_round"] == pytest.approx(0.5) and not t.loc["b", "flat"]
    assert (t["window"] == 10).all() and (t["rounds"] == 15).all() and (t["seeds"] == 2).all()


def test_a_curve_shorter_than_the_window_is_not_flat_and_unfinished_rounds_are_left_out() -> None:
    h = curves(0.0, 0.0, rounds=6)
    t = pilot.slopes(h, window=10)
    assert not t["flat"].any() and (t["window"] == 6).all()
    more = pd.concat([h, h[(h.seed == 100) & (h["round"] == 6)].assign(round=7)])  # seed 100 is a round ahead
    assert (pilot.slopes(more, window=10)["rounds"] == 6).all()


def test_a_reported_run_is_checked_on_its_fixed_subset_not_on_the_whole_test_part_of_its_last_round() -> None:
    h = curves(0.0, 0.0, rounds=12)
    last = h["round"] == 12
    reported = h.assign(subset_acc=h["server_acc"], server_acc=h["server_acc"].where(~last, 0.9))  # last: whole part
    t = pilot.slopes(reported, window=10)
    assert t["flat"].all() and t["acc_last"].tolist() == pytest.approx([50.0, 50.0])
    assert not pilot.slopes(reported.drop(columns="subset_acc"), window=10)["flat"].any()  # the jump would count
