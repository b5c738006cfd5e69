"""Each tier's pruned model outside PyTorch: ONNX files, checked and timed in ONNX Runtime on the CPU.

The seed's caveat about variable pruning is that a pruned structure may not run on a device's software
stack. REFT's pruned models are plain, smaller dense models, and this module shows it: for every tier of
the tier table, :func:`tier_models` gives the model that tier trains (the policy's ratio from
:func:`reft.tiers.choose_ratios`, pruned by :func:`reft.pruning.prune`, as notebook 06 and
:class:`reft.explorer.Explorer` do), :func:`to_onnx` writes it as one self-contained ``.onnx`` file
(``torch.onnx.export``, the dynamo exporter, weights inside the file, batch size dynamic),
:func:`check` runs it in ONNX Runtime on real Fashion-MNIST test images and compares its logits with
PyTorch's (largest absolute difference, within :data:`TOLERANCE`), and :func:`latency` times both
runtimes on the CPU with one thread, at batch 1 and 32, in interleaved rounds (medians).

Weights: the models are freshly initialised (seeded) and their batch-norm statistics are set from real
public-set images (forward passes in train mode, no labels, no gradient), so batch norm is not the
identity it is at initialisation; equality of outputs and latency do not depend on training.

The models take a fixed image size (28x28 for Fashion-MNIST): the small CNN's last pool is adaptive,
which ONNX has no operator for, so :func:`static_pools` replaces it by the plain max pool that computes
the same windows at that size (checked: outputs are equal in PyTorch before export).

ExecuTorch (``.pte``, PyTorch's runtime for phones and microcontrollers) is not used: ``pip install
--dry-run executorch`` (1.5.1) resolves next to torch 2.14 here but would install 29 packages besides it
(coremltools, tokenizers, huggingface-hub, hydra-core, scikit-learn, torchao, ...) for one optional
format, and its export was not tried; ONNX Runtime has CPU wheels for aarch64 Linux (a Raspberry Pi)
and the extra is three packages (onnx, onnxscript for torch's exporter, onnxruntime).

``python -m reft.export --help``; the table of the reference run is ``results/fmnist/export.csv``.
Needs the optional extra: ``pip install -e '.[export]'`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from reft import data, measure, models, pruning, report, tiers

__all__ = [
    "TOLERANCE",
    "TierModel",
    "available",
    "check",
    "export_tiers",
    "latency",
    "main",
    "static_pools",
    "tier_models",
    "to_onnx",
]

TOLERANCE = 1e-4  # largest allowed |logit(ONNX Runtime) - logit(PyTorch)|: float32 sums in another order
INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
_NEEDS = ("onnx", "onnxscript", "onnxruntime")


def available() -> bool:
    """Whether the export extra (onnx, onnxscript, onnxruntime) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS)


def _require() -> None:
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"reft.export needs {', '.join(missing)}: pip install -e '.[export]'.")


@dataclass
class TierModel:
    """The model one tier trains: its tier, the policy's ratio, and the pruned model."""

    tier: str
    ratio: float
    model: models.ReftModel


def _calibrate(model: nn.Module, images: torch.Tensor, batch: int = 128) -> nn.Module:
    """Batch-norm running statistics from ``images`` (train-mode forward passes, no gradient); eval mode after."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i : i + batch])
    return model.eval()


def tier_models(
    model: str,
    calibration: torch.Tensor,
    tier_table: pd.DataFrame | None = None,
    policy: str = "deadline",
    deadline_s: float | None = None,
    samples: int = 600,
    epochs: int = 5,
    max_ratio: float = 0.95,
    importance: str = "l2",
    seed: int = 0,
) -> list[TierModel]:
    """Every tier's pruned ``model``: the ratio ``policy`` gives the tier (defaults as notebook 06's), pruned
    from one seeded dense model whose batch-norm statistics come from ``calibration`` images."""
    table = tiers.load_tiers() if tier_table is None else tier_table
    torch.manual_seed(seed)
    dense = _calibrate(models.build(model, 10, calibration.shape[1]), calibration)
    example = calibration[:1]
    chosen = tiers.choose_ratios(
        policy, table, dense, example, samples=samples, epochs=epochs, max_ratio=max_ratio,
        deadline_s=deadline_s, importance=importance,
    )  # fmt: skip
    out = []
    for tier, res in chosen.items():
        pruned = pruning.prune(dense, res.ratio, example, importance, seed=seed).model.eval()
        out.append(TierModel(tier, res.ratio, pruned))
    return out


def _same_windows(size: int, out: int) -> tuple[int, int] | None:
    """(kernel, stride) of a plain pool whose windows equal adaptive pooling's from ``size`` to ``out``."""
    starts = [math.floor(i * size / out) for i in range(out)]
    ends = [math.ceil((i + 1) * size / out) for i in range(out)]
    kernels = {e - s for s, e in zip(starts, ends, strict=True)}
    strides = {b - a for a, b in zip(starts, starts[1:], strict=False)} or {1}
    return (kernels.pop(), strides.pop()) if len(kernels) == 1 and len(strides) == 1 else None


def static_pools(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose adaptive max pools are plain max pools with the same windows at the input
    size of ``example`` (ONNX has no adaptive max pool). Raises ``ValueError`` if windows differ in size."""
    net = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    pools = {n: m for n, m in net.named_modules() if isinstance(m, nn.AdaptiveMaxPool2d)}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, tuple(i[0].shape[-2:])))
             for n, m in pools.items()]  # fmt: skip
    with torch.no_grad():
        ref = net(example)
    for h in hooks:
        h.remove()
    for name, pool in pools.items():
        out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        out = tuple(o if o is not None else s for o, s in zip(out, sizes[name], strict=True))
        windows = [_same_windows(s, o) for s, o in zip(sizes[name], out, strict=True)]
        if None in windows:
            raise ValueError(f"{name}: adaptive pooling {sizes[name]} -> {out} has windows of different sizes; "
                             "no plain pool computes it, so this model cannot be exported at that size.")  # fmt: skip
        (kh, sh), (kw, sw) = windows
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, nn.MaxPool2d((kh, kw), (sh, sw)))
    with torch.no_grad():
        if not torch.equal(net(example), ref):
            raise ValueError("Replacing the adaptive pools changed the model's outputs; this is a bug in reft.export.")
    return net


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``model`` as one self-contained ONNX file (input ``images``, output ``logits``, dynamic batch)."""
    _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = static_pools(model, example[:1])
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            torch.onnx.export(
                net, (example[:2],), str(path), dynamo=True, external_data=False, input_names=["images"],
                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )  # fmt: skip
    except Exception as e:  # the exporter's own error types vary between torch releases
        raise RuntimeError(f"ONNX export of {getattr(model, 'spec', type(model).__name__)} failed: {e}\n"
                           f"{log.getvalue()[-2000:]}") from e  # fmt: skip
    return path


def session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session on ``threads`` threads (intra-op; inter-op 1, sequential)."""
    _require()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check(model: nn.Module, sess, images: torch.Tensor, batch: int = 256) -> dict:
    """ONNX Runtime's logits against PyTorch's on ``images``: largest absolute difference, and the share
    of images whose predicted class agrees."""
    diffs, agree = [], 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            ref = model.eval()(x).numpy()
            got = sess.run(None, {"images": x.numpy()})[0]
            diffs.append(float(np.abs(got - ref).max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    worst = max(diffs)
    return {"n_images": len(images), "max_abs_diff": worst, "tolerance": TOLERANCE,
            "within_tolerance": worst <= TOLERANCE, "argmax_agree": agree / len(images)}  # fmt: skip


def latency(
    model: nn.Module, sess, images: torch.Tensor, batches: Sequence[int] = (1, 32), rounds: int = 5,
    repeats: int = 10, warmup: int = 3,
) -> dict:  # fmt: skip
    """Median CPU forward latency (ms) of PyTorch and ONNX Runtime per batch size, one thread each.

    ``rounds`` interleaved rounds, each timing ``repeats`` calls of every (runtime, batch) pair after
    ``warmup`` untimed calls, so a disturbance on a shared machine hits both runtimes alike; the median
    of all timed calls is reported. PyTorch runs as :func:`reft.measure.latency` does (eval, inference
    mode, channels-last); its thread count is set to 1 here and restored after.
    """
    fmt = torch.channels_last
    net = copy.deepcopy(model).eval().to(memory_format=fmt)
    xs = {b: images[:b].contiguous() for b in batches}
    runners = {}
    for b, x in xs.items():
        xt, xn = x.contiguous(memory_format=fmt), x.numpy()
        runners[("torch", b)] = lambda xt=xt: net(xt)
        runners[("ort", b)] = lambda xn=xn: sess.run(None, {"images": xn})
    times: dict[tuple[str, int], list[float]] = {k: [] for k in runners}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for key, fn in runners.items():
                    for _ in range(warmup):
                        fn()
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        fn()
                        times[key].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return {f"{rt}_ms_b{b}": 1e3 * statistics.median(v) for (rt, b), v in times.items()}


def export_tiers(
    model_names: Sequence[str] = ("cnn", "resnet18"),
    out_dir: str | Path = "results/interactive/onnx",
    dataset: str = "fashion-mnist",
    policy: str = "deadline",
    n_images: int = 1000,
    rounds: int = 5,
    repeats: int = 10,
    tier_table: pd.DataFrame | None = None,
    seed: int = 0,
    **policy_kw,
) -> pd.DataFrame:
    """One row per model and tier: ratio, widths, params, ONNX bytes (the file's size), the check on
    ``n_images`` real test images, and the latencies of both runtimes. ONNX files go to ``out_dir``.
    ``policy_kw`` (``deadline_s``, ``samples``, ``epochs``, ``max_ratio``, ``importance``) go to :func:`tier_models`."""
    _require()
    unknown = [m for m in model_names if m not in models.MODEL_NAMES]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; valid: {', '.join(models.MODEL_NAMES)}.")
    if n_images < 32:
        raise ValueError(f"n_images must be >= 32 (the latency batch); got {n_images}.")
    splits = data.load(dataset, seed=seed)
    images = splits.test.x[:n_images]
    calibration = splits.public.x[:512]  # unlabelled public images set the batch-norm statistics
    rows = []
    for name in model_names:
        with pruning.single_thread():
            tms = tier_models(name, calibration, tier_table, policy, seed=seed, **policy_kw)
        for tm in tms:
            path = to_onnx(tm.model, images[:2], Path(out_dir) / f"{name}_{tm.tier}.onnx")
            sess = session(path)
            row = {"model": name, "tier": tm.tier, "policy": policy, "ratio": tm.ratio, "widths": tm.model.widths,
                   "params": measure.count_params(tm.model), "onnx_bytes": path.stat().st_size}  # fmt: skip
            row.update(check(tm.model, sess, images))
            row.update(latency(tm.model, sess, images, rounds=rounds, repeats=repeats))
            row.update(
                speedup_b1=row["torch_ms_b1"] / row["ort_ms_b1"], speedup_b32=row["torch_ms_b32"] / row["ort_ms_b32"]
            )
            row["file"] = str(path)
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reft.export``: every tier's pruned model as ONNX, checked and timed; the table as CSV."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m reft.export", description=main.__doc__)
    ap.add_argument("--models", default="cnn,resnet18", help="comma-separated model names (default: cnn,resnet18)")
    ap.add_argument("--policy", default="deadline", choices=tiers.POLICIES, help="tier -> pruning ratio policy")
    ap.add_argument("--tiers", default=None, help="a tier table CSV (default: the one shipped, reft/tiers.csv)")
    ap.add_argument("--images", type=int, default=1000, help="real test images for the output check")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per runtime, batch and round")
    ap.add_argument("--onnx-dir", default="results/interactive/onnx", help="where the .onnx files go")
    ap.add_argument("--out", default="results/interactive/export.csv", help="the table (CSV)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        table = export_tiers(
            [m.strip() for m in args.models.split(",") if m.strip()], args.onnx_dir, policy=args.policy,
            n_images=args.images, rounds=args.rounds, repeats=args.repeats,
            tier_table=tiers.load_tiers(args.tiers) if args.tiers else None, seed=args.seed,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        ap.error(str(e))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.atomic_write(out, lambda p: table.to_csv(p, index=False))
    cols = ["model", "tier", "ratio", "params", "onnx_bytes", "max_abs_diff", "argmax_agree",
            "ort_ms_b1", "torch_ms_b1", "ort_ms_b32", "torch_ms_b32"]  # fmt: skip
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"table written to {out}; ONNX files in {args.onnx_dir}")
    return 0 if bool(table["within_tolerance"].all()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
