"""Every choice of a federated run, in one validated object: :class:`RunConfig`.

A config is checked as a whole when it is made (all problems reported at once, as one ``ValueError``);
the data-dependent checks (enough private samples for the clients, a non-empty public set) happen
when :func:`reft.engine.run` loads the data. Algorithms are validated against the registry of
:mod:`reft.strategies`, so a strategy registered from outside the package is accepted by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from reft import data, distill, models, strategies

POLICIES = ("proportional", "deadline")
WEIGHTINGS = ("uniform", "samples")


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
    weighting: str | None = None  # None: the algorithm's own choice (uniform for FedDF and HeteroFL, as published)
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
        if self.algorithm not in strategies.ALGORITHMS:
            errors.append(f"unknown algorithm {self.algorithm!r}; valid algorithms: {', '.join(strategies.ALGORITHMS)}")
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
        if self.weighting is not None and self.weighting not in WEIGHTINGS:
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
