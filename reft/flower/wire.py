"""``reft.comm`` payloads inside Flower messages.

A model crosses Flower's wire as one :class:`flwr.app.Array` whose ``data`` is exactly the
:func:`reft.comm.encode` bytes (``stype`` names the format, so nobody mistakes it for a NumPy
array). Flower chunks large arrays by itself, so big models need nothing special. The Ledger
records ``len()`` of those bytes: what Flower carries for the model, byte for byte.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord

STYPE = "reft.comm/safetensors"
KEY = "model"


def pack(payload: bytes) -> ArrayRecord:
    """An ArrayRecord holding one ``reft.comm`` payload, untouched."""
    return ArrayRecord({KEY: Array(dtype="uint8", shape=(len(payload),), stype=STYPE, data=bytes(payload))})


def unpack(record: ArrayRecord) -> bytes:
    """The ``reft.comm`` payload inside an ArrayRecord made by :func:`pack`."""
    if KEY not in record:
        raise ValueError(
            f"No {KEY!r} array in this record (keys: {list(record)}); was it made by reft.flower.wire.pack?"
        )
    arr = record[KEY]
    if arr.stype != STYPE:
        raise ValueError(f"Array {KEY!r} has stype {arr.stype!r}, not a reft.comm payload ({STYPE!r}).")
    return arr.data
