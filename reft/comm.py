"""The wire format of a model, and the Ledger that counts every byte sent.

A model travels as one safetensors blob: its tensors (``state_dict``) plus, in the safetensors
header metadata, its JSON spec (``reft.models`` builder name, classes, input channels, widths).
Decoding rebuilds the architecture from the spec and loads the tensors: no pickle anywhere, so a
received payload can never execute code.

Bandwidth figures are measured, not estimated: the Ledger records ``len()`` of the encoded bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import pandas as pd
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from reft import models

_SPEC_KEY = "reft.spec"


def encode(model: nn.Module) -> bytes:
    """Serialize a ``reft.models`` model to bytes (safetensors with its spec in the header)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError("encode() takes a model built by reft.models.build (it needs a .spec).")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={_SPEC_KEY: json.dumps(spec, sort_keys=True)})


def read_spec(payload: bytes) -> dict:
    """Read the model spec from a payload's safetensors header without loading the tensors."""
    if len(payload) < 8:
        raise ValueError("Not a reft model payload: shorter than a safetensors header.")
    (n,) = struct.unpack("<Q", payload[:8])
    try:
        header = json.loads(payload[8 : 8 + n])
        return json.loads(header["__metadata__"][_SPEC_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError("Not a reft model payload: no reft spec in the safetensors header.") from e


def decode(payload: bytes) -> models.ReftModel:
    """Rebuild a model from :func:`encode` bytes (architecture from the spec, weights from tensors)."""
    model = models.build(**read_spec(payload))
    model.load_state_dict(st_load(payload), strict=True)
    return model


@dataclass
class Ledger:
    """Every transfer of a run: one row per payload, with its exact size in bytes.

    ``direction`` is ``"up"`` (client to server) or ``"down"`` (server to client); ``kind`` says what
    was sent (e.g. ``"model"``).
    """

    rows: list[dict] = field(default_factory=list)

    def record(self, round: int, client: int, direction: str, payload: bytes, kind: str = "model") -> bytes:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}.")
        self.rows.append(
            {"round": round, "client": client, "direction": direction, "kind": kind, "bytes": len(payload)}
        )
        return payload

    def frame(self) -> pd.DataFrame:
        cols = ["round", "client", "direction", "kind", "bytes"]
        return pd.DataFrame(self.rows, columns=cols)

    def total(self, direction: str | None = None) -> int:
        return sum(r["bytes"] for r in self.rows if direction is None or r["direction"] == direction)

    def per_round(self) -> pd.DataFrame:
        """Bytes up and down per round (rounds with no transfer in one direction show 0)."""
        df = self.frame()
        table = df.pivot_table(index="round", columns="direction", values="bytes", aggfunc="sum", fill_value=0)
        return table.reindex(columns=["up", "down"], fill_value=0)
