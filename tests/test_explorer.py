"""reft.explorer: the numbers of one pruning choice, their caches, the accuracy curve and the widgets."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch

from reft import costs, explorer, export, pruning, tiers

matplotlib.use("Agg")
X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def ex(one_thread) -> explorer.Explorer:
    return explorer.Explorer(samples=200, epochs=2, latency_batch=4)


def test_row_reuses_the_cost_code(ex):
    row = ex.row("cnn", 0.5, "phone", "deadline", deadline_s=2.0)
    net = ex.net("cnn")
    counts = costs.at_ratios(net, X, [0.0, 0.5]).set_index("ratio")
    assert row["params"] == counts.loc[0.5, "params"] and row["bytes"] == counts.loc[0.5, "bytes"]
    assert row["mflops_per_sample"] == pytest.approx(counts.loc[0.5, "forward_flops"] / 1e6)
    assert row["params_fraction"] == pytest.approx(counts.loc[0.5, "params_fraction"])
    by_hand = tiers.at_ratio(ex.tiers, "phone", net, X, 0.5, samples=200, epochs=2, deadline_s=2.0)
    assert row["round_time_s"] == pytest.approx(by_hand.round_time_s) and row["fits_deadline"] == by_hand.fits_deadline
    policy = tiers.choose_ratios("deadline", ex.tiers, net, X, samples=200, epochs=2, max_ratio=0.95, deadline_s=2.0)
    assert row["policy_ratio"] == policy["phone"].ratio
    assert row["latency_ms_b4"] > 0 and row["speedup"] == pytest.approx(
        ex.latency_ms("cnn", 0.0) / row["latency_ms_b4"]
    )
    acc, note = ex.curve("cnn")
    if acc is None:  # the committed curve is of an older cnn (before issue 25's hidden norm) until notebook 01 re-runs
        assert "the committed curve's model has" in note and "acc_pruned+finetuned" not in row
    else:
        assert 0.85 < row["acc_pruned+finetuned"] < 0.91  # the committed fmnist curve at r=0.5 (0.8958)


def test_latency_is_measured_once_per_model_and_ratio(ex, monkeypatch):
    calls = []
    real = costs.at_ratios

    def counting(*args, **kwargs):
        if kwargs.get("latency_batch"):
            calls.append(args[2])
        return real(*args, **kwargs)

    ex.latency_ms("cnn", 0.0)  # the dense reference of the speedup
    monkeypatch.setattr(explorer.costs, "at_ratios", counting)
    assert not ex.is_measured("cnn", 0.37)
    first = ex.latency_ms("cnn", 0.37)
    assert ex.is_measured("cnn", 0.37) and ex.latency_ms("cnn", 0.370000001) == first
    ex.row("cnn", 0.37, "laptop")
    ex.row("cnn", 0.37, "phone")
    assert calls == [[0.37]]


def test_per_tier_and_sweep(ex):
    per = ex.per_tier("cnn", 0.5, "proportional")
    assert list(per.index) == list(ex.tiers.index)
    assert per["round_time_s"].is_monotonic_increasing  # same model, slower tiers (the table is strongest first)
    assert per.loc["datacenter_gpu", "policy_ratio"] == 0.0 and per["fits_deadline"].isna().all()
    sweep = ex.sweep("cnn", [0.0, 0.5], "raspberry_pi_4")
    assert len(sweep) == 2 and sweep["bytes"].is_monotonic_decreasing
    assert sweep["deadline_s"].iloc[0] == ex.policy("cnn", "deadline")["raspberry_pi_4"].deadline_s


def test_accuracy_curve_interpolated_and_placed(tmp_path, one_thread):
    dense = int(costs.at_ratios(explorer.Explorer().net("cnn"), X, [0.0])["params"].iloc[0])
    rows = [(0.0, "scratch", "-", 0.90), (0.5, "scratch", "-", 0.80), (0.0, "pruned+finetuned", "l2", 0.90),
            (0.5, "pruned+finetuned", "l2", 0.895), (0.5, "pruned", "l2", 0.1)]  # fmt: skip
    df = pd.DataFrame(rows, columns=["ratio", "method", "importance", "accuracy"]).assign(params=dense)
    df.to_csv(tmp_path / "acc.csv", index=False)
    ex = explorer.Explorer(accuracy_csv=tmp_path / "acc.csv", latency_batch=4)
    assert ex.accuracy_at("cnn", 0.25) == pytest.approx({"scratch": 0.85, "pruned+finetuned": 0.8975})
    text = ex.placement("cnn", 0.5)
    assert "beyond the range where scratch" in text and "inside the range where pruned+finetuned" in text
    assert ex.accuracy_at("vgg11", 0.25) == {}
    assert "no accuracy curve for vgg11" in ex.curve("vgg11")[1]


def test_missing_accuracy_file_is_said_not_raised(tmp_path, one_thread):
    ex = explorer.Explorer(accuracy_csv=tmp_path / "nope.csv", latency_batch=4, samples=100, epochs=1)
    assert "missing" in ex.accuracy_note and ex.placement("cnn", 0.5) == ex.accuracy_note
    row = ex.row("cnn", 0.5, "phone")
    assert not any(k.startswith("acc_") for k in row)
    fig = ex.figure("cnn", 0.5, "phone")
    assert any("missing" in t.get_text() for t in fig.axes[0].texts)
    with pytest.raises(ValueError, match="Unknown dataset"):
        explorer.Explorer(dataset="mnist")


def test_widgets_update_in_place_and_reuse_the_cache(ex):
    pytest.importorskip("ipywidgets")
    ui = explorer.build_ui(ex, "cnn", "phone", 0.5, "deadline")
    by_class = {c: w for w in _walk(ui) for c in getattr(w, "_dom_classes", ())}
    by_name = {getattr(w, "description", ""): w for w in _walk(ui)}
    numbers, status = by_class["reft-explorer-numbers"], by_class["reft-explorer-status"]
    before = numbers.value
    params = int(costs.at_ratios(ex.net("cnn"), X, [0.5]).set_index("ratio").loc[0.5, "params"])
    assert f"{params:,}" in before and "raspberry" not in before  # the cnn's parameter count at r=0.5
    by_name["pruning ratio"].value = 0.6
    assert numbers.value != before and "latency measured now" in status.value
    by_name["pruning ratio"].value = 0.5
    assert numbers.value == before and "cached latency" in status.value
    by_name["tier"].value = "raspberry_pi_4"
    assert "round on raspberry_pi_4" in numbers.value
    by_name["tier table CSV"].value = "/no/such/tiers.csv"
    assert "tier table not loaded" in status.value


def test_a_moved_widget_replaces_the_static_figure_once(ex):
    pytest.importorskip("ipywidgets")

    class Handle:  # what display(fig, display_id=True) returns in a notebook
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    static = Handle()
    ui = explorer.build_ui(ex, "cnn", "phone", 0.5, "deadline", static=static)
    assert static.updates == []  # building the widgets leaves the static figure alone
    ratio = {getattr(w, "description", ""): w for w in _walk(ui)}["pruning ratio"]
    ratio.value = 0.6
    assert len(static.updates) == 1 and "r=0.50" in static.updates[0].data
    assert "reft-static-replaced" in static.updates[0].data
    ratio.value = 0.5
    assert len(static.updates) == 1  # replaced once, not on every move


def test_figure_shows_accuracy_in_percent(tmp_path, one_thread):
    dense = int(costs.at_ratios(explorer.Explorer().net("cnn"), X, [0.0])["params"].iloc[0])
    rows = [(0.0, "scratch", "-", 0.90), (0.5, "scratch", "-", 0.80)]
    df = pd.DataFrame(rows, columns=["ratio", "method", "importance", "accuracy"]).assign(params=dense)
    df.to_csv(tmp_path / "acc.csv", index=False)
    ex = explorer.Explorer(accuracy_csv=tmp_path / "acc.csv", latency_batch=4, samples=100, epochs=1)
    ax = ex.figure("cnn", 0.5, "phone").axes[0]
    curve = next(line for line in ax.lines if line.get_label() == "trained from scratch")
    assert list(curve.get_ydata()) == pytest.approx([90.0, 80.0]) and "(%)" in ax.get_ylabel()


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


@pytest.mark.skipif(not export.available(), reason="needs the export extra: pip install -e '.[export]'")
def test_onnx_size_is_the_exported_files_and_exported_once(tmp_path, one_thread):
    ex = explorer.Explorer(samples=200, epochs=2, latency_batch=4, onnx=True)
    size = ex.onnx_bytes("cnn", 0.5)
    pruned = pruning.prune(ex.net("cnn"), 0.5, X).model
    assert size == export.to_onnx(pruned, X.expand(2, -1, -1, -1), tmp_path / "m.onnx").stat().st_size
    row = ex.row("cnn", 0.5, "phone", "deadline", deadline_s=2.0)
    assert row["onnx_bytes"] == size and len(ex._onnx) == 1  # cached: no second export
    assert "ONNX file" in explorer._numbers_html(ex, row)
    assert size < ex.onnx_bytes("cnn", 0.0)
