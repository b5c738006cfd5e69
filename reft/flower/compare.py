"""The same workload on the in-process engine (:mod:`reft.engine`) and on Flower's engines, side by side.

:func:`compare` gives one row per engine (status, wall time, and :func:`summary`: rounds, final accuracy,
the Ledger's bytes up and down; whether both equal the in-process run's) and each engine's history;
:func:`compare_algorithms` does that for several algorithms (default: all five of
:data:`ALGORITHMS`) and :func:`write_table` saves the table as CSV; :func:`has_flwr` tells whether an
interpreter can run the Flower engines at all.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from reft.config import RunConfig
from reft.flower import config as fconfig
from reft.flower.engines import run

ALGORITHMS = ("reft", "fedavg", "fedavg-weakest", "feddf", "heterofl")
TABLE = "flower_parity.csv"  # the file :func:`write_table` writes


def has_flwr(python: str | None = None) -> bool:
    """Whether ``python`` (default: this interpreter) can import flwr (checked without importing it)."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('flwr') is None)"
    return subprocess.run([python or sys.executable, "-c", code], check=False).returncode == 0


def summary(history: pd.DataFrame, ledger: pd.DataFrame) -> dict:
    """Rounds, final server accuracy and the Ledger's bytes up and down (also in MB) of one run."""
    by_dir = ledger.groupby("direction")["bytes"].sum() if len(ledger) else pd.Series(dtype=int)
    up, down = int(by_dir.get("up", 0)), int(by_dir.get("down", 0))
    return {"rounds": len(history), "final_acc": float(history["server_acc"].iloc[-1]), "bytes_up": up,
            "bytes_down": down, "mb_up": up / 1e6, "mb_down": down / 1e6}  # fmt: skip


def compare(
    cfg: RunConfig,
    tiers: Sequence[str] | None = None,
    engines: Sequence[str] = ("in-process", "simulate", "deploy"),
    threads: int = 1,
    python: str | None = None,
    out_dir: str | Path | None = None,
    splits=None,
    secure: bool = True,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The same workload (``cfg.algorithm``, its codecs) on the in-process engine and on Flower's engines.

    Every engine runs with ``threads`` torch threads per process (the thread count changes float
    summation order, so equal counts give equal numbers). ``tiers`` (one per client) are what the
    SuperNodes report; the in-process run gets them as ``tier_mix``. Flower engines are skipped
    (``status`` says so) when ``python`` has no flwr. Returns the table (one row per engine; ``bytes_up``
    and ``bytes_down`` are the Ledger's totals; ``same_acc`` and ``same_bytes`` compare them with the
    in-process run's, exactly) and each engine's history. ``secure``: the deployment with TLS and
    SuperNode authentication (the default), or ``--insecure``.
    """
    import torch

    from reft import engine as reft_engine

    tiers = list(tiers) if tiers is not None else None
    if tiers is not None:
        cfg = cfg.replace(tier_mix=tiers)
    out = Path(out_dir or tempfile.mkdtemp(prefix="reft-flower-compare-"))
    flwr_ok = has_flwr(python)
    rows, histories = [], {}
    for engine in engines:
        row: dict = {
            "algorithm": cfg.algorithm,
            "codec_up": cfg.codec_up,
            "codec_down": cfg.codec_down,
            "engine": engine,
        }
        if engine == "in-process":
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                t0 = time.perf_counter()
                res = reft_engine.run(cfg, splits)  # the in-process engine (the loop variable is `engine`)
                wall = time.perf_counter() - t0
            finally:
                torch.set_num_threads(before)
            h, ledger = res.history, res.ledger.frame()
            row.update(status="finished", total_wall_s=wall, run_wall_s=wall, failures=0)
        elif not flwr_ok:
            rows.append({**row, "status": "skipped: flwr not installed (pip install -e '.[flower]')"})
            continue
        else:
            opts = fconfig.FlowerOptions(out_dir=str(out / engine), threads=threads)
            res = run(
                engine, cfg, tiers=tiers if engine == "deploy" else None, options=opts, python=python, secure=secure
            )
            h, ledger = res.history, res.ledger
            row.update(
                status=res.status.get("status"),
                total_wall_s=res.status["total_wall_s"],
                run_wall_s=float(res.status.get("wall_s", float("nan"))),
                failures=len(res.failures),
                leftover_processes=len(res.leftover),
            )
        histories[engine] = h
        row.update(summary(h, ledger))
        rows.append(row)
    table = pd.DataFrame(rows)
    if "in-process" in histories and "final_acc" in table:
        ref = table.loc[table.engine == "in-process"].iloc[0]
        table["acc_diff_points"] = 100 * (table["final_acc"] - ref["final_acc"])
        table["same_acc"] = table["final_acc"] == ref["final_acc"]
        table["same_bytes"] = (table["bytes_up"] == ref["bytes_up"]) & (table["bytes_down"] == ref["bytes_down"])
    return table, histories


def compare_algorithms(
    cfg: RunConfig,
    algorithms: Sequence[str] = ALGORITHMS,
    tiers: Sequence[str] | None = None,
    engines: Sequence[str] = ("in-process", "deploy"),
    threads: int = 1,
    python: str | None = None,
    out_dir: str | Path | None = None,
    splits=None,
    secure: bool = True,
) -> pd.DataFrame:
    """:func:`compare` for every algorithm of ``algorithms`` (same seed, same codecs: ``cfg``'s); one table,
    one row per algorithm and engine. The dataset is loaded once (``splits``, default ``cfg.dataset``)."""
    from reft import engine as reft_engine

    splits = reft_engine.source(cfg, splits) if "in-process" in engines else splits
    out = Path(out_dir or tempfile.mkdtemp(prefix="reft-flower-parity-"))
    tables = [
        compare(cfg.replace(algorithm=a), tiers, engines, threads, python, out / a, splits, secure)[0]
        for a in algorithms
    ]
    return pd.concat(tables, ignore_index=True)


def write_table(table: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``table`` as ``out_dir``/:data:`TABLE` (folder made if needed); returns the file's path."""
    path = Path(out_dir) / TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path
