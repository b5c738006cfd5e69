"""REFT on Flower: the in-process engine's strategy objects on Flower's simulation and deployment engines.

* :mod:`reft.flower.config`: a :class:`reft.config.RunConfig` as a Flower run config, and back;
  the Flower App's ``pyproject.toml`` (no Flower import);
* :mod:`reft.flower.wire`: ``reft.comm`` bytes inside Flower messages;
* :mod:`reft.flower.server_app` / :mod:`reft.flower.client_app`: the ServerApp (drives
  the strategies of ``reft.strategies`` through Flower's Grid) and the ClientApp (trains what it receives);
* :mod:`reft.flower.launch`: :class:`~reft.flower.launch.Deployment` (a SuperLink and N SuperNodes
  on 127.0.0.1, owned and stopped by PID), :func:`~reft.flower.launch.deploy`,
  :func:`~reft.flower.launch.simulate_superlink`, :func:`~reft.flower.launch.simulate`,
  :func:`~reft.flower.launch.run` (any of them in a loopback-only network namespace) and
  :func:`~reft.flower.launch.compare` (side by side with the in-process engine);
* ``python -m reft.flower {deploy,simulate,simulate-superlink,app}``: the same from the command line.

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
