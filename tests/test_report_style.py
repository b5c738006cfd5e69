"""reft.report's figure style: every algorithm has a display name and a colour of its own."""

from __future__ import annotations

import itertools

import matplotlib
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from reft import report, strategies

matplotlib.use("Agg")


def test_every_registered_algorithm_has_a_name_and_a_colour():
    missing = [k for k in strategies.ALGORITHMS if k not in report.METHODS]
    assert not missing, f"add {missing} to reft.report.METHODS"
    names = [report.method_name(k) for k in strategies.ALGORITHMS]
    assert len(set(names)) == len(names)
    assert report.method_name("fedavg-weakest") == "FedAvg (weakest model)" and report.method_name("reft") == "REFT"


def _lab(colour: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour."""
    lin = [u / 12.92 if u <= 0.04045 else ((u + 0.055) / 1.055) ** 2.4 for u in to_rgb(colour)]
    xyz = [sum(m * u for m, u in zip(row, lin, strict=True)) / w for row, w in zip(
        [(0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505)], (0.95047, 1.0, 1.08883),
        strict=True)]  # fmt: skip
    fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference: about 2 is just noticeable; seaborn's two oranges (#DE8F05, #D55E00) are 26."""
    return sum((x - y) ** 2 for x, y in zip(_lab(a), _lab(b), strict=True)) ** 0.5


def test_colours_are_far_apart():
    assert delta_e("#DE8F05", "#D55E00") < 30  # the pair that looked alike in notebook 03 before
    for (a, ma), (b, mb) in itertools.combinations(report.METHODS.items(), 2):
        d = delta_e(ma.color, mb.color)
        assert d > 45, f"{a} and {b} look alike (delta E {d:.0f})"
    assert not set(report.SPARE_COLORS) & {m.color for m in report.METHODS.values()}  # unknowns take no built-in's
    for a, b in itertools.combinations(report.PALETTE[:4], 2):  # any figure's first four hues (variants, codecs)
        assert delta_e(a, b) > 45, f"{a} and {b} look alike"


def test_an_unknown_algorithm_gets_its_key_and_a_stable_spare_colour():
    m = report.method("my-algo")
    assert m.name == "my-algo" and m.color in report.SPARE_COLORS and report.method("my-algo") == m


def test_hue_order_is_fixed_whatever_the_data_order():
    hue = report.method_hue(["my-algo", "heterofl", "reft", "fedavg", "reft"])
    assert hue["hue_order"] == ["REFT", "FedAvg", "HeteroFL", "my-algo"]
    assert hue["palette"]["REFT"] == report.METHODS["reft"].color
    df = report.with_method_names(pd.DataFrame({"algorithm": ["feddf", "x"]}))
    assert list(df["method"]) == ["FedDF", "x"]


def test_accuracy_curves_plot_percent_with_display_names():
    rows = [{"algorithm": a, "partition": p, "seed": s, "round": r, "server_acc": 0.1 * r + 0.01 * s,
             "cum_mb": 2.0 * r + s} for a in ("fedavg", "reft") for p in ("iid", "dirichlet(0.5)")
            for s in (0, 1) for r in (1, 2, 3)]  # fmt: skip
    grid = report.accuracy_curves(pd.DataFrame(rows), "cum_mb", "cumulative MB", col="partition", target=0.2)
    ax = grid.axes.flat[0]
    assert [t.get_text() for t in grid.legend.texts] == ["REFT", "FedAvg"]
    assert ax.get_ylabel() == "server test accuracy (%)" and ax.get_xscale() == "log"
    ys = [y for line in ax.lines for y in line.get_ydata()]
    assert max(ys) == pytest.approx(100 * 0.305) and 20.0 in ys  # percent: the mean of seeds 0, 1; the target
    assert [a.get_title() for a in grid.axes.flat] == ["iid", "dirichlet(0.5)"]
