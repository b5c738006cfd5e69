"""The in-process engine: the rounds of a federated run, the wire, dropout, timing and the history.

One round, for every client that did not drop out:

1. ``strategy.send(fed, round, client)`` says what the server sends this client now (a model, or
   ``None`` for nothing); it crosses the wire as :func:`reft.comm.encode` bytes and the client keeps
   the decoded copy as its local model;
2. the client trains that model on its shard (:func:`reft.train.fit`);
3. the client uploads its model (encoded, counted, decoded on the server);
4. after all clients: ``strategy.aggregate(fed, round, uploads)`` does the server step.

The server trusts no upload (:func:`receive`): one that fails :func:`reft.comm.decode`'s checks (malformed,
larger than the dense model, non-finite weights) or comes from a client whose training diverged is left
out of that round's aggregation and named in the history (``rejected``, ``rejected_reasons``); a round
with no accepted upload leaves the server model as it is.

On the diagnostics rounds (``RunConfig.diagnostics_every`` and the last) the history also holds the dead
ReLU units (:mod:`reft.diagnostics`) of the server model (``dead[<layer>]``) and of the uploads
(``upload_dead[<layer>]``, their mean; ``dead_uploads``, how many have a layer with every unit dead), so a
collapse to one class names itself.

Device: the run computes on ``RunConfig.device`` (resolved by :func:`reft.train.resolve_device`): the
:class:`~reft.federation.Federation` holds every client's shard, the public set and the test parts there
(moved once); models are decoded on the CPU and move to the device when a client trains them or the server
predicts with them; the wire (:func:`reft.comm.encode`) always carries CPU tensors.

Every payload is counted in the :class:`reft.comm.Ledger` with ``len()`` of its real bytes, in both
directions, encoded with the run's codecs (``RunConfig.codec_down`` for what the server sends,
``codec_up`` for uploads; :mod:`reft.codecs`): a client trains the decoded model it received, and the
server aggregates the decoded uploads, while a client keeps its own model at full precision between
rounds. The history names both codecs (``codec_up``, ``codec_down``). The algorithm is a strategy
object from :mod:`reft.strategies` (looked up by ``RunConfig.algorithm`` in its registry); the
population it runs on is a :class:`reft.federation.Federation`. The Flower ServerApp
(:mod:`reft.flower.server_app`) drives the same strategies through the same :func:`client_update` and
:func:`participants`, so both engines train identically for one seed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from reft import bench, checkpoint, comm, costs, data, diagnostics, report, strategies, train
from reft import tiers as tiers_mod
from reft.config import RunConfig
from reft.federation import Federation
from reft.progress import tqdm
from reft.strategies import Strategy

# History columns that hold wall-clock measurements (differ run to run; everything else is seeded).
TIMING_COLUMNS = ("wall_s", "work_s", "overhead_pct")


@dataclass
class RunResult:
    """A finished run: its config, the per-round history, the Ledger, the clients and their models."""

    config: RunConfig
    history: pd.DataFrame
    ledger: comm.Ledger
    clients: pd.DataFrame
    client_models: dict[int, nn.Module] = field(repr=False)
    strategy: Strategy = field(repr=False)
    restored: bool = False  # brought back from its record (reft.checkpoint): numbers, no trained models

    def client_accuracy(self, test: data.Data) -> pd.DataFrame:
        """The client table plus each client's final local model's accuracy on ``test``."""
        if self.restored:
            raise ValueError(
                f"Run {self.config.save_as!r} came back from its record, which keeps no models; run it with"
                " resume=False for its clients' accuracy."
            )
        dev = self.config.device
        acc = {i: train.evaluate(m, test.x, test.y, device=dev) for i, m in self.client_models.items()}
        return self.clients.assign(test_acc=self.clients["client"].map(acc))

    @property
    def overhead_pct(self) -> float:
        """Engine time (wire, ledger, bookkeeping) as % of the whole run's wall time."""
        wall, work = self.history["wall_s"].sum(), self.history["work_s"].sum()
        return 100.0 * (wall - work) / wall


def final_test(cfg: RunConfig, whole: data.Splits) -> data.Data | None:
    """The test part the last round is measured on (all of ``whole``'s test images), or None when
    ``RunConfig.final_test`` is off or ``test_size`` keeps them all anyway."""
    return whole.test if cfg.final_test and cfg.test_size is not None else None


def source(cfg: RunConfig, splits: data.Splits | None = None) -> data.Splits:
    """The run's whole dataset: ``splits`` when given, else the configured dataset split by the run's seed."""
    return splits if splits is not None else data.load(cfg.dataset, seed=cfg.seed)


def prepare(cfg: RunConfig, splits: data.Splits | None) -> data.Splits:
    """The run's data: ``splits`` (or the loaded dataset) subsampled as configured, checked for the clients."""
    splits = source(cfg, splits).subsample(cfg.private_size, cfg.public_size, cfg.test_size, seed=cfg.seed)
    if len(splits.public) == 0 and cfg.public_size != 0:  # 0: no public set, refused by RunConfig where needed
        raise ValueError("The public set is empty: REFT distils on unlabelled public data; use public_size >= 1.")
    if cfg.n_clients > len(splits.private_train):
        raise ValueError(
            f"More clients ({cfg.n_clients}) than private samples ({len(splits.private_train)}): "
            "use fewer clients or a larger private_size."
        )
    return splits


def run(
    cfg: RunConfig, splits: data.Splits | None = None, strategy: Strategy | None = None, resume: bool | None = None
) -> RunResult:
    """Run one federated training as configured; returns history, Ledger and clients.

    ``splits`` (already loaded data) saves reloading across runs; the config's subsample sizes still
    apply. ``strategy`` overrides ``cfg.algorithm`` with a ready-made strategy object. A saved run
    (``save_as``) writes a checkpoint every ``checkpoint_every`` rounds; with ``resume`` (default
    ``cfg.resume``) it continues from the last one and ends with the same results as an uninterrupted
    run (:mod:`reft.checkpoint`).
    """
    cfg.validate()
    resume = cfg.resume if resume is None else resume
    whole = source(cfg, splits)
    splits = prepare(cfg, whole)
    ledger = comm.Ledger()
    saving = bool(cfg.save_as) and cfg.checkpoint_every > 0
    checkpointed = saving or (resume and bool(cfg.save_as))  # checkpoints are written or read
    fp = checkpoint.fingerprint(cfg, splits) if checkpointed else ""
    state = checkpoint.latest(cfg, fp) if resume and checkpointed else None
    record = checkpoint.load_record(cfg, fp) if resume and cfg.save_as and state is None else None
    if record is not None:  # finished, on another machine or in an earlier session: its numbers at once
        history = pd.DataFrame(record["history"])
        report.save_table(history, cfg.save_as, cfg.profile)
        ledger.rows = record["ledger"]
        strategy = strategy or strategies.create(cfg.algorithm)  # named only: no Federation, no models
        return RunResult(cfg, history, ledger, pd.DataFrame(record["clients"]), {}, strategy, restored=True)
    fed = Federation(cfg, splits, final_test=final_test(cfg, whole))
    warn_amp(cfg, fed.device)
    strategy = strategy or strategies.create(cfg.algorithm)
    if strategy.uses_public and len(splits.public) == 0:
        raise ValueError(f"{strategy.name} uses the public set, which public_size=0 leaves empty; give it >= 1.")
    max_up = max_upload_bytes(fed)
    t0 = time.perf_counter()
    strategy.setup(fed)
    setup_s = time.perf_counter() - t0
    rows: list[dict] = []
    cum_up = cum_down = 0
    cum_sim = 0.0
    start = 1
    if state is None and saving:
        checkpoint.finish(cfg, keep=False)  # a fresh run: older checkpoints under this name are not its own
        checkpoint.record_path(cfg).unlink(missing_ok=True)  # nor is an older record
    if state is not None:
        _restore(state, strategy, fed, ledger)
        rows, start, setup_s = state.history[: cfg.rounds], state.round + 1, 0.0
        rows = [{"algorithm": r["algorithm"], **codec_columns(cfg), **r} for r in rows]  # pre-codec checkpoints
        if rows:
            last = rows[-1]
            cum_up, cum_down, cum_sim = int(last["cum_bytes_up"]), int(last["cum_bytes_down"]), last["cum_sim_s"]
    bar = tqdm(range(start, cfg.rounds + 1), desc=f"{strategy.name} rounds", disable=not cfg.progress)
    for rnd in bar:
        t_round = time.perf_counter()
        work = setup_s if rnd == 1 else 0.0
        active = participants(cfg, rnd)
        uploads: dict[int, nn.Module] = {}
        rejected: dict[int, str] = {}
        stats: list[dict] = []
        for cid in active:
            cl = fed.clients[cid]
            t = time.perf_counter()
            with bench.phase("server: send (prune or slice)"):
                offer = strategy.send(fed, rnd, cl)
            work += time.perf_counter() - t
            down = 0
            if offer is not None:
                with bench.phase("wire: encode and decode"):
                    payload = ledger.record(rnd, cid, "down", comm.encode(offer, cfg.codec_down))
                    cl.model, down = comm.decode(payload), len(payload)
            if cl.model is None:
                raise RuntimeError(f"{strategy.name}: client {cid} has no model; send() must give it one first.")
            model = cl.model
            t = time.perf_counter()
            with bench.phase(f"client training [{cl.tier}]", model, cl.x, cl.n_samples * cfg.local_epochs, True):
                fit = client_update(cfg, model, cl.x, cl.y, rnd, cid, strategy, strategy.local_options(fed, cl))
            acc = float("nan")
            if cfg.eval_clients and fed.diagnose(rnd):
                test_x = fed.test.x
                with bench.phase("client evaluation (diagnostic)", model, test_x, len(test_x)):
                    acc = train.evaluate(model, test_x, fed.test.y, device=fed.device, amp=fed.amp)
            work += time.perf_counter() - t
            with bench.phase("wire: encode and decode"):
                payload = ledger.record(rnd, cid, "up", comm.encode(model, cfg.codec_up))
                upload, why = receive(payload, max_up, diverged=fit.diverged)
            if upload is None:
                rejected[cid] = why
            else:
                uploads[cid] = upload
            flops = fed.train_flops_per_sample(cl.model) * cl.n_samples * cfg.local_epochs
            sim = tiers_mod.round_time(fed.tiers, cl.tier, flops, down, len(payload), fed.speed_factor(cl.model))
            stats.append({"tier": cl.tier, "acc": acc, "flops": flops, "down": down, "up": len(payload), "sim": sim})
        t = time.perf_counter()
        extra = strategy.aggregate(fed, rnd, uploads) if uploads else {}  # none accepted: the server model stays
        test = fed.test_for(rnd)
        server = strategy.server_model
        with bench.phase("server evaluation", server, test.x, len(test.x)):
            accuracy = fed.accuracy_columns(server, rnd)
        dead = {}
        if fed.diagnose(rnd):  # dead ReLU units of the server model and the uploads, on a fixed probe batch
            with bench.phase("dead units (diagnostic)"):
                dead = diagnostics.columns(server, uploads.values(), fed.public_x[: diagnostics.PROBE], fed.device)
        work += time.perf_counter() - t

        st = pd.DataFrame(stats)
        up, down = int(st["up"].sum()), int(st["down"].sum())
        server_flops = float(extra.pop("server_flops", 0.0))  # dense-equivalent FLOPs of the server step
        sim_server = tiers_mod.compute_time(fed.tiers, fed.server_tier, server_flops)
        sim_round = float(st["sim"].max()) + sim_server  # the next round starts when the server is done
        cum_up, cum_down, cum_sim = cum_up + up, cum_down + down, cum_sim + sim_round
        row = {
            "algorithm": strategy.name,
            **codec_columns(cfg),
            "round": rnd,
            **accuracy,
            "client_acc_mean": float(st["acc"].mean()),
            **extra,
            "participants": len(active),
            **rejection_columns(rejected),
            "bytes_up": up,
            "bytes_down": down,
            "cum_bytes_up": cum_up,
            "cum_bytes_down": cum_down,
            "cum_bytes": cum_up + cum_down,
            "sim_clients_s": float(st["sim"].max()),
            "server_gflops": server_flops / 1e9,
            "sim_server_s": sim_server,
            "sim_round_s": sim_round,
            "cum_sim_s": cum_sim,
        }
        by_tier = st.groupby("tier")
        for tier in fed.tier_names:
            has = tier in by_tier.groups
            row[f"acc[{tier}]"] = float(by_tier.get_group(tier)["acc"].mean()) if has else float("nan")
            row[f"gflops[{tier}]"] = float(by_tier.get_group(tier)["flops"].mean()) / 1e9 if has else float("nan")
        row.update(dead)
        wall = time.perf_counter() - t_round + (setup_s if rnd == 1 else 0.0)
        row.update({"wall_s": wall, "work_s": work, "overhead_pct": 100.0 * (wall - work) / wall})
        rows.append(row)
        if cfg.save_as:  # an interrupted run keeps every finished round
            report.save_table(pd.DataFrame(rows), cfg.save_as, cfg.profile)
        if saving and (rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds):
            checkpoint.save(cfg, fp, _snapshot(rnd, rows, strategy, fed, ledger))
        bar.set_postfix(acc=f"{accuracy['server_acc']:.3f}", MB=f"{(cum_up + cum_down) / 1e6:.1f}")
    bar.close()
    clients = client_table(fed, ledger)
    if cfg.save_as:
        checkpoint.save_record(cfg, fp or checkpoint.fingerprint(cfg, splits), rows, ledger.rows,
                               clients.to_dict("records"))  # fmt: skip
    if checkpointed:
        checkpoint.finish(cfg, keep=cfg.keep_checkpoints)
    history = pd.DataFrame(rows)
    models = {c.id: c.model for c in fed.clients if c.model is not None}
    return RunResult(cfg, history, ledger, clients, models, strategy)


def _snapshot(rnd: int, rows: list[dict], strategy: Strategy, fed: Federation, ledger: comm.Ledger) -> checkpoint.State:
    return checkpoint.State(
        round=rnd,
        history=rows,
        ledger=ledger.rows,
        strategy=strategy.checkpoint_state(),
        server=checkpoint.encode_models(strategy.checkpoint_models()),
        clients={c.id: comm.encode(c.model) for c in fed.clients if c.model is not None},
        rng=checkpoint.rng_state(),
    )


def _restore(state: checkpoint.State, strategy: Strategy, fed: Federation, ledger: comm.Ledger) -> None:
    """Put a checkpoint's state into a freshly set-up strategy, federation and Ledger."""
    checkpoint.restore_models(strategy.checkpoint_models(), state.server)
    strategy.restore_state(state.strategy)
    for c in fed.clients:
        c.model = comm.decode(state.clients[c.id]) if c.id in state.clients else None
    ledger.rows = list(state.ledger)
    checkpoint.set_rng_state(state.rng)


def client_update(
    cfg: RunConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rnd: int, cid: int,
    strategy: Strategy | None = None, options: Mapping[str, Any] | None = None,
) -> train.FitResult:  # fmt: skip
    """A client's local training in round ``rnd``, seeded by (run seed, round, client): every engine
    (in-process, Flower) calls this, so the same seed trains identically on every engine (bit for bit
    on the same CPU model, torch version and thread count). ``strategy``
    and ``options`` (its :meth:`~reft.strategies.Strategy.local_options` for this client) let an
    algorithm change local training, e.g. HeteroFL's Scaler and masked cross-entropy. The model trains on
    ``RunConfig.device`` (moved there in place), augmented as ``RunConfig.augments`` says, at the round's
    learning rate (:meth:`~reft.config.RunConfig.lr_at`)."""
    seed = cfg.seed * 100_003 + rnd * 1_009 + cid
    ctx = strategy.local_training(model, y, options or {}) if strategy is not None else nullcontext(None)
    with ctx as loss_fn:
        return train.fit(
            model, x, y, epochs=cfg.local_epochs, lr=cfg.lr_at(rnd), batch_size=cfg.batch_size, seed=seed,
            loss_fn=loss_fn, device=cfg.device, augment=cfg.augments, amp=cfg.amp, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip


def warn_amp(cfg: RunConfig, device: torch.device) -> None:
    """Say once that ``amp`` does nothing here: bf16 autocast runs only where the device computes bf16
    natively (:func:`reft.train.amp_device`); elsewhere the run computes in float32 as without it (so one
    config serves every machine)."""
    if cfg.amp and not train.amp_device(device):
        where = "this CPU has no native bf16 (avx512_bf16, amx_bf16 or Arm bf16)" if device.type == "cpu" else (
            f"bf16 autocast is not supported on {device.type}")  # fmt: skip
        warnings.warn(f"RunConfig.amp has no effect: {where}; the run computes in float32.", stacklevel=2)


DIVERGED = "diverged (non-finite training loss)"


def max_upload_bytes(fed: Federation) -> int:
    """The largest upload the server accepts: the run's dense model encoded, plus 1 KiB for the header
    (a pruned or sliced model's header is no longer than the dense one's)."""
    with torch.random.fork_rng(devices=[]):  # dense_model() seeds the global generator; leave it as it was
        return len(comm.encode(fed.dense_model())) + 1024


def receive(payload: bytes, max_bytes: int | None, diverged: bool = False) -> tuple[nn.Module | None, str]:
    """The server's side of an upload: the decoded model and ``""``, or ``None`` and why it is rejected
    (a :class:`reft.comm.PayloadError`'s message, or :data:`DIVERGED` when the client's training diverged)."""
    if diverged:
        return None, DIVERGED
    try:
        return comm.decode(payload, max_bytes=max_bytes), ""
    except comm.PayloadError as e:
        return None, str(e)


def codec_columns(cfg: RunConfig) -> dict[str, str]:
    """The history's ``codec_up`` and ``codec_down``: how the run's models were stored on the wire."""
    return {"codec_up": cfg.codec_up, "codec_down": cfg.codec_down}


def rejection_columns(rejected: Mapping[int, str]) -> dict[str, Any]:
    """The history's ``rejected`` (count) and ``rejected_reasons`` ("client 3: why; ...", "" when none)."""
    reasons = "; ".join(f"client {cid}: {why}" for cid, why in sorted(rejected.items()))
    return {"rejected": len(rejected), "rejected_reasons": reasons}


def participants(cfg: RunConfig, rnd: int) -> list[int]:
    """Clients in this round: a seeded random ``dropout`` fraction drops out (at least one stays)."""
    n_drop = min(int(round(cfg.dropout * cfg.n_clients)), cfg.n_clients - 1)
    rng = np.random.default_rng([cfg.seed, rnd])
    dropped = set(rng.choice(cfg.n_clients, size=n_drop, replace=False).tolist())
    return [i for i in range(cfg.n_clients) if i not in dropped]


def client_table(fed: Federation, ledger: comm.Ledger | None = None) -> pd.DataFrame:
    """One row per client: tier, samples, its final model's size and cost, and whether its tier can afford
    it (training memory within the usable share of the tier's memory, as :mod:`reft.tiers` counts it;
    predicted round time within ``deadline_s`` when one is set). The round time uses the model's
    measured speed and the bytes the client really moved per round it took part in (from ``ledger``:
    a REFT client downloads once, a FedAvg client every round); without a ledger, a model each way."""
    cfg, rows = fed.cfg, []
    moved = ledger.frame().groupby(["client", "direction"])["bytes"] if ledger is not None else None
    for c in fed.clients:
        row = {"client": c.id, "tier": c.tier, "samples": c.n_samples}
        if c.model is not None:
            cost = costs.at_ratios(c.model, fed.example_input, [0.0], batch_size=cfg.batch_size).iloc[0]
            flops = fed.train_flops_per_sample(c.model) * c.n_samples * cfg.local_epochs
            down = up = float(cost["bytes"])
            if moved is not None and (c.id, "up") in moved.groups:
                rounds = len(moved.get_group((c.id, "up")))
                got = moved.get_group((c.id, "down")).sum() if (c.id, "down") in moved.groups else 0
                down, up = got / rounds, moved.get_group((c.id, "up")).sum() / rounds
            rt = tiers_mod.round_time(fed.tiers, c.tier, flops, int(down), int(up), fed.speed_factor(c.model))
            limit = float(fed.tiers.loc[c.tier, "memory_gb"]) * tiers_mod.MEMORY_FRACTION
            row.update(
                widths=list(c.model.widths),
                params=int(cost["params"]),
                model_bytes=int(cost["bytes"]),
                train_gflops_per_round=flops / 1e9,
                train_memory_gb=float(cost["memory_gb"]),
                fits_memory=bool(cost["memory_gb"] <= limit),
                speed_factor=fed.speed_factor(c.model),
                bytes_down_per_round=down,
                round_time_s=rt,
                meets_deadline=cfg.deadline_s is None or rt <= cfg.deadline_s,
            )
        rows.append(row)
    return pd.DataFrame(rows)
