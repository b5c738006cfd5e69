"""How a model's tensors are stored on the wire: the codecs of :mod:`reft.comm` (``fp32``, ``fp16``, ``int8``).

A codec maps a model's ``state_dict`` to the tensors of the safetensors blob (:func:`pack`) and back
(:func:`unpack`); :func:`layout` says which tensors (names, dtypes, shapes) a blob of a given model must
hold, so :func:`reft.comm.decode` can check a received header before anything is allocated.

* ``fp32``: the state as it is (the original format; :func:`pack` returns it unchanged).
* ``fp16``: every floating tensor as float16 (weights, biases, BN parameters and statistics); integer
  buffers as they are. About half the bytes.
* ``int8``: the weight of every conv and linear layer (a floating ``*.weight`` of two or more
  dimensions) quantized per output channel (dim 0), **symmetric**: ``q = round(w / s)`` in
  ``-127..127`` with ``s = max|w| / 127`` over the channel, stored as int8 next to its scales
  (``<name>:scale``, float32, one per output channel); decoded as ``q * s``, so each weight is off by at
  most ``s / 2``. Symmetric rather than affine: conv and linear filters are centred near zero, so a zero
  point buys little resolution (at most a factor 2, for a channel whose weights are all of one sign)
  while it doubles the side information and makes zero inexact; symmetric keeps 0 exact and decoding a
  single multiply. Biases, BN parameters and buffers stay float32: they are a tiny share of the bytes
  (one value per channel against a filter per channel) and BN statistics are sensitive (a running
  variance off by a few per cent rescales the whole channel). About a quarter of the bytes.

The codec travels in the header metadata (``reft.codec``); a payload without it is ``fp32``, so the
``fp32`` blob is byte for byte the format that existed before codecs did.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

CODECS = ("fp32", "fp16", "int8")
SCALE = ":scale"  # suffix of an int8 weight's per-output-channel scales (no module or parameter name has a ':')
_QMAX = 127


def check(codec: object) -> str:
    """``codec`` if it is one of :data:`CODECS`; otherwise a ValueError naming the allowed ones."""
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"Unknown codec {codec!r}; valid codecs: {', '.join(CODECS)}.")
    return codec


def quantized(name: str, t: torch.Tensor) -> bool:
    """Whether int8 quantizes this state entry: the weight of a conv or linear layer."""
    return name.endswith("weight") and t.is_floating_point() and t.dim() >= 2


def layout(state: Mapping[str, torch.Tensor], codec: str) -> dict[str, torch.Tensor]:
    """The tensors a ``codec`` blob of a model with this ``state`` holds, as tensors of the right names,
    dtypes and shapes (on the ``meta`` device when ``state`` is: nothing allocated)."""
    check(codec)
    out: dict[str, torch.Tensor] = {}
    for k, t in state.items():
        if codec == "fp16" and t.is_floating_point():
            out[k] = torch.empty(t.shape, dtype=torch.float16, device=t.device)
        elif codec == "int8" and quantized(k, t):
            out[k] = torch.empty(t.shape, dtype=torch.int8, device=t.device)
            out[k + SCALE] = torch.empty(t.shape[0], dtype=torch.float32, device=t.device)
        else:
            out[k] = t
    return out


def pack(state: Mapping[str, torch.Tensor], codec: str) -> dict[str, torch.Tensor]:
    """The tensors to store for ``state`` (detached, contiguous, on the CPU) under ``codec``."""
    check(codec)
    out: dict[str, torch.Tensor] = {}
    for k, t in state.items():
        t = t.detach().contiguous().cpu()
        if codec == "fp16" and t.is_floating_point():
            h = t.to(torch.float16)
            if not bool(torch.isfinite(h).all()) and bool(torch.isfinite(t).all()):
                raise ValueError(f"Codec fp16 cannot hold {k}: values beyond float16's range (65504).")
            out[k] = h
        elif codec == "int8" and quantized(k, t):
            w = t.float().reshape(t.shape[0], -1)
            scale = w.abs().amax(dim=1) / _QMAX  # 0 for an all-zero channel: it decodes to zeros
            q = torch.round(w / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).clamp_(-_QMAX, _QMAX)
            out[k] = q.to(torch.int8).reshape(t.shape).contiguous()
            out[k + SCALE] = scale.contiguous()
        else:
            out[k] = t
    return out


def problem(tensors: Mapping[str, torch.Tensor], codec: str) -> str | None:
    """What is wrong with a received blob's int8 data that its header cannot show (None: nothing)."""
    if codec != "int8":
        return None
    for k, t in tensors.items():
        if k.endswith(SCALE) and bool((t < 0).any()):
            return f"negative scales in {k}"
        if t.dtype == torch.int8 and bool((t == -_QMAX - 1).any()):
            return f"{k} holds -128, outside the symmetric range -127..127"
    return None


def unpack(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict shaped and typed as ``reference`` (the decoded model's own) from the stored
    ``tensors`` (checked against :func:`layout` already): int8 weights are dequantized, the rest cast."""
    out = {}
    for k, ref in reference.items():
        t = tensors[k]
        if k + SCALE in tensors:
            s = tensors[k + SCALE].float().reshape(-1, *([1] * (t.dim() - 1)))
            t = t.float() * s
        out[k] = t.to(ref.dtype)
    return out
