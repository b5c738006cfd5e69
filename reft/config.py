"""Every choice of a federated run, in one validated object: :class:`RunConfig`.

A config is checked as a whole when it is made (all problems reported at once, as one ``ValueError``);
the data-dependent checks (enough private samples for the clients, a non-empty public set) happen
when :func:`reft.engine.run` loads the data. Algorithms, models, datasets and partition schemes are
validated against their registries (:mod:`reft.strategies`, :func:`reft.models.register`,
:func:`reft.data.register`, :func:`reft.data.register_partitioner`), so one registered from outside the
package is accepted by name. An unknown keyword names the closest field.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace
from typing import Any

from reft import codecs, data, distill, models, pruning, strategies, train
from reft import tiers as tiers_mod

POLICIES = ("proportional", "deadline")
WEIGHTINGS = ("uniform", "samples")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, Sequence) and all(isinstance(t, str) for t in v))


# The first type of a field's annotation -> (test, what it must be). Every field's annotation is listed here.
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an int"),
    "float": (_is_number, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "Sequence[int]": (lambda v: isinstance(v, Sequence) and not isinstance(v, str) and all(map(_is_int, v)),
                      "a list of ints"),
    "Mapping[str, float]": (lambda v: _is_names(v) or (isinstance(v, Mapping) and _is_names(list(v))
                            and all(map(_is_number, v.values()))), "a {tier: weight} mapping or tier names"),
}  # fmt: skip


def _value_errors(c: SimpleNamespace, bad: Collection[str]) -> list[str]:
    """Problems with the values of a config whose fields ``bad`` (mistyped) hold their defaults."""
    errors = []
    if c.algorithm not in strategies.ALGORITHMS:
        errors.append(f"unknown algorithm {c.algorithm!r}; valid algorithms: {', '.join(strategies.ALGORITHMS)}")
    if c.partition not in data.SCHEMES:
        errors.append(f"unknown partition {c.partition!r}; valid schemes: {', '.join(data.SCHEMES)}")
    if c.dataset not in data.DATASETS:
        errors.append(f"unknown dataset {c.dataset!r}; valid datasets: {', '.join(data.DATASETS)}")
    if c.importance not in pruning.IMPORTANCES:
        errors.append(f"unknown importance {c.importance!r}; valid: {', '.join(pruning.IMPORTANCES)}")
    if c.partition == "dirichlet" and "alpha" not in bad and not (c.alpha is not None and c.alpha > 0):
        errors.append(f"partition 'dirichlet' needs alpha > 0 (e.g. 0.5); got {c.alpha}")
    if c.model not in models.MODEL_NAMES:
        errors.append(f"unknown model {c.model!r}; valid models: {', '.join(models.MODEL_NAMES)}")
    if c.policy not in POLICIES:
        errors.append(f"unknown policy {c.policy!r}; valid policies: {', '.join(POLICIES)}")
    if c.ensemble not in distill.MODES:
        errors.append(f"unknown ensemble {c.ensemble!r}; valid: {', '.join(distill.MODES)}")
    if (problem := train.device_problem(c.device)) is not None:
        errors.append(problem)
    for direction in ("codec_up", "codec_down"):
        if getattr(c, direction) not in codecs.CODECS:
            errors.append(f"unknown {direction} {getattr(c, direction)!r}; valid codecs: {', '.join(codecs.CODECS)}")
    if c.weighting is not None and c.weighting not in WEIGHTINGS:
        errors.append(f"unknown weighting {c.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    errors += _tier_errors(c, bad)
    checks = [
        (c.momentum >= 0 and c.momentum < 1, f"momentum must be in [0, 1); got {c.momentum}"),
        (c.weight_decay >= 0, f"weight_decay must be >= 0; got {c.weight_decay}"),
        (c.shards_per_client >= 1, f"shards_per_client must be >= 1; got {c.shards_per_client}"),
        (c.min_size >= 1, f"min_size must be >= 1; got {c.min_size}"),
        (
            c.max_share is None or 1 / max(c.n_clients, 1) <= c.max_share <= 1,
            f"max_share must be in [1/n_clients, 1] or None; got {c.max_share}",
        ),
        (c.rounds >= 1, f"rounds must be >= 1; got {c.rounds}"),
        (c.n_clients >= 1, f"n_clients must be >= 1; got {c.n_clients}"),
        (c.local_epochs >= 1, f"local_epochs must be >= 1; got {c.local_epochs}"),
        (c.lr > 0, f"lr must be > 0; got {c.lr}"),
        (0 < c.lr_gamma <= 1, f"lr_gamma must be in (0, 1]; got {c.lr_gamma}"),
        (
            "lr_milestones" in bad or all(m >= 1 for m in c.lr_milestones),
            f"lr_milestones must be rounds >= 1; got {list(c.lr_milestones) if 'lr_milestones' not in bad else ''}",
        ),
        (c.distill_lr > 0, f"distill_lr must be > 0; got {c.distill_lr}"),
        (c.batch_size >= 1, f"batch_size must be >= 1; got {c.batch_size}"),
        (c.distill_batch_size >= 1, f"distill_batch_size must be >= 1; got {c.distill_batch_size}"),
        (c.temperature > 0, f"temperature must be > 0; got {c.temperature}"),
        (c.distill_epochs >= 1, f"distill_epochs must be >= 1; got {c.distill_epochs}"),
        (0 <= c.val_fraction < 1, f"val_fraction must be in [0, 1); got {c.val_fraction}"),
        (c.patience >= 0, f"patience must be >= 0; got {c.patience}"),
        (c.refresh_every >= 0, f"refresh_every must be >= 0 (0 = never); got {c.refresh_every}"),
        (0 <= c.dropout < 1, f"dropout must be in [0, 1); got {c.dropout}"),
        (0 <= c.max_ratio < 1, f"max_ratio must be in [0, 1); got {c.max_ratio}"),
        (c.deadline_s is None or c.deadline_s > 0, f"deadline_s must be > 0; got {c.deadline_s}"),
        (c.seed >= 0, f"seed must be >= 0; got {c.seed}"),
        (c.diagnostics_every >= 0, f"diagnostics_every must be >= 0 (0 = last round only); got {c.diagnostics_every}"),
        (c.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = no checkpoints); got {c.checkpoint_every}"),
    ]
    errors += [msg for ok, msg in checks if not ok]
    if c.public_size == 0 and "algorithm" not in bad and c.algorithm in strategies.ALGORITHMS:
        if strategies.create(c.algorithm).uses_public:
            without = [a for a in strategies.ALGORITHMS if not strategies.create(a).uses_public]
            errors.append(f"public_size=0 leaves no public set, but {c.algorithm} uses one; give public_size >= 1 "
                          f"or None (algorithms that need none: {', '.join(without)})")  # fmt: skip
    for part in ("private_size", "public_size", "test_size"):
        n = getattr(c, part)
        low = 0 if part == "public_size" else 1  # 0: no public set (for an algorithm that uses none)
        if n is not None and n < low:
            errors.append(f"{part} must be >= {low} or None for the whole part; got {n}")
    if c.widths is not None and "model" not in bad and c.model in models.MODEL_NAMES:
        dense = models.default_widths(c.model)  # reft.comm accepts no model wider than this
        if len(c.widths) != len(dense) or not all(1 <= w <= d for w, d in zip(c.widths, dense, strict=False)):
            errors.append(f"widths must be {len(dense)} ints, each in 1..{c.model}'s dense width {dense}; "
                          f"got {list(c.widths)}")  # fmt: skip
    return errors


def _tier_errors(c: SimpleNamespace, bad: Collection[str]) -> list[str]:
    """Problems with the tier table (``tiers_path``), ``tier_mix`` and ``server_tier``."""
    if "tiers_path" in bad:
        return []
    try:
        table = tiers_mod.load_tiers(c.tiers_path)
    except (FileNotFoundError, ValueError) as e:
        return [f"tiers_path: {str(e).rstrip('.')}"]
    errors = []
    if c.tier_mix is not None and "tier_mix" not in bad:
        try:
            tiers_mod.assign(c.n_clients if "n_clients" not in bad and c.n_clients >= 1 else 1, c.tier_mix, table)
        except ValueError as e:
            errors.append(f"tier_mix: {str(e).rstrip('.')}")
    if c.server_tier is not None and "server_tier" not in bad and c.server_tier not in table.index:
        errors.append(f"unknown server_tier {c.server_tier!r}; valid tiers: {', '.join(map(str, table.index))}")
    return errors


def closest(name: str, valid: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``""`` when none is close."""
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass
class RunConfig:
    """Everything a run depends on. Validated on creation (and against the data in :func:`run`)."""

    algorithm: str = "reft"
    # data
    dataset: str = "fashion-mnist"
    private_size: int | None = None  # subsample sizes; None keeps the whole part (public_size=0: no public set)
    public_size: int | None = None
    test_size: int | None = None
    n_clients: int = 10
    partition: str = "iid"  # a scheme of reft.data.SCHEMES: iid, dirichlet, shards or a registered one
    alpha: float | None = None
    shards_per_client: int = 2  # the shards scheme: label-sorted shards per client
    min_size: int = 1  # every client gets at least this many samples (dirichlet re-draws until so)
    max_share: float | None = None  # dirichlet: a client holding this fraction of the samples gets no more classes
    # model and hardware
    model: str = "cnn"
    widths: Sequence[int] | None = None  # dense widths of the server model (None: the builder's default)
    tiers_path: str | None = None
    tier_mix: Mapping[str, float] | Sequence[str] | None = None  # None: all tiers of the table, equally
    policy: str = "proportional"
    max_ratio: float = 0.95  # the proportional policy then gives each of the six default tiers its own width
    deadline_s: float | None = None  # "deadline" policy without one: the tightest every tier can meet
    server_tier: str | None = None  # the server's hardware, for simulated server time (None: the strongest tier)
    importance: str = "l2"
    # where the run computes: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps"
    device: str = "auto"
    amp: bool = False  # bf16 autocast on CUDA and CPUs with native bf16; elsewhere fp32 (warned by the engine)
    # the wire: how models are stored in the payloads each way (reft.codecs: "fp32", "fp16" or "int8")
    codec_up: str = "fp32"  # client -> server uploads
    codec_down: str = "fp32"  # server -> client models
    # rounds and local training
    rounds: int = 5
    local_epochs: int = 1
    lr: float = 0.05
    # step decay of the local lr over rounds (torch's MultiStepLR, per round): rounds after a milestone train
    # with lr * lr_gamma ** (milestones passed); () keeps the lr constant. Same for every algorithm.
    lr_milestones: Sequence[int] = ()
    lr_gamma: float = 0.1
    momentum: float = 0.9  # the local SGD optimizer's (reft.train.fit)
    weight_decay: float = 5e-4
    batch_size: int = 64
    dropout: float = 0.0  # fraction of clients that drop out of each round, drawn at random
    augment: bool | None = None  # random crop + flip in local training; None: by dataset (CIFAR yes, FMNIST no)
    # server distillation (REFT)
    temperature: float = 1.0
    ensemble: str = "logits"
    weighting: str | None = None  # None: the algorithm's own choice (uniform for FedDF and HeteroFL, as published)
    distill_epochs: int = 10
    distill_lr: float = 1e-3
    distill_lr_decay: bool = False  # the server's distillation lr (REFT, FedDF) follows lr_milestones too
    distill_batch_size: int = 128
    val_fraction: float = 0.1
    patience: int = 2
    refresh_every: int = 0  # REFT: resend freshly pruned server models every k rounds (0 = never)
    # bookkeeping
    eval_clients: bool = True
    diagnostics_every: int = 1  # per-client and ensemble test accuracy every k rounds and in the last (0: last only)
    final_test: bool = True  # the last round's server (and ensemble) accuracy on the whole test part
    seed: int = 0
    save_as: str | None = None  # save the history as results/<profile>/<save_as>.csv after every round
    checkpoint_every: int = 1  # with save_as: a resumable checkpoint every k rounds (0 = none); reft.checkpoint
    resume: bool = False  # with save_as: continue from this run's last checkpoint, if there is one
    keep_checkpoints: bool = True  # a finished run keeps its last checkpoint (resume returns it at once)
    profile: str = "interactive"
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def _type_errors(self) -> dict[str, str]:
        """Field -> message, for every field whose value has the wrong type (checked before any value is)."""
        errors = {}
        for f in fields(self):
            value, optional = getattr(self, f.name), f.type.endswith("| None")
            ok, what = _TYPES[f.type.split(" | ")[0]]
            if not (ok(value) or (optional and value is None)):
                errors[f.name] = (f"{f.name} must be {what}{' or None' if optional else ''}; got {value!r} "
                                  f"({type(value).__name__})")  # fmt: skip
        return errors

    def validate(self) -> None:
        """Raise one ``ValueError`` listing every problem: wrong types first, then bad values."""
        mistyped = self._type_errors()
        # values are compared on the well-typed fields only: a mistyped field counts as its default there
        values = {f.name: f.default if f.name in mistyped else getattr(self, f.name) for f in fields(self)}
        errors = [*mistyped.values(), *_value_errors(SimpleNamespace(**values), mistyped)]
        if errors:
            raise ValueError("Invalid RunConfig: " + "; ".join(errors) + ".")

    @property
    def augments(self) -> bool:
        """Whether local training augments: ``augment``, or when None the dataset's default
        (:data:`reft.data.AUGMENT_BY_DEFAULT`: on for CIFAR-10, off for Fashion-MNIST)."""
        return self.augment if self.augment is not None else data.AUGMENT_BY_DEFAULT.get(self.dataset, False)

    def lr_factor(self, rnd: int) -> float:
        """``lr_gamma`` to the number of milestones before round ``rnd`` (1-based): the decay of that round."""
        return self.lr_gamma ** sum(m < rnd for m in self.lr_milestones)

    def lr_at(self, rnd: int) -> float:
        """The local learning rate of round ``rnd``: ``lr`` times :meth:`lr_factor`."""
        return self.lr * self.lr_factor(rnd)

    def distill_lr_at(self, rnd: int) -> float:
        """The server's distillation learning rate in round ``rnd``: ``distill_lr``, times the same
        :meth:`lr_factor` when ``distill_lr_decay`` is set (every optimizer of the federation anneals together)."""
        return self.distill_lr * (self.lr_factor(rnd) if self.distill_lr_decay else 1.0)

    def replace(self, **changes) -> RunConfig:
        """A validated copy with some fields changed."""
        return RunConfig(**{**asdict(self), **changes})


_FIELDS = tuple(f.name for f in fields(RunConfig))
_dataclass_init = RunConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self: RunConfig, *args: Any, **kwargs: Any) -> None:
    """The dataclass's ``__init__``, but an unknown keyword is a ``ValueError`` naming the closest field."""
    unknown = [k for k in kwargs if k not in _FIELDS]
    if unknown:
        raise ValueError("Invalid RunConfig: " + "; ".join(f"unknown field {k!r}{closest(k, _FIELDS)}" for k in unknown)
                         + f". Fields: {', '.join(_FIELDS)}.")  # fmt: skip
    _dataclass_init(self, *args, **kwargs)


RunConfig.__init__ = _init  # type: ignore[method-assign]
