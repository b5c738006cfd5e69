"""Own the processes of a Flower run on this machine: start them with a marker, find them, stop them by PID.

Every process REFT starts for Flower carries a marker in its environment: :data:`MARKER` (one
:class:`~reft.flower.deployment.Deployment`'s SuperLink and SuperNodes) or :data:`SESSION` (everything
under one :func:`reft.flower.engines.run` child). Flower and Ray detach some of their own helpers, so a
process tree is not enough to find them; the marker is, and :func:`reap_session` stops each by PID
(never by name). Also here: :data:`OFFLINE_ENV` (no telemetry, update check or run-time installs),
:func:`free_port`, :func:`flower_bin` (Flower's console scripts from this Python's environment) and the
loopback-only network namespace (:func:`loopback_only`; :func:`isolate_cmd` runs a command in a fresh one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

MARKER = "REFT_FLOWER_LAUNCH"
# Offline operation: no telemetry, no update check, no pip install of app dependencies at run time.
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
#: ``flwr``'s JSON answers are printed through rich: in a notebook kernel they came with ANSI styles (bold braces)
#: (a notebook-05 run under nbmake failed on them); these settings and :func:`json_answer` keep them parseable.
PLAIN_ENV = {"NO_COLOR": "1", "TERM": "dumb"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables that force styled terminal output, plus :data:`PLAIN_ENV`."""
    return {**{k: v for k, v in env.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}, **PLAIN_ENV}


def json_answer(text: str) -> dict:
    """The JSON object a ``flwr ... --format json`` command printed (ANSI styles and any preamble dropped);
    ``{}`` when there is none."""
    text = _ANSI.sub("", text)
    try:
        return json.loads(text[text.find("{") :]) if "{" in text else {}
    except json.JSONDecodeError:
        return {}


SESSION = "REFT_FLOWER_SESSION"  # every process of one reft.flower.engines.run child inherits it


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def flower_bin(name: str) -> str:
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
