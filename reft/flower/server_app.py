"""The Flower ServerApp: the in-process engine's strategy objects, driven through Flower's Grid.

:func:`serve` is :func:`reft.engine.run` with the clients on the other side of a SuperLink. It
builds the same :class:`reft.federation.Federation` and the same strategy object
(``reft.strategies.ALGORITHMS[cfg.algorithm]``), and per round asks the strategy what to send each
client (``send``), ships that as :func:`reft.comm.encode` bytes inside a Flower message, collects the
uploads that arrive before the round's deadline and hands them to ``strategy.aggregate``: for REFT
that is the server-side ensemble distillation on the public set. No part of the algorithm is
re-implemented here. The server computes on the run config's ``device`` (each SuperNode on its own,
from its node config: :mod:`reft.flower.client_app`).

A client that fails (its SuperNode dies, its ClientApp raises, its reply misses the deadline) is
reported in ``failures`` and the round goes on with the uploads that arrived. An upload that arrives
but is rejected (:func:`reft.engine.receive`: malformed, too large, non-finite, or the client reports
that its training diverged) is counted in the Ledger, left out of the aggregation and named in the
history's ``rejected`` and ``rejected_reasons``, as in the in-process engine.

The Ledger counts "down" bytes on the client's receipt: the ClientApp reports the length of the payload
it received (its reply's ``down`` metric) and the server records that when the reply arrives; a client
that never replies has no receipt and no "down" row. A receipt that differs from what the server sent
is named in ``failures``. For every client that replies the totals are the in-process engine's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import nn

from reft import comm, data, engine, federation, report, strategies
from reft.config import RunConfig
from reft.flower import config as fconfig
from reft.flower import wire


@dataclass
class RemoteClient(federation.Client):
    """A client as the server knows it: id, tier and data size as the SuperNode reported them (no data)."""

    samples: int = 0
    node_id: int = 0
    classes: list[int] | None = None  # as reported; None: not reported

    @property
    def n_samples(self) -> int:
        return self.samples

    @property
    def labels(self) -> list[int]:
        if self.classes is None:
            raise ValueError(f"Client {self.id} did not report its classes (HeteroFL's classifier rows need them).")
        return self.classes


@dataclass
class FlowerRun:
    """What :func:`serve` did: per-round history, the Ledger, the nodes, every failure."""

    history: pd.DataFrame
    ledger: comm.Ledger
    nodes: pd.DataFrame
    failures: pd.DataFrame
    strategy: strategies.Strategy = field(repr=False)


def _write(out_dir: str, name: str, df: pd.DataFrame) -> None:
    if out_dir:
        report.atomic_write(Path(out_dir) / name, lambda p: df.to_csv(p, index=False))


def _write_json(out_dir: str, name: str, obj: dict) -> None:
    if out_dir:
        report.atomic_write(Path(out_dir) / name, lambda p: p.write_text(json.dumps(obj, indent=1)))


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float, poll: float = 0.2
) -> tuple[dict[int, Message], dict[int, str]]:
    """Send ``messages`` and wait for their replies until ``timeout`` seconds have passed.

    Returns the replies by destination node id and, for every node that did not reply with a
    result, why (error reply, node gone from the SuperLink, or timeout). Grid.send_and_receive
    polls every 3 s and says nothing about who is missing; this polls every ``poll`` seconds.
    """
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    pending = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}
    replies: dict[int, Message] = {}
    failed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if reply.has_error():
                failed[node] = f"error {reply.error.code}: {reply.error.reason}"
            else:
                replies[node] = reply
        if pending:
            time.sleep(poll)
    for node in pending.values():
        failed[node] = f"no reply within {timeout:g} s"
    return replies, failed


def receipt(metrics: Mapping, sent: int | None) -> int | None:
    """The bytes a client reports it received this round (its reply's ``down`` metric), or None when
    the server sent it nothing and it reports nothing (no Ledger row, as in the in-process engine)."""
    got = int(metrics.get("down", 0))
    return got if got or sent is not None else None


def _wait_for_nodes(grid: Grid, n: int, timeout: float, poll: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if len(nodes) < n:
        raise RuntimeError(
            f"Only {len(nodes)} of {n} SuperNodes connected within {timeout:g} s; start more or lower n-clients."
        )
    return nodes


def discover(grid: Grid, cfg: RunConfig, opts: fconfig.FlowerOptions) -> list[RemoteClient]:
    """Ask every connected SuperNode who it is; one :class:`RemoteClient` per partition id, in order."""
    nodes = _wait_for_nodes(grid, cfg.n_clients, opts.node_timeout, opts.poll_interval)
    hello = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
    # a node's first reply waits for it to load and partition the data: a round's patience, not a connection's
    replies, failed = exchange(grid, hello, opts.round_timeout, opts.poll_interval)
    clients: dict[int, RemoteClient] = {}
    for node, reply in replies.items():
        info = reply.content["info"]
        pid = int(info["partition-id"])
        if pid in clients:
            raise ValueError(f"SuperNodes {clients[pid].node_id} and {node} both claim partition-id {pid}.")
        empty = torch.empty(0)
        classes = json.loads(str(info["labels"])) if "labels" in info else None
        clients[pid] = RemoteClient(
            pid, str(info["tier"]), empty, empty, samples=int(info["samples"]), node_id=node, classes=classes
        )
    missing = sorted(set(range(cfg.n_clients)) - set(clients))
    if missing:
        raise RuntimeError(f"No SuperNode reported partition-ids {missing} (failures: {failed}).")
    return [clients[i] for i in range(cfg.n_clients)]


def serve(grid: Grid, cfg: RunConfig, opts: fconfig.FlowerOptions, splits: data.Splits | None = None) -> FlowerRun:
    """Run ``cfg.rounds`` rounds of ``cfg.algorithm`` over the SuperNodes behind ``grid``."""
    t_start = time.perf_counter()
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    status = {"status": "running", "rounds_done": 0}
    _write_json(opts.out_dir, "status.json", status)
    try:
        whole = engine.source(cfg, splits)
        splits = engine.prepare(cfg, whole)
        fed = federation.Federation(  # tiers, sizes as reported
            cfg, splits, clients=discover(grid, cfg, opts), final_test=engine.final_test(cfg, whole)
        )
        engine.warn_amp(cfg, fed.device)
        nodes = pd.DataFrame(
            [{"client": c.id, "node_id": c.node_id, "tier": c.tier, "samples": c.samples} for c in fed.clients]
        )
        _write(opts.out_dir, "nodes.csv", nodes)
        strategy = strategies.create(cfg.algorithm)
        ledger = comm.Ledger()
        max_up = engine.max_upload_bytes(fed)
        strategy.setup(fed)
        rows, fails = [], []
        cum_up = cum_down = 0
        for rnd in range(1, cfg.rounds + 1):
            t_round = time.perf_counter()
            active = engine.participants(cfg, rnd)
            msgs, down_of = [], {}
            for cid in active:
                cl = fed.clients[cid]
                local = json.dumps(strategy.local_options(fed, cl))  # how to train, beyond the model
                content = RecordDict({"round": ConfigRecord({"round": rnd, "local": local})})
                offer: nn.Module | None = strategy.send(fed, rnd, cl)
                if offer is not None:  # counted in the Ledger when the client reports its receipt
                    payload = comm.encode(offer, cfg.codec_down)
                    content["model"] = wire.pack(payload)
                    down_of[cid] = len(payload)
                msgs.append(Message(content, dst_node_id=cl.node_id, message_type="train", group_id=str(rnd)))
            t_x = time.perf_counter()
            replies, failed = exchange(grid, msgs, opts.round_timeout, opts.poll_interval)
            exchange_s = time.perf_counter() - t_x
            by_node = {c.node_id: c for c in fed.clients}
            uploads: dict[int, nn.Module] = {}
            rejected: dict[int, str] = {}
            stats = []
            for node, reply in sorted(replies.items(), key=lambda kv: by_node[kv[0]].id):
                cid = by_node[node].id
                m = reply.content["metrics"]
                got = receipt(m, down_of.get(cid))
                if got is not None:  # "down" bytes: what the client says it received, counted now
                    ledger.count(rnd, cid, "down", got)
                if got != down_of.get(cid):
                    why = f"reported receiving {got or 0} bytes; the server sent {down_of.get(cid, 0)}"
                    fails.append({"round": rnd, "client": cid, "node_id": node, "reason": why})
                payload = ledger.record(rnd, cid, "up", wire.unpack(reply.content["model"]))
                upload, why = engine.receive(payload, max_up, diverged=bool(m.get("diverged", 0)))
                if upload is None:
                    rejected[cid] = why
                else:
                    uploads[cid] = upload
                stats.append(
                    {"acc": float(m["acc"]), "train_s": float(m["train_s"]), "down": got or 0, "up": len(payload)}
                )
            for node, why in failed.items():
                fails.append({"round": rnd, "client": by_node[node].id, "node_id": node, "reason": why})
            extra: dict[str, float] = {}
            t_s = time.perf_counter()
            if uploads:  # the strategy aggregates what arrived; nothing arrived: the server model stays as it is
                extra = strategy.aggregate(fed, rnd, uploads)
            accuracy = fed.accuracy_columns(strategy.server_model, rnd)
            server_s = time.perf_counter() - t_s
            up, down = sum(s["up"] for s in stats), sum(s["down"] for s in stats)
            cum_up, cum_down = cum_up + up, cum_down + down
            rows.append(
                {
                    "algorithm": strategy.name,
                    **engine.codec_columns(cfg),
                    "round": rnd,
                    **accuracy,
                    "client_acc_mean": float(pd.Series([s["acc"] for s in stats], dtype=float).mean()),
                    **extra,
                    "participants": len(active),
                    "arrived": len(uploads),
                    "failed": len(failed),
                    **engine.rejection_columns(rejected),
                    "bytes_up": up,
                    "bytes_down": down,
                    "cum_bytes_up": cum_up,
                    "cum_bytes_down": cum_down,
                    "cum_bytes": cum_up + cum_down,
                    "client_train_s_max": max((s["train_s"] for s in stats), default=float("nan")),
                    "exchange_s": exchange_s,
                    "server_s": server_s,
                    "wall_s": time.perf_counter() - t_round,
                }
            )
            history = pd.DataFrame(rows)
            failures = pd.DataFrame(fails, columns=["round", "client", "node_id", "reason"])
            _write(opts.out_dir, "history.csv", history)
            _write(opts.out_dir, "ledger.csv", ledger.frame())
            _write(opts.out_dir, "failures.csv", failures)
            status.update(rounds_done=rnd, failures=len(fails))
            _write_json(opts.out_dir, "status.json", status)
        status.update(status="finished", wall_s=time.perf_counter() - t_start, server_acc=rows[-1]["server_acc"])
        _write_json(opts.out_dir, "status.json", status)
        return FlowerRun(history, ledger, nodes, failures, strategy)
    except BaseException as e:
        status.update(status="error", error=f"{type(e).__name__}: {e}", wall_s=time.perf_counter() - t_start)
        _write_json(opts.out_dir, "status.json", status)
        raise


def make_server_app(defaults: Mapping | None = None) -> ServerApp:
    """A ServerApp running :func:`serve`; ``defaults`` (a Flower run config) fill in missing keys."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        cfg, opts = fconfig.from_user_config({**(defaults or {}), **context.run_config})
        serve(grid, cfg, opts)

    return server


app = make_server_app()
