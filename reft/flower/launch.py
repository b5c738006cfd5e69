"""``python -m reft.flower``: the command line (:func:`main`), and the public face of :mod:`reft.flower`.

What callers use is re-exported here (see ``__all__``), each from the module that owns it:

* :mod:`reft.flower.processes`: the marker environment, free ports, Flower's console scripts, the
  loopback-only network namespace, and reaping a run's processes by PID;
* :mod:`reft.flower.deployment`: :class:`Deployment` (a SuperLink and N SuperNodes on 127.0.0.1,
  owned and stopped by PID; secure unless ``secure=False``);
* :mod:`reft.flower.security`: the run's CA, certificates and SuperNode key pairs (``certs`` command);
* :mod:`reft.flower.results`: :class:`FlowerResult` and :func:`read_result` (a run's output folder);
* :mod:`reft.flower.engines`: :func:`deploy`, :func:`simulate_superlink`, :func:`simulate` and
  :func:`run` (any of them in a child process in a loopback-only network namespace);
* :mod:`reft.flower.compare`: :func:`compare` (side by side with the in-process engine) and :func:`has_flwr`.

Run it inside a loopback-only network namespace when nothing may leave the machine::

    unshare -n sh -c 'ip link set lo up && exec "$@"' sh python -m reft.flower deploy --set n-clients=3
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from reft.flower import config as fconfig
from reft.flower import security
from reft.flower.compare import compare, has_flwr, summary
from reft.flower.deployment import Deployment
from reft.flower.engines import ENGINES, deploy, run, run_spec, simulate, simulate_superlink
from reft.flower.results import FlowerResult, read_result

__all__ = [
    "ENGINES",
    "Deployment",
    "FlowerResult",
    "compare",
    "deploy",
    "has_flwr",
    "main",
    "read_result",
    "run",
    "simulate",
    "simulate_superlink",
    "summary",
]


def parse_value(text: str) -> bool | int | float | str:
    """A ``--set KEY=VALUE`` value as a Flower run-config scalar (JSON if it parses as one, else text)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text.strip("'\"")
    return value if isinstance(value, bool | int | float | str) else text


def _certs(folder: Path, nodes: int, hosts: Sequence[str], days: int) -> int:
    """``certs``: a CA, the SuperLink's certificate for ``hosts`` and ``nodes`` SuperNode key pairs in ``folder``."""
    try:
        cred = security.create(folder, nodes, hosts, days)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f = cred.folder
    print(f"Credentials written to {f} (private keys mode 0600). On the SuperLink machine:")
    print(f"  flower-superlink --host 0.0.0.0 --port 9091 {' '.join(cred.superlink_args())}")
    print(f'  # $FLWR_HOME/config.toml, [superlink.reft]: address = "HOST:9091", root-certificates = "{f / "ca.crt"}"')
    for i in range(nodes):
        print(f"  flwr supernode register {cred.node_pub(i)} reft")
    print("On device <i>: copy ca.crt, supernode-<i>.key, supernode-<i>-local.crt and supernode-<i>-local.key, then")
    print(
        "  flower-supernode --superlink HOST:9091 --root-certificates ca.crt --auth-supernode-private-key "
        "supernode-<i>.key --ssl-certfile supernode-<i>-local.crt --ssl-keyfile supernode-<i>-local.key "
        "--ssl-ca-certfile ca.crt --node-config \"partition-id=<i> tier='raspberry_pi_4'\""
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run any algorithm on Flower, or write the Flower App folder for ``flwr run``.

    Examples::

        python -m reft.flower deploy --tiers laptop,jetson_nano,raspberry_pi_4 --set rounds=2 --isolate --probe
        python -m reft.flower simulate --set n-clients=4 --set private-size=2000 --isolate
        python -m reft.flower app reft-app --set rounds=3      # then: flwr run reft-app <connection>
        python -m reft.flower certs reft-certs --nodes 3 --host 192.168.1.10   # for a deployment by hand

    Deployments are secure unless ``--insecure``: TLS with a CA made for the run, and only SuperNodes
    whose public keys were registered at the SuperLink may join (``--probe`` shows two strangers refused).
    """
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m reft.flower", description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=[*ENGINES, "app", "certs"])
    ap.add_argument("dir", nargs="?", help="app/certs: the folder to write; deploy/simulate: output folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config value (repeat)")
    ap.add_argument("--tiers", help="deploy: one tier per SuperNode, comma-separated (sets n-clients)")
    ap.add_argument("--kill", metavar="PARTITION:ROUND", help="deploy: crash that SuperNode in that round")
    ap.add_argument("--isolate", action="store_true", help="run in a loopback-only network namespace (unshare -n)")
    ap.add_argument("--insecure", action="store_true", help="deploy/simulate-superlink: no TLS, no SuperNode auth")
    ap.add_argument("--probe", action="store_true", help="deploy: first send two strangers, show they are refused")
    ap.add_argument("--nodes", type=int, default=0, help="certs: SuperNode key pairs to make")
    ap.add_argument("--host", action="append", default=[], help="certs: a name or IP the SuperNodes dial (repeat)")
    ap.add_argument("--days", type=int, default=365, help="certs: validity of the certificates in days")
    ap.add_argument("--spec", help=argparse.SUPPRESS)  # what run() passes to its child process
    args = ap.parse_args(argv)

    if args.spec:
        return run_spec(args.command, Path(args.spec))
    if args.command == "certs":
        return _certs(Path(args.dir or "reft-certs"), args.nodes, args.host, args.days)
    if args.insecure and args.probe:
        ap.error("--probe needs a secure deployment (it shows what TLS and SuperNode authentication refuse).")
    if args.insecure:
        print(f"warning: {security.INSECURE_NOTE}", file=sys.stderr)
    user: dict = {}
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        user[k.strip()] = parse_value(v.strip())
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
    res = run(
        args.command, cfg, tiers=tiers, options=opts, kill=kill, isolate=args.isolate,
        secure=not args.insecure, probe=args.probe,
    )  # fmt: skip
    if res.refusals:
        print("strangers:\n" + pd.DataFrame(res.refusals).to_string(index=False))
    cols = ["round", "server_acc", "client_acc_mean", "arrived", "failed", "bytes_up", "bytes_down", "wall_s"]
    print(res.history[[c for c in cols if c in res.history]].to_string(index=False))
    if len(res.failures):
        print("failures:\n" + res.failures.to_string(index=False))
    print(f"wall {res.status['total_wall_s']:.1f} s; processes left: {res.leftover}")
    return 0
