"""A cohort member's checkpoint in `train()`'s own format, written and read.

A member's row of the stacked state (autoall/training/cohort/_state.py) is cut back to its own model's
shapes and put into that model (built alone, kept on the CPU), with torch.optim's optimizer and
LambdaLR holding its moments and its step; `autoall.training._checkpoint_file.save_run` writes them, so `train()`
resumes a cohort member's checkpoint and a cohort resumes a single run's (`restore_run`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autoall.training._checkpoint_file import restore_run, save_run
from autoall.training._optim import make_optimizer, warmup_cosine
from autoall.training._types import RunResult, TrainConfig
from autoall.training.cohort._state import CohortState


def save_member(
    state: CohortState,
    row: int,
    *,
    shell: nn.Module,
    cfg: TrainConfig,
    generator: torch.Generator,
    result: RunResult,
    path: Path,
    epoch: int,
    fused: bool,
) -> None:
    """Write row `row` as `train()` writes a checkpoint after `epoch` (into `shell`)."""
    model_state, moments = _cut(state, row, shell)
    shell.load_state_dict(model_state)
    optimizer = make_optimizer(shell, cfg, fused=fused)
    scheduler = warmup_cosine(optimizer, cfg, steps_per_epoch=state.steps_per_epoch)
    step = state.steps[row]
    _torch_state(optimizer, shell, moments, kind=cfg.optimizer, momentum=cfg.momentum, step=step)
    _schedule_to(scheduler, step)
    save_run(path, epoch, shell, optimizer, scheduler, generator, result)


def restore_member(
    state: CohortState,
    row: int,
    *,
    shell: nn.Module,
    cfg: TrainConfig,
    generator: torch.Generator,
    result: RunResult,
    path: Path,
    fused: bool,
) -> int:
    """Load a checkpoint (a cohort's or `train()`'s) into row `row`, `generator` and `result`
    (history, best, target); return its last finished epoch, 0 when it is not one this member
    can use (a directory, a link, a damaged file or another run's: warned, nothing loaded)."""
    optimizer = make_optimizer(shell, cfg, fused=fused)
    scheduler = warmup_cosine(optimizer, cfg, steps_per_epoch=state.steps_per_epoch)
    epoch = restore_run(
        path, shell, optimizer, scheduler, generator, result,
        epochs=cfg.epochs, steps_per_epoch=state.steps_per_epoch,
    )  # fmt: skip
    if epoch is None:
        return 0
    moments = _moments(optimizer, shell, kind=cfg.optimizer)
    state.load_member(row, shell, moments, step=scheduler.last_epoch)
    return epoch


def member_weights(state: CohortState, row: int, shell: nn.Module) -> dict[str, Tensor]:
    """Row `row`'s weights and buffers cut back to its own model's shapes (`shell`'s)."""
    return _cut(state, row, shell)[0]


def _cut(
    state: CohortState, i: int, shell: nn.Module
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Row `i` cut to the shapes of the member's own model `shell`: its parameters and
    buffers (a state_dict) and its optimizer moments by parameter name."""
    params, buffers, moments = state.member(i)
    own = dict(shell.named_parameters())
    model_state: dict[str, Tensor] = {}
    for name, value in shell.state_dict().items():
        source = params.get(name, buffers.get(name))
        if source is None:  # e.g. the recon_bias of an ALL whose custom loss has weight 0:
            model_state[name] = value  # it never trains, alone or here
        else:
            model_state[name] = source[tuple(slice(0, n) for n in value.shape)].clone()
    cut = []
    for moment in moments:
        views = state.slot_views(moment)
        cut.append(
            {
                name: views[name][tuple(slice(0, n) for n in param.shape)]
                for name, param in own.items()
                if name in views
            }
        )
    return model_state, cut


def _torch_state(
    optimizer: torch.optim.Optimizer,
    shell: nn.Module,
    moments: Sequence[dict[str, Tensor]],
    *,
    kind: str,
    momentum: float,
    step: int,
) -> None:
    """Give `optimizer` (torch.optim's, on `shell`) the state of a member after `step` steps,
    in torch's own form, so `train()` resumes its checkpoint."""
    for name, param in shell.named_parameters():
        if kind == "adamw":
            optimizer.state[param] = {
                "step": torch.tensor(float(step), dtype=torch.float32),
                "exp_avg": moments[0][name].clone(),
                "exp_avg_sq": moments[1][name].clone(),
            }
        elif momentum:
            optimizer.state[param] = {"momentum_buffer": moments[0][name].clone()}


def _moments(
    optimizer: torch.optim.Optimizer, shell: nn.Module, *, kind: str
) -> list[dict[str, Tensor]]:
    """The moments of torch's `optimizer` on `shell` by parameter name (missing: none yet)."""
    keys = ("exp_avg", "exp_avg_sq") if kind == "adamw" else ("momentum_buffer",)
    out: list[dict[str, Tensor]] = [{} for _ in keys]
    for name, param in shell.named_parameters():
        entry: dict[str, Any] = optimizer.state.get(param, {})
        for j, key in enumerate(keys):
            if entry.get(key) is not None:
                out[j][name] = entry[key].detach()
    return out


def _schedule_to(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put a fresh LambdaLR where it is after `step` optimizer steps (last_epoch = step)."""
    optimizer = scheduler.optimizer
    lrs = [
        base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler.last_epoch = step
    scheduler._step_count = step + 1
    scheduler._last_lr = lrs
