"""The same REFT workload on the in-process engine (:mod:`reft.engine`) and on Flower's engines, side by side.

:func:`compare` gives one row per engine (status, wall time, rounds, final accuracy, MB up and down,
accuracy difference from the in-process run) and each engine's history; :func:`has_flwr` tells whether
an interpreter can run the Flower engines at all.
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


def has_flwr(python: str | None = None) -> bool:
    """Whether ``python`` (default: this interpreter) can import flwr (checked without importing it)."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('flwr') is None)"
    return subprocess.run([python or sys.executable, "-c", code], check=False).returncode == 0


def compare(
    cfg: RunConfig,
    tiers: Sequence[str] | None = None,
    engines: Sequence[str] = ("in-process", "simulate", "deploy"),
    threads: int = 1,
    python: str | None = None,
    out_dir: str | Path | None = None,
    splits=None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The same REFT workload on the in-process engine and on Flower's engines; one row per engine.

    Every engine runs with ``threads`` torch threads per process (the thread count changes float
    summation order, so equal counts give equal numbers). ``tiers`` (one per client) are what the
    SuperNodes report; the in-process run gets them as ``tier_mix``. Flower engines are skipped
    (``status`` says so) when ``python`` has no flwr. Returns the table and each engine's history.
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
        row: dict = {"engine": engine}
        if engine == "in-process":
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                t0 = time.perf_counter()
                res = reft_engine.run(cfg, splits)  # the in-process engine (the loop variable is `engine`)
                wall = time.perf_counter() - t0
            finally:
                torch.set_num_threads(before)
            h = res.history
            row.update(status="finished", total_wall_s=wall, run_wall_s=wall, failures=0)
        elif not flwr_ok:
            rows.append({**row, "status": "skipped: flwr not installed (pip install -e '.[flower]')"})
            continue
        else:
            opts = fconfig.FlowerOptions(out_dir=str(out / engine), threads=threads)
            res = run(engine, cfg, tiers=tiers if engine == "deploy" else None, options=opts, python=python)
            h = res.history
            row.update(
                status=res.status.get("status"),
                total_wall_s=res.status["total_wall_s"],
                run_wall_s=float(res.status.get("wall_s", float("nan"))),
                failures=len(res.failures),
                leftover_processes=len(res.leftover),
            )
        histories[engine] = h
        row.update(
            rounds=len(h),
            final_acc=float(h["server_acc"].iloc[-1]),
            mb_up=float(h["bytes_up"].sum()) / 1e6,
            mb_down=float(h["bytes_down"].sum()) / 1e6,
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if "in-process" in histories and "final_acc" in table:
        ref = table.loc[table.engine == "in-process", "final_acc"].iloc[0]
        table["acc_diff_points"] = 100 * (table["final_acc"] - ref)
    return table, histories
