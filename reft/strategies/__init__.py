"""The algorithms, one module each, and the registry that names them.

=================  ==========================================  ==========================
name               strategy                                    module
=================  ==========================================  ==========================
``reft``           :class:`~reft.strategies.reft.REFT`          :mod:`reft.strategies.reft`
``fedavg``         :class:`~reft.strategies.fedavg.FedAvg`      :mod:`reft.strategies.fedavg`
``fedavg-weakest`` :class:`~reft.strategies.fedavg.FedAvgWeakest`  :mod:`reft.strategies.fedavg`
``feddf``          :class:`~reft.strategies.feddf.FedDF`        :mod:`reft.strategies.feddf`
``heterofl``       :class:`~reft.strategies.heterofl.HeteroFL`  :mod:`reft.strategies.heterofl`
=================  ==========================================  ==========================

A new algorithm is a :class:`Strategy` subclass with ``setup``, ``send`` and ``aggregate``; after
``register("mine", Mine)`` (from anywhere, e.g. a notebook cell) ``RunConfig(algorithm="mine")``,
:func:`reft.engine.run` and :func:`reft.experiments.compare` accept it like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable

from reft.strategies.base import Strategy, average, average_overlapping
from reft.strategies.fedavg import FedAvg, FedAvgWeakest
from reft.strategies.feddf import FedDF
from reft.strategies.heterofl import HeteroFL
from reft.strategies.reft import REFT

__all__ = [
    "ALGORITHMS", "REFT", "FedAvg", "FedAvgWeakest", "FedDF", "HeteroFL", "Strategy",
    "average", "average_overlapping", "create", "register",
]  # fmt: skip

ALGORITHMS: dict[str, Callable[[], Strategy]] = {}


def register(name: str, factory: Callable[[], Strategy]) -> None:
    """Make an algorithm available by name to :class:`reft.config.RunConfig` and every notebook.

    ``factory`` is called with no arguments once per run (a class, or e.g. ``lambda: HeteroFL(bn="averaged")``).
    Registering a name again replaces it, so re-running a notebook cell is harmless.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"An algorithm needs a non-empty name; got {name!r}.")
    if not callable(factory):
        raise TypeError(f"register({name!r}, ...) needs a callable that returns a Strategy; got {factory!r}.")
    ALGORITHMS[name] = factory


def create(name: str) -> Strategy:
    """A fresh strategy object for the registered algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}; registered: {', '.join(ALGORITHMS)}.")
    strategy = ALGORITHMS[name]()
    if not isinstance(strategy, Strategy):
        raise TypeError(f"The factory registered as {name!r} returned {type(strategy).__name__}, not a Strategy.")
    return strategy


for _cls in (REFT, FedAvg, FedAvgWeakest, FedDF, HeteroFL):
    register(_cls.name, _cls)
