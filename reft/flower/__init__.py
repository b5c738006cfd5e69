"""REFT on Flower: the in-process engine's strategy objects (all five algorithms of :mod:`reft.strategies`)
on Flower's simulation and deployment engines, with the in-process engine's accuracy and Ledger totals.

* :mod:`reft.flower.config`: a :class:`reft.config.RunConfig` as a Flower run config, and back;
  the Flower App's ``pyproject.toml`` (no Flower import);
* :mod:`reft.flower.wire`: ``reft.comm`` bytes inside Flower messages;
* :mod:`reft.flower.server_app` / :mod:`reft.flower.client_app`: the ServerApp (drives
  the strategies of ``reft.strategies`` through Flower's Grid) and the ClientApp (trains what it receives);
* :mod:`reft.flower.processes`: the processes of a run, started with a marker in their environment,
  found by it and stopped by PID; offline environment, free ports, loopback-only network namespace;
* :mod:`reft.flower.security`: the credentials of a secure deployment (a CA made for the run, the
  SuperLink's TLS certificate, one authentication key pair per SuperNode);
* :mod:`reft.flower.deployment`: :class:`~reft.flower.deployment.Deployment` (a SuperLink and N SuperNodes
  on 127.0.0.1, owned and stopped by PID, TLS and SuperNode authentication unless ``secure=False``;
  submits REFT with ``flwr run``; :meth:`~reft.flower.deployment.Deployment.probe` sends strangers);
* :mod:`reft.flower.results`: :class:`~reft.flower.results.FlowerResult` and
  :func:`~reft.flower.results.read_result` (what a run wrote into its output folder);
* :mod:`reft.flower.engines`: :func:`~reft.flower.engines.deploy`,
  :func:`~reft.flower.engines.simulate_superlink`, :func:`~reft.flower.engines.simulate` and
  :func:`~reft.flower.engines.run` (any of them in a child process in a loopback-only network namespace);
* :mod:`reft.flower.compare`: :func:`~reft.flower.compare.compare` (side by side with the in-process engine)
  and :func:`~reft.flower.compare.compare_algorithms` (that for every algorithm: ``scripts/flower_parity.py``);
* :mod:`reft.flower.launch`: the command line (:func:`~reft.flower.launch.main`); re-exports all of the above
  that callers use (``from reft.flower import launch``; ``launch.run``, ``launch.compare``, ...);
* ``python -m reft.flower {deploy,simulate,simulate-superlink,app,certs}``: the same from the command line.

Needs the optional extra: ``pip install -e '.[flower]'``.
"""

from __future__ import annotations


def available() -> bool:
    """Whether Flower (``flwr``) is installed."""
    import importlib.util

    return importlib.util.find_spec("flwr") is not None


def require() -> None:
    """Raise a clear error when Flower is missing."""
    if not available():
        raise ModuleNotFoundError("REFT on Flower needs the optional extra: pip install -e '.[flower]' (flwr).")
