"""Client partitioners: which private samples each client holds. An open registry of schemes.

:func:`partition` splits sample indices across clients with a registered scheme: ``iid``, ``dirichlet``
(optionally with a minimum size and a balance cap) and ``shards``, or one of :func:`register_partitioner`.
:mod:`reft.data` re-exports all of it (``data.partition``, ``data.SCHEMES``...).

The partitioners are our own, not flwr-datasets' (the ones Flower's baselines use): those partition a
Hugging Face ``datasets.Dataset``, and flwr-datasets 0.6.1 pulls ``datasets``, ``pyarrow``,
``huggingface_hub``, ``hf-xet``, ``aiohttp``, ``multiprocess``, ``dill``, ``xxhash`` and more into an
offline, tensor-only package (``pip install --dry-run flwr-datasets``), and the existing partitions (and
so every committed number) would change. Their options are here under the RunConfig names:
``min_partition_size`` is ``min_size``, ``self_balancing`` is ``max_share=1/n_clients``, ``ShardPartitioner``'s
shards per partition is ``shards_per_client``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

# A partitioner: (labels, n_clients, rng, **the options of PARTITION_OPTIONS it names) -> one index array per
# client. Every partition scheme :func:`partition` (and RunConfig.partition) knows, by name.
Partitioner = Callable[..., Sequence[np.ndarray]]
SCHEMES: dict[str, Partitioner] = {}
PARTITION_OPTIONS = ("alpha", "shards_per_client", "min_size", "max_share")


def register_partitioner(name: str, partitioner: Partitioner) -> None:
    """Make a partition scheme available by name to :func:`partition` and ``RunConfig.partition``.

    ``partitioner(labels, n_clients, rng, ...)`` returns one array of sample indices per client (each sample
    at most once); ``rng`` is a seeded ``numpy.random.Generator``, and of :data:`PARTITION_OPTIONS`
    (``alpha``, ``shards_per_client``, ``min_size``, ``max_share``: RunConfig fields) it is passed those its
    signature names. Registering a name again replaces it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A partition scheme needs a non-empty name; got {name!r}.")
    if not callable(partitioner):
        raise TypeError(f"register_partitioner({name!r}, ...) needs a callable(labels, n_clients, rng, ...).")
    SCHEMES[name] = partitioner


def partition(
    labels: torch.Tensor | np.ndarray,
    n_clients: int,
    scheme: str = "iid",
    alpha: float | None = None,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 1,
    max_share: float | None = None,
) -> list[np.ndarray]:
    """Split sample indices across clients; each sample goes to at most one client.

    Args:
        labels: label of every sample.
        n_clients: number of clients.
        scheme: a registered scheme: ``iid`` (uniform random), ``dirichlet`` (per-class client proportions
            drawn from Dirichlet(``alpha``); small alpha = very skewed), ``shards`` (sorted by label, cut into
            ``n_clients * shards_per_client`` shards, ``shards_per_client`` per client) or one of
            :func:`register_partitioner`.
        alpha: Dirichlet concentration (> 0), required for ``dirichlet``.
        seed: the same seed gives the same partition.
        min_size: every client gets at least this many samples (Dirichlet re-draws until so).
        max_share: Dirichlet's balance cap: a client holding this fraction of all samples already gets
            none of the classes still to deal (None: no cap).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown partition scheme {scheme!r}. Valid schemes: {', '.join(SCHEMES)}.")
    if not 1 <= n_clients <= n // max(min_size, 1):
        raise ValueError(
            f"n_clients must be between 1 and {n // max(min_size, 1)} for {n} samples "
            f"(min_size={min_size}); got {n_clients}."
        )
    rng = np.random.default_rng(seed)
    fn = SCHEMES[scheme]
    options = {"alpha": alpha, "shards_per_client": shards_per_client, "min_size": min_size, "max_share": max_share}
    named = inspect.signature(fn).parameters
    parts = [np.asarray(p) for p in fn(labels, n_clients, rng, **{k: v for k, v in options.items() if k in named})]
    every = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    bad = every.size and (every.dtype.kind not in "iu" or every.min() < 0 or every.max() >= n)
    if len(parts) != n_clients or bad:
        raise ValueError(f"Partitioner {scheme!r} must return {n_clients} arrays of sample indices in 0..{n - 1}.")
    if len(np.unique(every)) != len(every):
        raise ValueError(f"Partitioner {scheme!r} gave some sample to more than one client.")
    if min(len(p) for p in parts) < min_size:
        raise ValueError(f"Partitioner {scheme!r} gave a client fewer than min_size={min_size} samples.")
    return [np.sort(p.astype(np.int64)) for p in parts]


def _iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n_clients)]


def _shards(labels: np.ndarray, n_clients: int, rng: np.random.Generator, shards_per_client: int) -> list[np.ndarray]:
    n_shards = n_clients * shards_per_client
    if shards_per_client < 1 or n_shards > len(labels):
        raise ValueError(f"shards_per_client must be >= 1, n_clients * it <= {len(labels)}; got {shards_per_client}.")
    shards = np.array_split(np.argsort(labels, kind="stable"), n_shards)
    order = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in order]


def _dirichlet(
    labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float | None, min_size: int,
    max_share: float | None,
) -> list[np.ndarray]:  # fmt: skip
    """Per class, client proportions from Dirichlet(alpha), re-drawn until every client has ``min_size``
    samples. With ``max_share`` (NIID-Bench's and flwr-datasets' ``self_balancing`` is ``1 / n_clients``), a
    client already holding that fraction of the samples gets no share of the classes still to deal."""
    if alpha is None or not alpha > 0:
        raise ValueError(f"The dirichlet scheme needs alpha > 0 (e.g. 0.5, or 0.1 for strong skew); got {alpha}.")
    if max_share is not None and not 1 / n_clients <= max_share <= 1:
        raise ValueError(f"max_share must be in [1/n_clients, 1] = [{1 / n_clients:.3g}, 1] or None; got {max_share}.")
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(n_clients, alpha))
            if max_share is not None:  # clients at the cap take no more; the others share this class
                open_ = np.array([len(part) < max_share * len(labels) for part in parts])
                p = p * open_ / (p * open_).sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"Could not draw a Dirichlet(alpha={alpha}) partition with >= {min_size} samples per client in 1000 tries; "
        "use fewer clients, a larger alpha or a smaller min_size."
    )


register_partitioner("iid", _iid)
register_partitioner("dirichlet", _dirichlet)
register_partitioner("shards", _shards)


def label_histogram(labels: torch.Tensor | np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> pd.DataFrame:
    """Samples per class (columns) for each client (rows)."""
    labels = np.asarray(labels)
    counts = [np.bincount(labels[p], minlength=num_classes) for p in parts]
    return pd.DataFrame(counts, index=pd.Index(range(len(parts)), name="client"), columns=range(num_classes))
