"""The optimizer and its schedule, built the same way for a run alone, a cohort member's
checkpoint and a resumed run: two parameter groups (base: `lr`; ALL: `all_lr`, from
`autoall.layer.param_groups`) and one per-step factor, linear warm-up to 1 for `warmup_epochs`,
then cosine decay to `min_lr_ratio` of the peak (`lr_factor`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from autoall.layer import param_groups
from autoall.training._types import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool) -> torch.optim.Optimizer:
    """Fused kernels on CUDA; elsewhere the multi-tensor (foreach) path, not one op per tensor."""
    groups = param_groups(model, lr=cfg.lr, all_lr=cfg.all_lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            fused=fused or None,
            foreach=not fused,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None, foreach=not fused)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step factor: linear warm-up to 1, then cosine to `min_lr_ratio` (all groups alike)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, steps_per_epoch=steps_per_epoch)
    )


def lr_factor(cfg: TrainConfig, *, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule's factor of the peak lr for optimizer step `n` (0-based, as LambdaLR counts):
    `(n + 1) / warmup` during the warm-up, then `r + (1 - r) (1 + cos(pi p)) / 2` with `r =
    min_lr_ratio` and `p` the fraction of the post-warm-up steps done (capped at 1)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return factor
