"""A :class:`reft.RunConfig` as Flower run config, and back.

Flower's run config (``[tool.flwr.app.config]`` in the app's ``pyproject.toml``, ``--run-config``
overrides, ``Context.run_config``) holds flat scalars only: bool, int, float, str. Keys use dashes
(``local-epochs``). ``None`` has no TOML spelling, so optional fields use a sentinel: ``0`` for
optional sizes and numbers, ``""`` for optional strings; an optional bool (``augment``) is a string,
``""``, ``"true"`` or ``"false"`` (``false`` would read as the sentinel); sequences (``tier-mix``,
``widths``) are comma-separated strings. Flower-only settings (timeouts, the output folder) sit next to them.

This module does not import Flower, so it is usable (and tested) without the extra installed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

from reft.config import RunConfig

# RunConfig fields that make no sense across processes (the ServerApp saves its own outputs).
_SKIP = {"progress", "save_as", "profile", "checkpoint_every", "resume", "keep_checkpoints"}  # in-process only


@dataclass
class FlowerOptions:
    """Settings of the Flower side only (not part of the algorithm)."""

    out_dir: str = ""  # where the ServerApp (and the ClientApps, if they can reach it) write results
    round_timeout: float = 600.0  # seconds to wait for the replies of one round
    node_timeout: float = 120.0  # seconds to wait for all n_clients SuperNodes to connect
    poll_interval: float = 0.2  # seconds between polls of the SuperLink for replies
    # torch threads in the ServerApp and each ClientApp (0: leave torch's default). The thread count
    # changes the order of float sums, so equal counts are needed for bit-equal runs across engines.
    threads: int = 0


def _key(name: str) -> str:
    return name.replace("_", "-")


def _scalar_type(field_type: str) -> type:
    """The scalar Python type of a RunConfig annotation (``int | None`` -> int, ``Sequence[int] | None`` -> str)."""
    t = field_type.replace(" ", "")
    if "Sequence" in t or "Mapping" in t or t == "bool|None":
        return str
    for name, py in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if t.split("|")[0] == name:
            return py
    raise TypeError(f"RunConfig field type {field_type!r} has no Flower run-config spelling.")


def _sentinel(py: type) -> object:
    return {int: 0, float: 0.0, str: "", bool: False}[py]


# RunConfig fields that are sequences of ints: comma-joined in Flower's flat run config, rebuilt as this type
INT_LISTS = {"widths": list, "lr_milestones": tuple}


def to_user_config(cfg: RunConfig, options: FlowerOptions | None = None) -> dict[str, bool | int | float | str]:
    """A flat Flower run config (dash keys, scalars only) holding ``cfg`` and ``options``."""
    out: dict[str, bool | int | float | str] = {}
    for f in fields(RunConfig):
        if f.name in _SKIP:
            continue
        py, value = _scalar_type(str(f.type)), getattr(cfg, f.name)
        if value is None:
            value = _sentinel(py)
        elif f.name == "tier_mix":
            if isinstance(value, Mapping):
                value = ",".join(f"{t}:{w:g}" for t, w in value.items())
            else:
                value = ",".join(value) if not isinstance(value, str) else value
        elif f.name in INT_LISTS:
            value = ",".join(str(int(w)) for w in value)
        elif isinstance(value, bool) and py is str:
            value = "true" if value else "false"
        out[_key(f.name)] = py(value)
    for k, v in asdict(options or FlowerOptions()).items():
        out[_key(k)] = v
    return out


def from_user_config(user: Mapping[str, object]) -> tuple[RunConfig, FlowerOptions]:
    """Rebuild the RunConfig and Flower options from a Flower run config (missing keys: defaults)."""
    known = {_key(f.name) for f in fields(RunConfig) if f.name not in _SKIP} | {
        _key(f.name) for f in fields(FlowerOptions)
    }
    unknown = sorted(set(user) - known)
    if unknown:
        raise ValueError(f"Unknown REFT run-config keys {unknown}; valid keys: {', '.join(sorted(known))}.")
    kw: dict[str, object] = {"progress": False}
    for f in fields(RunConfig):
        k = _key(f.name)
        if f.name in _SKIP or k not in user:
            continue
        value = user[k]
        optional = "None" in str(f.type) and (f.default is None if f.default is not MISSING else False)
        if optional and value == _sentinel(_scalar_type(str(f.type))):
            kw[f.name] = None
        elif f.name == "tier_mix":
            parts = [p.strip() for p in str(value).split(",") if p.strip()]
            if parts and all(":" in p for p in parts):
                kw[f.name] = {p.split(":")[0]: float(p.split(":")[1]) for p in parts}
            else:
                kw[f.name] = parts
        elif f.name in INT_LISTS:
            kw[f.name] = INT_LISTS[f.name](int(w) for w in str(value).split(",") if w.strip())
        elif str(f.type).replace(" ", "") == "bool|None" and str(value).lower() in ("true", "false"):
            kw[f.name] = str(value).lower() == "true"  # anything else is left for RunConfig to reject
        else:
            kw[f.name] = value
    opts = FlowerOptions(**{f.name: user[_key(f.name)] for f in fields(FlowerOptions) if _key(f.name) in user})
    return RunConfig(**kw), opts


def for_node(user: Mapping[str, object], node_config: Mapping[str, object]) -> tuple[RunConfig, FlowerOptions]:
    """What a SuperNode runs: :func:`from_user_config` with ``device`` replaced by the node's own (node
    config key ``device``, default ``"auto"``); the run config's ``device`` is where the server computes."""
    return from_user_config({**user, "device": str(node_config.get("device", "auto"))})


def pyproject_toml(cfg: RunConfig, options: FlowerOptions | None = None, name: str = "reft-flower") -> str:
    """The ``pyproject.toml`` of a Flower App that runs REFT with ``cfg`` as its default run config.

    The components point into the installed ``reft`` package, so the app folder holds this one file.
    """
    lines = [
        "[project]",
        f'name = "{name}"',
        'version = "0.1.0"',
        'description = "REFT (variable pruning + ensemble distillation) on Flower"',
        'license = "MIT"',
        'dependencies = ["flwr>=1.41", "reft"]',
        "",
        "[tool.flwr.app]",
        'publisher = "reft"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "reft.flower.server_app:app"',
        'clientapp = "reft.flower.client_app:app"',
        "",
        "[tool.flwr.app.config]",
    ]
    for k, v in to_user_config(cfg, options).items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def signature(cfg: RunConfig) -> str:
    """A stable key of everything in ``cfg`` that decides the data a client holds (for caching)."""
    keep = ("dataset", "private_size", "public_size", "test_size", "n_clients", "partition", "alpha", "seed")
    return json.dumps({k: getattr(cfg, k) for k in keep}, sort_keys=True)


__all__ = ["FlowerOptions", "to_user_config", "from_user_config", "for_node", "pyproject_toml", "signature"]
