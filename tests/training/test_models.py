"""Tests for the base architectures, ALL insertion into them and parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoall.layer import ALLSpec, AutoLearningLayer, all_layers, auxiliary_loss, param_groups
from autoall.training._models import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    parameter_matched_width,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
SMALL_SHAPES = [(1, 8, 8), (3, 32, 32)]  # digits and CIFAR
# (ALLs with positions: blocks, in model order, as (qualified name, features, channel_dim))
BLOCK_ALLS: dict[str, list[tuple[str, int, int]]] = {
    "mlp": [("all1", 256, -1), ("head.0", 256, -1)],
    "cnn": [
        ("features.all1", 32, 1),
        ("features.all2", 64, 1),
        ("features.all3", 128, 1),
        ("head.0", 128, -1),
    ],
    "vgg16": [
        ("features.all1", 64, 1),
        ("features.all2", 128, 1),
        ("features.all3", 256, 1),
        ("features.all4", 512, 1),
        ("features.all5", 512, 1),
        ("head.0", 512, -1),
    ],
    "resnet18": [
        ("features.all1", 64, 1),
        ("features.all2", 128, 1),
        ("features.all3", 256, 1),
        ("features.all4", 512, 1),
        ("head.0", 512, -1),
    ],
}


def _shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@pytest.mark.parametrize(
    ("in_shape", "positions"),
    [(shape, p) for shape in SHAPES for p in (None, "head")]
    + [(shape, "blocks") for shape in SMALL_SHAPES],
    ids=lambda v: _shape_id(v) if isinstance(v, tuple) else str(v or "baseline"),
)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_models_build_run_forward_and_backward(
    arch: str, in_shape: tuple[int, int, int], positions: str | None
) -> None:
    spec = ALLSpec(16, positions=positions) if positions else None
    torch.manual_seed(0)
    model = build_model(arch, in_shape=in_shape, num_classes=7, all_spec=spec)
    x = torch.randn(2, *in_shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    (logits.sum() + auxiliary_loss(model)).backward()
    assert model.head is not None
    expected = {None: 0, "head": 1, "blocks": len(BLOCK_ALLS[arch])}[positions]
    assert len(all_layers(model)) == expected
    assert all(p.grad is not None for p in model.parameters())


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


# ---------------------------------------------------------------------------- positions: blocks


def _base_key(key: str) -> str:
    """The baseline's state_dict key of an ALL model's base parameter (the head is wrapped)."""
    return key.replace("head.1.", "head.", 1)


@pytest.mark.parametrize("in_shape", SMALL_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_model_starts_where_the_baseline_starts(
    arch: str, in_shape: tuple[int, int, int]
) -> None:
    """Same seed: the base weights (under the same keys) and the outputs at init are the
    baseline's, for an ALL in front of the head and for ALLs after every block as well."""
    torch.manual_seed(0)
    baseline = build_model(arch, in_shape=in_shape, num_classes=10)
    base_state = {k: v.clone() for k, v in baseline.state_dict().items()}  # before BN moves
    x = torch.randn(2, *in_shape)
    expected_eval = baseline.eval()(x)
    expected_train = baseline.train()(x)  # batch statistics
    assert expected_eval.shape == (2, 10)
    for positions in ("head", "blocks"):
        torch.manual_seed(0)
        spec = ALLSpec(8, aux_loss="sparsity", positions=positions)
        with_all = build_model(arch, in_shape=in_shape, num_classes=10, all_spec=spec)
        all_names = [n for n, m in with_all.named_modules() if isinstance(m, AutoLearningLayer)]
        base_part = {
            _base_key(k): v
            for k, v in with_all.state_dict().items()
            if not any(k.startswith(name + ".") for name in all_names)
        }
        assert base_part.keys() == base_state.keys(), positions  # only the head is wrapped
        for key, value in base_part.items():
            assert torch.equal(value, base_state[key]), key
        assert torch.equal(with_all.eval()(x), expected_eval), positions
        assert torch.equal(with_all.train()(x), expected_train), positions


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_blocks_put_the_alls_after_every_block_or_stage(arch: str) -> None:
    with torch.device("meta"):
        model = build_model(
            arch, in_shape=(3, 32, 32), num_classes=10, all_spec=ALLSpec(4, positions="blocks")
        )
    found = [
        (name, m.features, m.channel_dim)
        for name, m in model.named_modules()
        if isinstance(m, AutoLearningLayer)
    ]
    assert found == BLOCK_ALLS[arch]
    if arch == "mlp":
        assert list(model._modules)[:4] == ["flatten", "fc1", "relu1", "all1"]
        return
    children = list(model.get_submodule("features").named_children())
    before = [children[i - 1][1] for i, (name, _) in enumerate(children) if name.startswith("all")]
    block: dict[str, type[nn.Module]] = {
        "cnn": nn.MaxPool2d,
        "vgg16": nn.MaxPool2d,
        "resnet18": type(children[-2][1]),  # the stage's second BasicBlock
    }
    assert all(isinstance(m, block[arch]) for m in before)
    assert children[-1][0] == f"all{len(before)}"  # the last stage's ALL ends the features


def test_blocks_with_skipped_pools_end_at_the_last_relu() -> None:
    model = build_model(
        "vgg16", in_shape=(1, 8, 8), num_classes=10, all_spec=ALLSpec(4, positions="blocks")
    )
    children = list(model.get_submodule("features").named_children())
    before = [type(children[i - 1][1]) for i, (n, _) in enumerate(children) if n.startswith("all")]
    # 8x8 -> 4 -> 2 -> 1: the 4th and 5th stages have no max-pool
    assert before == [nn.MaxPool2d, nn.MaxPool2d, nn.MaxPool2d, nn.ReLU, nn.ReLU]


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet18"])
def test_blocks_auxiliary_loss_is_the_sum_over_the_alls(arch: str) -> None:
    torch.manual_seed(0)
    spec = ALLSpec(8, aux_loss="reconstruction", aux_weight=0.3, positions="blocks")
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, all_spec=spec)
    model(torch.randn(4, 1, 8, 8))
    layers = all_layers(model)
    assert len(layers) == len(BLOCK_ALLS[arch])
    values = [layer.aux_value.item() for layer in layers if layer.aux_value is not None]
    assert len(values) == len(layers) and all(v > 0 for v in values)
    assert auxiliary_loss(model).item() == pytest.approx(0.3 * sum(values), rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_blocks_every_all_parameter_is_in_the_all_group(arch: str) -> None:
    spec = ALLSpec(8, positions="blocks")
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, all_spec=spec)
    base, all_group = param_groups(model, lr=1e-3, all_lr=1e-2)
    all_ids = {id(p) for layer in all_layers(model) for p in layer.parameters()}
    assert len(all_ids) == 5 * len(BLOCK_ALLS[arch])  # down, up (weight, bias), recon_bias
    assert {id(p) for p in all_group["params"]} == all_ids and all_group["lr"] == 1e-2
    assert {id(p) for p in base["params"]} == {id(p) for p in model.parameters()} - all_ids
    assert sum(p.numel() for p in all_group["params"]) == count_parameters(model).all


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_count_parameters_with_blocks(arch: str) -> None:
    m = 12
    baseline = build_model(arch, in_shape=(1, 8, 8), num_classes=10)
    spec = ALLSpec(m, aux_loss="sparsity", positions="blocks")
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, all_spec=spec)
    expected_all = sum(d * m + m + m * d + d for _, d, _ in BLOCK_ALLS[arch])
    assert expected_all == {"mlp": 12_824, "cnn": 8_848}[arch]
    assert count_parameters(model).all == expected_all
    assert count_parameters(model).total == count_parameters(baseline).total + expected_all


# ------------------------------------------------------------- head_width, parameter matching


# What head_width=w widens (state_dict key -> its shape), with w = 600 and 10 classes.
WIDENED: dict[str, dict[str, tuple[int, ...]]] = {
    "mlp": {"fc2.weight": (600, 256), "fc2.bias": (600,), "head.weight": (10, 600)},
    "cnn": {
        "features.17.weight": (600, 128, 3, 3),
        **{f"features.18.{k}": (600,) for k in ("weight", "bias", "running_mean", "running_var")},
        "head.weight": (10, 600),
    },
    "vgg16": {
        "features.39.weight": (600, 512, 3, 3),
        **{f"features.40.{k}": (600,) for k in ("weight", "bias", "running_mean", "running_var")},
        "head.weight": (10, 600),
    },
    "resnet18": {
        "features.10.conv1.weight": (600, 512, 3, 3),
        **{
            f"features.10.bn1.{k}": (600,)
            for k in ("weight", "bias", "running_mean", "running_var")
        },
        "features.10.conv2.weight": (512, 600, 3, 3),
    },
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_width_widens_only_the_layer_in_front_of_the_head(arch: str) -> None:
    with torch.device("meta"):
        normal = build_model(arch, in_shape=(1, 8, 8), num_classes=10).state_dict()
        wide = build_model(arch, in_shape=(1, 8, 8), num_classes=10, head_width=600).state_dict()
    assert wide.keys() == normal.keys()
    changed = {k: tuple(v.shape) for k, v in wide.items() if v.shape != normal[k].shape}
    assert changed == WIDENED[arch]
    if arch == "resnet18":  # the block's output, and so the head's input, stays 512
        assert tuple(wide["head.weight"].shape) == (10, 512)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_head_width_model_runs_and_its_head_all_has_the_new_width(arch: str) -> None:
    spec = ALLSpec(8, positions="blocks")
    model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, head_width=300, all_spec=spec)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    widths = [layer.features for layer in all_layers(model)]
    assert widths == {"mlp": [256, 300], "cnn": [32, 64, 300, 300]}[arch]
    mlp = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, head_width=300)
    fc2, head = mlp.get_submodule("fc2"), mlp.get_submodule("head")
    assert isinstance(fc2, nn.Linear) and isinstance(head, nn.Linear)
    assert fc2.weight.shape == (300, 256) and head.weight.shape == (10, 300)


@pytest.mark.parametrize("head_width", [0, -5, 2.5, True])
def test_head_width_must_be_a_positive_integer(head_width: object) -> None:
    with pytest.raises(ValueError) as excinfo:
        build_model("mlp", in_shape=(1, 8, 8), num_classes=10, head_width=head_width)  # type: ignore[arg-type]
    assert str(excinfo.value) == f"head_width must be a positive integer, but got {head_width!r}."


def _meta_count(arch: str, in_shape: tuple[int, int, int], **kwargs: object) -> int:
    with torch.device("meta"):
        model = build_model(arch, in_shape=in_shape, num_classes=10, **kwargs)  # type: ignore[arg-type]
    return count_parameters(model).total


@pytest.mark.parametrize("positions", ["head", "blocks"])
@pytest.mark.parametrize("hidden_size", [8, 64, 256])
@pytest.mark.parametrize(
    ("arch", "in_shape"),
    [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("vgg16", (3, 32, 32)), ("resnet18", (3, 32, 32))],
)
def test_parameter_matched_plain_model_is_within_2_percent(
    arch: str, in_shape: tuple[int, int, int], hidden_size: int, positions: str
) -> None:
    spec = ALLSpec(hidden_size, positions=positions)
    target = _meta_count(arch, in_shape, all_spec=spec)
    width = parameter_matched_width(arch, in_shape=in_shape, num_classes=10, target_params=target)
    matched = _meta_count(arch, in_shape, head_width=width)
    assert abs(matched - target) <= 0.02 * target
    for neighbour in (width - 1, width + 1):  # and no width is closer
        assert abs(_meta_count(arch, in_shape, head_width=neighbour) - target) >= abs(
            matched - target
        )


def test_parameter_matched_width_of_the_digits_mlp() -> None:
    # plain mlp on digits: 64*256+256 + 256*w+w + 10*w+10 = 16,650 + 267 w (85,002 at w = 256)
    assert _meta_count("mlp", (1, 8, 8)) == 85_002
    for target, width in [
        (85_002, 256),
        (85_002 + 267 * 40, 296),
        (85_002 + 267 * 40 + 133, 296),
        (85_002 + 267 * 40 + 134, 297),
    ]:
        got = parameter_matched_width(
            "mlp", in_shape=(1, 8, 8), num_classes=10, target_params=target
        )
        assert got == width, target
    all_model = _meta_count("mlp", (1, 8, 8), all_spec=ALLSpec(64))
    assert all_model == 85_002 + 33_344  # ALL m=64: 256*64+64 + 64*256+256 + 256
    assert (
        parameter_matched_width("mlp", in_shape=(1, 8, 8), num_classes=10, target_params=all_model)
        == 381
    )


def test_parameter_matched_width_rejects_a_target_below_the_plain_model() -> None:
    with pytest.raises(ValueError) as excinfo:
        parameter_matched_width("mlp", in_shape=(1, 8, 8), num_classes=10, target_params=85_001)
    assert str(excinfo.value) == (
        "target_params must be at least the plain mlp's 85,002 parameters (its normal width 256; "
        "a parameter-matched model is only widened), but got 85,001."
    )
    with pytest.raises(ValueError, match="target_params must be a positive integer, but got 0."):
        parameter_matched_width("mlp", in_shape=(1, 8, 8), num_classes=10, target_params=0)
    with pytest.raises(ValueError, match="Unknown architecture 'alexnet'"):
        parameter_matched_width("alexnet", in_shape=(1, 8, 8), num_classes=10, target_params=10**6)


def test_parameter_matched_width_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    parameter_matched_width("vgg16", in_shape=(3, 32, 32), num_classes=10, target_params=15_000_000)
    assert torch.equal(torch.get_rng_state(), state)
