"""The in-process federation engine, and the algorithms it runs as small strategy objects.

One round, for every client that did not drop out:

1. ``strategy.send(fed, round, client)`` says what the server sends this client now (a model, or
   ``None`` for nothing); it crosses the wire as :func:`reft.comm.encode` bytes and the client keeps
   the decoded copy as its local model;
2. the client trains that model on its shard (:func:`reft.train.fit`);
3. the client uploads its model (encoded, counted, decoded on the server);
4. after all clients: ``strategy.aggregate(fed, round, uploads)`` does the server step.

Every payload is counted in the :class:`reft.comm.Ledger` with ``len()`` of its real bytes, in both
directions. A strategy owns its server model(s) and decides what each client gets; the engine owns
clients, dropout, the wire, timing and the history. That is all an algorithm needs:

* **REFT** sends each client its tier's pruned model once (and a freshly pruned copy of the
  distilled server model every ``refresh_every`` rounds), and distils the ensemble of uploads into
  the server model on the public set;
* **FedAvg** sends the full global model to every client every round and averages the uploads;
* **FedAvg on the weakest model** does the same with the model pruned for the weakest tier present.

FedDF (one group model per architecture, distilled, broadcast per round) and HeteroFL (leading
channel slices of one global model, averaged entry by entry) fit the same two hooks; add them with
:func:`register`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from reft import comm, data, distill, measure, models, pruning, report, train
from reft import tiers as tiers_mod

POLICIES = ("proportional", "deadline")
WEIGHTINGS = ("uniform", "samples")
# History columns that hold wall-clock measurements (differ run to run; everything else is seeded).
TIMING_COLUMNS = ("wall_s", "work_s", "overhead_pct")


# --------------------------------------------------------------------------------------------- config
@dataclass
class RunConfig:
    """Everything a run depends on. Validated on creation (and against the data in :func:`run`)."""

    algorithm: str = "reft"
    # data
    dataset: str = "fashion-mnist"
    private_size: int | None = None  # subsample sizes; None keeps the whole part
    public_size: int | None = None
    test_size: int | None = None
    n_clients: int = 10
    partition: str = "iid"
    alpha: float | None = None
    # model and hardware
    model: str = "cnn"
    widths: Sequence[int] | None = None  # dense widths of the server model (None: the builder's default)
    tiers_path: str | None = None
    tier_mix: Mapping[str, float] | Sequence[str] | None = None  # None: all tiers of the table, equally
    policy: str = "proportional"
    max_ratio: float = 0.9
    deadline_s: float | None = None  # "deadline" policy without one: the tightest every tier can meet
    importance: str = "l2"
    # rounds and local training
    rounds: int = 5
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 64
    dropout: float = 0.0  # fraction of clients that drop out of each round, drawn at random
    # server distillation (REFT)
    temperature: float = 1.0
    ensemble: str = "logits"
    weighting: str = "samples"
    distill_epochs: int = 10
    distill_lr: float = 1e-3
    distill_batch_size: int = 128
    val_fraction: float = 0.1
    patience: int = 2
    refresh_every: int = 0  # REFT: resend freshly pruned server models every k rounds (0 = never)
    # bookkeeping
    eval_clients: bool = True
    seed: int = 0
    save_as: str | None = None  # save the history as results/<profile>/<save_as>.csv after every round
    profile: str = "interactive"
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors = []
        if self.algorithm not in ALGORITHMS:
            errors.append(f"unknown algorithm {self.algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}")
        if self.partition not in data.SCHEMES:
            errors.append(f"unknown partition {self.partition!r}; valid schemes: {', '.join(data.SCHEMES)}")
        if self.partition == "dirichlet" and not (self.alpha is not None and self.alpha > 0):
            errors.append(f"partition 'dirichlet' needs alpha > 0 (e.g. 0.5); got {self.alpha}")
        if self.model not in models.MODEL_NAMES:
            errors.append(f"unknown model {self.model!r}; valid models: {', '.join(models.MODEL_NAMES)}")
        if self.policy not in POLICIES:
            errors.append(f"unknown policy {self.policy!r}; valid policies: {', '.join(POLICIES)}")
        if self.ensemble not in distill.MODES:
            errors.append(f"unknown ensemble {self.ensemble!r}; valid: {', '.join(distill.MODES)}")
        if self.weighting not in WEIGHTINGS:
            errors.append(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        checks = [
            (self.rounds >= 1, f"rounds must be >= 1; got {self.rounds}"),
            (self.n_clients >= 1, f"n_clients must be >= 1; got {self.n_clients}"),
            (self.local_epochs >= 1, f"local_epochs must be >= 1; got {self.local_epochs}"),
            (self.lr > 0 and self.distill_lr > 0, f"learning rates must be > 0; got {self.lr}, {self.distill_lr}"),
            (self.batch_size >= 1 and self.distill_batch_size >= 1, "batch sizes must be >= 1"),
            (self.temperature > 0, f"temperature must be > 0; got {self.temperature}"),
            (self.distill_epochs >= 1, f"distill_epochs must be >= 1; got {self.distill_epochs}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1); got {self.val_fraction}"),
            (self.patience >= 0, f"patience must be >= 0; got {self.patience}"),
            (self.refresh_every >= 0, f"refresh_every must be >= 0 (0 = never); got {self.refresh_every}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1); got {self.dropout}"),
            (0 <= self.max_ratio < 1, f"max_ratio must be in [0, 1); got {self.max_ratio}"),
            (self.deadline_s is None or self.deadline_s > 0, f"deadline_s must be > 0; got {self.deadline_s}"),
        ]
        errors += [msg for ok, msg in checks if not ok]
        for part in ("private_size", "public_size", "test_size"):
            n = getattr(self, part)
            if n is not None and n < 1:
                hint = " (distillation needs an unlabelled public set)" if part == "public_size" else ""
                errors.append(f"{part} must be >= 1 or None for the whole part{hint}; got {n}")
        if errors:
            raise ValueError("Invalid RunConfig: " + "; ".join(errors) + ".")

    def replace(self, **changes) -> RunConfig:
        """A validated copy with some fields changed."""
        return RunConfig(**{**asdict(self), **changes})


# ------------------------------------------------------------------------------------------- the parts
@dataclass
class Client:
    """A simulated client: its tier, its private shard and (once it has received one) its model."""

    id: int
    tier: str
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module | None = None

    @property
    def n_samples(self) -> int:
        return len(self.x)


class Federation:
    """What a strategy may look at: config, data, clients, tiers, pruning ratios, and model helpers."""

    def __init__(self, cfg: RunConfig, splits: data.Splits, clients: Sequence[Client] | None = None) -> None:
        """``clients`` replaces the simulated ones (e.g. remote clients that reported tier and size)."""
        self.cfg = cfg
        self.splits = splits
        self.tiers = tiers_mod.load_tiers(cfg.tiers_path)
        self.public_x = splits.public.x
        self.example_input = splits.example_input
        self._train_flops: dict[str, int] = {}
        if clients is not None:
            self.clients = list(clients)
            return
        mix = cfg.tier_mix if cfg.tier_mix is not None else {t: 1.0 for t in self.tiers.index}
        tier_of = tiers_mod.assign(cfg.n_clients, mix, tiers=self.tiers, seed=cfg.seed)
        parts = data.partition(
            splits.private_train.y, cfg.n_clients, cfg.partition, alpha=cfg.alpha, seed=cfg.seed, min_size=1
        )
        self.clients = [
            Client(i, tier_of[i], splits.private_train.x[p], splits.private_train.y[p]) for i, p in enumerate(parts)
        ]

    def dense_model(self) -> models.ReftModel:
        """The server's dense model, initialized from the run's seed (same seed, same weights)."""
        torch.manual_seed(self.cfg.seed)
        s = self.splits
        return models.build(self.cfg.model, s.num_classes, s.in_channels, self.cfg.widths)

    def prune(self, model: nn.Module, ratio: float) -> nn.Module:
        """A physically smaller copy of ``model`` (ratio 0: a plain copy)."""
        if ratio <= 0:
            return copy.deepcopy(model)
        return pruning.prune(model, ratio, self.example_input, importance=self.cfg.importance).model

    @cached_property
    def policy(self) -> dict[str, tiers_mod.PolicyResult]:
        """The configured policy's choice for every tier present (on the dense model)."""
        c = self.cfg
        samples = int(np.mean([cl.n_samples for cl in self.clients]))
        chosen = tiers_mod.choose_ratios(
            c.policy, self.tiers, self.dense_model(), self.example_input,
            samples=samples, epochs=c.local_epochs, max_ratio=c.max_ratio, deadline_s=c.deadline_s,
            importance=c.importance,
        )  # fmt: skip
        return {t: chosen[t] for t in self.tier_names}

    @property
    def ratios(self) -> dict[str, float]:
        """Pruning ratio of every tier present."""
        return {t: float(r.ratio) for t, r in self.policy.items()}

    @property
    def widths(self) -> dict[str, list[int]]:
        """Widths of every tier's pruned model, as the policy measured them (no pruning needed)."""
        return {t: list(r.widths) for t, r in self.policy.items()}

    @property
    def tier_names(self) -> list[str]:
        """Tiers that have clients in this run, strongest first."""
        present = {c.tier for c in self.clients}
        return [t for t in self.tiers.index if t in present]

    def weights(self, client_ids: Sequence[int]) -> list[float]:
        """Aggregation weights of these clients: equal, or by data size (``cfg.weighting``)."""
        if self.cfg.weighting == "uniform":
            return [1.0] * len(client_ids)
        return [float(self.clients[i].n_samples) for i in client_ids]

    def train_flops_per_sample(self, model: nn.Module) -> int:
        """Training FLOPs for one sample (3x forward), cached per architecture."""
        key = json.dumps(model.spec, sort_keys=True)
        if key not in self._train_flops:
            self._train_flops[key] = measure.train_flops(model, self.example_input)
        return self._train_flops[key]


class Strategy:
    """An algorithm: what the server sends each client each round, and what it does with the uploads.

    Subclasses set ``name`` and implement :meth:`setup` (build ``self.server_model`` and anything
    else), :meth:`send` and :meth:`aggregate`. Client models are whatever the server sends; a client
    that has received nothing yet must be sent a model.
    """

    name = "strategy"
    server_model: nn.Module

    def setup(self, fed: Federation) -> None:
        raise NotImplementedError

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        raise NotImplementedError

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        """Server step on the decoded uploads (client id -> model); returns extra history columns."""
        raise NotImplementedError


class REFT(Strategy):
    """Per-tier pruned client models sent once; the server distils their ensemble on public data."""

    name = "reft"

    def setup(self, fed: Federation) -> None:
        self.server_model = fed.dense_model()
        self.version = 0  # number of server updates so far
        self.sent: dict[int, int] = {}  # client id -> round of its last model
        self._pruned: dict[tuple[str, int], nn.Module] = {}

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module | None:
        last, k = self.sent.get(client.id), fed.cfg.refresh_every
        if last is not None and not (k > 0 and rnd - last >= k):
            return None
        self.sent[client.id] = rnd
        key = (client.tier, self.version)
        if key not in self._pruned:  # prune once per tier and server version, not per client
            self._pruned[key] = fed.prune(self.server_model, fed.ratios[client.tier])
        return self._pruned[key]

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        c = fed.cfg
        ids = sorted(uploads)
        teachers, w = [uploads[i] for i in ids], fed.weights(ids)
        test = fed.splits.test
        ens = distill.teacher_outputs(teachers, test.x, w, c.ensemble, c.temperature)
        res = distill.distill(
            self.server_model, teachers, fed.public_x, temperature=c.temperature, mode=c.ensemble, weights=w,
            epochs=c.distill_epochs, lr=c.distill_lr, batch_size=c.distill_batch_size, val_fraction=c.val_fraction,
            patience=c.patience, seed=c.seed * 1000 + rnd,
        )  # fmt: skip
        self.version += 1
        self._pruned.clear()
        return {"ensemble_acc": (ens.argmax(1) == test.y).float().mean().item(), "distill_epochs": res.best_epoch}


class FedAvg(Strategy):
    """One global model on every client, broadcast every round, averaged weighted by data size."""

    name = "fedavg"
    weakest = False

    def setup(self, fed: Federation) -> None:
        model = fed.dense_model()
        if self.weakest:
            model = fed.prune(model, max(fed.ratios.values()))
        self.server_model = model

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        return self.server_model

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        ids = sorted(uploads)
        self.server_model.load_state_dict(average([uploads[i].state_dict() for i in ids], fed.weights(ids)))
        return {}


class FedAvgWeakest(FedAvg):
    """FedAvg on the model pruned for the weakest tier present: the lowest common denominator."""

    name = "fedavg-weakest"
    weakest = True


def average_overlapping(
    global_state: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Weighted mean, entry by entry, over the uploads whose leading slice covers the entry (HeteroFL);
    entries no upload holds keep their value in ``global_state``. When every upload has the global
    shapes this is plain weighted averaging (FedAvg): one mechanism serves both. Computed in float64,
    cast back; integer buffers (BN's ``num_batches_tracked``) are rounded."""
    if len(states) != len(weights) or not states:
        raise ValueError("Need one weight per upload, and at least one upload.")
    w = [float(x) for x in weights]
    out = {}
    for k, g in global_state.items():
        num = torch.zeros(g.shape, dtype=torch.float64)
        den = torch.zeros(g.shape, dtype=torch.float64)
        for wi, s in zip(w, states, strict=True):
            region = tuple(slice(0, n) for n in s[k].shape)
            num[region] += wi * s[k].double()
            den[region] += wi
        mean = torch.where(den > 0, num / den.clamp_min(1e-300), g.double())
        out[k] = mean.round().to(g.dtype) if not g.is_floating_point() else mean.to(g.dtype)
    return out


def average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts with identical keys and shapes (FedAvg)."""
    return average_overlapping(states[0], states, weights)


ALGORITHMS: dict[str, Callable[[], Strategy]] = {}


def register(name: str, factory: Callable[[], Strategy]) -> None:
    """Make an algorithm available to :class:`RunConfig` by name (e.g. FedDF, HeteroFL)."""
    ALGORITHMS[name] = factory


for _cls in (REFT, FedAvg, FedAvgWeakest):
    register(_cls.name, _cls)


# ------------------------------------------------------------------------------------------- the engine
@dataclass
class RunResult:
    """A finished run: its config, the per-round history, the Ledger, the clients and their models."""

    config: RunConfig
    history: pd.DataFrame
    ledger: comm.Ledger
    clients: pd.DataFrame
    client_models: dict[int, nn.Module] = field(repr=False)
    strategy: Strategy = field(repr=False)

    def client_accuracy(self, test: data.Data) -> pd.DataFrame:
        """The client table plus each client's final local model's accuracy on ``test``."""
        acc = {i: train.evaluate(m, test.x, test.y) for i, m in self.client_models.items()}
        return self.clients.assign(test_acc=self.clients["client"].map(acc))

    @property
    def overhead_pct(self) -> float:
        """Engine time (wire, ledger, bookkeeping) as % of the whole run's wall time."""
        wall, work = self.history["wall_s"].sum(), self.history["work_s"].sum()
        return 100.0 * (wall - work) / wall


def prepare(cfg: RunConfig, splits: data.Splits | None) -> data.Splits:
    if splits is None:
        splits = data.load(cfg.dataset, seed=cfg.seed)
    splits = splits.subsample(cfg.private_size, cfg.public_size, cfg.test_size, seed=cfg.seed)
    if len(splits.public) == 0:
        raise ValueError("The public set is empty: REFT distils on unlabelled public data; use public_size >= 1.")
    if cfg.n_clients > len(splits.private_train):
        raise ValueError(
            f"More clients ({cfg.n_clients}) than private samples ({len(splits.private_train)}): "
            "use fewer clients or a larger private_size."
        )
    return splits


def run(cfg: RunConfig, splits: data.Splits | None = None, strategy: Strategy | None = None) -> RunResult:
    """Run one federated training as configured; returns history, Ledger and clients.

    ``splits`` (already loaded data) saves reloading across runs; the config's subsample sizes still
    apply. ``strategy`` overrides ``cfg.algorithm`` with a ready-made strategy object.
    """
    cfg.validate()
    splits = prepare(cfg, splits)
    fed = Federation(cfg, splits)
    strategy = strategy or ALGORITHMS[cfg.algorithm]()
    ledger = comm.Ledger()
    t0 = time.perf_counter()
    strategy.setup(fed)
    setup_s = time.perf_counter() - t0
    rows: list[dict] = []
    cum_up = cum_down = 0
    cum_sim = 0.0
    bar = tqdm(range(1, cfg.rounds + 1), desc=f"{strategy.name} rounds", disable=not cfg.progress)
    for rnd in bar:
        t_round = time.perf_counter()
        work = setup_s if rnd == 1 else 0.0
        active = participants(cfg, rnd)
        uploads: dict[int, nn.Module] = {}
        stats: list[dict] = []
        for cid in active:
            cl = fed.clients[cid]
            t = time.perf_counter()
            offer = strategy.send(fed, rnd, cl)
            work += time.perf_counter() - t
            down = 0
            if offer is not None:
                payload = ledger.record(rnd, cid, "down", comm.encode(offer))
                cl.model, down = comm.decode(payload), len(payload)
            if cl.model is None:
                raise RuntimeError(f"{strategy.name}: client {cid} has no model; send() must give it one first.")
            t = time.perf_counter()
            client_update(cfg, cl.model, cl.x, cl.y, rnd, cid)
            acc = train.evaluate(cl.model, splits.test.x, splits.test.y) if cfg.eval_clients else float("nan")
            work += time.perf_counter() - t
            payload = ledger.record(rnd, cid, "up", comm.encode(cl.model))
            uploads[cid] = comm.decode(payload)
            flops = fed.train_flops_per_sample(cl.model) * cl.n_samples * cfg.local_epochs
            sim = tiers_mod.round_time(fed.tiers, cl.tier, flops, down, len(payload))
            stats.append({"tier": cl.tier, "acc": acc, "flops": flops, "down": down, "up": len(payload), "sim": sim})
        t = time.perf_counter()
        extra = strategy.aggregate(fed, rnd, uploads)
        server_acc = train.evaluate(strategy.server_model, splits.test.x, splits.test.y)
        work += time.perf_counter() - t

        st = pd.DataFrame(stats)
        up, down = int(st["up"].sum()), int(st["down"].sum())
        cum_up, cum_down, cum_sim = cum_up + up, cum_down + down, cum_sim + float(st["sim"].max())
        row = {
            "algorithm": strategy.name,
            "round": rnd,
            "server_acc": server_acc,
            "client_acc_mean": float(st["acc"].mean()),
            **extra,
            "participants": len(active),
            "bytes_up": up,
            "bytes_down": down,
            "cum_bytes_up": cum_up,
            "cum_bytes_down": cum_down,
            "cum_bytes": cum_up + cum_down,
            "sim_round_s": float(st["sim"].max()),
            "cum_sim_s": cum_sim,
        }
        by_tier = st.groupby("tier")
        for tier in fed.tier_names:
            has = tier in by_tier.groups
            row[f"acc[{tier}]"] = float(by_tier.get_group(tier)["acc"].mean()) if has else float("nan")
            row[f"gflops[{tier}]"] = float(by_tier.get_group(tier)["flops"].mean()) / 1e9 if has else float("nan")
        wall = time.perf_counter() - t_round + (setup_s if rnd == 1 else 0.0)
        row.update({"wall_s": wall, "work_s": work, "overhead_pct": 100.0 * (wall - work) / wall})
        rows.append(row)
        if cfg.save_as:  # an interrupted run keeps every finished round
            report.save_table(pd.DataFrame(rows), cfg.save_as, cfg.profile)
        bar.set_postfix(acc=f"{server_acc:.3f}", MB=f"{(cum_up + cum_down) / 1e6:.1f}")
    bar.close()
    history = pd.DataFrame(rows)
    return RunResult(
        cfg, history, ledger, client_table(fed), {c.id: c.model for c in fed.clients if c.model is not None}, strategy
    )


def client_update(
    cfg: RunConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rnd: int, cid: int
) -> train.FitResult:
    """A client's local training in round ``rnd``, seeded by (run seed, round, client): every engine
    (in-process, Flower) calls this, so the same seed trains identically everywhere."""
    seed = cfg.seed * 100_003 + rnd * 1_009 + cid
    return train.fit(model, x, y, epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)


def participants(cfg: RunConfig, rnd: int) -> list[int]:
    """Clients in this round: a seeded random ``dropout`` fraction drops out (at least one stays)."""
    n_drop = min(int(round(cfg.dropout * cfg.n_clients)), cfg.n_clients - 1)
    rng = np.random.default_rng([cfg.seed, rnd])
    dropped = set(rng.choice(cfg.n_clients, size=n_drop, replace=False).tolist())
    return [i for i in range(cfg.n_clients) if i not in dropped]


# --------------------------------------------------------------------------------------- what it costs
def client_table(fed: Federation) -> pd.DataFrame:
    """One row per client: tier, samples, its final model's size and cost, and whether its tier can afford
    it (training memory within the usable share of the tier's memory, as :mod:`reft.tiers` counts it;
    predicted round time within ``deadline_s`` when one is set)."""
    cfg, rows = fed.cfg, []
    for c in fed.clients:
        row = {"client": c.id, "tier": c.tier, "samples": c.n_samples}
        if c.model is not None:
            cost = tiers_mod.ratio_costs(c.model, fed.example_input, [0.0], batch_size=cfg.batch_size).iloc[0]
            flops = fed.train_flops_per_sample(c.model) * c.n_samples * cfg.local_epochs
            rt = tiers_mod.round_time(fed.tiers, c.tier, flops, int(cost["bytes"]), int(cost["bytes"]))
            limit = float(fed.tiers.loc[c.tier, "memory_gb"]) * tiers_mod.MEMORY_FRACTION
            row.update(
                widths=list(c.model.widths),
                params=int(cost["params"]),
                model_bytes=int(cost["bytes"]),
                train_gflops_per_round=flops / 1e9,
                train_memory_gb=float(cost["memory_gb"]),
                fits_memory=bool(cost["memory_gb"] <= limit),
                round_time_s=rt,
                meets_deadline=cfg.deadline_s is None or rt <= cfg.deadline_s,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_accuracy(history: pd.DataFrame, target: float) -> float:
    """Simulated seconds until the server model first reaches ``target`` accuracy (NaN if never)."""
    hit = history.loc[history["server_acc"] >= target, "cum_sim_s"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def accuracy_at_budget(history: pd.DataFrame, budget_bytes: float) -> float:
    """Best server accuracy reached by the end of a round whose cumulative bytes fit ``budget_bytes``."""
    fit = history.loc[history["cum_bytes"] <= budget_bytes, "server_acc"]
    return float(fit.max()) if len(fit) else float("nan")


def summary(result: RunResult, target_acc: float | None = None) -> dict:
    """One row of the comparison table for a finished run."""
    h, cfg = result.history, result.config
    up, down = result.ledger.total("up"), result.ledger.total("down")
    row = {
        "method": result.strategy.name,
        "partition": partition_label(cfg.partition if cfg.partition != "dirichlet" else cfg.alpha),
        "rounds": len(h),
        "final_acc": float(h["server_acc"].iloc[-1]),
        "best_acc": float(h["server_acc"].max()),
        "client_acc_mean": float(h["client_acc_mean"].iloc[-1]),
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


def sweep(
    base: RunConfig,
    splits: data.Splits | None,
    variants: Mapping[Hashable, Mapping[str, Any]],
    names: Sequence[str] = ("variant",),
    target_acc: float | None = None,
    save_prefix: str | None = None,
) -> Comparison:
    """Run ``base`` once per variant (a dict of RunConfig changes, keyed by its label or a tuple of
    labels named by ``names``): one summary row per run, every history and client table, labelled.

    With ``save_prefix`` each run's history is saved after every round as
    ``results/<profile>/<save_prefix>_<labels>.csv``.
    """
    results, tables, histories, clients = [], [], [], []
    for key, changes in tqdm(variants.items(), desc="runs", disable=not base.progress):
        labels = dict(zip(names, key if isinstance(key, tuple) else (key,), strict=True))
        name = "_".join([save_prefix, *map(str, labels.values())]) if save_prefix else None
        res = run(base.replace(save_as=name, **changes), splits)
        results.append(res)
        tables.append({**summary(res, target_acc), **labels})
        histories.append(res.history.assign(**labels))
        clients.append(res.clients.assign(**labels))
    return Comparison(pd.DataFrame(tables), pd.concat(histories, ignore_index=True), pd.concat(clients), results)


def compare(
    base: RunConfig,
    splits: data.Splits | None = None,
    methods: Sequence[str] = ("reft", "fedavg", "fedavg-weakest"),
    partitions: Sequence[str | float] = ("iid", 0.5),
    target_acc: float | None = None,
    save_prefix: str | None = None,
) -> Comparison:
    """Every method on every partition with otherwise identical settings (``base``): a :func:`sweep`
    labelled by ``method`` and ``partition``."""
    variants = {(m, partition_label(p)): {"algorithm": m, **partition_kw(p)} for p in partitions for m in methods}
    return sweep(base, splits, variants, ("method", "partition"), target_acc, save_prefix)


def budget_table(
    histories: Mapping[str, pd.DataFrame],
    budgets_mb: Sequence[float] | None = None,
    fractions: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    reference: str = "fedavg",
) -> pd.DataFrame:
    """Best accuracy each method reached within each byte budget (rows: budgets in MB; columns: methods).

    Without ``budgets_mb`` the budgets are ``fractions`` of the ``reference`` method's total bytes
    (of the largest total when that method is absent).
    """
    if budgets_mb is None:
        ref = histories.get(reference)
        top = ref["cum_bytes"].max() if ref is not None else max(h["cum_bytes"].max() for h in histories.values())
        budgets_mb = [f * top / 1e6 for f in fractions]
    table = {name: [accuracy_at_budget(h, b * 1e6) for b in budgets_mb] for name, h in histories.items()}
    return pd.DataFrame(table, index=pd.Index(list(budgets_mb), name="budget_mb"))


from reft import peers  # noqa: E402, F401  (registers the peers FedDF and HeteroFL; imports this module)
