"""Model builders with explicit widths, so a pruned model can be rebuilt from a small JSON spec.

Every model built here has:

* ``model.classifier``: the final ``nn.Linear`` (pruning must keep its outputs);
* ``model.widths``: the current channel count of every prunable layer, read off the modules, so it is
  still right after torch-pruning has physically removed channels;
* ``model.spec``: ``{"name", "num_classes", "in_channels", "widths"}``, enough for :func:`build` to
  make an identically shaped model (``build(**model.spec)``).

Models work on 28x28 (Fashion-MNIST) and 32x32 (CIFAR) inputs. The names are a registry: :func:`register`
adds a model of one's own (from anywhere, e.g. a notebook cell), which every part of the package then builds by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ReftModel(nn.Module):
    """Base class: a model that knows its builder name and can report its spec."""

    arch: str = ""
    classifier: nn.Linear

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels

    @property
    def widths(self) -> list[int]:
        raise NotImplementedError

    @property
    def spec(self) -> dict:
        return {
            "name": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "widths": self.widths,
        }


class HiddenNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that normalises a training batch of one sample with its running statistics (one sample
    has no spread; plain ``BatchNorm1d`` raises there), e.g. a last batch of 1 in local training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class SmallCNN(ReftModel):
    """Three 3x3 conv blocks (conv-BN-ReLU-pool) and a two-layer classifier head (linear-BN-ReLU, linear).

    ``widths = [conv1, conv2, conv3, hidden]``. The last pool is adaptive (2x2), so the head has the
    same shape for 28x28 and 32x32 inputs. The hidden layer is normalised like the convs: without it, the
    shared local recipe (SGD 0.05, momentum 0.9) left 66-93% of its units dead after one local epoch from
    init, and a model averaged from few clients collapsed to one class (issue 25, ``reft.diagnostics``).
    """

    arch = "cnn"
    default_widths = (32, 64, 128, 128)

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__(num_classes, in_channels)
        c1, c2, c3, hidden = widths
        self.features = nn.Sequential(
            *_conv_bn(in_channels, c1), nn.MaxPool2d(2),
            *_conv_bn(c1, c2), nn.MaxPool2d(2),
            *_conv_bn(c2, c3), nn.AdaptiveMaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(c3 * 4, hidden, bias=False)
        self.fc_norm = HiddenNorm(hidden)
        self.fc_act = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def widths(self) -> list[int]:
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return [c.out_channels for c in convs] + [self.fc.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.classifier(self.fc_act(self.fc_norm(self.fc(x))))


class VGG(ReftModel):
    """VGG with batch norm in its CIFAR form: conv stack, global pooling, one linear classifier.

    ``widths`` lists the output channels of every conv layer in order. Max-pools use
    ``ceil_mode=True`` so the five pools also fit 28x28 inputs (28-14-7-4-2-1).
    """

    def __init__(self, arch: str, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__(num_classes, in_channels)
        self.arch = arch
        layers: list[nn.Module] = []
        it = iter(widths)
        cin = in_channels
        for item in _VGG_CFG[arch]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = next(it)
                layers += _conv_bn(cin, cout)
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(cin, num_classes)

    @property
    def widths(self) -> list[int]:
        return [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block whose inner width may differ from its output width (after pruning)."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(ReftModel):
    """ResNet-18 in its CIFAR form (3x3 stem, no stem max-pool), as in the REFT/FedDF experiments.

    ``widths = [stage1, stage2, stage3, stage4, inner_1, ..., inner_8]``: the residual width of each
    stage (stage 1 is also the stem width) followed by the inner width of each of the 8 blocks.
    """

    arch = "resnet18"
    default_widths = (64, 128, 256, 512) + (64, 64, 128, 128, 256, 256, 512, 512)

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__(num_classes, in_channels)
        stages, inner = list(widths[:4]), list(widths[4:])
        self.stem = nn.Sequential(*_conv_bn(in_channels, stages[0]))
        blocks: list[nn.Module] = []
        cin = stages[0]
        for s, cout in enumerate(stages):
            for b in range(2):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(cin, inner[2 * s + b], cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    @property
    def widths(self) -> list[int]:
        blocks = list(self.blocks)
        stages = [blocks[2 * s].conv2.out_channels for s in range(4)]
        return stages + [b.conv1.out_channels for b in blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


Builder = Callable[[int, int, Sequence[int]], ReftModel]


@dataclass(frozen=True)
class Registered:
    """A model name's builder (``builder(num_classes, in_channels, widths)``) and its dense widths."""

    builder: Builder
    default_widths: tuple[int, ...]


# Every model :func:`build` (and therefore RunConfig, the wire format and pruning) knows, by name.
MODEL_NAMES: dict[str, Registered] = {}


def register(name: str, builder: Builder, default_widths: Sequence[int] | None = None) -> None:
    """Make a model available by name to :func:`build`, :class:`reft.config.RunConfig` and :mod:`reft.comm`.

    ``builder(num_classes, in_channels, widths)`` returns a :class:`ReftModel` subclass instance (it has
    ``classifier``, the final ``nn.Linear``, and ``widths`` read off its modules, so that ``build(**model.spec)``
    rebuilds a pruned copy); ``default_widths`` are its dense widths (default: ``builder.default_widths``).
    Registering a name again replaces it, so re-running a notebook cell is harmless.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A model needs a non-empty name; got {name!r}.")
    if not callable(builder):
        raise TypeError(f"register({name!r}, ...) needs a callable builder(num_classes, in_channels, widths).")
    widths = default_widths if default_widths is not None else getattr(builder, "default_widths", None)
    if widths is None or not len(widths) or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"register({name!r}, ...) needs default_widths: the dense widths, ints >= 1; got {widths!r}.")
    MODEL_NAMES[name] = Registered(builder, tuple(widths))


def default_widths(name: str) -> list[int]:
    """The dense (unpruned) widths of a named model."""
    _check_name(name)
    return list(MODEL_NAMES[name].default_widths)


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}. Valid model names: {', '.join(MODEL_NAMES)}.")


def build(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Sequence[int] | None = None,
) -> ReftModel:
    """Build a model by name.

    Args:
        name: a registered name: ``cnn``, ``vgg11``, ``vgg16``, ``resnet18`` or one of :func:`register`.
        num_classes: number of output classes.
        in_channels: 1 for Fashion-MNIST, 3 for CIFAR.
        widths: channels per prunable layer (see each class); ``None`` gives the dense model.
            A pruned model's ``model.widths`` rebuilds it exactly.
    """
    _check_name(name)
    dense = default_widths(name)
    widths = dense if widths is None else [int(w) for w in widths]
    if len(widths) != len(dense):
        raise ValueError(f"{name} needs {len(dense)} widths (dense: {dense}); got {len(widths)}.")
    if min(widths) < 1:
        raise ValueError(f"Every width must be >= 1; got {widths}.")
    if num_classes < 2 or in_channels < 1:
        raise ValueError(f"num_classes must be >= 2 and in_channels >= 1; got {num_classes}, {in_channels}.")
    model = MODEL_NAMES[name].builder(num_classes, in_channels, widths)
    if not isinstance(model, ReftModel):
        raise TypeError(f"The builder registered as {name!r} returned {type(model).__name__}, not a ReftModel.")
    model.arch = name  # the spec names the registered builder, so the wire format rebuilds this model
    return model


register("cnn", SmallCNN)
for _arch, _cfg in _VGG_CFG.items():
    register(_arch, partial(VGG, _arch), [c for c in _cfg if c != "M"])
register("resnet18", ResNet18)
