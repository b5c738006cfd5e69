"""Round checkpoints of an in-process run, and exact resume from them.

After a round the engine writes one file, ``results/<profile>/checkpoints/<save_as>/round-NNNN.safetensors``:
safetensors tensors (no pickle) holding every model as :mod:`reft.comm` bytes (the strategy's models and
every client's current model) and the random generators' states, plus a JSON document in the file's
metadata (round, history rows, Ledger rows, the strategy's own state, the config and a fingerprint of the
config and data). The file is written to a temporary name and renamed, so a kill leaves either the old or
the new file, never half of one; the last :data:`KEEP` checkpoints are kept, and a damaged newest one
(e.g. truncated by a full disk) falls back to the one before it.

A checkpoint is only resumed by the run that wrote it: the fingerprint covers every config field that
changes results (not ``rounds``, so a finished run can be extended) and the data the run was given.

A finished run also leaves a small **record**, ``results/<profile>/records/<save_as>.json``: its
fingerprint, history, Ledger rows and client table, without models. Checkpoints are large and stay out
of git; a record is committed with the results, so a long reference run spread over several machines or
sessions (a fresh clone each) returns its finished runs at once from their records. A run brought back
from its record has its numbers but not its models (:attr:`reft.engine.RunResult.restored`).
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reft import comm, data, report
from reft.config import RunConfig

FORMAT = 1
KEEP = 2
# Fields that do not change what a run computes (or, for rounds, only how far it goes).
NOT_FINGERPRINTED = ("rounds", "progress", "save_as", "profile", "checkpoint_every", "resume", "keep_checkpoints")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, of another format, or written by a different run."""


@dataclass
class State:
    """Everything needed to continue a run after ``round``."""

    round: int
    history: list[dict]
    ledger: list[dict]
    strategy: dict[str, Any]  # the strategy's own JSON state (Strategy.checkpoint_state)
    server: dict[str, bytes]  # the strategy's models (Strategy.checkpoint_models) as comm bytes
    clients: dict[int, bytes]  # every client's current model as comm bytes
    rng: dict[str, Any]


def directory(cfg: RunConfig) -> Path:
    if not cfg.save_as:
        raise ValueError("Checkpoints belong to a saved run: set RunConfig.save_as.")
    return report.results_dir(cfg.profile) / "checkpoints" / cfg.save_as


# Fields added later, left out while at their default, so a checkpoint written before they existed still fits.
AT_DEFAULT_NOT_FINGERPRINTED = {
    "codec_up": "fp32", "codec_down": "fp32", "momentum": 0.9, "weight_decay": 5e-4, "shards_per_client": 2,
    "min_size": 1, "max_share": None, "lr_milestones": (), "lr_gamma": 0.1,
    "distill_lr_decay": False,
}  # fmt: skip


def _plain(v: Any) -> Any:
    """A value as JSON stores it (a tuple and a list of the same items are the same config)."""
    return list(v) if isinstance(v, tuple) else v


def config_fields(cfg: RunConfig) -> dict[str, Any]:
    return {
        k: v
        for k, v in asdict(cfg).items()
        if k not in NOT_FINGERPRINTED
        and not (k in AT_DEFAULT_NOT_FINGERPRINTED and _plain(AT_DEFAULT_NOT_FINGERPRINTED[k]) == _plain(v))
    }


def fingerprint(cfg: RunConfig, splits: data.Splits) -> str:
    """SHA-256 over the result-changing config fields and the run's data tensors."""
    h = hashlib.sha256(json.dumps(config_fields(cfg), sort_keys=True, default=list).encode())
    for part in (splits.private_train, splits.public, splits.test):
        for t in (part.x, part.y):
            if t is None:  # the public set has no labels
                continue
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def save(cfg: RunConfig, fp: str, state: State) -> Path:
    """Write ``state`` atomically as the checkpoint of its round; keep the newest :data:`KEEP`."""
    folder = directory(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"server/{k}": _bytes_tensor(v) for k, v in state.server.items()}
    tensors |= {f"client/{k}": _bytes_tensor(v) for k, v in state.clients.items()}
    tensors["rng/torch"] = state.rng["torch"]
    doc = {
        "format": FORMAT,
        "fingerprint": fp,
        "config": config_fields(cfg),
        "round": state.round,
        "history": state.history,
        "ledger": state.ledger,
        "strategy": state.strategy,
        "rng": {k: v for k, v in state.rng.items() if k != "torch"},
    }
    meta = {"reft": json.dumps(doc, default=list)}
    path = folder / f"round-{state.round:04d}.safetensors"
    report.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    for old in sorted(folder.glob("round-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def read(path: Path) -> tuple[dict, State]:
    """The JSON document and state of one checkpoint file; :class:`CheckpointError` if it is damaged."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:  # safetensors' header: 8-byte length, then JSON with __metadata__
            n = int.from_bytes(f.read(8), "little")
            doc = json.loads(json.loads(f.read(n))["__metadata__"]["reft"])
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"Checkpoint {path} is damaged or not a REFT checkpoint ({e}).") from e
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"Checkpoint {path} has format {doc.get('format')!r}; this code reads {FORMAT}.")
    raw = {k: v.numpy().tobytes() for k, v in tensors.items() if not k.startswith("rng/")}
    state = State(
        round=int(doc["round"]),
        history=doc["history"],
        ledger=doc["ledger"],
        strategy=doc["strategy"],
        server={k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith("server/")},
        clients={int(k.split("/", 1)[1]): v for k, v in raw.items() if k.startswith("client/")},
        rng={"torch": tensors["rng/torch"], **doc["rng"]},
    )
    return doc, state


def latest(cfg: RunConfig, fp: str) -> State | None:
    """The newest usable checkpoint of this run (None when there is none). A damaged file is skipped with a
    warning; a checkpoint written by a different config or data raises :class:`CheckpointError`."""
    folder = directory(cfg)
    for path in sorted(folder.glob("round-*.safetensors"), reverse=True):
        try:
            doc, state = read(path)
        except CheckpointError as e:
            warnings.warn(f"{e} Trying the one before it.", stacklevel=2)
            continue
        if doc["fingerprint"] != fp:
            raise _other_run(f"The checkpoints in {folder} were", doc["config"], cfg, "that folder")
        return state
    return None


def _other_run(subject: str, theirs: dict[str, Any], cfg: RunConfig, delete: str) -> CheckpointError:
    """The refusal of a checkpoint or record written by another run, naming the config fields that differ."""
    ours = config_fields(cfg)
    diff = [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted({*ours, *theirs})
            if _plain(theirs.get(k)) != _plain(ours.get(k))]  # fmt: skip
    return CheckpointError(
        f"{subject} written by a different run "
        f"({'; '.join(diff) or 'same config, different data'}). Use another save_as, resume=False, or delete {delete}."
    )


def finish(cfg: RunConfig, keep: bool = True) -> None:
    """A finished run keeps only its newest checkpoint (``keep``) or none."""
    folder = directory(cfg)
    paths = sorted(folder.glob("round-*.safetensors"))
    for path in paths[:-1] if keep else paths:
        path.unlink(missing_ok=True)
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()


def record_path(cfg: RunConfig) -> Path:
    if not cfg.save_as:
        raise ValueError("Records belong to a saved run: set RunConfig.save_as.")
    return report.results_dir(cfg.profile) / "records" / f"{cfg.save_as}.json"


def save_record(cfg: RunConfig, fp: str, history: list[dict], ledger: list[dict], clients: list[dict]) -> Path:
    """Write a finished run's record atomically (see the module's docstring)."""
    doc = {"format": FORMAT, "fingerprint": fp, "config": config_fields(cfg), "rounds": len(history),
           "history": history, "ledger": ledger, "clients": clients}  # fmt: skip
    path = record_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, default=_json_value)
    report.atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _json_value(v: Any) -> Any:
    """numpy scalars and tuples in history rows and client tables, as JSON stores them."""
    return v.item() if isinstance(v, np.generic) else list(v)


def load_record(cfg: RunConfig, fp: str) -> dict | None:
    """This run's record when it ran exactly ``cfg.rounds`` rounds (None when there is none, or when it ran
    another number: without models it can be neither extended nor cut, since its Ledger and client table
    are those of its last round); :class:`CheckpointError` when it is damaged or was written by a different run."""
    path = record_path(cfg)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Record {path} is damaged ({e}); delete it to run again.") from e
    if doc.get("format") != FORMAT or doc.get("fingerprint") != fp:
        raise _other_run(f"The record {path} was", doc.get("config", {}), cfg, "it")
    if doc["rounds"] != cfg.rounds:
        warnings.warn(f"{path} ran {doc['rounds']} rounds, not {cfg.rounds}, and keeps no models: running again.",
                      stacklevel=2)  # fmt: skip
        return None
    return doc


def encode_models(models: dict[str, nn.Module]) -> dict[str, bytes]:
    return {k: comm.encode(m) for k, m in models.items()}


def restore_models(models: dict[str, nn.Module], saved: dict[str, bytes]) -> None:
    """Load saved weights into the strategy's models in place (keeps any aliasing between them)."""
    if set(models) != set(saved):
        raise CheckpointError(f"Checkpoint holds models {sorted(saved)}; the strategy has {sorted(models)}.")
    for k, m in models.items():
        m.load_state_dict(comm.decode(saved[k]).state_dict(), strict=True)
