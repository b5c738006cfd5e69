"""The Flower ClientApp: train the model the server sent (or the one kept from earlier rounds).

A SuperNode says who it is in its node config: ``partition-id`` (which shard of the private data it
holds; Flower's simulation sets it too) and, optionally, ``tier`` (its hardware tier, a row of the
tier table). Without ``tier`` the client takes the tier the in-process engine would give it
(``RunConfig.tier_mix``), so simulation and in-process runs see the same federation. ``device`` (default
``"auto"``: CUDA, else Apple MPS, else the CPU) is where this node trains: it replaces the run config's
``device``, which is the server's; the node's data move there once.

The client's data come from :class:`reft.federation.Federation` built from the same RunConfig, so
the shard (and its order) is exactly the in-process engine's. The model the client trains lives in
``Context.state`` between rounds (as its ``reft.comm`` bytes), because REFT does not resend it.
Its reply reports the length of the payload it received this round (metric ``down``; 0 when it trained
the kept model): the server's Ledger counts "down" bytes from that receipt.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from reft import comm, data, engine, federation, strategies, train
from reft.config import RunConfig
from reft.flower import config as fconfig
from reft.flower import wire

_CACHE: dict[str, federation.Federation] = {}


def _federation(sig: str, cfg: RunConfig) -> federation.Federation:
    # Cached per process: a ClientApp process may serve several messages (simulation actors do).
    key = f"{sig} on {cfg.device}"
    if key not in _CACHE:
        _CACHE.clear()
        splits = engine.prepare(cfg, data.load(cfg.dataset, seed=cfg.seed))
        _CACHE[key] = federation.Federation(cfg, splits)
    return _CACHE[key]


STALL_S = 120.0  # how long a node started with node config stall-round=R hangs in round R


def _identity(context: Context, cfg: RunConfig) -> tuple[int, str, federation.Client]:
    nc = context.node_config
    if "partition-id" not in nc:
        raise ValueError(
            "This SuperNode has no partition-id in its node config; start it with --node-config 'partition-id=0 ...'."
        )
    pid = int(nc["partition-id"])
    if not 0 <= pid < cfg.n_clients:
        raise ValueError(f"partition-id {pid} is outside 0..{cfg.n_clients - 1} (n-clients = {cfg.n_clients}).")
    fed = _federation(fconfig.signature(cfg), cfg)
    client = fed.clients[pid]
    tier = str(nc.get("tier", client.tier))
    if tier not in fed.tiers.index:
        raise ValueError(f"Unknown tier {tier!r} in node config; valid tiers: {', '.join(fed.tiers.index)}.")
    return pid, tier, client


def _log(out_dir: str, pid: int, row: dict) -> None:
    """Append one line to this client's own record of what it received and sent (if out-dir is set)."""
    if not out_dir:
        return
    path = Path(out_dir) / "clients" / f"{pid}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"client_id": pid, **row, "os_pid": os.getpid(), "t": time.time()}) + "\n")


def _config(context: Context, defaults: Mapping | None) -> tuple[RunConfig, fconfig.FlowerOptions]:
    cfg, opts = fconfig.for_node({**(defaults or {}), **context.run_config}, context.node_config)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    return cfg, opts


def hello(msg: Message, context: Context, defaults: Mapping | None = None) -> Message:
    """Tell the server who this node is: partition, tier, number of samples, the classes it holds."""
    cfg, _ = _config(context, defaults)
    pid, tier, client = _identity(context, cfg)
    info = ConfigRecord(
        {"partition-id": pid, "tier": tier, "samples": client.n_samples, "labels": json.dumps(client.labels)}
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


def fit(msg: Message, context: Context, defaults: Mapping | None = None) -> Message:
    """One local round: take the model (sent now, or kept), train it on the shard, send it back."""
    cfg, opts = _config(context, defaults)
    pid, tier, client = _identity(context, cfg)
    rnd = int(msg.content["round"]["round"])
    _log(opts.out_dir, pid, {"round": rnd, "event": "start"})
    if int(context.node_config.get("stall-round", -1)) == rnd:  # fault injection: a device that hangs mid-round
        time.sleep(STALL_S)
    if "model" in msg.content:
        payload = wire.unpack(msg.content["model"])
        _log(opts.out_dir, pid, {"round": rnd, "event": "received", "bytes": len(payload)})
        down = len(payload)
    elif "model" in context.state:
        payload, down = wire.unpack(context.state["model"]), 0
    else:
        raise RuntimeError(f"Client {pid} has no model: the server must send one before the first round it trains.")
    model = comm.decode(payload)
    t = time.perf_counter()
    local = json.loads(str(msg.content["round"].get("local", "{}")))
    fit_res = engine.client_update(cfg, model, client.x, client.y, rnd, pid, strategies.create(cfg.algorithm), local)
    train_s = time.perf_counter() - t
    fed, acc = _federation(fconfig.signature(cfg), cfg), float("nan")
    if cfg.eval_clients:
        acc = train.evaluate(model, fed.test.x, fed.test.y, device=fed.device, amp=fed.amp)
    up = comm.encode(model, cfg.codec_up)
    kept = up if cfg.codec_up == "fp32" else comm.encode(model)  # the client's own model stays full precision
    context.state["model"] = wire.pack(kept)  # REFT keeps training this model; nothing is resent
    _log(opts.out_dir, pid, {"round": rnd, "event": "sent", "bytes": len(up)})
    metrics = MetricRecord(
        {"samples": client.n_samples, "acc": acc, "train_s": train_s, "down": down, "up": len(up),
         "diverged": int(fit_res.diverged)}
    )  # fmt: skip
    info = ConfigRecord({"tier": tier, "partition-id": pid})
    return Message(RecordDict({"model": wire.pack(up), "metrics": metrics, "info": info}), reply_to=msg)


def make_client_app(defaults: Mapping | None = None) -> ClientApp:
    """A ClientApp; ``defaults`` (a Flower run config) fill in keys the run config lacks, e.g. under
    ``run_simulation``, which passes no run config."""
    client = ClientApp()

    @client.query()
    def _hello(msg: Message, context: Context) -> Message:
        return hello(msg, context, defaults)

    @client.train()
    def _fit(msg: Message, context: Context) -> Message:
        return fit(msg, context, defaults)

    return client


app = make_client_app()
