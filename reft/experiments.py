"""Experiments over runs: sweeps over config variants, every method on every partition, and the tables
read from their histories (summary row, time to accuracy, accuracy within a byte budget).

Nothing here trains on its own; every number comes from :func:`reft.engine.run`. A sweep may run its
independent runs in worker processes (``workers``), each with an equal share of torch's threads.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from reft import data
from reft.config import RunConfig
from reft.engine import RunResult, run
from reft.progress import tqdm


def time_to_accuracy(history: pd.DataFrame, target: float) -> float:
    """Simulated seconds until the server model first reaches ``target`` accuracy (NaN if never)."""
    hit = history.loc[history["server_acc"] >= target, "cum_sim_s"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def accuracy_at_budget(history: pd.DataFrame, budget_bytes: float) -> float:
    """Server accuracy at the end of the last round whose cumulative bytes fit ``budget_bytes`` (not the
    best such round: picking a round by its test accuracy would select on the test set)."""
    fit = history.loc[history["cum_bytes"] <= budget_bytes, "server_acc"]  # rows are in round order
    return float(fit.iloc[-1]) if len(fit) else float("nan")


def summary(result: RunResult, target_acc: float | None = None) -> dict:
    """One row of the comparison table for a finished run."""
    h, cfg = result.history, result.config
    up, down = result.ledger.total("up"), result.ledger.total("down")
    row = {
        "method": result.strategy.name,
        "partition": partition_label(cfg.partition if cfg.partition != "dirichlet" else cfg.alpha),
        "codec_up": cfg.codec_up,  # how models were stored on the wire (reft.codecs); the MB below are those bytes
        "codec_down": cfg.codec_down,
        "rounds": len(h),
        "final_acc": float(h["server_acc"].iloc[-1]),
        "final_test_n": int(h["test_n"].iloc[-1]),
        # robustness: the mean of the last five rounds on the fixed per-round subset (it selects nothing)
        "last5_subset_acc": float(h["subset_acc"].tail(5).mean()) if "subset_acc" in h else float("nan"),
        "client_acc_mean": float(h["client_acc_mean"].iloc[-1]),
        **{f"final_{c}": float(h[c].iloc[-1]) for c in ("group_acc_mean", "group_acc_best") if c in h},  # FedDF
        "mb_up": up / 1e6,
        "mb_down": down / 1e6,
        "mb_total": (up + down) / 1e6,
    }
    for col in h.columns:
        if col.startswith("gflops["):
            row[f"client_{col}_per_round"] = float(h[col].mean())
    row["sim_time_s"] = float(h["cum_sim_s"].iloc[-1])
    if target_acc is not None:
        row[f"sim_time_to_{target_acc:g}_s"] = time_to_accuracy(h, target_acc)
    row["overhead_pct"] = result.overhead_pct
    return row


def partition_kw(partition: str | float) -> dict:
    """``"iid"``/``"shards"`` as they are, a number as a Dirichlet alpha: RunConfig fields."""
    if isinstance(partition, str):
        return {"partition": partition, "alpha": None}
    return {"partition": "dirichlet", "alpha": float(partition)}


@dataclass
class Comparison:
    """Several methods on several partitions: one summary row per run, every history, every client."""

    table: pd.DataFrame
    history: pd.DataFrame
    clients: pd.DataFrame
    results: list[RunResult] = field(repr=False)


def partition_label(partition: str | float) -> str:
    """How a partition is named in tables: ``iid``, ``shards`` or ``dirichlet(0.5)``."""
    return partition if isinstance(partition, str) else f"dirichlet({float(partition):g})"


#: Rough relative cost of one run per algorithm, to start the longest runs first in worker processes
#: (so that the last worker does not finish alone). Unknown algorithms count 1.
_COST = {"feddf": 4.0, "reft": 2.0, "fedavg": 1.0, "heterofl": 0.6, "fedavg-weakest": 0.2}


@functools.lru_cache(maxsize=1)
def _load(dataset: str, seed: int) -> data.Splits:
    return data.load(dataset, seed=seed)


_SPLITS: data.Splits | None = None  # a worker's copy of the caller's splits (sweeps without seeds)


def _init_worker(threads: int, splits: data.Splits | None) -> None:
    global _SPLITS
    torch.set_num_threads(threads)
    _SPLITS = splits


def _work(job: tuple[int, RunConfig]) -> tuple[int, RunResult]:
    i, cfg = job
    return i, run(cfg, _SPLITS if _SPLITS is not None else _load(cfg.dataset, cfg.seed))


def _finished(res: RunResult) -> str:
    """What the runs bar says of the run that just finished (one line per run in batch: reft.progress)."""
    cfg = res.config
    where = partition_label(cfg.partition if cfg.partition != "dirichlet" else cfg.alpha)
    return f"last: {cfg.algorithm} {where} seed {cfg.seed}, acc {res.history['server_acc'].iloc[-1]:.4f}"


def _run_all(configs: Sequence[RunConfig], splits: data.Splits | None, workers: int, progress: bool) -> list[RunResult]:
    """Every config's run, in order: here one after another (``workers`` 1), or in ``workers`` spawned
    processes with ``torch.get_num_threads() // workers`` threads each, longest runs first."""
    bar = tqdm(total=len(configs), desc="runs", disable=not progress)
    if workers == 1:
        out = []
        for cfg in configs:
            out.append(run(cfg, splits if splits is not None else _load(cfg.dataset, cfg.seed)))
            bar.set_postfix_str(_finished(out[-1]))
            bar.update()
        bar.close()
        return out
    order = sorted(range(len(configs)), key=lambda i: -_COST.get(configs[i].algorithm, 1.0))
    jobs = [(i, configs[i].replace(progress=False)) for i in order]  # one bar here, none in the workers
    threads = max(1, torch.get_num_threads() // workers)
    results: dict[int, RunResult] = {}
    with mp.get_context("spawn").Pool(workers, _init_worker, (threads, splits)) as pool:  # exit: terminate
        for i, res in pool.imap_unordered(_work, jobs):
            results[i] = res
            bar.set_postfix_str(_finished(res))
            bar.update()
    bar.close()
    return [results[i] for i in range(len(configs))]


def sweep(
    base: RunConfig,
    splits: data.Splits | None,
    variants: Mapping[Hashable, Mapping[str, Any]],
    names: Sequence[str] = ("variant",),
    target_acc: float | None = None,
    save_prefix: str | None = None,
    seeds: Sequence[int] | None = None,
    workers: int = 1,
) -> Comparison:
    """Run ``base`` once per variant (a dict of RunConfig changes, keyed by its label or a tuple of
    labels named by ``names``): one summary row per run, every history and client table, labelled.

    ``seeds``: run every variant once per seed, paired (for one seed every variant sees the same split,
    partition, tiers and initial weights; the seed changes all of them), with a ``seed`` label column.
    The data are then loaded per seed (``splits`` must be None: a split belongs to its seed).
    With ``save_prefix`` each run's history is saved after every round as
    ``results/<profile>/<save_prefix>_<labels>.csv`` (``..._seed<k>.csv`` with seeds).
    ``workers`` > 1 runs the runs in that many spawned processes, each with an equal share of torch's
    threads (a run's numbers depend on its thread count, not on the process it runs in); an interrupt
    stops them all. Rows come back in the order of the variants either way.
    """
    if seeds is not None and (splits is not None or not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError("With seeds: pass splits=None (each seed loads its own split) and distinct seeds.")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (1: run in this process); got {workers!r}.")
    runs = [(None, key, ch) for key, ch in variants.items()] if seeds is None else [
        (seed, key, ch) for seed in seeds for key, ch in variants.items()]  # fmt: skip
    labelled, configs = [], []
    for seed, key, changes in runs:
        labels = dict(zip(names, key if isinstance(key, tuple) else (key,), strict=True))
        name = "_".join([save_prefix, *map(str, labels.values())]) if save_prefix else None
        if seed is not None:
            name = f"{name}_seed{seed}" if name else None
            labels["seed"], changes = seed, {**changes, "seed": seed}
        labelled.append(labels)
        configs.append(base.replace(save_as=name, **changes))
    results = _run_all(configs, splits, workers, base.progress)
    tables = [{**summary(res, target_acc), **labels} for res, labels in zip(results, labelled, strict=True)]
    histories = [res.history.assign(**labels) for res, labels in zip(results, labelled, strict=True)]
    clients = [res.clients.assign(**labels) for res, labels in zip(results, labelled, strict=True)]
    return Comparison(pd.DataFrame(tables), pd.concat(histories, ignore_index=True), pd.concat(clients), results)


def compare(
    base: RunConfig,
    splits: data.Splits | None = None,
    methods: Sequence[str] = ("reft", "fedavg", "fedavg-weakest"),
    partitions: Sequence[str | float] = ("iid", 0.5),
    target_acc: float | None = None,
    save_prefix: str | None = None,
    seeds: Sequence[int] | None = None,
    workers: int = 1,
) -> Comparison:
    """Every method on every partition with otherwise identical settings (``base``): a :func:`sweep`
    labelled by ``method`` and ``partition`` (and ``seed``, paired, with ``seeds``), in ``workers``
    processes."""
    variants = {(m, partition_label(p)): {"algorithm": m, **partition_kw(p)} for p in partitions for m in methods}
    return sweep(base, splits, variants, ("method", "partition"), target_acc, save_prefix, seeds, workers)


def budget_table(
    histories: Mapping[str, pd.DataFrame],
    budgets_mb: Sequence[float] | None = None,
    fractions: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    reference: str = "fedavg",
) -> pd.DataFrame:
    """Accuracy each method had after its last round within each byte budget (rows: budgets in MB; columns:
    methods).

    Without ``budgets_mb`` the budgets are ``fractions`` of the ``reference`` method's total bytes
    (of the largest total when that method is absent).
    """
    if budgets_mb is None:
        ref = histories.get(reference)
        top = ref["cum_bytes"].max() if ref is not None else max(h["cum_bytes"].max() for h in histories.values())
        budgets_mb = [f * top / 1e6 for f in fractions]
    table = {name: [accuracy_at_budget(h, b * 1e6) for b in budgets_mb] for name, h in histories.items()}
    return pd.DataFrame(table, index=pd.Index(list(budgets_mb), name="budget_mb"))
