"""Start a Flower federation on this machine, run REFT on it, and stop every process it started.

:class:`Deployment` owns its processes: one ``flower-superlink`` and N ``flower-supernode``
(each with its ``partition-id`` and ``tier`` in ``--node-config``), all bound to 127.0.0.1,
insecure (TLS is for real networks; see the README). Flower detaches some of its own helpers
(the SuperLink's ``flower-superexec`` starts a new session), so a process tree is not enough to
find them all: every process started here carries a marker in its environment, and
:meth:`Deployment.stop` ends each process with that marker, by PID, then checks that none is left.

Run it inside a loopback-only network namespace when nothing may leave the machine::

    unshare -n sh -c 'ip link set lo up && exec "$@"' sh python -m reft.flower deploy --nodes 3

Flower's simulation runtime (Ray, virtual SuperNodes) runs the same ServerApp and ClientApp two ways:
:func:`simulate_superlink` (``flwr run`` on a SuperLink started with ``--simulation``) and
:func:`simulate` (:func:`flwr.simulation.run_simulation` in this process; deprecated in flwr 1.41).
:func:`run` does any of the three in a child process inside a loopback-only network namespace, and
:func:`compare` puts them next to the in-process engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

from reft.federation import RunConfig
from reft.flower import config as fconfig

MARKER = "REFT_FLOWER_LAUNCH"
# Offline operation: no telemetry, no update check, no pip install of app dependencies at run time.
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A Flower console script from the environment of this Python (not whatever is first on PATH)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH; install the extra: pip install -e '.[flower]'."
        )
    return found


@dataclass
class FlowerResult:
    """A finished Flower run: history and Ledger (from the ServerApp), what each client recorded,
    failures, the SuperNodes, timings, and the PIDs still alive after :meth:`Deployment.stop` (should be none)."""

    history: pd.DataFrame
    ledger: pd.DataFrame
    client_log: pd.DataFrame
    failures: pd.DataFrame
    nodes: pd.DataFrame
    status: dict
    wall_s: float
    killed: list[int] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)

    @property
    def final_acc(self) -> float:
        return float(self.history["server_acc"].iloc[-1])


def read_result(out_dir: str | Path, wall_s: float = float("nan")) -> FlowerResult:
    """Collect what the ServerApp and the ClientApps wrote into ``out_dir``."""
    out = Path(out_dir)

    def csv(name: str) -> pd.DataFrame:
        p = out / name
        return pd.read_csv(p) if p.exists() and p.stat().st_size else pd.DataFrame()

    rows = []
    for p in sorted((out / "clients").glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else {}
    return FlowerResult(
        csv("history.csv"), csv("ledger.csv"), pd.DataFrame(rows), csv("failures.csv"), csv("nodes.csv"), status, wall_s
    )


class Deployment:
    """A SuperLink and N SuperNodes on 127.0.0.1, owned by this object (use it as a context manager)."""

    def __init__(self, workdir: str | Path | None = None, host: str = "127.0.0.1", quiet: bool = True) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="reft-flower-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.quiet = host, quiet
        self.marker = uuid.uuid4().hex
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) from PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(self.home), MARKER: self.marker, "PATH": path}
        self.procs: dict[str, subprocess.Popen] = {}
        self.nodes: dict[int, str] = {}  # partition id -> process name
        self.port: int | None = None
        self.simulation = False
        self.killed: list[int] = []

    # ------------------------------------------------------------------------------------ processes
    def _start(self, name: str, cmd: Sequence[str]) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                list(cmd), env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_superlink(self, timeout: float = 60.0, simulation: bool = False) -> int:
        """Start the SuperLink (one HTTP port for the Fleet, Control and ServerAppIo APIs); returns the port.

        ``simulation``: a SuperLink with Flower's simulation runtime (virtual SuperNodes on Ray), for
        ``flwr run`` with ``--federation-config num-supernodes=N``; start no SuperNodes then.
        """
        if self.port is not None:
            raise RuntimeError("This Deployment already has a SuperLink.")
        self.port = free_port(self.host)
        self.simulation = simulation
        cmd = [_bin("flower-superlink"), "--insecure", "--host", self.host, "--port", str(self.port)]
        proc = self._start("superlink", cmd + (["--simulation"] if simulation else []))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {self.workdir / 'logs'}.")
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError(f"SuperLink not healthy within {timeout:g} s; see {self.workdir / 'logs'}.")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "reft"\n\n[superlink.reft]\naddress = "{self.host}:{self.port}"\ninsecure = true\n'
        )
        return self.port

    def start_supernode(self, partition_id: int, tier: str | None = None, **node_config: str | int | float) -> str:
        """Start one SuperNode holding partition ``partition_id`` of the private data, on hardware ``tier``."""
        if self.port is None:
            raise RuntimeError("Start the SuperLink first (start_superlink).")
        if partition_id in self.nodes:
            raise ValueError(f"A SuperNode with partition-id {partition_id} is already running.")
        items = {"partition-id": partition_id, **({"tier": tier} if tier else {}), **node_config}
        nc = " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())
        name = f"supernode-{partition_id}"
        cmd = [
            _bin("flower-supernode"), "--insecure", "--superlink", f"{self.host}:{self.port}",
            "--host", self.host, "--port", str(free_port(self.host)), "--node-config", nc,
        ]  # fmt: skip
        self._start(name, cmd)
        self.nodes[partition_id] = name
        return name

    def start(self, tiers: Sequence[str | None], stall: tuple[int, int] | None = None) -> Deployment:
        """A SuperLink plus one SuperNode per entry of ``tiers`` (partition ids 0, 1, ...).

        ``stall=(partition_id, round)`` makes that node's ClientApp hang in that round (node config
        ``stall-round``): a device that stops mid-round, so a kill lands mid-round every time.
        """
        self.start_superlink()
        for i, tier in enumerate(tiers):
            extra = {"stall-round": stall[1]} if stall is not None and stall[0] == i else {}
            self.start_supernode(i, tier, **extra)
        return self

    def _tree(self, root: int) -> list[psutil.Process]:
        try:
            p = psutil.Process(root)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def owned(self) -> list[psutil.Process]:
        """Every live process started here, including the ones Flower detached (found by the env marker)."""
        found: dict[int, psutil.Process] = {}
        for proc in self.procs.values():
            for p in self._tree(proc.pid):
                found[p.pid] = p
        for p in psutil.process_iter():
            if p.pid in found or p.pid == os.getpid():
                continue
            try:
                if p.environ().get(MARKER) == self.marker:
                    found[p.pid] = p
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
                continue
        alive = []
        for p in found.values():
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                continue
        return alive

    def kill_node(self, partition_id: int, sig: int = signal.SIGKILL) -> list[int]:
        """Kill one SuperNode and everything under it (a crash, with the default SIGKILL); returns the PIDs."""
        proc = self.procs[self.nodes[partition_id]]
        victims = self._tree(proc.pid)
        for p in victims:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)
        self.killed.append(partition_id)
        return [p.pid for p in victims]

    def stop(self, grace: float = 5.0) -> list[int]:
        """End every owned process by PID (SIGTERM, then SIGKILL after ``grace`` s); returns PIDs still alive."""
        for _ in range(3):
            procs = self.owned()
            if not procs:
                break
            for p in procs:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=grace)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=grace)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)  # reap our direct children
            except subprocess.TimeoutExpired:
                pass
        return [p.pid for p in self.owned()]

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ runs
    def write_app(self, cfg: RunConfig, options: fconfig.FlowerOptions) -> Path:
        """The Flower App folder (one pyproject.toml, run config = ``cfg``) that ``flwr run`` packages."""
        app_dir = self.workdir / "app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "pyproject.toml").write_text(fconfig.pyproject_toml(cfg, options))
        return app_dir

    def run(
        self,
        cfg: RunConfig,
        options: fconfig.FlowerOptions | None = None,
        timeout: float = 600.0,
        kill: tuple[int, int] | None = None,
        kill_signal: int = signal.SIGKILL,
    ) -> FlowerResult:
        """Submit REFT with ``flwr run`` and wait until the ServerApp is done.

        ``kill=(partition_id, round)`` kills that SuperNode as soon as its ClientApp starts training
        in that round (a crash mid-round); the round completes with the other clients.
        """
        if not self.simulation and len(self.nodes) < cfg.n_clients:
            raise ValueError(f"n_clients={cfg.n_clients} but only {len(self.nodes)} SuperNodes were started.")
        options = options or fconfig.FlowerOptions()
        out = Path(options.out_dir or self.workdir / "out")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        options = fconfig.FlowerOptions(**{**options.__dict__, "out_dir": str(out)})
        app_dir = self.write_app(cfg, options)
        t0 = time.perf_counter()
        cmd = [_bin("flwr"), "run", str(app_dir), "reft", "--format", "json"]
        if self.simulation:  # virtual SuperNodes, one CPU each
            cmd += ["--federation-config", f"num-supernodes={cfg.n_clients} client-resources-num-cpus=1"]
        submit = subprocess.run(
            cmd,
            env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run failed ({submit.returncode}): {submit.stdout}\n{submit.stderr}")
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            if kill is not None and not killed and _started(out, *kill):
                killed = self.kill_node(kill[0], kill_signal)
            try:
                status = json.loads((out / "status.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                status = {}
            if status.get("status") in ("finished", "error"):
                break
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"The SuperLink died; see {self.workdir / 'logs'}.")
            time.sleep(0.1)
        else:
            raise TimeoutError(f"The run did not finish within {timeout:g} s; see {self.workdir / 'logs'} and {out}.")
        wall = time.perf_counter() - t0
        if status["status"] == "error":
            raise RuntimeError(f"The ServerApp failed: {status.get('error')}; see {self.workdir / 'logs'}.")
        result = read_result(out, wall)
        result.killed = list(self.killed)
        return result


def _started(out: Path, partition_id: int, rnd: int) -> bool:
    p = out / "clients" / f"{partition_id}.jsonl"
    if not p.exists():
        return False
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("round") == rnd and row.get("event") == "start":
            return True
    return False


def deploy(
    cfg: RunConfig,
    tiers: Sequence[str | None] | None = None,
    options: fconfig.FlowerOptions | None = None,
    workdir: str | Path | None = None,
    kill: tuple[int, int] | None = None,
    timeout: float = 600.0,
    kill_signal: int = signal.SIGKILL,
) -> FlowerResult:
    """Start a SuperLink + ``cfg.n_clients`` SuperNodes on loopback, run REFT, stop everything.

    ``tiers`` (one per SuperNode) go into the node configs; by default each node takes the tier
    ``cfg.tier_mix`` gives it (as in the in-process engine). ``result.leftover`` lists PIDs that
    survived the stop (none, unless something is badly wrong).
    """
    tiers = list(tiers) if tiers is not None else [None] * cfg.n_clients
    if len(tiers) != cfg.n_clients:
        raise ValueError(f"Give one tier per SuperNode: {cfg.n_clients} clients but {len(tiers)} tiers.")
    dep = Deployment(workdir)
    t0 = time.perf_counter()
    try:
        dep.start(tiers, stall=kill)  # the node to kill hangs in that round, so the kill is always mid-round
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
) -> FlowerResult:
    """``flwr run`` on a SuperLink started with Flower's simulation runtime (the CLI way to simulate):
    virtual SuperNodes on Ray, run config from the app's pyproject.toml; every process stopped after."""
    dep = Deployment(workdir)
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


# ------------------------------------------------------------------------------ loopback-only runs
SESSION = "REFT_FLOWER_SESSION"
ENGINES = ("deploy", "simulate", "simulate-superlink")


def loopback_only() -> bool:
    """Whether this process sits in a network namespace whose only interface is loopback."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def isolate_cmd(argv: Sequence[str]) -> list[str]:
    """``argv`` run inside a fresh network namespace with only loopback up (needs root or user namespaces)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise FileNotFoundError("Loopback-only runs need `unshare` (util-linux) and `ip` (iproute2).")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def session_processes(session: str) -> list[int]:
    """PIDs of live processes that inherited ``REFT_FLOWER_SESSION=session`` (by environment, not name)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(SESSION) == session and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return out


def reap_session(session: str, grace: float = 15.0) -> tuple[list[int], list[int]]:
    """Wait up to ``grace`` s for the processes of a finished run to exit (Ray's daemons take a moment),
    then stop the rest by PID. Returns (PIDs that had to be stopped, PIDs still alive after that)."""
    deadline = time.monotonic() + grace
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    stray = session_processes(session)
    procs = []
    for pid in stray:
        try:
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return stray, session_processes(session)


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
) -> FlowerResult:
    """Run REFT on a Flower engine in a child process: ``"deploy"`` (SuperLink + SuperNodes),
    ``"simulate"`` (``run_simulation``) or ``"simulate-superlink"`` (``flwr run`` on a simulation SuperLink).

    With ``isolate`` (default) the child runs in a loopback-only network namespace (unless this
    process already is in one), so nothing Flower or Ray starts can reach beyond 127.0.0.1.
    ``python`` is an interpreter that has ``flwr`` (default: this one). After the child exits,
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
    info = json.loads((out / "result.json").read_text())
    result.wall_s, result.killed = info["wall_s"], info["killed"]
    result.leftover = sorted(set(info["leftover"]) | set(leftover))
    result.status.update(total_wall_s=wall, engine=engine, stray_pids_stopped=stray)
    return result


def _parse_value(text: str) -> bool | int | float | str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text.strip("'\"")
    return value if isinstance(value, bool | int | float | str) else text


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run REFT on Flower, or write the Flower App folder for ``flwr run``.

    Examples::

        python -m reft.flower deploy --tiers laptop,jetson_nano,raspberry_pi_4 --set rounds=2 --isolate
        python -m reft.flower simulate --set n-clients=4 --set private-size=2000 --isolate
        python -m reft.flower app reft-app --set rounds=3      # then: flwr run reft-app <connection>
    """
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m reft.flower", description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=[*ENGINES, "app"])
    ap.add_argument("dir", nargs="?", help="app: the folder to write; deploy/simulate: output folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config value (repeat)")
    ap.add_argument("--tiers", help="deploy: one tier per SuperNode, comma-separated (sets n-clients)")
    ap.add_argument("--kill", metavar="PARTITION:ROUND", help="deploy: crash that SuperNode in that round")
    ap.add_argument("--isolate", action="store_true", help="run in a loopback-only network namespace (unshare -n)")
    ap.add_argument("--spec", help=argparse.SUPPRESS)  # what run() passes to its child process
    args = ap.parse_args(argv)

    if args.spec:
        return _run_spec(args.command, Path(args.spec))
    user: dict = {}
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        user[k.strip()] = _parse_value(v.strip())
    tiers = [t.strip() for t in args.tiers.split(",")] if args.tiers else None
    if tiers:
        user.setdefault("n-clients", len(tiers))
        user.setdefault("tier-mix", ",".join(tiers))
    try:
        cfg, opts = fconfig.from_user_config(user)
    except ValueError as e:
        ap.error(str(e))
    if args.command == "app":
        d = Path(args.dir or "reft-app")
        d.mkdir(parents=True, exist_ok=True)
        (d / "pyproject.toml").write_text(fconfig.pyproject_toml(cfg, opts))
        print(f"Flower App written to {d}; run it with: flwr run {d} <superlink-connection>")
        return 0
    if args.dir:
        opts = fconfig.FlowerOptions(**{**opts.__dict__, "out_dir": str(Path(args.dir).resolve())})
    kill = tuple(int(x) for x in args.kill.split(":")) if args.kill else None
    res = run(args.command, cfg, tiers=tiers, options=opts, kill=kill, isolate=args.isolate)
    cols = ["round", "server_acc", "client_acc_mean", "arrived", "failed", "bytes_up", "bytes_down", "wall_s"]
    print(res.history[[c for c in cols if c in res.history]].to_string(index=False))
    if len(res.failures):
        print("failures:\n" + res.failures.to_string(index=False))
    print(f"wall {res.status['total_wall_s']:.1f} s; processes left: {res.leftover}")
    return 0


def _run_spec(engine: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    cfg, opts = fconfig.from_user_config(spec["config"])
    if engine == "deploy":
        kill = tuple(spec["kill"]) if "kill" in spec else None
        sig = spec.get("kill_signal", int(signal.SIGKILL))
        res = deploy(cfg, spec.get("tiers"), opts, workdir=spec_path.parent / "deploy", kill=kill, kill_signal=sig)
    elif engine == "simulate-superlink":
        res = simulate_superlink(cfg, opts, workdir=spec_path.parent / "deploy")
    else:
        res = simulate(cfg, opts, num_cpus=spec.get("num_cpus"))
    info = {"wall_s": res.wall_s, "killed": res.killed, "leftover": res.leftover, "status": res.status}
    (spec_path.parent / "result.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return 0


# ----------------------------------------------------------------------------- engines side by side
def has_flwr(python: str | None = None) -> bool:
    """Whether ``python`` (default: this interpreter) can import flwr (checked without importing it)."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('flwr') is None)"
    return subprocess.run([python or sys.executable, "-c", code], check=False).returncode == 0


def compare(
    cfg: RunConfig,
    tiers: Sequence[str] | None = None,
    engines: Sequence[str] = ("in-process", "simulate", "deploy"),
    threads: int = 1,
    python: str | None = None,
    out_dir: str | Path | None = None,
    splits=None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The same REFT workload on the in-process engine and on Flower's engines; one row per engine.

    Every engine runs with ``threads`` torch threads per process (the thread count changes float
    summation order, so equal counts give equal numbers). ``tiers`` (one per client) are what the
    SuperNodes report; the in-process run gets them as ``tier_mix``. Flower engines are skipped
    (``status`` says so) when ``python`` has no flwr. Returns the table and each engine's history.
    """
    import torch

    from reft import federation

    tiers = list(tiers) if tiers is not None else None
    if tiers is not None:
        cfg = cfg.replace(tier_mix=tiers)
    out = Path(out_dir or tempfile.mkdtemp(prefix="reft-flower-compare-"))
    flwr_ok = has_flwr(python)
    rows, histories = [], {}
    for engine in engines:
        row: dict = {"engine": engine}
        if engine == "in-process":
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                t0 = time.perf_counter()
                res = federation.run(cfg, splits)
                wall = time.perf_counter() - t0
            finally:
                torch.set_num_threads(before)
            h = res.history
            row.update(status="finished", total_wall_s=wall, run_wall_s=wall, failures=0)
        elif not flwr_ok:
            rows.append({**row, "status": "skipped: flwr not installed (pip install -e '.[flower]')"})
            continue
        else:
            opts = fconfig.FlowerOptions(out_dir=str(out / engine), threads=threads)
            res = run(engine, cfg, tiers=tiers if engine == "deploy" else None, options=opts, python=python)
            h = res.history
            row.update(
                status=res.status.get("status"),
                total_wall_s=res.status["total_wall_s"],
                run_wall_s=float(res.status.get("wall_s", float("nan"))),
                failures=len(res.failures),
                leftover_processes=len(res.leftover),
            )
        histories[engine] = h
        row.update(
            rounds=len(h),
            final_acc=float(h["server_acc"].iloc[-1]),
            mb_up=float(h["bytes_up"].sum()) / 1e6,
            mb_down=float(h["bytes_down"].sum()) / 1e6,
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if "in-process" in histories and "final_acc" in table:
        ref = table.loc[table.engine == "in-process", "final_acc"].iloc[0]
        table["acc_diff_points"] = 100 * (table["final_acc"] - ref)
    return table, histories
