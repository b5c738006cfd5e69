"""Read what a Flower run left in its output folder: :class:`FlowerResult` and :func:`read_result`.

The ServerApp writes ``history.csv``, ``ledger.csv``, ``failures.csv``, ``nodes.csv`` and ``status.json``;
each ClientApp appends to ``clients/<partition-id>.jsonl`` (:func:`client_started` watches it for a
round's start); the child process of :func:`reft.flower.engines.run` writes ``result.json``
(:func:`write_run_info`, :func:`read_run_info`). Nothing here starts a process or imports Flower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class FlowerResult:
    """A finished Flower run: history and Ledger (from the ServerApp), what each client recorded,
    failures, the SuperNodes, timings, the strangers refused (when probed), and the PIDs still alive after
    :meth:`~reft.flower.deployment.Deployment.stop` (should be none)."""

    history: pd.DataFrame
    ledger: pd.DataFrame
    client_log: pd.DataFrame
    failures: pd.DataFrame
    nodes: pd.DataFrame
    status: dict
    wall_s: float
    killed: list[int] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)  # strangers the SuperLink turned away (Deployment.probe)

    @property
    def final_acc(self) -> float:
        return float(self.history["server_acc"].iloc[-1])


def read_result(out_dir: str | Path, wall_s: float = float("nan")) -> FlowerResult:
    """Collect what the ServerApp and the ClientApps wrote into ``out_dir``."""
    out = Path(out_dir)

    def csv(name: str) -> pd.DataFrame:
        p = out / name
        return pd.read_csv(p) if p.exists() and p.stat().st_size else pd.DataFrame()

    rows = []
    for p in sorted((out / "clients").glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else {}
    return FlowerResult(
        csv("history.csv"), csv("ledger.csv"), pd.DataFrame(rows), csv("failures.csv"), csv("nodes.csv"), status, wall_s
    )


def client_started(out: Path, partition_id: int, rnd: int) -> bool:
    """Whether the ClientApp of ``partition_id`` has started training in round ``rnd``."""
    p = out / "clients" / f"{partition_id}.jsonl"
    if not p.exists():
        return False
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("round") == rnd and row.get("event") == "start":
            return True
    return False


def write_run_info(out_dir: str | Path, result: FlowerResult) -> dict:
    """Write ``result.json`` (wall time, killed nodes, PIDs left over, status, refusals) for the parent process."""
    info = {
        "wall_s": result.wall_s,
        "killed": result.killed,
        "leftover": result.leftover,
        "status": result.status,
        "refusals": result.refusals,
    }
    (Path(out_dir) / "result.json").write_text(json.dumps(info, indent=1))
    return info


def read_run_info(out_dir: str | Path) -> dict:
    """What :func:`write_run_info` wrote in ``out_dir``."""
    return json.loads((Path(out_dir) / "result.json").read_text())
