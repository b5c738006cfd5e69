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
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

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


def set_style() -> None:
    """The house style of every figure."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


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
