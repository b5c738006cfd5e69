"""Open registries: a model, a dataset and a partitioner registered from outside the package run through
``experiments.compare`` like the built-in ones; the built-in partitions are unchanged by the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reft import comm, data, engine, experiments, models
from reft.config import RunConfig

# Partition indices computed with the code before the registries existed (main at 6d64de9): same seed,
# same labels, same indices, so every committed result keeps its partition.
LABELS = np.random.default_rng(123).integers(0, 10, 3000)
BEFORE = {
    "iid": ({"scheme": "iid"}, "e37d14441a026f33"),
    "dirichlet0.5": ({"scheme": "dirichlet", "alpha": 0.5}, "e7c72db6bc5fe6bf"),
    "dirichlet0.1min20": ({"scheme": "dirichlet", "alpha": 0.1, "min_size": 20}, "a78f3789956a3d1a"),
    "shards2": ({"scheme": "shards"}, "10deca01d039ac08"),
    "shards3": ({"scheme": "shards", "shards_per_client": 3}, "08f1aea35b259f38"),
}


def _digest(parts: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.asarray(p, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", list(BEFORE))
def test_builtin_partitions_unchanged_by_the_registry(case: str) -> None:
    kw, digest = BEFORE[case]
    assert _digest(data.partition(LABELS, 10, seed=7, **kw)) == digest


def test_dirichlet_max_share_caps_the_largest_client() -> None:
    free = data.partition(LABELS, 10, "dirichlet", alpha=0.1, seed=1)
    capped = data.partition(LABELS, 10, "dirichlet", alpha=0.1, seed=1, max_share=0.1)
    assert max(map(len, capped)) < max(map(len, free))
    # the cap is checked before each class is dealt: a client can pass it by at most one class's samples
    assert max(map(len, capped)) <= 0.1 * len(LABELS) + np.bincount(LABELS).max()
    with pytest.raises(ValueError, match="max_share must be in"):
        data.partition(LABELS, 10, "dirichlet", alpha=0.1, max_share=0.05)


class Tiny(models.ReftModel):
    """A user's own model: one conv block and a linear classifier, ``widths = [conv]``."""

    default_widths = (6,)

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__(num_classes, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(widths[0], num_classes)

    @property
    def widths(self) -> list[int]:
        return [self.features[0].out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _toy_loader(root: Path) -> data.Raw:
    """Four classes of 8x8 images: class k brightens row block k. Normalised here (the loader's choice)."""
    gen = torch.Generator().manual_seed(0)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 4
        x = torch.rand(n, 1, 8, 8, generator=gen)
        for k in range(4):
            x[y == k, :, 2 * k : 2 * k + 2] += 1.0
        return (x - 0.75) / 0.5, y

    x, y = make(400)
    xt, yt = make(80)
    return x, y, xt, yt, ("a", "b", "c", "d")


def _by_label(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A user's own partitioner: client k gets the samples whose label is k modulo the number of clients."""
    return [np.flatnonzero(labels % n_clients == k) for k in range(n_clients)]


@pytest.fixture
def registered() -> Iterator[None]:
    models.register("tiny", Tiny)
    data.register("toy", _toy_loader)
    data.register_partitioner("by-label", _by_label)
    yield
    del models.MODEL_NAMES["tiny"], data.DATASETS["toy"], data.AUGMENT_BY_DEFAULT["toy"], data.SCHEMES["by-label"]


def test_registered_model_dataset_and_partitioner_run_through_compare(registered: None, tmp_path: Path) -> None:
    base = RunConfig(
        dataset="toy", model="tiny", rounds=2, n_clients=4, tier_mix=["laptop", "phone"], public_size=60,
        distill_epochs=1, eval_clients=False, progress=False,
    )  # fmt: skip
    splits = data.load("toy", root=tmp_path, public_size=100)
    assert (len(splits.private_train), len(splits.public), splits.num_classes) == (300, 100, 4)
    cmp = experiments.compare(base, splits, methods=("fedavg", "reft"), partitions=("by-label", "iid"))
    assert set(cmp.table["partition"]) == {"by-label", "iid"} and len(cmp.table) == 4
    by_label = [r for r in cmp.results if r.config.partition == "by-label" and r.config.algorithm == "fedavg"][0]
    # the user's partitioner decided each client's data: client k holds exactly class k
    per_class = torch.bincount(splits.private_train.y, minlength=4).tolist()
    assert by_label.clients["samples"].tolist() == per_class
    reft = [r for r in cmp.results if r.config.algorithm == "reft"][0]
    assert all(m.spec["name"] == "tiny" for m in reft.client_models.values())
    assert min(m.widths[0] for m in reft.client_models.values()) < 6  # the phone's model was pruned
    assert cmp.history["server_acc"].between(0, 1).all() and (cmp.history["cum_bytes"] > 0).all()


def test_registered_model_crosses_the_wire_and_an_unregistered_one_is_refused(registered: None) -> None:
    torch.manual_seed(0)
    m = models.build("tiny", 4, 1, widths=[3]).eval()
    payload = comm.encode(m)
    back = comm.decode(payload).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert back.spec == m.spec and torch.equal(back(x), m(x))
    del models.MODEL_NAMES["tiny"]
    with pytest.raises(comm.PayloadError, match="unknown model 'tiny'"):
        comm.decode(payload)
    models.register("tiny", Tiny)  # the fixture removes it again


def test_register_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="default_widths"):
        models.register("bad", lambda n, c, w: None)
    models.register("not-a-model", lambda n, c, w: nn.Linear(2, 2), default_widths=[2])
    try:
        with pytest.raises(TypeError, match="not a ReftModel"):
            models.build("not-a-model")
    finally:
        del models.MODEL_NAMES["not-a-model"]
    data.register("broken", lambda root: (torch.zeros(3, 1, 2, 2, dtype=torch.uint8),) * 5)
    try:
        with pytest.raises(TypeError, match="float tensor"):
            data.load("broken")
    finally:
        del data.DATASETS["broken"], data.AUGMENT_BY_DEFAULT["broken"]
    data.register_partitioner("greedy", lambda labels, n, rng: [np.arange(len(labels))] * n)
    try:
        with pytest.raises(ValueError, match="more than one client"):
            data.partition(LABELS, 3, "greedy")
    finally:
        del data.SCHEMES["greedy"]


def test_optimizer_fields_reach_local_training_and_defaults_are_todays(registered: None, tmp_path: Path) -> None:
    splits = data.load("toy", root=tmp_path, public_size=100)
    cfg = RunConfig(dataset="toy", model="tiny", algorithm="fedavg", rounds=1, n_clients=2, progress=False)
    default = engine.run(cfg, splits).client_models[0].state_dict()
    explicit = engine.run(cfg.replace(momentum=0.9, weight_decay=5e-4), splits).client_models[0].state_dict()
    plain = engine.run(cfg.replace(momentum=0.0, weight_decay=0.0), splits).client_models[0].state_dict()
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    assert not all(torch.equal(default[k], plain[k]) for k in default)


def test_public_size_zero_for_algorithms_without_a_public_set(registered: None, tmp_path: Path) -> None:
    splits = data.load("toy", root=tmp_path, public_size=100)
    res = engine.run(RunConfig(dataset="toy", model="tiny", algorithm="fedavg", public_size=0, rounds=1,
                               n_clients=2, progress=False), splits)  # fmt: skip
    assert len(res.history) == 1
    for algorithm in ("reft", "feddf", "heterofl"):  # heterofl's static BN pass reads the public set
        with pytest.raises(ValueError, match=f"public_size=0 leaves no public set, but {algorithm} uses one"):
            RunConfig(algorithm=algorithm, public_size=0)
