"""HeteroFL (Diao et al., ICLR 2021): one global model; a client of a tier gets the leading slice
of every layer's channels at its tier's widths (the same widths REFT's pruning gives that tier, so
both approaches are compared at equal client cost); the server averages every parameter entry over
the clients that hold it.

Checked against the published code (dem123456789/HeteroFL-..., ``src/fed.py``, ``src/models/conv.py``,
``src/modules/modules.py``, ``src/train_classifier_fed.py``) and Flower's HeteroFL baseline.

Same as published: leading channel slices; per-entry averaging where entries no client holds keep their
value; each client counted once (``weighting = "uniform"``, as ``combine()`` counts clients);
classifier rows averaged over the clients holding the class (see below); the
**Scaler** (:func:`scaler`: in training mode, the input of every width-reduced norm layer divided by
``width / global width``, identity in eval mode; as in the published models, it sits only just before a
norm layer, where batch statistics cancel it almost exactly; until issue 25 it also acted on our CNN's
hidden linear layer, which had no norm after it, and killed the narrower clients' hidden units);
**masked cross-entropy** (:func:`masked_cross_entropy`: absent classes'
logits set to 0, on in every published run; with every class on a client it is plain cross-entropy).

Still different, and why:

* **batch norm** (``bn``): published static BN keeps no running statistics while training and, for
  evaluation, recomputes them in one pass over the *clients' private training data* on the server.
  Here the server recomputes them after every aggregation on its unlabelled public set
  (``bn="public"``, the default: no private data needed). ``bn="averaged"`` averages the clients'
  running statistics entry by entry like the weights; that is wrong for width slices (a leading
  channel's statistics in a narrow sub-model describe a layer whose input lacks the trailing
  channels): ``scripts/heterofl_bn_check.py``. Training never reads running statistics, so both
  variants learn identical weights.
* **classifier rows** (``label_rows``, default on as published): a class's classifier row is averaged
  only over the clients whose data hold that class; the server learns every client's label set (on
  Flower the SuperNode reports it with its tier and size): a privacy cost the published method pays too.
* **recipe and models**: published: SGD 0.1 (CIFAR), batch 10, gradient clipping at 1, step decay per
  round, pre-activation ResNet / a 4-conv CNN, rates 1, 1/2, 1/4, ...; ours: the recipe, models and
  tier widths every method here shares, so that methods differ only in the algorithm.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from reft import bench, models
from reft.federation import Client, Federation
from reft.strategies.base import Strategy, average_overlapping
from reft.train import LossFn


def leading_slice(state: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The leading block of every tensor of ``state`` with the shape of the same key in ``like``."""
    out = {}
    for k, ref in like.items():
        src = state[k]
        if src.dim() != ref.dim() or any(r > s for r, s in zip(ref.shape, src.shape, strict=True)):
            raise ValueError(f"{k}: a {tuple(ref.shape)} slice does not fit in {tuple(src.shape)}.")
        out[k] = src[tuple(slice(0, n) for n in ref.shape)].clone()
    return out


NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _width(norm: nn.Module) -> int:
    """The number of channels a norm layer normalises."""
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[0])
    return int(norm.num_channels if isinstance(norm, nn.GroupNorm) else norm.num_features)


@contextmanager
def scaler(model: nn.Module, reference: nn.Module) -> Iterator[nn.Module]:
    """HeteroFL's Scaler while the context is open, where the authors put it: just before a norm layer.
    The input of every norm layer of ``model`` that is narrower than the same layer of ``reference`` (the
    global model) is divided by its rate (``width / global width``) in training mode; identity in eval
    mode and at full width. A layer with no norm after it (a hidden linear layer, the classifier) is
    never scaled: in the published models (``src/models/conv.py``, ``resnet.py``) every Scaler precedes a
    norm, and one that does not multiplies activations and gradients by up to 1/rate (3-21x here), which
    killed every hidden unit of the narrower clients in one epoch (issue 25). Hooks only: weights, spec
    and bytes stay.

    Running statistics: the published clients keep none (static BN). Ours do, and a norm layer that
    trains on ``input / rate`` records statistics of the scaled input, which an eval-mode pass (no Scaler)
    would then misread (the client's model predicted one class). So they are put in the scaled units
    while the context is open (mean / rate, variance / rate^2) and back on exit: exact, as both updates
    are linear."""
    ref = dict(reference.named_modules())
    handles, stats = [], []
    for name, m in model.named_modules():
        if isinstance(m, NORMS) and name in ref and _width(m) != _width(ref[name]):
            rate = _width(m) / _width(ref[name])
            handles.append(m.register_forward_pre_hook(lambda mod, i, r=rate: (i[0] / r,) if mod.training else None))
            if getattr(m, "running_mean", None) is not None:
                stats.append((m, rate))
    with torch.no_grad():
        for m, r in stats:
            m.running_mean.div_(r), m.running_var.div_(r * r)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for m, r in stats:
                m.running_mean.mul_(r), m.running_var.mul_(r * r)


def masked_cross_entropy(labels: torch.Tensor, num_classes: int) -> LossFn:
    """HeteroFL's masked cross-entropy for a client holding ``labels``: the logits of classes absent
    from its data are set to 0 (as the published code does, not -inf) before the cross-entropy, so
    their classifier rows get no gradient from this client."""
    absent = torch.ones(num_classes, dtype=torch.bool)
    absent[labels.unique().cpu()] = False
    return lambda logits, y: F.cross_entropy(logits.masked_fill(absent.to(logits.device), 0.0), y)


class HeteroFL(Strategy):
    """One global model; width-sliced sub-models per tier; per-entry averaging, each client once.

    ``scaler`` (default on, as in every published run): a width-reduced norm layer's input is divided
    by its rate during local training (:func:`scaler`). ``masked_ce`` (default on, as in every published
    run, IID and non-IID): clients train with :func:`masked_cross_entropy` over the classes they hold;
    with every class present (IID here) it is plain cross-entropy. ``bn="public"`` recomputes the
    global model's BN statistics on the public set after each round (static BN); ``bn="averaged"``
    averages the clients' running statistics like the weights.
    """

    name = "heterofl"
    weighting = "uniform"  # the published combine() counts each client covering an entry once
    BN_MODES = ("public", "averaged")

    def __init__(
        self, bn: str = "public", scaler: bool = True, masked_ce: bool = True, label_rows: bool = True
    ) -> None:
        if bn not in self.BN_MODES:
            raise ValueError(f"Unknown HeteroFL bn mode {bn!r}. Valid modes: {', '.join(self.BN_MODES)}.")
        self.bn, self.use_scaler, self.masked_ce, self.label_rows = bn, scaler, masked_ce, label_rows

    @property
    def uses_public(self) -> bool:  # type: ignore[override]
        """Static BN (``bn="public"``) recomputes statistics on the public set; ``bn="averaged"`` needs none."""
        return self.bn == "public"

    def setup(self, fed: Federation) -> None:
        self.server_model = fed.dense_model()
        self.tier_widths = fed.widths

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        spec = {**self.server_model.spec, "widths": self.tier_widths[client.tier]}
        sub = models.build(**spec)
        sub.load_state_dict(leading_slice(self.server_model.state_dict(), sub.state_dict()))
        return sub

    def local_options(self, fed: Federation, client: Client) -> dict[str, Any]:
        return {"scaler_widths": list(self.server_model.widths) if self.use_scaler else None,
                "masked_ce": self.masked_ce}  # fmt: skip

    @contextmanager
    def local_training(self, model: nn.Module, y: torch.Tensor, options: Mapping[str, Any]) -> Iterator[LossFn | None]:
        loss = masked_cross_entropy(y, model.num_classes) if options.get("masked_ce") else None
        if not options.get("scaler_widths"):
            yield loss
            return
        with scaler(model, models.build(**{**model.spec, "widths": options["scaler_widths"]})):
            yield loss

    def row_masks(self, labels: list[int]) -> dict[str, torch.Tensor]:
        """The classifier rows a client with these classes contributes to (published ``combine()``)."""
        rows = torch.zeros(self.server_model.num_classes)
        rows[labels] = 1.0
        return {"classifier.weight": rows[:, None], "classifier.bias": rows}

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        ids = sorted(uploads)
        states = [uploads[i].state_dict() for i in ids]
        masks = [self.row_masks(fed.clients[i].labels) for i in ids] if self.label_rows else None
        with bench.phase("server: averaging"):
            self.server_model.load_state_dict(
                average_overlapping(self.server_model.state_dict(), states, self.weights(fed, ids), masks)
            )
        if self.bn != "public":
            return {"server_flops": 0.0}
        pub, model = fed.public_x, self.server_model.to(fed.device)  # the public set is on the device already
        with bench.phase("server: BN pass", model, pub, len(pub)):
            update_bn(pub.split(fed.cfg.distill_batch_size), model, device=fed.device)
        self.server_model.eval()
        return {"server_flops": fed.work_flops(self.server_model, len(fed.public_x))}  # the BN pass
