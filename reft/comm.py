"""The wire format of a model, and the Ledger that counts every byte sent.

A model travels as one safetensors blob: its tensors (``state_dict``) plus, in the safetensors
header metadata, its JSON spec (``reft.models`` builder name, classes, input channels, widths).
Decoding rebuilds the architecture from the spec and loads the tensors: no pickle anywhere, so a
received payload can never execute code. The tensors are stored by a codec (:mod:`reft.codecs`:
``fp32``, the default, ``fp16`` or ``int8``), named in the header (``reft.codec``; absent for ``fp32``,
whose bytes are the format as it was before codecs existed); :func:`decode` reads it from there.

Received bytes are untrusted: :func:`decode` checks the whole header against the model its spec
describes (a registered builder, widths no larger than the dense model's, exactly the expected
tensor names, shapes, dtypes and byte ranges, as the header's codec stores that model) *before*
anything is allocated, then rejects non-finite weights. Every failure is a :class:`PayloadError` saying what was wrong.

Bandwidth figures are measured, not estimated: the Ledger records ``len()`` of the encoded bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from reft import codecs, models

_SPEC_KEY = "reft.spec"
_CODEC_KEY = "reft.codec"
CODECS = codecs.CODECS
_SPEC_FIELDS = {"name": str, "num_classes": int, "in_channels": int, "widths": list}
_NUM_CLASSES = (2, 100_000)
_IN_CHANNELS = (1, 64)
MAX_HEADER_BYTES = 1 << 20  # a dense ResNet-18's header is about 10 KB
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _short(value: Any) -> str:
    """A received value, shown in an error message without letting it flood the message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class PayloadError(ValueError):
    """A received payload is not a valid reft model (malformed, inconsistent, too large or non-finite)."""


def encode(model: nn.Module, codec: str = "fp32") -> bytes:
    """Serialize a ``reft.models`` model to bytes (safetensors with its spec in the header), its tensors
    stored by ``codec`` (one of :data:`CODECS`; :mod:`reft.codecs` says what each keeps). ``fp32`` gives
    exactly the bytes of the format before codecs (no codec in the header)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError("encode() takes a model built by reft.models.build (it needs a .spec).")
    codecs.check(codec)
    metadata = {_SPEC_KEY: json.dumps(spec, sort_keys=True)}
    if codec != "fp32":
        metadata[_CODEC_KEY] = codec
    return st_save(codecs.pack(model.state_dict(), codec), metadata=metadata)


def _json(text: bytes | str, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys (they would read differently in safetensors' own parser)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        if len({k for k, _ in pairs}) != len(pairs):
            raise PayloadError(f"Not a reft model payload: duplicate keys in the {what}.")
        return dict(pairs)

    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as e:
        if isinstance(e, PayloadError):
            raise
        raise PayloadError(f"Not a reft model payload: the {what} is not valid JSON ({type(e).__name__}).") from e


def _as_bytes(payload: Any) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise PayloadError(f"Not a reft model payload: {type(payload).__name__}, not bytes.")
    return bytes(payload)


def _header(payload: bytes) -> tuple[dict, int]:
    """The safetensors header as a dict, and where the tensor data begin."""
    if len(payload) < 8:
        raise PayloadError("Not a reft model payload: shorter than a safetensors header.")
    (n,) = struct.unpack("<Q", payload[:8])
    if n > len(payload) - 8 or n > MAX_HEADER_BYTES:
        raise PayloadError(f"Not a reft model payload: header length {n} exceeds the payload ({len(payload)} bytes).")
    header = _json(payload[8 : 8 + n], "safetensors header")
    if not isinstance(header, dict):
        raise PayloadError("Not a reft model payload: the safetensors header is not a JSON object.")
    return header, 8 + n


def _spec(header: dict) -> dict:
    """The reft spec in the header's metadata, checked field by field."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(_SPEC_KEY), str):
        raise PayloadError("Not a reft model payload: no reft spec in the safetensors header.")
    if not all(isinstance(v, str) for v in meta.values()):
        raise PayloadError("Bad header: safetensors metadata values must be strings.")
    spec = _json(meta[_SPEC_KEY], "reft spec")
    if not isinstance(spec, dict) or set(spec) != set(_SPEC_FIELDS):
        got = _short(sorted(spec) if isinstance(spec, dict) else spec)
        raise PayloadError(f"Bad spec: needs exactly the keys {sorted(_SPEC_FIELDS)}; got {got}.")
    for key, typ in _SPEC_FIELDS.items():
        if not isinstance(spec[key], typ) or isinstance(spec[key], bool):
            raise PayloadError(f"Bad spec: {key} must be {typ.__name__}; got {_short(spec[key])}.")
    name, widths = spec["name"], spec["widths"]
    if name not in models.MODEL_NAMES:
        raise PayloadError(f"Bad spec: unknown model {_short(name)}; valid: {', '.join(models.MODEL_NAMES)}.")
    for key, (lo, hi) in (("num_classes", _NUM_CLASSES), ("in_channels", _IN_CHANNELS)):
        if not lo <= spec[key] <= hi:
            raise PayloadError(f"Bad spec: {key} must be in {lo}..{hi}; got {spec[key]}.")
    dense = models.default_widths(name)
    if len(widths) != len(dense):
        raise PayloadError(f"Bad spec: {name} needs {len(dense)} widths; got {len(widths)}.")
    for i, (w, d) in enumerate(zip(widths, dense, strict=True)):
        if type(w) is not int or not 1 <= w <= d:
            raise PayloadError(f"Bad spec: width {i} must be an int in 1..{d} (the dense model's); got {_short(w)}.")
    return spec


def _codec(header: dict) -> str:
    """The codec named in the header's metadata (``fp32`` when none is: the original format)."""
    codec = header["__metadata__"].get(_CODEC_KEY, "fp32")  # _spec has checked the metadata
    if codec not in CODECS:
        raise PayloadError(f"Bad header: unknown codec {_short(codec)}; valid codecs: {', '.join(CODECS)}.")
    return codec


def _check_tensors(header: dict, spec: dict, data_len: int, codec: str = "fp32") -> None:
    """The header's tensor entries are exactly those of the spec's model stored by ``codec``: names,
    dtypes, shapes, byte ranges."""
    with torch.device("meta"):  # shapes and dtypes only: nothing is allocated
        expected = codecs.layout(models.build(**spec).state_dict(), codec)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(entries) != set(expected):
        diff = sorted(set(entries) ^ set(expected))
        raise PayloadError(
            f"Bad header: {len(diff)} tensor names differ from the spec's model, e.g. {_short(diff[0])}."
        )
    ranges = []
    for k, ref in expected.items():
        e = entries[k]
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise PayloadError(f"Bad header: entry {k} needs exactly dtype, shape and data_offsets.")
        if e["dtype"] != _ST_DTYPES.get(ref.dtype):
            raise PayloadError(f"Bad header: {k} has dtype {_short(e['dtype'])}; the spec's model has {ref.dtype}.")
        if e["shape"] != list(ref.shape) or any(type(s) is not int for s in e["shape"]):
            raise PayloadError(
                f"Bad header: {k} has shape {_short(e['shape'])}; the spec's model has {list(ref.shape)}."
            )
        offsets = e["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise PayloadError(f"Bad header: {k} needs data_offsets [begin, end]; got {_short(offsets)}.")
        if offsets[1] - offsets[0] != ref.numel() * ref.element_size():
            raise PayloadError(f"Bad header: {k}'s data_offsets {_short(offsets)} do not match its size ({ref.dtype}).")
        ranges.append(offsets)
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise PayloadError(f"Bad header: tensor data overlap or leave a gap at byte {end}.")
        end = stop
    if end != data_len:
        raise PayloadError(f"Bad header: the tensors span {end} bytes; the payload holds {data_len}.")


def read_spec(payload: bytes) -> dict:
    """Read (and check) the model spec from a payload's safetensors header without loading the tensors."""
    return _spec(_header(_as_bytes(payload))[0])


def read_codec(payload: bytes) -> str:
    """The codec a payload's tensors are stored with (checked, from the header; tensors not loaded)."""
    header = _header(_as_bytes(payload))[0]
    _spec(header)
    return _codec(header)


def decode(payload: bytes, max_bytes: int | None = None) -> models.ReftModel:
    """Rebuild a model from :func:`encode` bytes (architecture from the spec, weights from tensors decoded
    by the codec the header names: the model is float32 whatever the codec).

    The payload is untrusted: it is checked whole before any tensor or model is allocated (at most
    ``max_bytes`` long when given; header, spec, codec, tensor entries; see the module docstring) and its
    decoded weights must be finite. Raises :class:`PayloadError` on any problem.
    """
    payload = _as_bytes(payload)
    if max_bytes is not None and len(payload) > max_bytes:
        raise PayloadError(f"Payload of {len(payload)} bytes exceeds the limit of {max_bytes}.")
    header, start = _header(payload)
    spec = _spec(header)
    codec = _codec(header)
    _check_tensors(header, spec, len(payload) - start, codec)
    try:
        tensors = st_load(payload)
    except Exception as e:  # noqa: BLE001 - whatever safetensors still finds wrong is a bad payload
        raise PayloadError(f"Bad payload: safetensors refused it ({e}).") from e
    if (why := codecs.problem(tensors, codec)) is not None:
        raise PayloadError(f"Bad weights: {why}.")
    model = models.build(**spec)
    state = codecs.unpack(tensors, model.state_dict())
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PayloadError(f"Bad weights: non-finite values in {k}.")
    model.load_state_dict(state, strict=True)
    return model


@dataclass
class Ledger:
    """Every transfer of a run: one row per payload, with its exact size in bytes.

    ``direction`` is ``"up"`` (client to server) or ``"down"`` (server to client); ``kind`` says what
    was sent (e.g. ``"model"``).
    """

    rows: list[dict] = field(default_factory=list)

    def record(self, round: int, client: int, direction: str, payload: bytes, kind: str = "model") -> bytes:
        """Count ``payload`` (its ``len()``) and return it unchanged."""
        self.count(round, client, direction, len(payload), kind)
        return payload

    def count(self, round: int, client: int, direction: str, n_bytes: int, kind: str = "model") -> None:
        """Count a transfer known by its size only (e.g. a payload's length as the receiving client reported it)."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}.")
        if isinstance(n_bytes, bool) or int(n_bytes) != n_bytes or n_bytes < 0:
            raise ValueError(f"A transfer's size is a whole number of bytes >= 0, not {n_bytes!r}.")
        self.rows.append(
            {"round": round, "client": client, "direction": direction, "kind": kind, "bytes": int(n_bytes)}
        )

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
