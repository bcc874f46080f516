"""Tests for the Auto-Learning Layer, its custom losses, insertion and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoall.layer import (
    ALLSpec,
    AutoLearningLayer,
    all_layers,
    auxiliary_loss,
    find_head,
    insert_all,
    param_groups,
)

# A small fixed case: d = 3 features, m = 2 hidden units, batch of 2.
X = [[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]
W_DOWN = [[1.0, -1.0, 0.5], [0.2, 0.3, -2.0]]  # (m, d)
B_DOWN = [0.1, -0.2]
RECON_BIAS = [0.5, 0.0, -0.5]


def _fixed_layer(
    aux_loss: str, *, aux_weight: float = 0.1, activation: str = "relu", channel_dim: int = -1
) -> AutoLearningLayer:
    layer = AutoLearningLayer(
        3,
        2,
        aux_loss=aux_loss,
        aux_weight=aux_weight,
        activation=activation,
        channel_dim=channel_dim,
    )
    with torch.no_grad():
        layer.down.weight.copy_(torch.tensor(W_DOWN))
        layer.down.bias.copy_(torch.tensor(B_DOWN))
        if aux_loss == "reconstruction":
            layer.recon_bias.copy_(torch.tensor(RECON_BIAS))
    return layer.train()


def _dead_input(
    layer: AutoLearningLayer, shape: tuple[int, ...], *, zero_bias: bool = False
) -> torch.Tensor:
    """Inputs of -10 that give every code 0: down weights made positive (bias 0 if `zero_bias`)."""
    dead = torch.full(shape, -10.0, requires_grad=True)
    with torch.no_grad():
        layer.down.weight.abs_()
        if zero_bias:
            layer.down.bias.zero_()
    return dead


def _hand_codes(activation: str) -> list[list[float]]:
    """a[b][j] = act(sum_i W[j][i] x[b][i] + b[j]) with explicit loops."""

    def act(z: float) -> float:
        if activation == "relu":
            return max(z, 0.0)
        return 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0)))

    return [
        [act(sum(W_DOWN[j][i] * x[i] for i in range(3)) + B_DOWN[j]) for j in range(2)] for x in X
    ]


def test_all_is_identity_at_init_and_keeps_shape() -> None:
    torch.manual_seed(0)
    layer = AutoLearningLayer(16, 5)
    for shape in [(4, 16), (2, 3, 16)]:
        x = torch.randn(shape)
        y = layer(x)
        assert y.shape == x.shape
        assert torch.equal(y, x)


def test_reconstruction_loss_matches_hand_computation() -> None:
    layer = _fixed_layer("reconstruction")
    layer(torch.tensor(X))
    codes = _hand_codes("relu")
    expected = 0.0
    for x, a in zip(X, codes, strict=True):
        recon = [sum(W_DOWN[j][i] * a[j] for j in range(2)) + RECON_BIAS[i] for i in range(3)]
        expected += sum((x[i] - recon[i]) ** 2 for i in range(3)) / 3
    expected /= len(X)
    assert layer.aux_value is not None
    assert layer.aux_value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_sparsity_loss_matches_hand_computation(activation: str) -> None:
    layer = _fixed_layer("sparsity", activation=activation)
    layer(torch.tensor(X))
    expected = sum(sum(abs(v) for v in a) / 2 for a in _hand_codes(activation)) / len(X)
    assert layer.aux_value is not None
    assert layer.aux_value.item() == pytest.approx(expected, rel=1e-6)


def test_orthogonality_loss_matches_hand_computation() -> None:
    layer = _fixed_layer("orthogonality")
    layer(torch.tensor(X))
    expected = 0.0
    for j in range(2):
        for k in range(2):
            gram = sum(W_DOWN[j][i] * W_DOWN[k][i] for i in range(3))
            expected += (gram - (1.0 if j == k else 0.0)) ** 2
    expected /= 2**2
    assert layer.aux_value is not None
    assert layer.aux_value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("aux_loss", "aux_weight", "training"),
    [("none", 0.1, True), ("reconstruction", 0.0, True), ("reconstruction", 0.1, False)],
)
def test_custom_loss_is_zero_when_off(aux_loss: str, aux_weight: float, training: bool) -> None:
    layer = _fixed_layer(aux_loss, aux_weight=aux_weight).train(training)
    assert layer.aux_value is None
    layer(torch.tensor(X))
    assert layer.aux_value is not None
    assert layer.aux_value.shape == ()
    assert layer.aux_value.item() == 0.0


def test_reconstruction_bias_only_for_reconstruction() -> None:
    assert AutoLearningLayer(3, 2).recon_bias.shape == (3,)
    for kind in ["sparsity", "orthogonality", "none"]:
        assert not hasattr(AutoLearningLayer(3, 2, aux_loss=kind), "recon_bias")


def test_reconstruction_target_is_detached() -> None:
    layer = _fixed_layer("reconstruction")
    x = torch.tensor(X, requires_grad=True)
    layer(x)
    assert layer.aux_value is not None
    (grad,) = torch.autograd.grad(layer.aux_value, x)

    def recon_loss(target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        a = torch.relu(inputs @ torch.tensor(W_DOWN).T + torch.tensor(B_DOWN))
        return (target - (a @ torch.tensor(W_DOWN) + torch.tensor(RECON_BIAS))).pow(2).mean()

    x2 = torch.tensor(X, requires_grad=True)
    (encoder_only,) = torch.autograd.grad(recon_loss(x2.detach(), x2), x2)
    x3 = torch.tensor(X, requires_grad=True)
    (with_target,) = torch.autograd.grad(recon_loss(x3, x3), x3)
    torch.testing.assert_close(grad, encoder_only)
    assert not torch.allclose(grad, with_target)

    # With every pre-activation negative the code is 0, so only the target could carry gradient.
    dead = _dead_input(layer, (2, 3))
    layer(dead)
    assert layer.aux_value is not None and layer.aux_value.item() > 0
    (dead_grad,) = torch.autograd.grad(layer.aux_value, dead)
    assert torch.equal(dead_grad, torch.zeros_like(dead))


def test_auxiliary_loss_sums_weighted_losses_of_all_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        AutoLearningLayer(4, 3, aux_loss="reconstruction", aux_weight=0.1),
        nn.Linear(4, 4),
        AutoLearningLayer(4, 2, aux_loss="sparsity", aux_weight=0.5),
    )
    x = torch.randn(5, 4)
    model(x)
    first, second = all_layers(model)
    assert first.aux_value is not None and second.aux_value is not None
    assert first.aux_value.item() > 0 and second.aux_value.item() > 0
    expected = 0.1 * first.aux_value.item() + 0.5 * second.aux_value.item()
    total = auxiliary_loss(model)
    assert total.shape == ()
    assert total.item() == pytest.approx(expected, rel=1e-6)

    model.eval()(x)
    assert auxiliary_loss(model).item() == 0.0


def test_auxiliary_loss_without_all_is_zero_and_needs_a_forward_pass() -> None:
    zero = auxiliary_loss(nn.Linear(2, 2))
    assert zero.shape == () and zero.item() == 0.0
    with pytest.raises(RuntimeError, match="forward pass first"):
        auxiliary_loss(AutoLearningLayer(2, 2))


def _article_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def test_gradients_reach_every_all_parameter() -> None:
    torch.manual_seed(0)
    model = insert_all(_article_mlp(), ALLSpec(8))
    x, y = torch.randn(4, 784), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y) + auxiliary_loss(model)
    loss.backward()
    (layer,) = all_layers(model)
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_param_groups_give_each_part_its_own_learning_rate() -> None:
    torch.manual_seed(0)
    model = insert_all(_article_mlp(), ALLSpec(8))
    groups = param_groups(model, lr=0.1, all_lr=0.01, weight_decay=0.0)
    assert [g["name"] for g in groups] == ["base", "all"]
    all_ids = {id(p) for p in all_layers(model)[0].parameters()}
    assert {id(p) for p in groups[1]["params"]} == all_ids
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()} - all_ids

    x, y = torch.randn(4, 784), torch.tensor([0, 1, 2, 3])
    (nn.functional.cross_entropy(model(x), y) + auxiliary_loss(model)).backward()
    before = {id(p): (p.detach().clone(), p.grad) for p in model.parameters()}
    torch.optim.SGD(groups).step()
    for param in model.parameters():
        old, grad = before[id(param)]
        assert grad is not None
        lr = 0.01 if id(param) in all_ids else 0.1
        torch.testing.assert_close(param.detach(), old - lr * grad, rtol=0, atol=1e-7)


def test_param_groups_defaults_and_exclusions() -> None:
    model = _article_mlp()
    model[0].weight.requires_grad_(False)
    (base,) = param_groups(model, lr=0.1, all_lr=0.01, weight_decay=5e-4)
    assert base["lr"] == 0.1 and base["weight_decay"] == 5e-4
    assert len(base["params"]) == 5  # 6 tensors, one frozen

    insert_all(model, ALLSpec(4))
    _, all_group = param_groups(model, lr=0.1, all_lr=None)
    assert all_group["lr"] == 0.1 and all_group["weight_decay"] == 0.0
    with pytest.raises(ValueError, match=r"^lr must be a positive number, but got 0\.$"):
        param_groups(model, lr=0, all_lr=None)


def test_insert_all_puts_the_all_in_front_of_the_last_linear() -> None:
    torch.manual_seed(0)
    model = _article_mlp()
    head = model[4]
    x = torch.randn(3, 784)
    before = model(x)
    assert insert_all(model, ALLSpec(32, aux_loss="sparsity", aux_weight=0.2)) is model
    wrapped = model[4]
    assert isinstance(wrapped, nn.Sequential) and len(wrapped) == 2 and wrapped[1] is head
    layer = wrapped[0]
    assert isinstance(layer, AutoLearningLayer)
    knobs = (layer.features, layer.hidden_size, layer.aux_loss, layer.aux_weight)
    assert knobs == (256, 32, "sparsity", 0.2)
    assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="already preceded by an AutoLearningLayer"):
        insert_all(model, ALLSpec(32))


def test_insert_all_without_linear_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError) as excinfo:
        insert_all(model, ALLSpec(4))
    assert str(excinfo.value) == (
        "Sequential has no nn.Linear classifier head to put an ALL in front of."
    )


class _HeadFirst(nn.Module):
    """Defines `head` before `fc1`; forward: fc1 -> relu -> head, then shape-only steps."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.fc1 = nn.Linear(64, 32)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.relu(self.fc1(x.view(x.size(0), -1))))
        return F.log_softmax(self.drop(logits), dim=1).squeeze(-1)


def test_insert_all_follows_the_data_flow_not_the_registration_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = _HeadFirst()
    head, fc1 = model.head, model.fc1
    x = torch.randn(3, 64)
    before = model(x)
    assert find_head(model) == "head"
    with caplog.at_level("INFO", logger="autoall.layer"):
        assert insert_all(model, ALLSpec(8)) is model
    assert model.fc1 is fc1  # untouched: the old rule (last registered Linear) wrapped fc1
    wrapped = model.head
    assert isinstance(wrapped, nn.Sequential) and wrapped[1] is head
    layer = wrapped[0]
    assert isinstance(layer, AutoLearningLayer) and layer.features == 32
    assert layer.in_front_of == "head"
    assert torch.equal(model(x), before)
    assert caplog.messages == [
        "insert_all: an ALL (d=32, m=8) in front of 'head', nn.Linear(32 -> 10)"
    ]


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(16, 4)
        self.body = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if h.sum() > 0:
            h = h * 2
        return self.classifier(h)


def test_insert_all_takes_the_head_by_name_where_tracing_cannot_tell() -> None:
    model = _Branchy()
    with pytest.raises(ValueError) as excinfo:
        insert_all(model, ALLSpec(4))
    message = str(excinfo.value)
    assert message.startswith(
        "insert_all cannot tell which nn.Linear produces the output of _Branchy: torch.fx "
        "cannot trace its forward (TraceError: "
    )
    assert message.endswith(
        "; name it with head=..., one of: classifier (16 -> 4), body (8 -> 16)."
    )
    assert all_layers(model) == []  # nothing inserted
    insert_all(model, ALLSpec(4), head="classifier")
    (layer,) = all_layers(model)
    assert layer.features == 16 and layer.in_front_of == "classifier"
    assert model.body.in_features == 8 and isinstance(model.body, nn.Linear)
    assert model(torch.randn(2, 8)).shape == (2, 4)


def test_a_head_name_that_is_no_linear_lists_the_linears() -> None:
    model = _HeadFirst()
    with pytest.raises(ValueError) as excinfo:
        insert_all(model, ALLSpec(4), head="classifier")
    assert str(excinfo.value) == (
        "head='classifier' is not an nn.Linear of _HeadFirst; its nn.Linear layers are: "
        "head (32 -> 10), fc1 (64 -> 32)."
    )
    with pytest.raises(ValueError, match=r"^head='drop' is not an nn.Linear"):
        find_head(model, "drop")
    assert all_layers(model) == []


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


class _NormAfterHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (_TwoHeads(), "its output combines 2 tensors at 'add' (add)"),
        (_NormAfterHead(), "its output comes from 'norm' (BatchNorm1d), not from an nn.Linear"),
    ],
)
def test_an_output_from_no_single_linear_is_refused(model: nn.Module, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        insert_all(model, ALLSpec(4))
    assert f": {reason}; name it with head=..., one of: " in str(excinfo.value)


def test_insert_all_on_the_built_in_models_wraps_their_head() -> None:
    from autoall.training._models import build_model

    for arch in ("mlp", "cnn", "vgg16", "resnet18"):
        plain = build_model(arch, in_shape=(1, 8, 8), num_classes=10)
        assert find_head(plain) == "head"
        model = build_model(arch, in_shape=(1, 8, 8), num_classes=10, all_spec=ALLSpec(4))
        assert [layer.in_front_of for layer in all_layers(model)] == ["head"]
        assert find_head(model) == "head.1"  # the head, now behind its ALL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer, but got 0."),
        ({"hidden_size": -3}, "hidden_size must be a positive integer, but got -3."),
        ({"hidden_size": 2.5}, "hidden_size must be a positive integer, but got 2.5."),
        ({"hidden_size": True}, "hidden_size must be a positive integer, but got True."),
        ({"aux_weight": -0.1}, "aux_weight must be a non-negative number, but got -0.1."),
        ({"aux_weight": math.nan}, "aux_weight must be a non-negative number, but got nan."),
        (
            {"aux_loss": "foo"},
            "aux_loss must be one of reconstruction, sparsity, orthogonality, none, but got 'foo'.",
        ),
        ({"activation": "tanh"}, "activation must be one of relu, gelu, but got 'tanh'."),
    ],
)
def test_all_spec_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"hidden_size": 8, **kwargs}
    with pytest.raises(ValueError) as excinfo:
        ALLSpec(**arguments)  # type: ignore[arg-type]
    assert str(excinfo.value) == message
    hidden_size = arguments.pop("hidden_size")
    with pytest.raises(ValueError) as excinfo:
        AutoLearningLayer(4, hidden_size, **arguments)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


def test_layer_rejects_bad_features_and_wrong_input_width() -> None:
    with pytest.raises(ValueError, match=r"^features must be a positive integer, but got 0\.$"):
        AutoLearningLayer(0, 4)
    with pytest.raises(ValueError, match=r"expects inputs with 4 features .* shape \(2, 3\)"):
        AutoLearningLayer(4, 2)(torch.zeros(2, 3))


def test_extra_repr_shows_the_knobs() -> None:
    text = repr(AutoLearningLayer(3, 2, aux_loss="orthogonality", aux_weight=0.5))
    assert "features=3, hidden_size=2, aux_loss='orthogonality', aux_weight=0.5\n" in text
    text = repr(AutoLearningLayer(3, 2, channel_dim=1))
    assert "aux_weight=0.1, channel_dim=1\n" in text


def test_positions_default_to_head_and_are_validated() -> None:
    assert ALLSpec(8).positions == "head"
    assert ALLSpec(8, positions="blocks").positions == "blocks"
    with pytest.raises(ValueError) as excinfo:
        ALLSpec(8, positions="everywhere")
    assert str(excinfo.value) == "positions must be one of head, blocks, but got 'everywhere'."


def test_insert_all_knows_only_the_head() -> None:
    with pytest.raises(ValueError, match=r"positions='head'\), but got positions='blocks'"):
        insert_all(_article_mlp(), ALLSpec(8, positions="blocks"))


def test_make_layer_copies_the_spec() -> None:
    spec = ALLSpec(6, aux_loss="sparsity", aux_weight=0.3, activation="gelu")
    layer = spec.make_layer(10, channel_dim=1)
    knobs = (layer.features, layer.hidden_size, layer.aux_loss, layer.aux_weight)
    assert knobs == (10, 6, "sparsity", 0.3)
    assert isinstance(layer.act, nn.GELU) and layer.channel_dim == 1


# ------------------------------------------------------------------ ALL on conv feature maps


def _map() -> torch.Tensor:
    """A (B=2, d=3, H=2, W=2) feature map with distinct values, some negative."""
    return torch.linspace(-2.0, 3.0, 24).reshape(2, 3, 2, 2)


def _fixed_map_layer(aux_loss: str) -> AutoLearningLayer:
    """_fixed_layer on the channels of (B, C, H, W) maps."""
    return _fixed_layer(aux_loss, channel_dim=1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_channel_all_is_identity_at_init_and_keeps_shape_and_layout(channels_last: bool) -> None:
    torch.manual_seed(0)
    layer = AutoLearningLayer(5, 3, channel_dim=1)
    x = torch.randn(2, 5, 3, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.shape == (2, 5, 3, 4)
    assert torch.equal(y, x)
    assert y.stride() == x.stride()  # the next conv sees the layout it would have seen


def test_channel_all_is_a_pair_of_1x1_convolutions() -> None:
    torch.manual_seed(0)
    layer = AutoLearningLayer(6, 4, aux_loss="none", activation="gelu", channel_dim=1)
    nn.init.normal_(layer.up.weight)
    nn.init.normal_(layer.up.bias)
    x = torch.randn(3, 6, 5, 7)
    d, m = 6, 4
    a = F.gelu(F.conv2d(x, layer.down.weight.view(m, d, 1, 1), layer.down.bias))
    expected = x + F.conv2d(a, layer.up.weight.view(d, m, 1, 1), layer.up.bias)
    torch.testing.assert_close(layer(x), expected)
    x_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(x_last), expected)


def test_channel_all_sees_a_channels_last_map_as_a_view() -> None:
    layer = AutoLearningLayer(4, 2, channel_dim=1)
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    seen: list[torch.Tensor] = []
    layer.down.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    layer(x)
    (h,) = seen
    assert h.shape == (2, 3, 3, 4)
    assert h.is_contiguous() and h.data_ptr() == x.data_ptr()  # no copy


def _hand_map_codes(x: list[list[list[list[float]]]]) -> dict[tuple[int, int, int], list[float]]:
    """a at (b, h, w) = relu(W_DOWN x[b, :, h, w] + B_DOWN), with explicit loops."""
    return {
        (b, h, w): [
            max(sum(W_DOWN[j][i] * x[b][i][h][w] for i in range(3)) + B_DOWN[j], 0.0)
            for j in range(2)
        ]
        for b in range(2)
        for h in range(2)
        for w in range(2)
    }


def test_channel_all_losses_are_means_over_batch_and_positions() -> None:
    x = _map()
    values = x.tolist()
    codes = _hand_map_codes(values)

    layer = _fixed_map_layer("reconstruction")
    layer(x)
    expected = 0.0
    for (b, h, w), a in codes.items():
        for i in range(3):
            recon = sum(W_DOWN[j][i] * a[j] for j in range(2)) + RECON_BIAS[i]
            expected += (values[b][i][h][w] - recon) ** 2 / 3
    expected /= len(codes)  # B * H * W = 8 positions
    assert layer.aux_value is not None
    assert layer.aux_value.item() == pytest.approx(expected, rel=1e-6)

    layer = _fixed_map_layer("sparsity")
    layer(x)
    expected = sum(sum(abs(v) for v in a) / 2 for a in codes.values()) / len(codes)
    assert expected > 0
    assert layer.aux_value is not None
    assert layer.aux_value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("aux_loss", ["reconstruction", "sparsity", "orthogonality"])
def test_channel_all_loss_equals_the_vector_all_on_every_position(aux_loss: str) -> None:
    maps = _fixed_map_layer(aux_loss)
    vectors = _fixed_layer(aux_loss)
    x = _map()
    maps(x)
    vectors(x.movedim(1, -1).reshape(-1, 3))  # (B H W, d): one sample per position
    assert maps.aux_value is not None and vectors.aux_value is not None
    assert maps.aux_value.item() == pytest.approx(vectors.aux_value.item(), rel=1e-6)


def test_channel_all_reconstruction_target_is_detached_and_all_parameters_get_gradients() -> None:
    torch.manual_seed(0)
    layer = AutoLearningLayer(4, 3, channel_dim=1)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = layer(x)
    assert layer.aux_value is not None
    (y.square().mean() + layer.aux_value).backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    dead = _dead_input(layer, (2, 4, 3, 3), zero_bias=True)
    layer(dead)
    assert layer.aux_value is not None and layer.aux_value.item() > 0
    (grad,) = torch.autograd.grad(layer.aux_value, dead)
    assert torch.equal(grad, torch.zeros_like(dead))


def test_channel_all_rejects_a_wrong_channel_count_and_a_bad_channel_dim() -> None:
    layer = AutoLearningLayer(4, 2, channel_dim=1)
    with pytest.raises(ValueError) as excinfo:
        layer(torch.zeros(2, 3, 5, 5))
    assert str(excinfo.value) == (
        "AutoLearningLayer expects inputs with 4 channels in dimension 1, "
        "but got shape (2, 3, 5, 5)."
    )
    with pytest.raises(ValueError, match=r"4 channels in dimension 1, but got shape \(4,\)"):
        layer(torch.zeros(4))
    with pytest.raises(ValueError) as excinfo:
        AutoLearningLayer(4, 2, channel_dim=1.0)  # type: ignore[arg-type]
    assert str(excinfo.value) == (
        "channel_dim must be an integer (-1: last, 1: the channels of (B, C, H, W)), but got 1.0."
    )
