"""The tier explorer (notebook 06): what one pruning choice costs and buys, on every hardware tier.

:class:`Explorer` computes the numbers for a choice (model, ratio, tier, policy, deadline) from the
project's own cost code: counts from :func:`reft.costs.at_ratios` (cached per architecture and ratio),
measured CPU latency (cached here per model and ratio, so returning to a ratio costs no measurement),
round times from :func:`reft.tiers.at_ratio`, the policies' ratios from :func:`reft.tiers.choose_ratios`
(cached per model, policy and deadline), and where the ratio sits on the accuracy-vs-ratio curve of a
committed notebook-01 run; with ``onnx=True`` also the size of the pruned model's ONNX file
(:func:`reft.export.to_onnx`, exported once per model and ratio, needs the export extra).
:meth:`Explorer.sweep` and :meth:`Explorer.figure` are the static view
(batch runs, tests); :func:`build_ui` wires ipywidgets to the same methods and updates in place.
"""

from __future__ import annotations

import html
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from reft import costs, export, models, pruning, tiers

__all__ = ["INPUT_SHAPES", "load_accuracy", "Explorer", "build_ui"]

INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_CLASSES = 10
REPO = Path(__file__).resolve().parents[1]
CURVE_METHODS = ("pruned+finetuned", "scratch")  # the curves shown (the first importance of notebook 01)
_CURVE_COLUMNS = {"ratio", "method", "importance", "accuracy", "params"}
_CURVE_LABELS = {"pruned+finetuned": "pruned + fine-tuned", "scratch": "trained from scratch"}


def load_accuracy(path: str | Path | None) -> tuple[pd.DataFrame | None, str]:
    """Notebook 01's accuracy table (``01_accuracy.csv``) and a line saying where it came from, or
    ``None`` and why not (missing or malformed file). A relative path is taken from the repository root."""
    if path is None:
        return None, "no accuracy curve asked for (accuracy_csv=None)"
    p = Path(path)
    p = p if p.is_absolute() else REPO / p
    if not p.is_file():
        return None, f"no accuracy curve: {p} is missing (notebook 01 writes it: make reproduce)"
    df = pd.read_csv(p)
    missing = sorted(_CURVE_COLUMNS - set(df.columns))
    if missing:
        return None, f"no accuracy curve: {p} lacks column(s) {', '.join(missing)}"
    return df, f"accuracy from {p.relative_to(REPO) if p.is_relative_to(REPO) else p}"


class Explorer:
    """Numbers for one pruning choice, cached so that moving back to a seen choice is instant.

    ``samples`` x ``epochs`` is one client's local round (as notebook 01's ``client_samples`` and
    ``local_epochs``); latency is a forward pass on ``latency_batch`` samples with ``threads`` torch threads.
    """

    def __init__(
        self,
        tier_table: pd.DataFrame | None = None,
        dataset: str = "fashion-mnist",
        samples: int = 600,
        epochs: int = 5,
        max_ratio: float = 0.95,
        importance: str = "l2",
        latency_batch: int = 32,
        threads: int | None = 1,
        accuracy_csv: str | Path | None = "results/fmnist/01_accuracy.csv",
        seed: int = 0,
        onnx: bool = False,
    ) -> None:
        if dataset not in INPUT_SHAPES:
            raise ValueError(f"Unknown dataset {dataset!r}. Valid: {', '.join(INPUT_SHAPES)}.")
        self.tiers = tiers.load_tiers() if tier_table is None else tier_table
        self.samples, self.epochs, self.max_ratio, self.importance = samples, epochs, max_ratio, importance
        self.latency_batch, self.threads, self.seed = latency_batch, threads, seed
        self.example = torch.zeros(1, *INPUT_SHAPES[dataset])
        self.accuracy, self.accuracy_note = load_accuracy(accuracy_csv)
        self._nets: dict[str, models.ReftModel] = {}
        self._latency: dict[tuple[str, float], float] = {}
        self.onnx = onnx and export.available()  # ONNX file sizes only where the export extra is installed
        self._onnx: dict[tuple[str, float], int] = {}
        self._policies: dict[tuple, dict[str, tiers.PolicyResult]] = {}

    def set_tiers(self, tier_table: pd.DataFrame) -> None:
        """Use another tier table (the policies' results are computed anew)."""
        self.tiers = tier_table
        self._policies.clear()

    def net(self, model: str) -> models.ReftModel:
        if model not in self._nets:
            torch.manual_seed(self.seed)
            self._nets[model] = models.build(model, NUM_CLASSES, self.example.shape[1])
        return self._nets[model]

    def is_measured(self, model: str, ratio: float) -> bool:
        return (model, round(float(ratio), 6)) in self._latency

    def latency_ms(self, model: str, ratio: float) -> float:
        """Measured CPU forward latency (ms per batch) of ``model`` pruned at ``ratio``: once per pair."""
        key = (model, round(float(ratio), 6))
        if key not in self._latency:
            df = costs.at_ratios(
                self.net(model), self.example, [key[1]], self.importance, latency_batch=self.latency_batch,
                repeats=3, rounds=3, threads=self.threads, progress=False,
            )  # fmt: skip
            self._latency[key] = float(df[f"latency_ms_b{self.latency_batch}"].iloc[0])
        return self._latency[key]

    def onnx_bytes(self, model: str, ratio: float) -> int:
        """Size in bytes of the ONNX file of ``model`` pruned at ``ratio`` (:func:`reft.export.to_onnx`), once."""
        key = (model, round(float(ratio), 6))
        if key not in self._onnx:
            pruned = pruning.prune(self.net(model), key[1], self.example, self.importance).model.eval()
            with tempfile.TemporaryDirectory() as d:
                self._onnx[key] = (
                    export.to_onnx(pruned, self.example.expand(2, -1, -1, -1), Path(d) / "m.onnx").stat().st_size
                )
        return self._onnx[key]

    def policy(self, model: str, policy: str, deadline_s: float | None = None) -> dict[str, tiers.PolicyResult]:
        """The policy's ratio for every tier (:func:`reft.tiers.choose_ratios`), cached."""
        key = (model, policy, None if deadline_s is None else round(float(deadline_s), 6))
        if key not in self._policies:
            self._policies[key] = tiers.choose_ratios(
                policy, self.tiers, self.net(model), self.example, samples=self.samples, epochs=self.epochs,
                max_ratio=self.max_ratio, deadline_s=deadline_s, importance=self.importance,
            )  # fmt: skip
        return self._policies[key]

    def round(self, model: str, ratio: float, tier: str, deadline_s: float | None = None) -> tiers.PolicyResult:
        """One local round of ``model`` pruned at ``ratio`` on ``tier`` (:func:`reft.tiers.at_ratio`)."""
        return tiers.at_ratio(
            self.tiers, tier, self.net(model), self.example, float(ratio), samples=self.samples,
            epochs=self.epochs, deadline_s=deadline_s, importance=self.importance,
        )  # fmt: skip

    def curve(self, model: str) -> tuple[pd.DataFrame | None, str]:
        """The committed accuracy curve if it was measured on this model (same dense parameter count),
        as rows of :data:`CURVE_METHODS`; otherwise ``None`` and why."""
        if self.accuracy is None:
            return None, self.accuracy_note
        acc = self.accuracy[self.accuracy["method"].isin(CURVE_METHODS)]
        finetuned = acc.loc[acc["method"] == "pruned+finetuned", "importance"]
        if not finetuned.empty:  # the criterion notebook 01 ran at every ratio (others only for comparison)
            acc = acc[acc["importance"].isin(["-", finetuned.value_counts().idxmax()])]
        dense = acc.loc[acc["ratio"] == acc["ratio"].min(), "params"]
        own = costs.at_ratios(self.net(model), self.example, [0.0], self.importance)["params"].iloc[0]
        if dense.empty or int(dense.iloc[0]) != int(own):
            found = "none" if dense.empty else f"{int(dense.iloc[0]):,}"
            return None, f"no accuracy curve for {model} ({int(own):,} params): the committed curve's model has {found}"
        return acc, self.accuracy_note

    def accuracy_at(self, model: str, ratio: float) -> dict[str, float]:
        """Accuracy per method at ``ratio``, interpolated linearly between the committed run's ratios."""
        acc, _ = self.curve(model)
        if acc is None:
            return {}
        out = {}
        for method, g in acc.groupby("method", sort=False):
            g = g.sort_values("ratio")
            if g["ratio"].min() <= ratio <= g["ratio"].max():
                out[method] = float(np.interp(ratio, g["ratio"], g["accuracy"]))
        return out

    def placement(self, model: str, ratio: float, tolerance: float = 0.01) -> str:
        """Where ``ratio`` sits on the committed curve, in words (:func:`reft.pruning.accuracy_held`)."""
        acc, note = self.curve(model)
        if acc is None:
            return note
        parts = []
        for _, h in pruning.accuracy_held(acc, tolerance).iterrows():
            side = "inside" if ratio <= h["held_to"] else "beyond"
            parts.append(f"{side} the range where {h['method']} stays within {100 * tolerance:g} point of its dense "
                         f"accuracy (r <= {h['held_to']:.2f})")  # fmt: skip
        return f"r={ratio:.2f} is " + "; ".join(parts) + f" ({note})."

    def row(
        self, model: str, ratio: float, tier: str, policy: str = "deadline", deadline_s: float | None = None
    ) -> dict:
        """Everything shown for one choice, as one flat row. ``deadline_s=None``: the deadline policy's
        default (the tightest every tier can meet); the chosen ratio's round is checked against it."""
        ratio = round(float(ratio), 6)
        chosen = self.policy(model, policy, deadline_s)
        deadline = deadline_s if deadline_s is not None else next(iter(chosen.values())).deadline_s
        r = self.round(model, ratio, tier, deadline)
        lat = self.latency_ms(model, ratio)
        out = {
            "model": model, "ratio": ratio, "tier": tier, "widths": r.widths, "params": r.params,
            "params_fraction": r.params / self.round(model, 0.0, tier).params, "bytes": r.bytes,
            "mflops_per_sample": r.forward_flops / 1e6, f"latency_ms_b{self.latency_batch}": lat,
            "speedup": self.latency_ms(model, 0.0) / lat, "round_time_s": r.round_time_s, "compute_s": r.compute_s,
            "download_s": r.download_s, "upload_s": r.upload_s, "memory_gb": r.memory_gb,
            "fits_memory": r.fits_memory, "deadline_s": deadline, "fits_deadline": r.fits_deadline,
            "policy": policy, "policy_ratio": chosen[tier].ratio, "policy_round_time_s": chosen[tier].round_time_s,
        }  # fmt: skip
        if self.onnx:
            out["onnx_bytes"] = self.onnx_bytes(model, ratio)
        out.update({f"acc_{m}": a for m, a in self.accuracy_at(model, ratio).items()})
        return out

    def per_tier(
        self, model: str, ratio: float, policy: str = "deadline", deadline_s: float | None = None
    ) -> pd.DataFrame:
        """Round time of the chosen ratio on every tier, next to the policy's own ratio for it."""
        chosen = self.policy(model, policy, deadline_s)
        rows = []
        for tier, p in chosen.items():
            r = self.round(model, ratio, tier, p.deadline_s)
            rows.append({"tier": tier, "round_time_s": r.round_time_s, "fits_memory": r.fits_memory,
                         "fits_deadline": r.fits_deadline, "policy_ratio": p.ratio,
                         "policy_round_time_s": p.round_time_s})  # fmt: skip
        return pd.DataFrame(rows).set_index("tier")

    def sweep(
        self, model: str, ratios: Sequence[float], tier: str, policy: str = "deadline", deadline_s: float | None = None
    ) -> pd.DataFrame:
        """:meth:`row` for each of ``ratios``: the static table of the explorer."""
        return pd.DataFrame([self.row(model, r, tier, policy, deadline_s) for r in ratios])

    def figure(
        self, model: str, ratio: float, tier: str, policy: str = "deadline", deadline_s: float | None = None
    ) -> plt.Figure:
        """Left: the committed accuracy curve with the chosen and the policy's ratio marked. Right: the
        chosen ratio's round time on every tier (compute, download, upload) against the deadline."""
        chosen = self.policy(model, policy, deadline_s)
        fig, (ax_acc, ax_t) = plt.subplots(1, 2, figsize=(12, 3.6))
        acc, note = self.curve(model)
        if acc is None:
            note = textwrap.fill(note, 60)  # inside the axes
            ax_acc.text(0.5, 0.5, note, ha="center", va="center", fontsize=8, transform=ax_acc.transAxes)
            ax_acc.set_yticks([])
        else:
            for method, g in acc.groupby("method", sort=False):
                g = g.sort_values("ratio")
                label = _CURVE_LABELS.get(method, method)
                ax_acc.plot(g["ratio"], 100 * g["accuracy"], "o-" if method == "scratch" else "s-", label=label, ms=4)
            ax_acc.set(ylabel="test accuracy (%), notebook 01's run")
        ax_acc.axvline(ratio, color="k", lw=1.5, label=f"your ratio {ratio:.2f}")
        ax_acc.axvline(chosen[tier].ratio, color="tab:red", ls="--", lw=1, label=f"{policy} policy for {tier}")
        ax_acc.set(xlabel="pruning ratio r", xlim=(-0.02, 1.0), title=f"{model}: accuracy vs ratio")
        ax_acc.legend(fontsize=7, loc="lower left")
        rounds = [self.round(model, ratio, t) for t in self.tiers.index]
        parts = pd.DataFrame(
            {"compute": [r.compute_s for r in rounds], "download": [r.download_s for r in rounds],
             "upload": [r.upload_s for r in rounds]}, index=self.tiers.index,
        )  # fmt: skip
        parts.plot.barh(stacked=True, ax=ax_t, legend=False)
        deadline = next(iter(chosen.values())).deadline_s
        if deadline is not None:
            ax_t.axvline(deadline, color="k", ls="--", lw=1, label=f"deadline {deadline:.3g} s")
        for i, r in enumerate(rounds):
            ax_t.text(r.round_time_s, i, f" {r.round_time_s:.3g} s", va="center", fontsize=7)
        ax_t.invert_yaxis()
        for label in ax_t.get_yticklabels():
            label.set_fontweight("bold" if label.get_text() == tier else "normal")
        ax_t.set(xlabel="predicted local round time (s)", ylabel="", title=f"r={ratio:.2f} on every tier")
        ax_t.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        return fig


def _numbers_html(ex: Explorer, row: dict) -> str:
    """The headline numbers of one choice as a small HTML table."""
    lat = f"latency_ms_b{ex.latency_batch}"
    fits = {None: "no deadline", True: "meets", False: "misses"}[row["fits_deadline"]]
    dl = "" if row["deadline_s"] is None else f" the {row['deadline_s']:.3g} s deadline"
    accs = ", ".join(
        f"{v:.3f} ({m})" for m, v in ((k.removeprefix("acc_"), v) for k, v in row.items() if k[:4] == "acc_")
    )
    items = [
        ("model", f"{row['model']} at r={row['ratio']:.2f}, widths {row['widths']}"),
        ("params", f"{row['params']:,} ({100 * row['params_fraction']:.1f}% of dense)"),
        ("bytes on the wire", f"{row['bytes'] / 1e6:.3f} MB"),
        *([("ONNX file", f"{row['onnx_bytes'] / 1e6:.3f} MB (for ONNX Runtime)")] if "onnx_bytes" in row else []),
        ("forward FLOPs", f"{row['mflops_per_sample']:.2f} MFLOPs per sample"),
        ("CPU latency", f"{row[lat]:.2f} ms per batch of {ex.latency_batch} ({row['speedup']:.2f}x dense)"),
        (f"round on {row['tier']}", f"{row['round_time_s']:.2f} s (compute {row['compute_s']:.2f}, down "
         f"{row['download_s']:.2f}, up {row['upload_s']:.2f}); {fits}{dl}; memory "
         f"{'fits' if row['fits_memory'] else 'does not fit'}"),
        (f"{row['policy']} policy", f"r={row['policy_ratio']:.2f} for {row['tier']}, round "
         f"{row['policy_round_time_s']:.2f} s"),
        ("accuracy", accs or "-"),
    ]  # fmt: skip
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items
    )
    return f"<table class='reft-numbers'>{body}</table><p>{html.escape(ex.placement(row['model'], row['ratio']))}</p>"


def build_ui(
    ex: Explorer,
    model: str = "cnn",
    tier: str | None = None,
    ratio: float = 0.5,
    policy: str = "deadline",
    deadline_s: float | None = None,
    tiers_file: str | None = None,
    static: Any = None,
):
    """The explorer's widgets (ipywidgets): model, tier table, tier, policy, deadline and ratio; the
    numbers, the per-tier table and the figure update in place, numbers first. ``static``: the display
    handle of a static figure shown before (``display(fig, display_id=True)``); the first move of a widget
    replaces it by a note, so that no figure on the page shows an outdated choice."""
    import ipywidgets as w
    from IPython.display import HTML, display

    tier = tier or str(ex.tiers.index[-1])
    auto = ex.policy(model, "deadline", None)
    deadline_s = deadline_s or next(iter(auto.values())).deadline_s
    style, wide = {"description_width": "110px"}, w.Layout(width="460px")
    model_w = w.Dropdown(options=list(models.MODEL_NAMES), value=model, description="model", style=style)
    file_w = w.Text(value=tiers_file or "", placeholder="reft/tiers.csv (shipped)", description="tier table CSV",
                    continuous_update=False, style=style)  # fmt: skip
    tier_w = w.Dropdown(options=list(ex.tiers.index), value=tier, description="tier", style=style)
    policy_w = w.ToggleButtons(options=tiers.POLICIES, value=policy, description="policy", style=style)
    deadline_w = w.FloatLogSlider(value=deadline_s, base=10, min=-2, max=3, step=0.05, description="deadline (s)",
                                  continuous_update=False, readout_format=".3g", style=style, layout=wide)  # fmt: skip
    ratio_w = w.FloatSlider(value=ratio, min=0.0, max=ex.max_ratio, step=0.01, description="pruning ratio",
                            continuous_update=False, readout_format=".2f", style=style, layout=wide)  # fmt: skip
    use_w = w.Button(description="use the policy's ratio", tooltip="the policy's choice for the tier",
                     layout=w.Layout(width="auto"))  # fmt: skip
    numbers = w.HTML().add_class("reft-explorer-numbers")
    table = w.HTML().add_class("reft-explorer-tiers")
    status = w.HTML().add_class("reft-explorer-status")
    plot = w.Output()

    def update(change=None) -> None:
        nonlocal static
        if change is not None and static is not None:  # a widget moved: the static figure is out of date
            static.update(HTML(
                f"<p class='reft-static-replaced'><i>This was the figure for r={ratio:.2f}; the explorer below "
                "now draws the figure of the choice you make there.</i></p>"
            ))  # fmt: skip
            static = None
        t0 = time.perf_counter()
        m, r, p, d = model_w.value, ratio_w.value, policy_w.value, deadline_w.value
        cached = ex.is_measured(m, r)
        status.value = "<i>computing…</i>"
        try:
            numbers.value = _numbers_html(ex, ex.row(m, r, tier_w.value, p, d))
            table.value = ex.per_tier(m, r, p, d).round(3).to_html(classes="reft-tier-table")
        except (ValueError, RuntimeError) as e:
            status.value = f"<b>error:</b> {html.escape(str(e))}"
            return
        ms = 1e3 * (time.perf_counter() - t0)
        status.value = f"numbers in {ms:.0f} ms ({'cached latency' if cached else 'latency measured now'})"
        t1 = time.perf_counter()
        with plot:
            plot.clear_output(wait=True)
            fig = ex.figure(m, r, tier_w.value, p, d)
            display(fig)
            plt.close(fig)
        status.value += f"; figure in {1e3 * (time.perf_counter() - t1):.0f} ms"

    def load_table(change) -> None:
        try:
            ex.set_tiers(tiers.load_tiers(change["new"].strip() or None))
        except (ValueError, FileNotFoundError) as e:
            status.value = f"<b>tier table not loaded:</b> {html.escape(str(e))}"
            return
        keep = tier_w.value if tier_w.value in ex.tiers.index else str(ex.tiers.index[-1])
        with tier_w.hold_trait_notifications():
            tier_w.options, tier_w.value = list(ex.tiers.index), keep
        update(change)

    def use_policy(_) -> None:
        ratio_w.value = ex.policy(model_w.value, policy_w.value, deadline_w.value)[tier_w.value].ratio

    for widget in (model_w, tier_w, policy_w, deadline_w, ratio_w):
        widget.observe(update, names="value")
    file_w.observe(load_table, names="value")
    use_w.on_click(use_policy)
    update()
    controls = w.VBox([model_w, file_w, tier_w, policy_w, deadline_w, w.HBox([ratio_w, use_w])])
    return w.VBox([controls, status, numbers, table, plot]).add_class("reft-explorer")
