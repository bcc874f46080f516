"""Base architectures (mlp, cnn, vgg16, resnet18), their ALL sites and their parameter counts.

Every model takes image tensors ``(B, C, H, W)``, returns logits ``(B, num_classes)`` and
is an ``nn.Sequential`` whose last child is the classifier head ``head`` (an
``nn.Linear``, also the model's last ``nn.Linear``), so :func:`autoall.layer.insert_all`
puts an ALL right in front of it. The convolutional models end in global average
pooling, so they accept any input size; a max-pool (or VGG ``M``) is skipped once the
feature map is smaller than 2x2 (8x8 and 28x28 inputs).

Where :func:`build_model` puts the ALLs. ``positions: head``: one ALL in front of the head
(mlp: after ``relu2``, d = 256; cnn: after global pooling, d = 128; vgg16 and resnet18:
after global pooling, d = 512). ``positions: blocks`` adds one after every block or stage,
named ``all1``, ``all2``, ... in the Sequential that holds the blocks:

- mlp: after ``relu1`` (d = 256): every hidden layer but the last, whose output is the
  head's input and already has the head's ALL; 2 ALLs in all.
- cnn: after each of the 3 blocks' max-pool (d = 32, 64, 128); 4 ALLs in all.
- vgg16: after each of the 5 stages' max-pool (d = 64, 128, 256, 512, 512); 6 ALLs.
- resnet18: after the 2nd BasicBlock of each of the 4 stages (d = 64, 128, 256, 512),
  not after the stem; 5 ALLs.

Block ALLs on feature maps are channel ALLs (``channel_dim=1``: 1x1 convolutions, per
position); where a max-pool is skipped the block ends at its last ReLU. The block ALLs
sit in the same ``nn.Sequential`` as the blocks under new names, so every base parameter
keeps the baseline's ``state_dict`` key (the head's becomes ``head.1``).

``head_width`` (the parameter-matched control, :func:`parameter_matched_width`) widens
the layer in front of the head: mlp: ``fc2``'s output (256 -> w) and so the head's input;
cnn: the last conv of the last block (128 -> w) and its BN, and so the head's input;
vgg16: the last conv (512 -> w) and its BN, and so the head's input; resnet18: the inner
width of the last BasicBlock (its ``conv1`` output, ``bn1``, ``conv2`` input; 512 -> w),
whose output stays 512 so its identity shortcut stays (the head's input stays 512).
An ALL on a widened output has ``d = w``: the head's ALL (mlp, cnn, vgg16) and the last
block's (cnn, vgg16).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from autoall.errors import InvalidValue
from autoall.layer import ALLSpec, all_layers, insert_all

ARCHITECTURES: tuple[str, ...] = ("mlp", "cnn", "vgg16", "resnet18")

_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
_MLP_WIDTH = 256
_CNN_WIDTHS: tuple[int, ...] = (32, 64, 128)
_RESNET18_STAGES: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 2), (512, 2))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution (padding 1, no bias: BN has one), batch norm, ReLU; keeps H x W."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _classifier(features: nn.Module, width: int, num_classes: int) -> nn.Sequential:
    """``features`` -> global average pool -> flatten ``(B, width)`` -> ``head``."""
    return nn.Sequential(
        OrderedDict(
            features=features,
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            head=nn.Linear(width, num_classes),
        )
    )


@dataclass(frozen=True)
class _Base:
    """A base network and where its blocks end: the ALL sites of ``positions: blocks``."""

    model: nn.Sequential
    container: str  # the Sequential holding the blocks: "" (the model itself) or "features"
    block_ends: tuple[tuple[str, int], ...]  # (child of container a block ends at, its width)


def _mlp(in_shape: tuple[int, int, int], num_classes: int, head_width: int) -> _Base:
    """The article's MLP: flatten ``C*H*W`` -> 256 -> ``head_width`` (256) -> classes, ReLU."""
    channels, height, width = in_shape
    model = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels * height * width, _MLP_WIDTH),
            relu1=nn.ReLU(),
            fc2=nn.Linear(_MLP_WIDTH, head_width),
            relu2=nn.ReLU(),
            head=nn.Linear(head_width, num_classes),
        )
    )
    return _Base(model, "", (("relu1", _MLP_WIDTH),))  # relu2 feeds the head (and its ALL)


def _cnn(in_shape: tuple[int, int, int], num_classes: int, head_width: int) -> _Base:
    """3 VGG-style blocks ``[conv-BN-ReLU, conv-BN-ReLU, maxpool 2]`` of widths 32, 64, 128.

    The last block's second conv (and its BN) has ``head_width`` (128) output channels.
    """
    channels, height, width = in_shape
    layers: list[nn.Module] = []
    ends: list[tuple[str, int]] = []
    for i, out_channels in enumerate(_CNN_WIDTHS):
        last = head_width if i == len(_CNN_WIDTHS) - 1 else out_channels
        layers += _conv_bn_relu(channels, out_channels) + _conv_bn_relu(out_channels, last)
        channels = last
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        ends.append((str(len(layers) - 1), channels))
    return _Base(
        _classifier(nn.Sequential(*layers), channels, num_classes), "features", tuple(ends)
    )


def _vgg16(in_shape: tuple[int, int, int], num_classes: int, head_width: int) -> _Base:
    """VGG-16 with batch norm, CIFAR variant: 13 conv layers in 5 stages, one linear head.

    The last conv (and its BN) has ``head_width`` (512) output channels.
    """
    channels, height, width = in_shape
    layers: list[nn.Module] = []
    ends: list[tuple[str, int]] = []
    last_conv = max(i for i, item in enumerate(_VGG16_CFG) if item != "M")
    for i, item in enumerate(_VGG16_CFG):
        if item == "M":
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            ends.append((str(len(layers) - 1), channels))  # the pool, or the stage's last ReLU
        else:
            assert isinstance(item, int)
            out_channels = head_width if i == last_conv else item
            layers += _conv_bn_relu(channels, out_channels)
            channels = out_channels
    return _Base(
        _classifier(nn.Sequential(*layers), channels, num_classes), "features", tuple(ends)
    )


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    Input ``(B, in_channels, H, W)``, output ``(B, out_channels, ceil(H/s), ceil(W/s))`` for
    stride ``s``; the inner width (conv1's output, conv2's input) is ``inner_channels``
    (default ``out_channels``). The shortcut is a strided 1x1 convolution with batch norm
    when the shape changes, the identity otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        inner_channels: int | None = None,
    ) -> None:
        super().__init__()
        inner = out_channels if inner_channels is None else inner_channels
        self.conv1 = nn.Conv2d(
            in_channels, inner, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _resnet18(in_shape: tuple[int, int, int], num_classes: int, head_width: int) -> _Base:
    """ResNet-18, CIFAR variant: 3x3 stem (64, stride 1, no max-pool), 4 stages x 2 blocks.

    The last block's inner width is ``head_width`` (512); its output stays 512 channels, so
    its identity shortcut stays.
    """
    channels = in_shape[0]
    layers: list[nn.Module] = _conv_bn_relu(channels, 64)
    channels = 64
    ends: list[tuple[str, int]] = []
    for i, (out_channels, stride) in enumerate(_RESNET18_STAGES):
        inner = head_width if i == len(_RESNET18_STAGES) - 1 else out_channels
        layers.append(_BasicBlock(channels, out_channels, stride=stride))
        layers.append(_BasicBlock(out_channels, out_channels, stride=1, inner_channels=inner))
        channels = out_channels
        ends.append((str(len(layers) - 1), channels))
    return _Base(
        _classifier(nn.Sequential(*layers), channels, num_classes), "features", tuple(ends)
    )


_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, int], _Base]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "vgg16": _vgg16,
    "resnet18": _resnet18,
}
# the width head_width replaces (the layer in front of the head, or resnet18's last inner width)
_NORMAL_WIDTHS: dict[str, int] = {
    "mlp": _MLP_WIDTH,
    "cnn": _CNN_WIDTHS[-1],
    "vgg16": 512,
    "resnet18": _RESNET18_STAGES[-1][0],
}


def _insert_block_alls(base: _Base, spec: ALLSpec) -> nn.Sequential:
    """Put ``spec``'s ALL after every block end of ``base``; return the (new) model.

    The container is rebuilt with the same child names plus ``all1``, ``all2``, ... after
    the block ends, so every base parameter keeps its ``state_dict`` key. Feature maps get
    channel ALLs (``channel_dim=1``), the mlp's feature vectors ordinary ones.
    """
    container = base.model.get_submodule(base.container)
    assert isinstance(container, nn.Sequential)
    ends = dict(base.block_ends)
    channel_dim = -1 if base.container == "" else 1
    children: OrderedDict[str, nn.Module] = OrderedDict()
    inserted = 0
    for name, child in container.named_children():
        children[name] = child
        if name in ends:
            inserted += 1
            children[f"all{inserted}"] = spec.make_layer(ends[name], channel_dim=channel_dim)
    rebuilt = nn.Sequential(children)
    if base.container == "":
        return rebuilt
    setattr(base.model, base.container, rebuilt)
    return base.model


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidValue(f"{name} must be a positive integer, but got {value!r}.")


def build_model(
    arch: str,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    all_spec: ALLSpec | None = None,
    head_width: int | None = None,
) -> nn.Module:
    """Build architecture ``arch`` for inputs ``(B, *in_shape)`` and ``num_classes`` logits.

    ``in_shape`` is ``(C, H, W)``. With ``all_spec`` the ALLs (module docstring) are
    inserted after the whole base network is built, the head's first, so under the same
    ``torch.manual_seed`` the base weights equal those of the baseline, and so do the
    outputs at initialisation. ``head_width`` widens (or narrows) the layer in front of the
    head (module docstring); ``None`` keeps the architecture's normal width. Initialisation
    is PyTorch's default and deterministic given the global seed.
    """
    if arch not in _BUILDERS:
        raise InvalidValue(
            f"Unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}."
        )
    if (
        not isinstance(in_shape, (tuple, list))
        or len(in_shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in in_shape)
    ):
        raise InvalidValue(
            "in_shape must be (channels, height, width) of positive integers, "
            f"but got {in_shape!r}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidValue(f"num_classes must be an integer >= 2, but got {num_classes!r}.")
    if head_width is not None:
        _check_positive_int("head_width", head_width)
    channels, height, width = in_shape
    width_ = _NORMAL_WIDTHS[arch] if head_width is None else head_width
    base = _BUILDERS[arch]((channels, height, width), num_classes, width_)
    model: nn.Module = base.model
    if all_spec is not None:
        insert_all(model, replace(all_spec, positions="head"))
        if all_spec.positions == "blocks":
            model = _insert_block_alls(base, all_spec)
    return model


def parameter_matched_width(
    arch: str, *, in_shape: tuple[int, int, int], num_classes: int, target_params: int
) -> int:
    """The ``head_width`` whose plain ``arch`` (no ALL) has the parameter count closest to
    ``target_params`` (ties: the narrower): the parameter-matched control of the report.

    The count is linear and increasing in the width (mlp digits: ``85,002 + 267 (w - 256)``),
    so a binary search over widths from the normal one up finds it; candidates are built on
    the ``meta`` device (no memory, no initialisation, no draw from the global RNG), so even
    vgg16 takes milliseconds. Raises ``ValueError`` when the normal width already has more
    than ``target_params`` parameters (a plain model is only ever widened).
    """
    _check_positive_int("target_params", target_params)

    def count(head_width: int) -> int:
        with torch.device("meta"):
            model = build_model(
                arch, in_shape=in_shape, num_classes=num_classes, head_width=head_width
            )
        return count_parameters(model).total

    low = _NORMAL_WIDTHS.get(arch, 1)
    normal = count(low)  # also validates arch, in_shape and num_classes
    if normal > target_params:
        raise InvalidValue(
            f"target_params must be at least the plain {arch}'s {normal:,} parameters (its "
            f"normal width {low}; a parameter-matched model is only widened), "
            f"but got {target_params:,}."
        )
    high = 2 * low
    while count(high) < target_params:
        low, high = high, 2 * high
    while high - low > 1:  # invariant: count(low) < target_params <= count(high), or low normal
        middle = (low + high) // 2
        if count(middle) < target_params:
            low = middle
        else:
            high = middle
    return low if target_params - count(low) <= count(high) - target_params else high


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a model; ``all`` is the part inside its AutoLearningLayers."""

    total: int
    all: int


def count_parameters(model: nn.Module) -> ParamCount:
    """Count ``model``'s parameters (shared ones once), and those inside its ALLs."""
    all_params = {id(p): p for layer in all_layers(model) for p in layer.parameters()}
    return ParamCount(
        total=sum(p.numel() for p in model.parameters()),
        all=sum(p.numel() for p in all_params.values()),
    )
