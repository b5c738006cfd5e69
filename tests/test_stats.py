"""The verdict rule over paired seeds, checked on differences worked out by hand."""

import math

import pytest

from reft import stats


def test_interval_by_hand() -> None:
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t(0.975, 2) = 4.3027 -> half 0.024841
    d = stats.paired([0.5, 0.5, 0.5], [0.51, 0.52, 0.53])
    assert d.n == 3 and d.mean == pytest.approx(0.02)
    assert d.low == pytest.approx(0.02 - 0.024841, abs=1e-5) and d.high == pytest.approx(0.044841, abs=1e-5)
    assert d.verdict == "inconclusive"  # contains 0, reaches beyond +1 point


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.001, 0.05, "better"), (-0.05, -0.001, "worse"), (-0.004, 0.009, "on par"), (-0.02, 0.005, "inconclusive")],
)
def test_verdict_rule(low: float, high: float, expected: str) -> None:
    assert stats.verdict(low, high) == expected


def test_paired_is_paired_and_checks_input() -> None:
    # a large seed-to-seed spread that the pairing removes: every seed gains exactly 2 points
    d = stats.paired([0.3, 0.6, 0.9], [0.32, 0.62, 0.92])
    assert d.verdict == "better" and d.low == pytest.approx(0.02) and d.high == pytest.approx(0.02)
    assert math.isnan(stats.paired([0.5], [0.6]).low) and stats.paired([0.5], [0.6]).verdict == "inconclusive"
    with pytest.raises(ValueError, match="equally long"):
        stats.paired([0.1, 0.2], [0.1])


def test_summarize_by_hand() -> None:
    import pandas as pd

    rows = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 2, "acc": [0.80, 0.82, 0.84, 0.5, 0.7]})
    s = stats.summarize(rows, ["method"], ["acc"]).set_index("method")
    # a: mean 0.82, sd 0.02, half = 4.3027 * 0.02 / sqrt(3) = 0.049683
    assert s.loc["a", "acc_mean"] == pytest.approx(0.82) and s.loc["a", "acc_std"] == pytest.approx(0.02)
    assert s.loc["a", "acc_ci_low"] == pytest.approx(0.82 - 0.049683, abs=1e-5) and s.loc["a", "acc_n"] == 3
    # b: mean 0.6, sd 0.141421, half = 12.7062 * 0.141421 / sqrt(2) = 1.27062
    assert s.loc["b", "acc_ci_high"] == pytest.approx(0.6 + 1.27062, abs=1e-4)
    never = stats.summarize(rows.assign(acc=float("nan")), ["method"], ["acc"]).set_index("method")
    assert never.loc["a", "acc_n"] == 0 and math.isnan(never.loc["a", "acc_mean"])


def test_versus_pairs_on_the_seed() -> None:
    import pandas as pd

    rows = pd.DataFrame(
        {
            "method": ["reft"] * 3 + ["fedavg"] * 3,
            "partition": "iid",
            "seed": [0, 1, 2, 2, 1, 0],  # the other method's rows in another order: pairing is by seed
            "final_acc": [0.70, 0.80, 0.90, 0.93, 0.83, 0.73],
        }
    )
    v = stats.versus(rows, "reft").iloc[0]
    assert v["method"] == "fedavg" and v["seeds"] == 3
    assert v["diff_mean"] == pytest.approx(0.03) and v["verdict"] == "better"


def test_seeds_to_decide_is_the_first_n_whose_interval_decides() -> None:
    import numpy as np
    from scipy import stats as sc

    d = [0.02, 0.03, 0.01, 0.04, 0.0]  # mean 0.02, sd 0.0158: half-width 0.0196 at 5 seeds, 0.0251 at 4
    assert stats.paired([0.0] * 5, d).verdict == "better" and stats.seeds_to_decide(d) == 5
    e = [0.01, -0.005, 0.02, -0.01, 0.005]  # mean 0.004: "on par" once the interval fits in +-1 point
    n, mean, sd = stats.seeds_to_decide(e), np.mean(e), np.std(e, ddof=1)
    half = lambda k: sc.t.ppf(0.975, k - 1) * sd / np.sqrt(k)  # noqa: E731
    assert n > 5 and mean + half(n) <= 0.01 < mean + half(n - 1)
    assert stats.seeds_to_decide([0.05, -0.05, 0.0], max_n=10) is None  # mean 0, sd 5 points: > 10 seeds
    with pytest.raises(ValueError, match="at least two"):
        stats.seeds_to_decide([0.01])
