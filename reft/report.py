"""Where results go, how they are written (atomically), and the standard figures.

Outputs of a run with profile ``P`` go to ``results/P/`` (CSV tables, executed notebooks) and
``figures/P/`` (PNG + PDF). ``P`` is the notebook's ``profile`` parameter (``interactive`` when a
notebook is run by hand). The root is the repository, or ``$REFT_OUTPUT`` when set (``make test``
points it at a temporary folder so tests never touch committed results).

Every file is written to a temporary name in the same folder and then renamed, so an interrupted
run never leaves a half-written table or figure behind.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

FIG_FORMATS = ("png", "pdf")


def root() -> Path:
    """Output root: ``$REFT_OUTPUT``, else the repository this package sits in, else the cwd."""
    if os.environ.get("REFT_OUTPUT"):
        return Path(os.environ["REFT_OUTPUT"])
    repo = Path(__file__).resolve().parents[1]
    return repo if (repo / "notebooks").is_dir() else Path.cwd()


def results_dir(profile: str = "interactive") -> Path:
    return root() / "results" / profile


def figures_dir(profile: str = "interactive") -> Path:
    return root() / "figures" / profile


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_table(df: pd.DataFrame, name: str, profile: str = "interactive", index: bool = False) -> Path:
    """Write ``df`` to ``results/<profile>/<name>.csv`` atomically; returns the path."""
    return atomic_write(results_dir(profile) / f"{name}.csv", lambda p: df.to_csv(p, index=index))


def save_figure(fig: plt.Figure, name: str, profile: str = "interactive") -> list[Path]:
    """Write ``fig`` as ``figures/<profile>/<name>.png`` (for the README) and ``.pdf`` (for papers)."""
    out = figures_dir(profile)
    return [
        atomic_write(out / f"{name}.{ext}", lambda p, ext=ext: fig.savefig(p, format=ext, dpi=150, bbox_inches="tight"))
        for ext in FIG_FORMATS
    ]


# Okabe & Ito's colour-blind-safe palette (https://jfly.uni-koeln.de/color/), ordered so that the first four
# colours of any figure differ in hue and lightness (seaborn's "colorblind" has two oranges at 2 and 4)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def set_style() -> None:
    """The house style of every figure."""
    sns.set_theme(context="notebook", style="whitegrid", palette=list(PALETTE))


class Method(NamedTuple):
    """How an algorithm is shown: its name in figures and tables, and its colour in every figure."""

    name: str
    color: str


# One colour per method for good (from :data:`PALETTE`), so a method looks the same in every figure. Add your
# own algorithm with ``report.METHODS["mine"] = report.Method("Mine", "#D55E00")``; without that it is shown by
# its key in a spare colour.
METHODS: dict[str, Method] = {
    "reft": Method("REFT", "#0072B2"),  # blue
    "fedavg": Method("FedAvg", "#E69F00"),  # orange
    "fedavg-weakest": Method("FedAvg (weakest model)", "#000000"),  # black (sky blue is too close to REFT's)
    "feddf": Method("FedDF", "#009E73"),  # bluish green
    "heterofl": Method("HeteroFL", "#CC79A7"),  # reddish purple
}
SPARE_COLORS = ("#D55E00", "#56B4E9", "#F0E442", "#8C564B", "#7F7F7F")  # vermillion, sky blue, yellow, brown, grey


def method(key: str) -> Method:
    """Display name and colour of the algorithm ``key`` (a key of :data:`reft.strategies.ALGORITHMS`).
    An algorithm not in :data:`METHODS` is shown by its key, in a spare colour chosen from the key itself
    (the same in every figure and every session)."""
    if key in METHODS:
        return METHODS[key]
    return Method(str(key), SPARE_COLORS[zlib.crc32(str(key).encode()) % len(SPARE_COLORS)])


def method_name(key: str) -> str:
    """The display name of ``key`` (``"fedavg-weakest"`` -> ``"FedAvg (weakest model)"``)."""
    return method(key).name


def method_names(keys: Iterable[str]) -> list[str]:
    """The display names of ``keys``, in the fixed order of :data:`METHODS` (others after, as given)."""
    order = {k: i for i, k in enumerate(METHODS)}
    unique = list(dict.fromkeys(keys))
    return [method_name(k) for k in sorted(unique, key=lambda k: (order.get(k, len(order)), unique.index(k)))]


def method_hue(keys: Iterable[str]) -> dict:
    """``hue_order`` and ``palette`` for a seaborn plot whose hue is the display name of these methods."""
    names = method_names(keys)
    by_name = {method_name(k): method(k).color for k in dict.fromkeys(keys)}
    return {"hue_order": names, "palette": {n: by_name[n] for n in names}}


def with_method_names(df: pd.DataFrame, column: str = "algorithm", to: str = "method") -> pd.DataFrame:
    """``df`` with a column ``to`` holding the display name of each row's ``column`` (for legends)."""
    return df.assign(**{to: df[column].map(method_name)})


def plain_log_axis(axis) -> None:
    """Ticks of a log axis at 1 and 3 x 10^k, written as plain numbers (0.1, 3, 30), not powers of ten."""
    axis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def accuracy_curves(
    history: pd.DataFrame,
    x: str,
    xlabel: str,
    col: str | None = None,
    by: str = "algorithm",
    log_x: bool = True,
    target: float | None = None,
) -> sns.FacetGrid:
    """Server test accuracy (%) of each method against ``x`` (e.g. cumulative MB or simulated seconds), one
    line per method, one panel per ``col`` (e.g. the partition). The line is the mean over seeds, the band
    seaborn's bootstrap 95% interval of that mean; ``x`` is averaged per round first
    (:func:`per_round_mean`), so the band is the spread of accuracy only. ``target``: a dashed line there."""
    h = with_method_names(history.assign(acc=100 * history["server_acc"]), by)
    h = per_round_mean(h, x, [by, *([col] if col else [])])
    grid = sns.relplot(
        data=h, x=x, y="acc", hue="method", col=col, kind="line", marker="o", errorbar=("ci", 95),
        height=3.3, aspect=1.15 if col else 1.6, facet_kws={"sharex": False}, **method_hue(history[by]),
    )  # fmt: skip
    grid.set(xlabel=xlabel, ylabel="server test accuracy (%)")
    grid.set_titles("{col_name}" if col else "")
    for ax in grid.axes.flat:
        if log_x:
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis)
        if target is not None:
            ax.axhline(100 * target, ls="--", c="grey", lw=1)
    return grid


def mark_tiers(ax: plt.Axes, ratios_by_tier: dict[str, float]) -> None:
    """Dotted vertical lines at the ratios a policy gave the tiers, named above the plot (a second x axis
    on top, so the names never cross the curves); tiers with the same ratio share one label."""
    by_ratio: dict[float, list[str]] = {}
    for t, r in ratios_by_tier.items():
        by_ratio.setdefault(round(float(r), 6), []).append(t)
    for r in by_ratio:
        ax.axvline(r, color="grey", lw=0.8, ls=":")
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(by_ratio), [",\n".join(n) for n in by_ratio.values()], fontsize=7, rotation=90)
    top.tick_params(length=0, pad=2)
    top.grid(False)


def plot_label_histogram(hist: pd.DataFrame, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """Stacked bars: samples of each class (colour) held by each client (x)."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    colors = sns.color_palette("tab10", n_colors=hist.shape[1])
    hist.plot.bar(stacked=True, ax=ax, width=0.85, color=colors, legend=False)
    ax.set(xlabel="client", ylabel="samples", title=title)
    ax.tick_params(axis="x", rotation=0)
    return ax


def per_round_mean(history: pd.DataFrame, column: str, by: Sequence[str]) -> pd.DataFrame:
    """``history`` with ``column`` (e.g. cumulative MB or simulated seconds, which differ a little from seed
    to seed) replaced by its mean over the rows of the same ``by`` group and round, so that a seaborn line
    over seeds has one x per round and its band is the spread of accuracy, not of x."""
    keys = [*by, "round"]
    return history.assign(**{column: history.groupby(keys)[column].transform("mean")})
