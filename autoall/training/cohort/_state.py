"""A cohort's state: K models of one architecture as stacked tensors, and their optimizer.

Every member is first built alone (`autoall.training._plan.build`: its seed, its model), then copied into
one row of a flat parameter tensor ``(K, P)``: the base network's parameters in the columns
``[0, P_base)``, the ALLs' in ``[P_base, P)``. The model that runs them is a *template*: the
architecture built on the meta device with the widest member's ALLs, each replaced by a
:class:`CohortALL`; `torch.func.functional_call` runs it on one member's row (views of the flat
tensor) and buffers, and `torch.vmap` runs all rows at once.

Members may differ in their ALLs (trial cohorts) and stay exactly the models they are alone:

- hidden size ``m_i <= M``: ``W_down`` rows and ``b_down`` entries ``m_i..M`` and ``W_up``
  columns ``m_i..M`` are zero, so the padded code units are ``act(0) = 0`` and their gradients
  are exactly zero: they stay zero under AdamW and SGD, and the custom losses divide by the
  member's own ``m_i`` (``CohortALL``);
- custom-loss kind and weight: the vmapped forward computes no custom loss; it returns each
  ALL's input and code, and `CohortState.custom_losses` computes each kind, batched, for the
  members that use it only (its ``aux_weight`` and ``m_i`` are per-member buffers);
- positions: a member with ``head`` carries the template's block ALLs as zeros (the identity,
  with zero gradients except ``b_up``'s), and a gradient mask keeps them zero and frozen.

The optimizer is torch.optim's own fused AdamW or SGD (momentum, Nesterov) kernel
(`torch._fused_adamw_`, `torch._fused_sgd_`, what `torch.optim.AdamW(fused=True)` calls) on the
members' rows: per step, the members that share their lr, weight decay and step go in one call
(a seed cohort: one call per parameter group; a trial cohort: one per member and group), with
each group's lr as LambdaLR sets it, ``peak_lr * factor(n)``. For member i, group g and its Adam
step t::

    AdamW:  p *= 1 - lr wd;  m = lerp(m, grad, 1 - b1);  v = b2 v + (1 - b2) grad^2
            p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    SGD:    d = grad + wd p;  buf = mu buf + d (buf starts at 0);  d = d + mu buf (Nesterov)
            or d = buf;  p -= lr d

(On CUDA that is the kernel `train()` uses; on the CPU `train()` uses torch's foreach path,
which rounds in another order.) One pass over the flat state instead of one per operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from autoall.errors import InvalidValue
from autoall.layer import AUX_LOSSES, ALLSpec, AutoLearningLayer
from autoall.training._models import build_model
from autoall.training._optim import lr_factor
from autoall.training._types import TrainConfig

_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as train() uses it
_EPS = 1e-8
_KINDS = tuple(k for k in AUX_LOSSES if k != "none")  # the custom losses, in a fixed order


class CohortALL(nn.Module):
    """An ALL of the template: the widest member's ``m = M``; per member (stacked buffers) the
    weights of the custom losses present in the cohort and the member's own code units.

    Buffers: ``aux_weights`` ``(len(kinds),)``: the member's ``aux_weight`` on its kind, 0 on
    the others (all 0: no custom loss, or the member has no ALL here); ``unit_mask`` ``(M,)``:
    1 on the member's ``m_i`` units. The forward pass computes no custom loss: in training it
    keeps its input and code ``(h, a)`` in ``activations`` for `CohortState.custom_losses`,
    which computes each kind only for the members that use it.
    """

    aux_weights: Tensor
    unit_mask: Tensor
    act: nn.Module

    def __init__(self, layer: AutoLearningLayer, kinds: tuple[str, ...]) -> None:
        super().__init__()
        self.down, self.act, self.up = layer.down, layer.act, layer.up
        if "reconstruction" in kinds:
            self.recon_bias = layer.recon_bias
        self.channel_dim = layer.channel_dim
        self.kinds = kinds
        self.register_buffer("aux_weights", torch.zeros(len(kinds)))
        self.register_buffer("unit_mask", torch.zeros(layer.hidden_size))
        self.activations: tuple[Tensor, Tensor] | None = None

    @property
    def needs_activations(self) -> bool:
        return any(kind != "orthogonality" for kind in self.kinds)

    def forward(self, x: Tensor) -> Tensor:
        h = x.movedim(self.channel_dim, -1)  # (..., d)
        a = self.act(self.down(h))  # (..., M); the member's padded units are exactly 0
        self.activations = (h.detach(), a) if self.training and self.needs_activations else None
        return x + self.up(a).movedim(-1, self.channel_dim)


def template(
    arch: str,
    specs: Sequence[ALLSpec | None],
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    head_width: int | None,
) -> nn.Module:
    """The architecture on the meta device with room for every member's ALLs (module doc)."""
    present = [s for s in specs if s is not None]
    spec: ALLSpec | None = None
    kinds: tuple[str, ...] = ()
    if present:
        used = {s.aux_loss for s in present if s.aux_weight > 0}
        kinds = tuple(k for k in _KINDS if k in used)
        spec = ALLSpec(
            hidden_size=max(s.hidden_size for s in present),
            aux_loss="reconstruction" if "reconstruction" in kinds else "none",
            activation=present[0].activation,
            positions="blocks" if any(s.positions == "blocks" for s in present) else "head",
        )
    with torch.device("meta"):
        model = build_model(
            arch, in_shape=in_shape, num_classes=num_classes, all_spec=spec, head_width=head_width
        )
    for name, module in list(model.named_modules()):
        if isinstance(module, AutoLearningLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, CohortALL(module, kinds))
    return model


def _pad(t: Tensor, shape: torch.Size) -> Tensor:
    """`t` in the top-left corner of zeros of `shape` (same number of dimensions)."""
    if t.shape == shape:
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: torch.Size
    start: int
    stop: int
    is_all: bool


class CohortState:
    """The members' parameters ``flat`` ``(K, P)``, buffers ``(K, ...)``, optimizer state and
    per-member settings, on `device`; rows follow `cfgs`. `keep` drops rows."""

    def __init__(
        self,
        model: nn.Module,
        shells: Sequence[nn.Module],
        cfgs: Sequence[TrainConfig],
        *,
        device: torch.device,
        steps_per_epoch: int,
    ) -> None:
        alls = {n for n, m in model.named_modules() if isinstance(m, CohortALL)}
        named = list(model.named_parameters())
        ordered = [(n, p, False) for n, p in named if not _under(n, alls)]
        ordered += [(n, p, True) for n, p in named if _under(n, alls)]
        self.slots: list[_Slot] = []
        start = 0
        for name, param, is_all in ordered:
            self.slots.append(_Slot(name, param.shape, start, start + param.numel(), is_all))
            start += param.numel()
        self.p_base = sum(s.stop - s.start for s in self.slots if not s.is_all)
        self.optimizer = cfgs[0].optimizer
        self.momentum, self.nesterov = cfgs[0].momentum, cfgs[0].nesterov
        self.steps_per_epoch = steps_per_epoch
        self.cfgs = list(cfgs)
        self.steps = [0] * len(cfgs)  # optimizer steps taken, per member
        self.buffer_shapes = {n: b.shape for n, b in model.named_buffers()}
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, CohortALL)}
        rows, masks, buffers = [], [], []
        for shell in shells:
            row, mask = self._row(shell)
            rows.append(row)
            masks.append(mask)
            buffers.append(self._buffers(shell))
        self.flat = torch.stack(rows).to(device)
        mask = torch.stack(masks).to(device)
        self.mask: Tensor | None = None if bool(mask.all()) else mask.float()
        self.buffers = {n: torch.stack([b[n] for b in buffers]).to(device) for n in buffers[0]}
        self.moments = [torch.zeros_like(self.flat)]
        if self.optimizer == "adamw":
            self.moments.append(torch.zeros_like(self.flat))
        self.step_t = torch.zeros(len(cfgs), device=device)  # Adam's step per member (float32)
        self._bind()

    # ------------------------------------------------------------------ members in and out

    def _row(self, shell: nn.Module) -> tuple[Tensor, Tensor]:
        """A member's parameters padded into one row, and the mask of its ALL columns."""
        own = dict(shell.named_parameters())
        pieces, mask = [], []
        for slot in self.slots:
            param = own.get(slot.name)
            if param is None:
                if not slot.is_all:
                    raise InvalidValue(f"a cohort needs one base network, but {slot.name} differs.")
                pieces.append(torch.zeros(slot.stop - slot.start))
            else:
                if not slot.is_all and param.shape != slot.shape:
                    raise InvalidValue(
                        f"a cohort needs one base network, but {slot.name} has shape "
                        f"{tuple(param.shape)}, expected {tuple(slot.shape)}."
                    )
                pieces.append(_pad(param.detach().cpu(), slot.shape).flatten())
            if slot.is_all:
                mask.append(torch.full((slot.stop - slot.start,), param is not None))
        return torch.cat(pieces), torch.cat(mask) if mask else torch.ones(0, dtype=torch.bool)

    def _buffers(self, shell: nn.Module) -> dict[str, Tensor]:
        """A member's buffers in the template's names, with its ALLs' weights and unit masks."""
        own = dict(shell.named_buffers())
        modules = dict(shell.named_modules())
        out: dict[str, Tensor] = {}
        for name, shape in self.buffer_shapes.items():
            layer_name, _, leaf = name.rpartition(".")
            if layer_name in self.layers:
                alone = modules.get(layer_name)
                layer = self.layers[layer_name]
                if leaf == "aux_weights":
                    weights = torch.zeros(len(layer.kinds))
                    if isinstance(alone, AutoLearningLayer) and alone.aux_loss in layer.kinds:
                        weights[layer.kinds.index(alone.aux_loss)] = alone.aux_weight
                    out[name] = weights
                else:
                    units = torch.zeros(shape)
                    if isinstance(alone, AutoLearningLayer):
                        units[: alone.hidden_size] = 1
                    out[name] = units
            else:
                out[name] = own[name].detach().cpu().clone()
        return out

    def member(self, i: int) -> tuple[dict[str, Tensor], dict[str, Tensor], list[Tensor]]:
        """Row `i` in template names (padded): parameters, buffers (without the cohort's own)
        and optimizer moments, all on the CPU."""
        row = self.flat[i].cpu()
        params = {s.name: row[s.start : s.stop].view(s.shape) for s in self.slots}
        buffers = {
            n: b[i].detach().cpu()
            for n, b in self.buffers.items()
            if n.rpartition(".")[0] not in self.layers
        }
        moments = [m[i].cpu() for m in self.moments]
        return params, buffers, moments

    def slot_views(self, row: Tensor) -> dict[str, Tensor]:
        """One member's row ``(P,)`` (or a moment's) as tensors by parameter name."""
        return {s.name: row[s.start : s.stop].view(s.shape) for s in self.slots}

    def load_member(
        self, i: int, shell: nn.Module, moments: Sequence[dict[str, Tensor]], *, step: int
    ) -> None:
        """Put a restored member (its model `shell`, optimizer moments by name) into row `i`."""
        row, _ = self._row(shell)
        buffers = self._buffers(shell)
        with torch.no_grad():
            self.flat[i].copy_(row.to(self.flat.device))
            for name, value in buffers.items():
                self.buffers[name][i].copy_(value)
            for moment, values in zip(self.moments, moments, strict=True):
                padded = [
                    _pad(values[s.name].cpu(), s.shape).flatten()
                    if s.name in values
                    else torch.zeros(s.stop - s.start)
                    for s in self.slots
                ]
                moment[i].copy_(torch.cat(padded).to(moment.device))
            self.step_t[i] = step
        self.steps[i] = step

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in that order): a member that ended stops costing."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.flat.device)
        self.flat = self.flat[index]
        self.moments = [m[index] for m in self.moments]
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        if self.mask is not None:
            self.mask = self.mask[index]
        self.cfgs = [self.cfgs[r] for r in rows]
        self.steps = [self.steps[r] for r in rows]
        self.step_t = self.step_t[index]
        self._bind()

    def custom_losses(self, activations: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Per member ``(K,)``: the sum over its ALLs, in the model's order (as
        `auxiliary_loss` sums them), of ``aux_weight * L(W, a)``, each kind computed only for
        the members that use it, on their own ``m_i`` (`AutoLearningLayer._custom_loss`)::

            reconstruction  mean_n ||stopgrad(h_n) - (W_down^T a_n + c)||^2 / d
            sparsity        sum |a| / (n m_i)
            orthogonality   ||W_down W_down^T - diag(mask_i)||_F^2 / m_i^2

        `activations`: each ALL's ``(h, a)`` ``(K, ..., d)``, ``(K, ..., M)`` from the forward.
        """
        aux = torch.zeros(self.flat.shape[0], device=self.flat.device)
        for name, layer in self.layers.items():
            for j, kind in enumerate(layer.kinds):
                rows = self._rows[name][j]
                if rows is None:
                    continue
                units = self.buffers[f"{name}.unit_mask"][rows]  # (r, M)
                m = units.sum(1).clamp_min(1)
                w_down = self.leaves[f"{name}.down.weight"][rows]  # (r, M, d)
                if kind == "orthogonality":
                    gram = w_down @ w_down.transpose(1, 2) - torch.diag_embed(units)
                    loss = gram.pow(2).sum((1, 2)) / (m * m)
                else:
                    h, a = activations[name]
                    codes = a[rows].flatten(1, -2)  # (r, n, M)
                    if kind == "sparsity":
                        loss = codes.abs().sum((1, 2)) / (codes.shape[1] * m)
                    else:
                        bias = self.leaves[f"{name}.recon_bias"][rows].unsqueeze(1)  # (r, 1, d)
                        target = h[rows].flatten(1, -2)  # (r, n, d), detached
                        loss = (target - (codes @ w_down + bias)).pow(2).mean((1, 2))
                weight = self.buffers[f"{name}.aux_weights"][rows, j]
                aux = aux.index_add(0, rows, weight * loss)
        return aux

    def _bind(self) -> None:
        """Leaf tensors ``(K, *shape)`` that share ``flat``'s memory, whose ``.grad`` are views
        of one ``grad`` ``(K, P)``: backward accumulates into it in place (views of one leaf
        would each backpropagate a whole ``(K, P)`` zero-padded gradient)."""
        k = self.flat.shape[0]
        self._rows: dict[str, list[Tensor | None]] = {}  # per ALL and kind: its members
        for name, layer in self.layers.items():
            weights = self.buffers[f"{name}.aux_weights"]
            self._rows[name] = []
            for j in range(len(layer.kinds)):
                rows = (weights[:, j] > 0).nonzero().flatten()
                self._rows[name].append(rows if rows.numel() else None)
        self.grad = torch.zeros_like(self.flat)
        self.leaves: dict[str, Tensor] = {}
        for s in self.slots:
            leaf = self.flat[:, s.start : s.stop].view(k, *s.shape).detach().requires_grad_()
            leaf.grad = self.grad[:, s.start : s.stop].view(k, *s.shape)
            self.leaves[s.name] = leaf

    # ------------------------------------------------------------------------ running

    def params(self) -> dict[str, Tensor]:
        """Every parameter ``(K, *shape)``, sharing ``flat``'s memory; gradients go to
        ``grad``."""
        return self.leaves

    def epoch_lrs(self) -> list[list[tuple[float, float]]]:
        """Per step of the next epoch and per member: the two groups' lr, as LambdaLR sets
        them (`peak lr * factor(n)`, Python floats)."""
        out: list[list[tuple[float, float]]] = [[] for _ in range(self.steps_per_epoch)]
        for i, cfg in enumerate(self.cfgs):
            factor = lr_factor(cfg, steps_per_epoch=self.steps_per_epoch)
            all_lr = cfg.all_lr if cfg.all_lr is not None else cfg.lr
            for s in range(self.steps_per_epoch):
                f = factor(self.steps[i] + s)
                out[s].append((cfg.lr * f, all_lr * f))
        return out

    @torch.no_grad()
    def step(self, lrs: Sequence[tuple[float, float]]) -> None:
        """One optimizer step of every member, with its groups' `lrs` (`epoch_lrs`): torch's
        fused AdamW or SGD kernel on the rows of the members that share their lr, weight
        decay and step (a seed cohort: one call per group; a trial cohort: one per member)."""
        grad = self.grad
        if self.mask is not None:  # frozen ALLs of members without them
            grad[:, self.p_base :].mul_(self.mask)
        if self.optimizer == "adamw":
            self.step_t.add_(1)
        same: dict[tuple[float, float, float, int], list[int]] = {}
        for i, (cfg, pair) in enumerate(zip(self.cfgs, lrs, strict=True)):
            same.setdefault((*pair, cfg.weight_decay, self.steps[i]), []).append(i)
        for (lr_base, lr_all, wd, _), rows in same.items():
            for cols, lr in ((slice(0, self.p_base), lr_base), (slice(self.p_base, None), lr_all)):
                if cols.start == cols.stop or cols.start == self.flat.shape[1]:
                    continue
                params = [self.flat[i, cols] for i in rows]
                grads = [grad[i, cols] for i in rows]
                moments = [[m[i, cols] for i in rows] for m in self.moments]
                if self.optimizer == "adamw":
                    steps = [self.step_t[i] for i in rows]
                    torch._fused_adamw_(params, grads, moments[0], moments[1], [], steps,
                                        lr=lr, beta1=_BETAS[0], beta2=_BETAS[1], weight_decay=wd,
                                        eps=_EPS, amsgrad=False, maximize=False)  # fmt: skip
                else:  # a zero buffer makes the first step's buffer the gradient, as torch's
                    torch._fused_sgd_(params, grads, moments[0] if self.momentum else [],
                                      weight_decay=wd, momentum=self.momentum, lr=lr,
                                      dampening=0.0, nesterov=self.nesterov, maximize=False,
                                      is_first_step=False)  # fmt: skip
        grad.zero_()  # the leaves' .grad are views of it: the next backward adds into zeros
        self.steps = [s + 1 for s in self.steps]


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name.startswith(prefix + ".") for prefix in prefixes)


def fixed(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with what members of one cohort may differ in set aside: the seed, the rates,
    the schedule and the target (everything else is shared by the cohort's one loop)."""
    return replace(
        cfg,
        seed=0,
        lr=1.0,
        all_lr=None,
        weight_decay=0.0,
        epochs=1,
        warmup_epochs=0.0,
        min_lr_ratio=0.0,
        target_acc=None,
    )
