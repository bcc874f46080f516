"""Base architectures (DESIGN section 2) and their parameter counts.

Every model takes image tensors ``(B, C, H, W)``, returns logits ``(B, num_classes)`` and
is an ``nn.Sequential`` whose last child is the classifier head ``head`` (an
``nn.Linear``, also the model's last ``nn.Linear``), so :func:`autoall.layer.insert_all`
puts an ALL right in front of it. The convolutional models end in global average
pooling, so they accept any input size; a max-pool (or VGG ``M``) is skipped once the
feature map is smaller than 2x2 (8x8 and 28x28 inputs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autoall.layer import ALLSpec, all_layers, insert_all

ARCHITECTURES: tuple[str, ...] = ("mlp", "cnn", "vgg16", "resnet18")

_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
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


def _mlp(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """The article's MLP: flatten ``C*H*W`` -> 256 -> 256 -> classes, ReLU (784-256-256-10)."""
    channels, height, width = in_shape
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels * height * width, 256),
            relu1=nn.ReLU(),
            fc2=nn.Linear(256, 256),
            relu2=nn.ReLU(),
            head=nn.Linear(256, num_classes),
        )
    )


def _cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """3 VGG-style blocks ``[conv-BN-ReLU, conv-BN-ReLU, maxpool 2]`` of widths 32, 64, 128."""
    channels, height, width = in_shape
    layers: list[nn.Module] = []
    for out_channels in _CNN_WIDTHS:
        layers += _conv_bn_relu(channels, out_channels) + _conv_bn_relu(out_channels, out_channels)
        channels = out_channels
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    return _classifier(nn.Sequential(*layers), channels, num_classes)


def _vgg16(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """VGG-16 with batch norm, CIFAR variant: 13 conv layers, one linear head on 512 features."""
    channels, height, width = in_shape
    layers: list[nn.Module] = []
    for item in _VGG16_CFG:
        if item == "M":
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        else:
            assert isinstance(item, int)
            layers += _conv_bn_relu(channels, item)
            channels = item
    return _classifier(nn.Sequential(*layers), channels, num_classes)


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    Input ``(B, in_channels, H, W)``, output ``(B, out_channels, ceil(H/s), ceil(W/s))`` for
    stride ``s``; the shortcut is a strided 1x1 convolution with batch norm when the shape
    changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
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


def _resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """ResNet-18, CIFAR variant: 3x3 stem (64, stride 1, no max-pool), 4 stages x 2 blocks."""
    channels = in_shape[0]
    layers: list[nn.Module] = _conv_bn_relu(channels, 64)
    channels = 64
    for out_channels, stride in _RESNET18_STAGES:
        layers.append(_BasicBlock(channels, out_channels, stride=stride))
        layers.append(_BasicBlock(out_channels, out_channels, stride=1))
        channels = out_channels
    return _classifier(nn.Sequential(*layers), channels, num_classes)


_BUILDERS: dict[str, Callable[[tuple[int, int, int], int], nn.Sequential]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "vgg16": _vgg16,
    "resnet18": _resnet18,
}


def build_model(
    arch: str,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    all_spec: ALLSpec | None = None,
) -> nn.Module:
    """Build architecture ``arch`` for inputs ``(B, *in_shape)`` and ``num_classes`` logits.

    ``in_shape`` is ``(C, H, W)``. With ``all_spec`` an ALL is inserted in front of the
    head after the base network is built, so under the same ``torch.manual_seed`` the base
    weights equal those of the baseline, and so do the outputs at initialisation.
    Initialisation is PyTorch's default and deterministic given the global seed.
    """
    if arch not in _BUILDERS:
        raise ValueError(
            f"Unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}."
        )
    if (
        not isinstance(in_shape, (tuple, list))
        or len(in_shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in in_shape)
    ):
        raise ValueError(
            "in_shape must be (channels, height, width) of positive integers, "
            f"but got {in_shape!r}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, but got {num_classes!r}.")
    channels, height, width = in_shape
    model = _BUILDERS[arch]((channels, height, width), num_classes)
    if all_spec is not None:
        insert_all(model, all_spec)
    return model


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
