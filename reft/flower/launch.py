"""``python -m reft.flower``: the command line (:func:`main`), and the public face of :mod:`reft.flower`.

What callers use is re-exported here (see ``__all__``), each from the module that owns it:

* :mod:`reft.flower.processes`: the marker environment, free ports, Flower's console scripts, the
  loopback-only network namespace, and reaping a run's processes by PID;
* :mod:`reft.flower.deployment`: :class:`Deployment` (a SuperLink and N SuperNodes on 127.0.0.1,
  owned and stopped by PID);
* :mod:`reft.flower.results`: :class:`FlowerResult` and :func:`read_result` (a run's output folder);
* :mod:`reft.flower.engines`: :func:`deploy`, :func:`simulate_superlink`, :func:`simulate` and
  :func:`run` (any of them in a child process in a loopback-only network namespace);
* :mod:`reft.flower.compare`: :func:`compare` (side by side with the in-process engine) and :func:`has_flwr`.

Run it inside a loopback-only network namespace when nothing may leave the machine::

    unshare -n sh -c 'ip link set lo up && exec "$@"' sh python -m reft.flower deploy --set n-clients=3
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from reft.flower import config as fconfig
from reft.flower.compare import compare, has_flwr
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
]


def parse_value(text: str) -> bool | int | float | str:
    """A ``--set KEY=VALUE`` value as a Flower run-config scalar (JSON if it parses as one, else text)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text.strip("'\"")
    return value if isinstance(value, bool | int | float | str) else text


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run any algorithm on Flower, or write the Flower App folder for ``flwr run``.

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
        return run_spec(args.command, Path(args.spec))
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
    res = run(args.command, cfg, tiers=tiers, options=opts, kill=kill, isolate=args.isolate)
    cols = ["round", "server_acc", "client_acc_mean", "arrived", "failed", "bytes_up", "bytes_down", "wall_s"]
    print(res.history[[c for c in cols if c in res.history]].to_string(index=False))
    if len(res.failures):
        print("failures:\n" + res.failures.to_string(index=False))
    print(f"wall {res.status['total_wall_s']:.1f} s; processes left: {res.leftover}")
    return 0
