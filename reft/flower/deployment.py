"""A Flower federation on this machine: :class:`Deployment` starts, watches and stops its own processes.

:class:`Deployment` owns its processes: one ``flower-superlink`` and N ``flower-supernode``
(each with its ``partition-id`` and ``tier`` in ``--node-config``), all bound to 127.0.0.1. By default
the deployment is secure as a real one should be (:mod:`reft.flower.security`): a CA and certificates
made for the run, TLS on every connection (SuperLink, each SuperNode's local API, the ``flwr`` CLI), and
SuperNode authentication: one key pair per SuperNode, each public key registered at the SuperLink
(``flwr supernode register``) before that SuperNode starts; :meth:`Deployment.probe` shows that a
stranger is refused. ``secure=False`` is Flower's ``--insecure`` (and says what it gives up).

Flower detaches some of its own helpers (the SuperLink's ``flower-superexec`` starts a new session),
so a process tree is not enough to find them all: every process started here carries a marker in its
environment (:data:`reft.flower.processes.MARKER`), and :meth:`Deployment.stop` ends each process with that
marker, by PID, then checks that none is left. :meth:`Deployment.run` submits REFT with ``flwr run``
and waits for the ServerApp; reading its output is :mod:`reft.flower.results`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import psutil

from reft.config import RunConfig
from reft.flower import config as fconfig
from reft.flower import security
from reft.flower.processes import MARKER, OFFLINE_ENV, flower_bin, free_port, json_answer, plain_env
from reft.flower.results import FlowerResult, client_started, read_result


class InsecureDeploymentWarning(UserWarning):
    """A deployment without TLS and SuperNode authentication was started (:data:`security.INSECURE_NOTE`)."""


PROBES = ("unlisted-key", "untrusted-ca")  # the strangers :meth:`Deployment.probe` sends


class Deployment:
    """A SuperLink and N SuperNodes on 127.0.0.1, owned by this object (use it as a context manager).

    ``secure`` (default): TLS and SuperNode authentication with ``credentials`` (default: a new CA and
    keys in ``workdir/certs``); ``False``: Flower's ``--insecure``, with an :class:`InsecureDeploymentWarning`.
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        host: str = "127.0.0.1",
        quiet: bool = True,
        secure: bool = True,
        credentials: security.Credentials | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="reft-flower-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.quiet, self.secure = host, quiet, secure
        self.credentials = credentials
        self.registered: dict[int, int] = {}  # partition id -> node id the SuperLink gave its public key
        self.refusals: list[dict] = []  # what probe() saw
        self.marker = uuid.uuid4().hex
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) from PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(self.home), MARKER: self.marker, "PATH": path}
        self.env = plain_env(env)
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

    def start_superlink(self, timeout: float = 120.0, simulation: bool = False) -> int:
        """Start the SuperLink (one HTTP port for the Fleet, Control and ServerAppIo APIs); returns the port.

        ``simulation``: a SuperLink with Flower's simulation runtime (virtual SuperNodes on Ray), for
        ``flwr run`` with ``--federation-config num-supernodes=N``; start no SuperNodes then.
        """
        if self.port is not None:
            raise RuntimeError("This Deployment already has a SuperLink.")
        self.port = free_port(self.host)
        self.simulation = simulation
        cmd = [flower_bin("flower-superlink"), "--host", self.host, "--port", str(self.port)]
        if self.secure:
            if self.credentials is None:
                self.credentials = security.create(self.workdir / "certs", hosts=[self.host])
            args = self.credentials.superlink_args()
            cmd += [a for a in args if a != "--enable-supernode-auth"] if simulation else args  # no SuperNodes
            scheme, context = "https", ssl.create_default_context(cafile=str(self.credentials.ca_cert))
            trust = f'root-certificates = "{self.credentials.ca_cert.resolve()}"'
        else:
            if not simulation:  # a simulation SuperLink has no SuperNodes to let in
                warnings.warn(security.INSECURE_NOTE, InsecureDeploymentWarning, stacklevel=2)
            cmd += ["--insecure"]
            scheme, context, trust = "http", None, "insecure = true"
        proc = self._start("superlink", cmd + (["--simulation"] if simulation else []))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {self.workdir / 'logs'}.")
            try:
                url = f"{scheme}://{self.host}:{self.port}/health"
                with urllib.request.urlopen(url, timeout=1, context=context) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError(f"SuperLink not healthy within {timeout:g} s; see {self.workdir / 'logs'}.")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "reft"\n\n[superlink.reft]\naddress = "{self.host}:{self.port}"\n{trust}\n'
        )
        return self.port

    def _flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """Run a ``flwr`` CLI command against this SuperLink (``--format json``); its JSON answer."""
        cmd = [flower_bin("flwr"), *args, "reft", "--format", "json"]
        res = subprocess.run(cmd, env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout)
        answer = json_answer(res.stdout)
        if res.returncode != 0 or not answer.get("success", False):
            raise RuntimeError(f"flwr {' '.join(args)} failed ({res.returncode}): {res.stdout}\n{res.stderr}")
        return answer

    def register(self, partition_ids: Sequence[int]) -> dict[int, int]:
        """Make each SuperNode's key pair (if new) and register its public key at the SuperLink (in parallel);
        returns partition id -> the node id the SuperLink assigned."""
        if self.port is None or not self.secure:
            raise RuntimeError("register() needs a running secure SuperLink (start_superlink with secure=True).")
        todo = [i for i in partition_ids if i not in self.registered]
        procs = {}
        for i in todo:
            self.credentials.add_supernode(i)
            cmd = [flower_bin("flwr"), "supernode", "register", str(self.credentials.node_pub(i)), "reft",
                   "--format", "json", "--name", f"supernode-{i}"]  # fmt: skip
            procs[i] = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for i, proc in procs.items():
            out, _ = proc.communicate(timeout=120)
            try:
                self.registered[i] = int(json_answer(out)["node-id"])
            except (ValueError, KeyError) as e:
                raise RuntimeError(f"Registering SuperNode {i}'s public key failed ({proc.returncode}): {out}") from e
        return {i: self.registered[i] for i in partition_ids}

    def listed_nodes(self) -> list[dict]:
        """The SuperNodes the SuperLink knows (``flwr supernode list``): node id, status, ..."""
        return self._flwr("supernode", "list")["nodes"]

    def start_supernode(self, partition_id: int, tier: str | None = None, **node_config: str | int | float) -> str:
        """Start one SuperNode holding partition ``partition_id`` of the private data, on hardware ``tier``."""
        if self.port is None:
            raise RuntimeError("Start the SuperLink first (start_superlink).")
        if partition_id in self.nodes:
            raise ValueError(f"A SuperNode with partition-id {partition_id} is already running.")
        items = {"partition-id": partition_id, **({"tier": tier} if tier else {}), **node_config}
        name = f"supernode-{partition_id}"
        if self.secure:
            self.register([partition_id])
            auth = self.credentials.supernode_args(partition_id)
        else:
            auth = ["--insecure"]
        self._start(name, self._supernode_cmd(items, auth))
        self.nodes[partition_id] = name
        return name

    def _supernode_cmd(self, node_config: dict, auth: Sequence[str]) -> list[str]:
        nc = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
        return [
            flower_bin("flower-supernode"), *auth, "--superlink", f"{self.host}:{self.port}",
            "--host", self.host, "--port", str(free_port(self.host)), "--node-config", nc,
        ]  # fmt: skip

    def probe(self, kinds: Sequence[str] = PROBES, timeout: float = 90.0) -> list[dict]:
        """Send strangers to the SuperLink, all at once, and record how each was refused.

        ``unlisted-key``: a SuperNode that trusts the CA but signs with a key nobody registered.
        ``untrusted-ca``: a SuperNode with the registered key of SuperNode 0 that trusts another CA (as
        one started without ``--root-certificates`` does). Both claim partition-id 0, so one let in would
        also break the run. Returns one row per stranger: its exit code, whether it was refused (it
        exited without ever being activated) and Flower's reason, from its log.
        """
        return self._verdicts(self._send_strangers(kinds), timeout)

    def _send_strangers(self, kinds: Sequence[str]) -> dict[str, tuple[subprocess.Popen, float]]:
        if not self.secure or self.port is None:
            raise RuntimeError("probe() needs a running secure SuperLink.")
        unknown = sorted(set(kinds) - set(PROBES))
        if unknown:
            raise ValueError(f"Unknown probe(s) {unknown}; valid: {', '.join(PROBES)}.")
        folder = self.workdir / "strangers"
        folder.mkdir(exist_ok=True)
        started = {}
        for kind in kinds:
            if kind == "unlisted-key":
                key = security.write_auth_key(folder / "unlisted.key")
                auth = ["--root-certificates", str(self.credentials.ca_cert), "--auth-supernode-private-key", str(key)]
            else:
                other = folder / "other-ca"
                other_ca = security.load(other) if (other / "ca.crt").exists() else security.create(other)
                self.register([0])
                auth = ["--root-certificates", str(other_ca.ca_cert),
                        "--auth-supernode-private-key", str(self.credentials.node_key(0))]  # fmt: skip
            cmd = self._supernode_cmd({"partition-id": 0, "stranger": kind}, [*auth, "--max-retries", "3"])
            started[kind] = (self._start(f"stranger-{kind}", cmd), time.monotonic())
        return started

    def _verdicts(self, started: dict[str, tuple[subprocess.Popen, float]], timeout: float) -> list[dict]:
        rows = []
        for kind, (proc, t0) in started.items():
            try:
                code = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                code = None  # still trying: not in, but not turned away either
            log = (self.workdir / "logs" / f"stranger-{kind}.log").read_text(errors="replace")
            joined = "SuperNode ID:" in log  # what flower-supernode logs once the SuperLink activated it
            reason = next((ln.strip() for ln in log.splitlines() if ln.startswith(("[code:", "[SSL"))), "")
            rows.append({"probe": kind, "exit_code": code, "refused": code not in (None, 0) and not joined,
                         "reason": reason, "seconds": round(time.monotonic() - t0, 1)})  # fmt: skip
        self.refusals += rows
        return rows

    def start(
        self, tiers: Sequence[str | None], stall: tuple[int, int] | None = None, probe: bool = False
    ) -> Deployment:
        """A SuperLink plus one SuperNode per entry of ``tiers`` (partition ids 0, 1, ...).

        ``stall=(partition_id, round)`` makes that node's ClientApp hang in that round (node config
        ``stall-round``): a device that stops mid-round, so a kill lands mid-round every time.
        ``probe``: :meth:`probe` while the SuperNodes start; returns once every stranger is refused (or
        its timeout passed), so none is still about when the run is submitted (secure deployments only).
        """
        self.start_superlink()
        strangers = {}
        if self.secure:
            self.register(range(len(tiers)))
            if probe:
                strangers = self._send_strangers(PROBES)
        elif probe:
            raise ValueError("probe=True needs a secure deployment (secure=True).")
        for i, tier in enumerate(tiers):
            extra = {"stall-round": stall[1]} if stall is not None and stall[0] == i else {}
            self.start_supernode(i, tier, **extra)
        if strangers:
            self._verdicts(strangers, timeout=90.0)
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
        """Submit the run (``cfg.algorithm``) with ``flwr run`` and wait until the ServerApp is done.

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
        cmd = [flower_bin("flwr"), "run", str(app_dir), "reft", "--format", "json"]
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
            if kill is not None and not killed and client_started(out, *kill):
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
        result.refusals = list(self.refusals)
        result.status.update(secure=self.secure, registered={str(k): v for k, v in self.registered.items()})
        return result
