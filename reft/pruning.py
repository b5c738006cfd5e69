"""Structured channel pruning through torch-pruning's dependency graph.

:func:`prune` removes whole channels (conv filters, hidden units) with ``tp.pruner.BasePruner``
(torch-pruning's MetaPruner): the dependency graph couples every layer that shares a channel
(BN after conv, the next layer's inputs, the residual adds of ResNet), so the result is a
physically smaller, dense model: fewer bytes, fewer FLOPs, lower latency. The classifier's outputs
are never pruned. The pruned model is an ordinary ``reft.models`` model: ``build(**result.spec)``
plus ``load_state_dict`` rebuilds it exactly.

By default every layer loses the same fraction ``ratio`` of its channels (torch-pruning's local
mode); layers lose channels on both sides, so parameters and FLOPs fall to about ``(1 - ratio)^2``.
``global_pruning=True`` ranks channels across layers instead.

Known trap (torch-pruning issue 416): pruning can silently remove nothing, e.g. when the model's
parameters are frozen (tracing relies on autograd) or its forward pass detaches the graph. Here the
copy is traced with gradients enabled, and a call that leaves a prunable layer untouched raises
:class:`PruningError` instead of returning an unpruned model.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn

from reft import measure, models, train
from reft.progress import tqdm

__all__ = [
    "IMPORTANCES",
    "single_thread",
    "PruningError",
    "PruneResult",
    "prune",
    "prune_to_flops",
    "prune_iterative",
    "accuracy_sweep",
    "accuracy_held",
]

IMPORTANCES = ("l1", "l2", "random", "fpgm")


class PruningError(ValueError):
    """Pruning could not do what was asked (nothing traced, nothing removed, a layer emptied)."""


@dataclass
class PruneResult:
    """A pruned copy of a model, with what is needed to rebuild it and to judge the cut."""

    model: models.ReftModel
    spec: dict
    ratio: float
    importance: str
    dense_params: int
    params: int
    steps: int = 1

    @property
    def params_fraction(self) -> float:
        return self.params / self.dense_params


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (then restore).

    Pruning traces and measures one sample at a time: tiny ops, for which extra threads only add
    synchronisation, and on a machine whose cores are shared they cost 10-20x in waiting.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _importance(name: str) -> tp.importance.Importance:
    makers = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "random": tp.importance.RandomImportance,
        "fpgm": tp.importance.FPGMImportance,
    }
    if name not in makers:
        raise ValueError(f"Unknown importance {name!r}. Valid importances: {', '.join(IMPORTANCES)}.")
    return makers[name]()


def _check_ratio(ratio: float) -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in [0, 1); got {ratio!r}.") from None
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of channels removed); got {ratio}.")
    return ratio


def _check_model(model: nn.Module) -> None:
    if not isinstance(getattr(model, "classifier", None), nn.Linear) or not hasattr(model, "spec"):
        raise ValueError(
            "prune() takes a model built by reft.models.build (it needs .classifier and .spec); "
            f"got {type(model).__name__}."
        )


def _copy_for_pruning(model: nn.Module) -> nn.Module:
    net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for p in net.parameters():  # tracing relies on autograd: frozen parameters would be invisible
        p.requires_grad_(True)
    return net.eval()  # eval: tracing must not update the BN running statistics of the copy


def _finish(net: nn.Module, model: nn.Module) -> models.ReftModel:
    net = net.to(memory_format=torch.contiguous_format)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in net.named_parameters():
        p.requires_grad_(flags.get(n, True))
        p.grad = None
    return net.train(model.training)


def _run(
    model: nn.Module,
    ratio: float,
    example_inputs: torch.Tensor,
    importance: str,
    round_to: int | None,
    steps: int,
    finetune: Callable[[nn.Module], None] | None,
    global_pruning: bool,
    seed: int,
    progress: bool,
    **kw,
) -> PruneResult:
    ratio = _check_ratio(ratio)
    _check_model(model)
    imp = _importance(importance)
    if not isinstance(example_inputs, torch.Tensor):
        raise ValueError(f"example_inputs must be a tensor batch (N x C x H x W); got {type(example_inputs).__name__}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be >= 1 or None; got {round_to}.")
    x = example_inputs[:1].detach().to(dtype=torch.float32, device=next(model.parameters()).device)
    dense_params = measure.count_params(model)
    net = _copy_for_pruning(model)
    if ratio == 0:
        return PruneResult(_finish(net, model), net.spec, 0.0, importance, dense_params, dense_params, steps)

    before = list(net.widths)
    # Layers the caller wants kept refer to the input model: find the same modules in the copy by name.
    names = {id(m): n for n, m in model.named_modules()}
    extra = kw.pop("ignored_layers", None) or []
    unknown = [type(m).__name__ for m in extra if id(m) not in names]
    if unknown:
        raise ValueError(f"ignored_layers must be modules of the model being pruned; not found: {unknown}.")
    ignored = [net.classifier] + [net.get_submodule(names[id(m)]) for m in extra]
    try:
        with torch.enable_grad(), warnings.catch_warnings(), single_thread():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(
                net, x, importance=imp, pruning_ratio=ratio, iterative_steps=steps, round_to=round_to,
                ignored_layers=ignored, global_pruning=global_pruning, **kw,
            )  # fmt: skip
    except TypeError as e:
        raise ValueError(f"Invalid pruning option: {e}") from e
    except Exception as e:  # torch-pruning fails in many ways on graphs it cannot follow
        raise PruningError(
            f"torch-pruning could not trace {type(model).__name__} on an input of shape {tuple(x.shape)}: "
            f"{type(e).__name__}: {e}. Check that example_inputs matches the model (channels, size) and that "
            "its forward pass is differentiable (no torch.no_grad or .detach inside)."
        ) from e

    with tqdm(total=steps, desc=f"prune {ratio:.2f}", disable=not progress or steps == 1, leave=False) as bar:
        for _ in range(steps):
            with torch.random.fork_rng(devices=[]), single_thread():
                torch.manual_seed(seed)  # RandomImportance draws from the global generator
                pruner.step()
            if min(net.widths) < 1:
                raise PruningError(
                    f"Pruning at ratio {ratio} (round_to={round_to}) emptied a layer: widths {net.widths}. "
                    "Use a smaller ratio or round_to."
                )
            try:
                with torch.no_grad(), single_thread():
                    net(x)
            except Exception as e:
                raise PruningError(f"The pruned model no longer runs ({type(e).__name__}: {e}).") from e
            if finetune is not None:
                net.train(model.training)
                finetune(net)
                net.eval()
            bar.update()

    after = list(net.widths)
    untouched = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if (b > 1 or after == before) and a == b]
    if after == before or (not global_pruning and untouched):
        raise PruningError(
            f"Pruning at ratio {ratio} removed no channels from prunable layer(s) at width index {untouched} "
            f"(widths before {before}, after {after}); torch-pruning skips layers it cannot see or that are "
            "already 1 channel wide (cf. torch-pruning issue 416). Check that the forward pass does not detach "
            "the graph, that the model is not already at minimal width, and that round_to "
            f"({round_to}) is smaller than the layers' widths."
        )
    if net.classifier.out_features != model.classifier.out_features:  # ignored_layers guarantees this
        raise PruningError("Pruning changed the number of classes; this is a bug in reft.pruning.")
    out = _finish(net, model)
    return PruneResult(out, out.spec, ratio, importance, dense_params, measure.count_params(out), steps)


def prune(
    model: nn.Module,
    ratio: float,
    example_inputs: torch.Tensor,
    importance: str = "l2",
    round_to: int | None = None,
    *,
    global_pruning: bool = False,
    seed: int = 0,
    **kw,
) -> PruneResult:
    """Remove a fraction ``ratio`` of the channels of every prunable layer; the input model is untouched.

    Args:
        model: a ``reft.models`` model (its classifier keeps its outputs).
        ratio: in ``[0, 1)``; ``0`` returns an unpruned copy.
        example_inputs: a batch the model accepts (only the first sample is used, for tracing).
        importance: channel criterion, one of :data:`IMPORTANCES` (``l1``/``l2``: filter magnitude,
            ``random``: seeded by ``seed``, ``fpgm``: distance to the geometric median of the filters).
        round_to: keep channel counts at multiples of this (hardware-friendly widths).
        global_pruning: rank channels across layers instead of the same ratio per layer.
        **kw: passed to ``tp.pruner.BasePruner``; ``ignored_layers`` (modules of ``model``) are kept
            whole in addition to the classifier.
    """
    return _run(model, ratio, example_inputs, importance, round_to, 1, None, global_pruning, seed, False, **kw)


def prune_iterative(
    model: nn.Module,
    ratio: float,
    example_inputs: torch.Tensor,
    steps: int,
    finetune: Callable[[nn.Module], None] | None = None,
    importance: str = "l2",
    round_to: int | None = None,
    *,
    global_pruning: bool = False,
    seed: int = 0,
    progress: bool = False,
    **kw,
) -> PruneResult:
    """Prune to ``ratio`` in ``steps`` equal steps (of the original widths), calling ``finetune(model)`` after each.

    ``finetune`` trains the partly pruned copy in place (e.g. ``lambda m: reft.train.fit(m, x, y, epochs=1)``),
    so importance at the next step is judged on recovered weights.
    """
    return _run(model, ratio, example_inputs, importance, round_to, steps, finetune, global_pruning, seed, progress,
                **kw)  # fmt: skip


def prune_to_flops(
    model: nn.Module,
    budget_flops: float,
    example_inputs: torch.Tensor,
    importance: str = "l2",
    max_ratio: float = 0.95,
    tol: float = 0.005,
    **kw,
) -> PruneResult:
    """The least pruned model whose forward FLOPs on ``example_inputs`` are <= ``budget_flops``.

    Bisection on the ratio (FLOPs fall monotonically with it under uniform pruning) to within ``tol``.
    ``budget_flops`` counts like :func:`reft.measure.flops` on the same ``example_inputs`` (whole batch).
    """
    _check_model(model)
    if not budget_flops > 0:
        raise ValueError(f"budget_flops must be > 0; got {budget_flops}.")
    max_ratio = _check_ratio(max_ratio)
    x1, n = example_inputs[:1], len(example_inputs)

    def flops_of(m: nn.Module) -> int:  # per sample x batch: these models treat samples independently
        with single_thread():
            return n * measure.flops(m, x1)

    dense = flops_of(model)
    if dense <= budget_flops:
        return prune(model, 0.0, example_inputs, importance, **kw)
    best = prune(model, max_ratio, example_inputs, importance, **kw)
    if flops_of(best.model) > budget_flops:
        raise ValueError(
            f"Even ratio {max_ratio} leaves {flops_of(best.model):.3g} FLOPs > budget "
            f"{budget_flops:.3g} (dense: {dense:.3g}). Raise max_ratio or the budget."
        )
    lo, hi = 0.0, max_ratio  # lo: over budget, hi: within budget
    while hi - lo > tol:
        mid = (lo + hi) / 2
        res = prune(model, mid, example_inputs, importance, **kw)
        if flops_of(res.model) <= budget_flops:
            hi, best = mid, res
        else:
            lo = mid
    return best


def accuracy_sweep(
    name: str,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    ratios: Sequence[float],
    epochs: int = 2,
    finetune_epochs: int = 1,
    importances: Sequence[str] = ("l2",),
    compare_ratios: Sequence[float] | None = None,
    compare_finetune: bool = True,
    num_classes: int = 10,
    iterative_steps: int = 1,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Test accuracy vs pruning ratio: trained from scratch vs pruned from a trained model.

    For each ratio: ``scratch`` trains a freshly initialised model of the pruned shape for ``epochs``;
    for each importance, a dense model trained for ``epochs`` is pruned (``pruned``: accuracy right
    after the cut, which shows how well the criterion picks channels) and then fine-tuned for
    ``finetune_epochs`` (``pruned+finetuned``). With ``iterative_steps > 1`` the cut is made in that
    many steps with ``finetune_epochs`` of training after each (``prune_iterative``).
    The first importance runs at every ratio; the others only at ``compare_ratios`` (default: all),
    and without the fine-tuning unless ``compare_finetune`` (the cut itself is where criteria differ most).
    """
    x, y = train_data
    xt, yt = test_data
    in_ch = int(x.shape[1])
    ex = x[:1]
    ratios = [_check_ratio(r) for r in ratios]
    for imp in importances:
        _importance(imp)

    def fit(m: nn.Module, n_epochs: int, desc: str) -> float:
        return train.fit(m, x, y, epochs=n_epochs, lr=lr, batch_size=batch_size, seed=seed, desc=desc).seconds

    torch.manual_seed(seed)
    dense = models.build(name, num_classes=num_classes, in_channels=in_ch)
    dense_s = fit(dense, epochs, "dense")
    rows = []

    def add(r: float, method: str, imp: str, n_epochs: int, m: nn.Module, secs: float) -> None:
        acc = train.evaluate(m, xt, yt)
        rows.append(dict(ratio=r, method=method, importance=imp, epochs=n_epochs, accuracy=acc,
                         params=measure.count_params(m), train_s=secs))  # fmt: skip

    compare = set(ratios) if compare_ratios is None else {_check_ratio(r) for r in compare_ratios}
    runs = [(r, [imp for i, imp in enumerate(importances) if i == 0 or r in compare]) for r in ratios]
    bar = tqdm(total=sum(1 + len(imps) for _, imps in runs), desc="accuracy sweep", disable=not progress)
    for r, imps in runs:
        torch.manual_seed(seed)
        fresh = models.build(**prune(dense, r, ex).spec)
        add(r, "scratch", "-", epochs, fresh, fit(fresh, epochs, f"scratch {r}"))
        bar.update()
        for imp in imps:
            if iterative_steps > 1 and r > 0:
                res = prune_iterative(dense, r, ex, iterative_steps, lambda m: fit(m, finetune_epochs, "ft"), imp,
                                      seed=seed)  # fmt: skip
                ft = iterative_steps * finetune_epochs
                add(r, f"pruned(x{iterative_steps})+finetuned", imp, epochs + ft, res.model, float("nan"))
            else:
                res = prune(dense, r, ex, imp, seed=seed)
                add(r, "pruned", imp, epochs, res.model, 0.0)
                if imp == importances[0] or compare_finetune:
                    secs = fit(res.model, finetune_epochs, f"finetune {r}") if finetune_epochs > 0 else 0.0
                    add(r, "pruned+finetuned", imp, epochs + finetune_epochs, res.model, secs)
            bar.update()
    bar.close()
    df = pd.DataFrame(rows)
    df.attrs["dense_train_s"] = dense_s
    return df


def accuracy_held(sweep: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Where accuracy starts to fall: per method and importance, the largest ratio up to which every
    ratio stays within ``tolerance`` of the same method's accuracy at the smallest ratio (the dense model).

    Columns: ``reference`` (accuracy at the smallest ratio), ``held_to`` (that largest ratio),
    ``falls_at`` (the next ratio, NaN if none falls), ``accuracy_at_fall``.
    """
    rows = []
    for (method, imp), g in sweep.groupby(["method", "importance"], sort=False):
        g = g.sort_values("ratio")
        ref = float(g["accuracy"].iloc[0])
        below = g[g["accuracy"] < ref - tolerance]
        first = below.iloc[0] if len(below) else None
        held = g[g["ratio"] < first["ratio"]] if first is not None else g
        rows.append({
            "method": method,
            "importance": imp,
            "reference": ref,
            "held_to": float(held["ratio"].max()),
            "falls_at": float("nan") if first is None else float(first["ratio"]),
            "accuracy_at_fall": float("nan") if first is None else float(first["accuracy"]),
        })  # fmt: skip
    return pd.DataFrame(rows)
