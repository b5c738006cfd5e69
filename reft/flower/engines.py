"""REFT on Flower's engines: :func:`deploy`, :func:`simulate_superlink`, :func:`simulate`, and :func:`run`.

Flower runs the same ServerApp and ClientApp three ways (:data:`ENGINES`): :func:`deploy` (a SuperLink and
real SuperNodes on loopback, a :class:`~reft.flower.deployment.Deployment`), :func:`simulate_superlink`
(``flwr run`` on a SuperLink started with ``--simulation``: virtual SuperNodes on Ray) and
:func:`simulate` (:func:`flwr.simulation.run_simulation` in this process; deprecated in flwr 1.41).
:func:`run` does any of the three in a child process (``python -m reft.flower ENGINE --spec``, whose
side is :func:`run_spec`) inside a loopback-only network namespace, and reaps whatever the child left.
(The in-process engine is :mod:`reft.engine`; :mod:`reft.flower.compare` puts them side by side.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from reft.config import RunConfig
from reft.flower import config as fconfig
from reft.flower.deployment import Deployment
from reft.flower.processes import OFFLINE_ENV, SESSION, isolate_cmd, loopback_only, reap_session
from reft.flower.results import FlowerResult, read_result, read_run_info, write_run_info

ENGINES = ("deploy", "simulate", "simulate-superlink")


def deploy(
    cfg: RunConfig,
    tiers: Sequence[str | None] | None = None,
    options: fconfig.FlowerOptions | None = None,
    workdir: str | Path | None = None,
    kill: tuple[int, int] | None = None,
    timeout: float = 600.0,
    kill_signal: int = signal.SIGKILL,
    secure: bool = True,
    probe: bool = False,
) -> FlowerResult:
    """Start a SuperLink + ``cfg.n_clients`` SuperNodes on loopback, run ``cfg.algorithm``, stop everything.

    ``tiers`` (one per SuperNode) go into the node configs; by default each node takes the tier
    ``cfg.tier_mix`` gives it (as in the in-process engine). ``secure`` (default): TLS and SuperNode
    authentication with credentials made for the run; ``probe``: send strangers first
    (:meth:`~reft.flower.deployment.Deployment.probe`; ``result.refusals``). ``result.leftover`` lists
    PIDs that survived the stop (none, unless something is badly wrong).
    """
    tiers = list(tiers) if tiers is not None else [None] * cfg.n_clients
    if len(tiers) != cfg.n_clients:
        raise ValueError(f"Give one tier per SuperNode: {cfg.n_clients} clients but {len(tiers)} tiers.")
    dep = Deployment(workdir, secure=secure)
    t0 = time.perf_counter()
    try:
        # the node to kill hangs in that round, so the kill is always mid-round
        dep.start(tiers, stall=kill, probe=probe)
        result = dep.run(cfg, options, timeout=timeout, kill=kill, kill_signal=kill_signal)
    finally:
        leftover = dep.stop()
    result.leftover = leftover
    result.status["total_wall_s"] = time.perf_counter() - t0
    return result


def simulate_superlink(
    cfg: RunConfig,
    options: fconfig.FlowerOptions | None = None,
    workdir: str | Path | None = None,
    timeout: float = 600.0,
    secure: bool = False,
) -> FlowerResult:
    """``flwr run`` on a SuperLink started with Flower's simulation runtime (the CLI way to simulate):
    virtual SuperNodes on Ray, run config from the app's pyproject.toml; every process stopped after.

    No SuperNodes connect, and :func:`run` keeps it in a loopback-only namespace, so it runs without TLS
    by default, as before. ``secure=True`` (TLS for the CLI and the ServerApp) is not verified: on a
    starved machine the one try timed out, as did a try without TLS ("Runtime task-token authentication
    failed" in the SuperLink's log in both)."""
    dep = Deployment(workdir, secure=secure)
    t0 = time.perf_counter()
    try:
        dep.start_superlink(simulation=True)
        result = dep.run(cfg, options, timeout=timeout)
    finally:
        leftover = dep.stop()
    result.leftover = leftover
    result.status["total_wall_s"] = time.perf_counter() - t0
    return result


def simulate(cfg: RunConfig, options: fconfig.FlowerOptions | None = None, num_cpus: int | None = None) -> FlowerResult:
    """Run the same ServerApp/ClientApp on Flower's simulation engine (Ray), in this process.

    ``run_simulation`` takes no run config, so both apps get ``cfg`` through closures; every virtual
    SuperNode gets ``partition-id`` from Flower and its tier from ``cfg.tier_mix``.
    """
    from flwr.simulation import run_simulation

    from reft.flower.client_app import make_client_app
    from reft.flower.server_app import make_server_app

    options = options or fconfig.FlowerOptions()
    out = Path(options.out_dir or tempfile.mkdtemp(prefix="reft-flower-sim-"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    options = fconfig.FlowerOptions(**{**options.__dict__, "out_dir": str(out)})
    user = fconfig.to_user_config(cfg, options)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if num_cpus is not None:
        backend["init_args"] = {"num_cpus": num_cpus}
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    try:
        server, client = make_server_app(user), make_client_app(user)
        run_simulation(server, client, num_supernodes=cfg.n_clients, backend_config=backend)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    result = read_result(out, time.perf_counter() - t0)
    if result.status.get("status") != "finished":
        raise RuntimeError(f"The simulated run did not finish: {result.status}.")
    return result


def run(
    engine: str,
    cfg: RunConfig,
    tiers: Sequence[str | None] | None = None,
    options: fconfig.FlowerOptions | None = None,
    kill: tuple[int, int] | None = None,
    kill_signal: int = signal.SIGKILL,
    python: str | None = None,
    isolate: bool = True,
    timeout: float = 900.0,
    num_cpus: int | None = None,
    secure: bool = True,
    probe: bool = False,
) -> FlowerResult:
    """Run ``cfg.algorithm`` on a Flower engine in a child process: ``"deploy"`` (SuperLink + SuperNodes),
    ``"simulate"`` (``run_simulation``) or ``"simulate-superlink"`` (``flwr run`` on a simulation SuperLink).

    With ``isolate`` (default) the child runs in a loopback-only network namespace (unless this
    process already is in one), so nothing Flower or Ray starts can reach beyond 127.0.0.1.
    ``python`` is an interpreter that has ``flwr`` (default: this one). ``secure`` and ``probe``: as in
    :func:`deploy` (the simulation engines run without TLS, see :func:`simulate_superlink`). After the child exits,
    ``result.leftover`` also lists any process of the run still alive anywhere (should be none).
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown Flower engine {engine!r}; valid: {', '.join(ENGINES)}.")
    options = options or fconfig.FlowerOptions()
    out = Path(options.out_dir or tempfile.mkdtemp(prefix=f"reft-flower-{engine}-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "config": fconfig.to_user_config(
            cfg, fconfig.FlowerOptions(**{**options.__dict__, "out_dir": str(out / "run")})
        )
    }
    if tiers is not None:
        spec["tiers"] = list(tiers)
    if kill is not None:
        spec["kill"], spec["kill_signal"] = list(kill), int(kill_signal)
    if num_cpus is not None:
        spec["num_cpus"] = num_cpus
    spec["secure"], spec["probe"] = bool(secure), bool(probe)
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    argv = [python or sys.executable, "-m", "reft.flower", engine, "--spec", str(out / "spec.json")]
    if isolate and not loopback_only():
        argv = isolate_cmd(argv)
    session = uuid.uuid4().hex
    env = {**os.environ, **OFFLINE_ENV, SESSION: session, "FLWR_HOME": str(out / "flwr-home")}
    t0 = time.perf_counter()
    with (out / "launcher.log").open("w") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    stray, leftover = reap_session(session)
    if proc.returncode != 0:
        tail = (out / "launcher.log").read_text()[-3000:]
        raise RuntimeError(f"The {engine} run failed (exit {proc.returncode}); log {out / 'launcher.log'}:\n{tail}")
    result = read_result(out / "run")
    info = read_run_info(out)
    result.wall_s, result.killed, result.refusals = info["wall_s"], info["killed"], info.get("refusals", [])
    for key in ("secure", "registered"):
        if key in info["status"]:
            result.status[key] = info["status"][key]
    result.leftover = sorted(set(info["leftover"]) | set(leftover))
    result.status.update(total_wall_s=wall, engine=engine, stray_pids_stopped=stray)
    return result


def run_spec(engine: str, spec_path: Path) -> int:
    """The child side of :func:`run`: run ``engine`` as ``spec.json`` says; write ``result.json`` next to it."""
    spec = json.loads(spec_path.read_text())
    cfg, opts = fconfig.from_user_config(spec["config"])
    if engine == "deploy":
        kill = tuple(spec["kill"]) if "kill" in spec else None
        sig = spec.get("kill_signal", int(signal.SIGKILL))
        res = deploy(
            cfg, spec.get("tiers"), opts, workdir=spec_path.parent / "deploy", kill=kill, kill_signal=sig,
            secure=spec.get("secure", True), probe=spec.get("probe", False),
        )  # fmt: skip
    elif engine == "simulate-superlink":
        res = simulate_superlink(cfg, opts, workdir=spec_path.parent / "deploy")
    else:
        res = simulate(cfg, opts, num_cpus=spec.get("num_cpus"))
    info = write_run_info(spec_path.parent, res)
    print(json.dumps(info))
    return 0
