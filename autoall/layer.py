"""The Auto-Learning Layer (ALL): a residual adapter with its own custom loss.

For feature vectors ``x`` of shape ``(B, d)`` and a code size ``m = hidden_size``::

    a = act(W_down x + b_down)        # (B, m)
    y = x + W_up a + b_up             # (B, d)

On conv feature maps ``(B, C, H, W)`` (``channel_dim=1``, ``d = C``) the same two maps act
on the channels at every position, i.e. as a pair of 1x1 convolutions (
``positions: blocks``). ``W_up`` and ``b_up`` start at zero, so a freshly inserted ALL is
exactly the identity.
Each forward pass also stores the unweighted custom loss ``L(W, a)`` of that batch; the
training objective is ``task_loss + sum over ALLs of aux_weight * L`` (see
:func:`auxiliary_loss`), and the ALL's parameters get their own learning rate through
:func:`param_groups`.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from autoall.errors import InvalidValue

AUX_LOSSES: tuple[str, ...] = ("reconstruction", "sparsity", "orthogonality", "none")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
POSITIONS: tuple[str, ...] = ("head", "blocks")

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}

log = logging.getLogger("autoall.layer")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ALLSpec:
    """Which ALLs to insert and where (their own lr is TrainConfig.all_lr).

    ``positions="head"`` is one ALL in front of the classifier head; ``"blocks"`` adds one
    after every block or stage of the base architecture (``autoall.training._models.build_model``;
    :func:`insert_all` knows only the head). Every ALL gets the same knobs.
    """

    hidden_size: int  # m, the width of the code a
    aux_loss: str = "reconstruction"  # one of AUX_LOSSES
    aux_weight: float = 0.1  # multiplies L(W, a) in the training objective; 0 = adapter alone
    activation: str = "relu"  # one of ACTIVATIONS
    positions: str = "head"  # one of POSITIONS

    def __post_init__(self) -> None:
        if not _is_positive_int(self.hidden_size):
            raise InvalidValue(
                f"hidden_size must be a positive integer, but got {self.hidden_size!r}."
            )
        weight = self.aux_weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise InvalidValue(f"aux_weight must be a non-negative number, but got {weight!r}.")
        if self.aux_loss not in AUX_LOSSES:
            raise InvalidValue(
                f"aux_loss must be one of {', '.join(AUX_LOSSES)}, but got {self.aux_loss!r}."
            )
        if self.activation not in ACTIVATIONS:
            raise InvalidValue(
                f"activation must be one of {', '.join(ACTIVATIONS)}, but got {self.activation!r}."
            )
        if self.positions not in POSITIONS:
            raise InvalidValue(
                f"positions must be one of {', '.join(POSITIONS)}, but got {self.positions!r}."
            )

    def make_layer(self, features: int, *, channel_dim: int = -1) -> AutoLearningLayer:
        """An ``AutoLearningLayer`` with this spec's knobs on ``features`` inputs."""
        return AutoLearningLayer(
            features,
            self.hidden_size,
            aux_loss=self.aux_loss,
            aux_weight=self.aux_weight,
            activation=self.activation,
            channel_dim=channel_dim,
        )


class AutoLearningLayer(nn.Module):
    """Residual bottleneck adapter ``y = x + W_up act(W_down x + b_down) + b_up``.

    Shapes: the ALL acts along dimension ``channel_dim`` of ``x``, which must have size
    ``d = features``; every other dimension is batch or position. With the default
    ``channel_dim=-1``, ``x`` is ``(..., d)`` (usually ``(B, d)``) and the code ``a`` is
    ``(..., m)`` with ``m = hidden_size``. With ``channel_dim=1``, ``x`` is a feature map
    ``(B, d, H, W)`` and at every position ``(h, w)``::

        a[b, :, h, w] = act(W_down x[b, :, h, w] + b_down)          # (B, m, H, W)
        y[b, :, h, w] = x[b, :, h, w] + W_up a[b, :, h, w] + b_up   # (B, d, H, W)

    which is exactly a pair of 1x1 convolutions. ``y`` always has the shape (and memory
    format) of ``x``; the channel axis is moved last with ``movedim``, so a channels_last
    map reaches the two linear maps as a view, without a copy. ``self.down`` holds
    ``W_down`` ``(m, d)`` and ``b_down`` ``(m,)``; ``self.up`` holds ``W_up`` ``(d, m)`` and
    ``b_up`` ``(d,)``, both zero at initialisation (identity map).

    Custom loss ``L(W, a)``, computed on the batch of each training-mode forward pass and
    stored unweighted in ``self.aux_value`` (a 0-dim tensor); ``mean_n`` runs over the
    samples, and for a feature map over the samples and the positions (``n = B H W``):

    - ``reconstruction``: ``mean_n ||stopgrad(x_n) - (W_down^T a_n + c)||^2 / d``, a tied
      decoder with the learned bias ``c = self.recon_bias`` ``(d,)``; the target is detached
      so the loss cannot shrink the upstream features (auxiliary auto-encoding).
    - ``sparsity``: ``mean_n ||a_n||_1 / m`` (activity regularisation).
    - ``orthogonality``: ``||W_down W_down^T - I_m||_F^2 / m^2`` (Bansal et al., 2018).
    - ``none``: 0 (the adapter alone).

    ``aux_value`` is a zero tensor when ``aux_loss == "none"``, ``aux_weight == 0`` or the
    layer is in eval mode, and ``None`` before the first forward pass.
    """

    def __init__(
        self,
        features: int,
        hidden_size: int,
        *,
        aux_loss: str = "reconstruction",
        aux_weight: float = 0.1,
        activation: str = "relu",
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if not _is_positive_int(features):
            raise InvalidValue(f"features must be a positive integer, but got {features!r}.")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise InvalidValue(
                f"channel_dim must be an integer (-1: last, 1: the channels of (B, C, H, W)), "
                f"but got {channel_dim!r}."
            )
        spec = ALLSpec(hidden_size, aux_loss=aux_loss, aux_weight=aux_weight, activation=activation)
        self.features = features
        self.hidden_size = spec.hidden_size
        self.aux_loss = spec.aux_loss
        self.aux_weight = float(spec.aux_weight)
        self.activation = spec.activation
        self.channel_dim = channel_dim

        self.down = nn.Linear(features, hidden_size)
        self.act = _ACTIVATION_MODULES[activation]()
        self.up = nn.Linear(hidden_size, features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if aux_loss == "reconstruction":
            self.recon_bias = nn.Parameter(torch.zeros(features))
        self.aux_value: torch.Tensor | None = None
        self.in_front_of: str | None = None  # the head's name, when insert_all put it there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim
        if not -x.dim() <= dim < x.dim() or x.shape[dim] != self.features:
            where = (
                "features in the last dimension" if dim == -1 else f"channels in dimension {dim}"
            )
            raise InvalidValue(
                f"AutoLearningLayer expects inputs with {self.features} {where}, "
                f"but got shape {tuple(x.shape)}."
            )
        h = x.movedim(dim, -1)  # (..., d): a view; contiguous when x is channels_last
        a = self.act(self.down(h))  # (..., m)
        if self.training and self.aux_loss != "none" and self.aux_weight > 0:
            self.aux_value = self._custom_loss(h, a)
        else:
            self.aux_value = x.new_zeros(())
        return x + self.up(a).movedim(-1, dim)  # x first: the sum keeps x's memory format

    def _custom_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Unweighted ``L(W, a)`` for inputs ``x`` ``(..., d)`` and codes ``a`` ``(..., m)``."""
        w_down = self.down.weight  # (m, d)
        if self.aux_loss == "reconstruction":
            reconstruction = a @ w_down + self.recon_bias  # (..., d): W_down^T a + c per sample
            # mean over all elements = mean over samples (and positions) of ||.||^2 / d
            return (x.detach() - reconstruction).pow(2).mean()
        if self.aux_loss == "sparsity":
            return a.abs().mean()  # mean over samples (and positions) of ||a||_1 / m
        assert self.aux_loss == "orthogonality", self.aux_loss
        eye = torch.eye(self.hidden_size, device=w_down.device, dtype=w_down.dtype)
        return (w_down @ w_down.T - eye).pow(2).mean()  # ||.||_F^2 / m^2

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, hidden_size={self.hidden_size}, "
            f"aux_loss={self.aux_loss!r}, aux_weight={self.aux_weight}"
            + (f", channel_dim={self.channel_dim}" if self.channel_dim != -1 else "")
        )


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` that is not inside an ALL, by qualified name."""
    inside = [n + "." for n, m in model.named_modules() if isinstance(m, AutoLearningLayer)]
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name.startswith(p) for p in inside)
    }


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with every ALL kept whole (its input check reads shapes)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, AutoLearningLayer) or super().is_leaf_module(m, module_qualified_name)


def _reads_shape(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a tensor's shape (``x.size(0)``, ``x.shape[0]``), not its values."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "ndim", "dtype", "device")
    if node.op == "call_function" and node.target is operator.getitem:
        source = node.args[0]
        return isinstance(source, torch.fx.Node) and _reads_shape(source)
    return False


class _NoHead(Exception):
    """The data flow does not end in one nn.Linear; the message says where it ends instead."""


def _traced_head(model: nn.Module, linears: dict[str, nn.Linear]) -> str:
    """The name of the nn.Linear whose output is ``model``'s output (its first output when it
    returns several), found on the graph torch.fx traces from ``forward``: from the output
    back through operations with one tensor input and no parameters of their own
    (``squeeze``, ``view``, ``log_softmax``, ``nn.Dropout``, ...), to the first module."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise _NoHead(
            f"torch.fx cannot trace its forward ({type(exc).__name__}: {text[0] if text else ''})"
        ) from None
    value: Any = next(n for n in graph.nodes if n.op == "output").args[0]
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    node = value
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module":
            target = str(node.target)
            if target in linears:
                return target
            module = model.get_submodule(target)
            if next(module.parameters(), None) is not None:
                raise _NoHead(
                    f"its output comes from {target!r} ({type(module).__name__}), "
                    "not from an nn.Linear"
                )
        elif node.op not in ("call_function", "call_method"):
            raise _NoHead(f"its output comes from {node.op} {node.target!r}, not an nn.Linear")
        inputs = [n for n in node.all_input_nodes if not _reads_shape(n)]
        if len(inputs) != 1:
            raise _NoHead(
                f"its output combines {len(inputs)} tensors at {node.name!r} "
                f"({getattr(node.target, '__name__', node.target)})"
            )
        node = inputs[0]
    raise _NoHead("its output is not a tensor computed from its input")


def find_head(model: nn.Module, head: str | None = None) -> str:
    """The qualified name of ``model``'s classifier head: the ``nn.Linear`` that produces its
    output, followed by data flow (a torch.fx trace of ``forward``, not the order in which
    the layers were registered), or the ``nn.Linear`` named ``head``. Linears inside an ALL
    do not count.

    Raises ``ValueError`` listing the model's ``nn.Linear`` layers when ``head`` names none of
    them, or when the output does not come from one ``nn.Linear`` (a forward that torch.fx
    cannot trace, an output that adds up two branches): then pass ``head``.
    """
    linears = _linears(model)
    kind = type(model).__name__
    if not linears:
        raise InvalidValue(f"{kind} has no nn.Linear classifier head to put an ALL in front of.")
    listed = ", ".join(f"{n} ({m.in_features} -> {m.out_features})" for n, m in linears.items())
    if head is not None:
        if head not in linears:
            raise InvalidValue(
                f"head={head!r} is not an nn.Linear of {kind}; its nn.Linear layers are: {listed}."
            )
        return head
    try:
        return _traced_head(model, linears)
    except _NoHead as exc:
        raise InvalidValue(
            f"insert_all cannot tell which nn.Linear produces the output of {kind}: {exc}; "
            f"name it with head=..., one of: {listed}."
        ) from None


def insert_all(model: nn.Module, spec: ALLSpec, *, head: str | None = None) -> nn.Module:
    """Put an ALL in front of ``model``'s classifier head, in place, and return ``model``.

    The head is the ``nn.Linear`` whose output is the model's output, found by following the
    data flow of ``forward`` (:func:`find_head`), whatever order the layers were defined in;
    ``head="classifier"`` names it instead (a model torch.fx cannot trace needs this). It is
    replaced on its parent by ``nn.Sequential(AutoLearningLayer(head.in_features, ...),
    head)``, created on the head's device and dtype; the new layer's ``in_front_of`` holds
    the head's name, which is also logged (INFO, logger ``autoall.layer``). Because the ALL
    starts as the identity, the model's outputs are unchanged until training moves ``W_up``
    or ``b_up``.

    Raises ``ValueError`` when ``spec.positions`` is not ``"head"`` (only
    ``autoall.training._models.build_model`` knows an architecture's blocks), when the model has no
    ``nn.Linear``, when ``head`` names none of its ``nn.Linear`` layers or the head cannot be
    found (the message lists them), when the model is itself the ``nn.Linear`` (there is no
    parent to replace it on), or when the head is already preceded by an ALL.
    """
    if spec.positions != "head":
        raise InvalidValue(
            f"insert_all puts one ALL in front of the classifier head (positions='head'), "
            f"but got positions={spec.positions!r}; build_model places ALLs after the blocks "
            "of its architectures."
        )
    if isinstance(model, nn.Linear):
        raise InvalidValue(
            "insert_all cannot replace a bare nn.Linear in place; wrap it in a module "
            "(e.g. nn.Sequential(linear)) first."
        )
    name = find_head(model, head)
    linear = model.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential):
        siblings = list(parent._modules)
        position = siblings.index(child_name)
        if position > 0 and isinstance(parent[position - 1], AutoLearningLayer):
            raise InvalidValue(
                f"The classifier head {name!r} is already preceded by an AutoLearningLayer; "
                "insert_all puts at most one ALL in front of a head."
            )
    layer = spec.make_layer(linear.in_features)
    layer = layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
    layer.in_front_of = name
    setattr(parent, child_name, nn.Sequential(layer, linear))
    log.info(
        "insert_all: an ALL (d=%d, m=%d) in front of %r, nn.Linear(%d -> %d)",
        linear.in_features,
        spec.hidden_size,
        name,
        linear.in_features,
        linear.out_features,
    )
    return model


def all_layers(model: nn.Module) -> list[AutoLearningLayer]:
    """Every ``AutoLearningLayer`` in ``model``, in ``modules()`` order."""
    return [module for module in model.modules() if isinstance(module, AutoLearningLayer)]


def auxiliary_loss(model: nn.Module | Sequence[AutoLearningLayer]) -> torch.Tensor:
    """``sum over ALLs of aux_weight * L(W, a)`` from the last forward pass, a 0-dim tensor.

    Takes a model, or the list `all_layers(model)` computed once (the trainer's hot path
    then does not walk the module tree every step). A model without an ALL gives a zero on
    the device of its first parameter (CPU when it has none). Raises ``RuntimeError`` when
    an ALL has not run a forward pass yet.
    """
    if isinstance(model, nn.Module):
        layers = all_layers(model)
    else:
        layers, model = list(model), nn.Module()
    if not layers:
        first = next(model.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else "cpu")
    total: torch.Tensor | None = None
    for layer in layers:
        if layer.aux_value is None:
            raise RuntimeError(
                "auxiliary_loss needs a forward pass first: an AutoLearningLayer has no "
                "custom loss value yet."
            )
        term = layer.aux_weight * layer.aux_value
        total = term if total is None else total + term
    assert total is not None
    return total


def _check_rate(name: str, value: float, *, allow_zero: bool) -> None:
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise InvalidValue(f"{name} must be a {kind} number, but got {value!r}.")


def param_groups(
    model: nn.Module, *, lr: float, all_lr: float | None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the base network at ``lr``, the ALLs at ``all_lr``.

    Returns ``[{"name": "base", "params": [...], "lr": lr, "weight_decay": weight_decay},
    {"name": "all", "params": [...], "lr": all_lr or lr, "weight_decay": weight_decay}]``,
    with the ``"all"`` group left out when the model holds no ALL (or none of its
    parameters requires grad). ``all_lr=None`` means the ALL trains at ``lr``. Only
    parameters with ``requires_grad`` are included; a parameter shared between the two
    parts belongs to the ALL group.
    """
    _check_rate("lr", lr, allow_zero=False)
    if all_lr is not None:
        _check_rate("all_lr", all_lr, allow_zero=False)
    _check_rate("weight_decay", weight_decay, allow_zero=True)

    all_params: list[nn.Parameter] = []
    all_ids: set[int] = set()
    for layer in all_layers(model):
        for param in layer.parameters():
            if param.requires_grad and id(param) not in all_ids:
                all_ids.add(id(param))
                all_params.append(param)
    base_params = [p for p in model.parameters() if p.requires_grad and id(p) not in all_ids]

    groups: list[dict[str, Any]] = [
        {"name": "base", "params": base_params, "lr": lr, "weight_decay": weight_decay}
    ]
    if all_params:
        groups.append(
            {
                "name": "all",
                "params": all_params,
                "lr": all_lr if all_lr is not None else lr,
                "weight_decay": weight_decay,
            }
        )
    return groups
