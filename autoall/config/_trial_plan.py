"""A study trial's plan: the point a study suggested (its `params`) turned into the `RunPlan`
that trains it, from the study file's training settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from autoall.config._options import KINDS, Kind
from autoall.config._study_file import StudyConfig
from autoall.errors import InvalidValue
from autoall.layer import ALLSpec
from autoall.training import RunPlan


def trial_plan(
    cfg: StudyConfig,
    arch: str,
    kind: str,
    params: Mapping[str, Any],
    *,
    device: str | None = None,
    replicate: int = 0,
) -> RunPlan:
    """The plan of a study trial with `params`, from the study file's training settings at
    replicate `replicate`'s seed (`train.seed + replicate`).

    Both kinds train with the trial's lr and weight_decay (both studies search them); kind
    "all" adds an ALL of the trial's hidden_size, aux_loss, aux_weight and positions, trained
    with its own all_lr; kind "baseline" is the plain architecture. Parameters a study stored
    before a knob existed take the knob's old fixed value (positions: head; an ALL study's lr
    and weight_decay: the file's).
    """
    if kind not in KINDS:
        raise InvalidValue(f"kind must be one of {', '.join(KINDS)}, but got {kind!r}.")
    base = replace(cfg.train_config(arch, replicate), device=device)
    if kind == Kind.BASELINE:
        return RunPlan(arch, replace(base, lr=params["lr"], weight_decay=params["weight_decay"]))
    spec = ALLSpec(
        hidden_size=params["hidden_size"],
        aux_loss=params["aux_loss"],
        aux_weight=params["aux_weight"],
        activation=cfg.activation,
        positions=params.get("positions", "head"),
    )
    tuned = replace(
        base,
        lr=params.get("lr", base.lr),
        weight_decay=params.get("weight_decay", base.weight_decay),
        all_lr=params["all_lr"],
    )
    return RunPlan(arch, tuned, spec)
