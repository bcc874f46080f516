"""Tests for the base architectures, ALL insertion into them and parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoall.layer import ALLSpec, AutoLearningLayer, all_layers, auxiliary_loss
from autoall.models import ARCHITECTURES, build_model, count_parameters

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("with_all", [False, True], ids=["baseline", "all"])
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_models_build_run_forward_and_backward(
    arch: str, in_shape: tuple[int, int, int], with_all: bool
) -> None:
    spec = ALLSpec(16) if with_all else None
    torch.manual_seed(0)
    model = build_model(arch, in_shape=in_shape, num_classes=7, all_spec=spec)
    x = torch.randn(2, *in_shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    (logits.sum() + auxiliary_loss(model)).backward()
    assert model.head is not None
    assert len(all_layers(model)) == (1 if with_all else 0)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_model_starts_where_the_baseline_starts(
    arch: str, in_shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    baseline = build_model(arch, in_shape=in_shape, num_classes=10).eval()
    torch.manual_seed(0)
    with_all = build_model(arch, in_shape=in_shape, num_classes=10, all_spec=ALLSpec(8)).eval()
    x = torch.randn(3, *in_shape)
    expected = baseline(x)
    assert expected.shape == (3, 10)
    assert torch.equal(with_all(x), expected)


@pytest.mark.parametrize(
    ("arch", "width"), [("mlp", 256), ("cnn", 128), ("vgg16", 512), ("resnet18", 512)]
)
def test_head_is_the_last_linear_and_the_all_sits_in_front_of_it(arch: str, width: int) -> None:
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10)
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert model.head is last_linear
    assert (model.head.in_features, model.head.out_features) == (width, 10)

    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, all_spec=ALLSpec(4))
    wrapped = model.head
    assert isinstance(wrapped, nn.Sequential) and len(wrapped) == 2
    layer = wrapped[0]
    assert isinstance(layer, AutoLearningLayer) and layer.features == width
    assert wrapped[1] is [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_mlp_is_the_articles_784_256_256_10() -> None:
    model = build_model("mlp", in_shape=(1, 28, 28), num_classes=10)
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(784, 256), (256, 256), (256, 10)]


def test_vgg16_has_13_convolutions_and_resnet18_has_17_plus_shortcuts() -> None:
    vgg = build_model("vgg16", in_shape=(3, 32, 32), num_classes=10)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    resnet = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10)
    kernels = [m.kernel_size for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert kernels.count((3, 3)) == 17 and kernels.count((1, 1)) == 3


@pytest.mark.parametrize("aux_loss", ["reconstruction", "sparsity"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_count_parameters(arch: str, aux_loss: str) -> None:
    m = 12
    baseline = build_model(arch, in_shape=(1, 8, 8), num_classes=10)
    model = build_model(
        arch, in_shape=(1, 8, 8), num_classes=10, all_spec=ALLSpec(m, aux_loss=aux_loss)
    )
    d = 256 if arch == "mlp" else 128
    expected_all = d * m + m + m * d + d + (d if aux_loss == "reconstruction" else 0)
    counts = count_parameters(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.all == expected_all
    assert counts.total == count_parameters(baseline).total + expected_all
    assert count_parameters(baseline).all == 0


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        build_model("alexnet", in_shape=(1, 8, 8), num_classes=10)
    assert str(excinfo.value) == (
        "Unknown architecture 'alexnet'; expected one of mlp, cnn, vgg16, resnet18."
    )


@pytest.mark.parametrize(
    ("in_shape", "num_classes", "match"),
    [
        ((8, 8), 10, "in_shape must be"),
        ((1, 0, 8), 10, "in_shape must be"),
        ((1, 8, 8), 1, "num_classes must be an integer >= 2, but got 1."),
    ],
)
def test_build_model_rejects_bad_shapes(
    in_shape: tuple[int, ...], num_classes: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("mlp", in_shape=in_shape, num_classes=num_classes)  # type: ignore[arg-type]
