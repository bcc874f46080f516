"""Cohorts: K runs of one architecture trained as one batched job, each the run it is alone.

A small model leaves a GPU almost idle; K of them trained as one job use it (HFTA, arXiv
2102.02344). `fit_cohort(plans, data)` builds every member exactly as `autoall.training._plan.fit` builds
it (its seed, its model), stacks them (autoall/training/cohort/_state.py) and trains them with
`torch.func.functional_call` under `torch.vmap`: per step, every member draws its batch (and
augmentation) from its own generator seeded as `train()` seeds it, so member i sees exactly the
batches it would see alone; its loss is its cross-entropy plus its ALLs' custom losses; the
summed loss is backpropagated once (the members' gradients are independent) and the optimizer
steps every member with its own lr, all_lr, weight decay and warm-up + cosine schedule. Each
member gets the `RunResult` that `train()` gives it alone, equal within float tolerance (batched
matrix products round differently from single ones), validation every epoch, its own
`on_epoch` callback (pruning, tracking), its own divergence (`NonFiniteLossError`) and its own
checkpoint, in `train()`'s format: a member resumes a single run's checkpoint and vice versa.

Timing: a member's `epoch_seconds` is its share of the cohort's epoch (the epoch's wall time
divided by the members in it), so the members' wall seconds add up to the cohort's;
`RunResult.extra["cohort_size"]` holds the number of members it started with.

Members that end (finished, stopped by their callback, pruned, diverged) leave the stacked state
at the end of that epoch and cost nothing afterwards. BatchNorm's running statistics are stacked
buffers that vmap updates in place per member. What cannot be batched falls back to one run
after another, with one logged line saying why: `compile: true` (torch.compile is not applied to
the vmapped step), or an operation vmap cannot batch (found at the first step). channels_last
is not used in a cohort (the stacked inputs are 5-d); bf16 autocast is, as in `train()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from autoall.errors import InvalidValue
from autoall.training._data import DeviceData
from autoall.training._loop import EpochCallback, TrainingOOMError
from autoall.training._plan import RunPlan, fit
from autoall.training.cohort._loop import CannotBatch, CohortLoop, EndCallback, Outcome
from autoall.training.cohort._state import fixed

__all__ = ["EndCallback", "Outcome", "cohort_blocker", "cohort_key", "fit_cohort", "group_plans"]

log = logging.getLogger("autoall.cohort")

_cannot_batch: dict[tuple[Any, ...], str] = {}  # per structure: why vmap failed
_said: set[str] = set()  # the reasons already logged


def cohort_key(plan: RunPlan) -> tuple[Any, ...]:
    """What the members of one cohort share: the architecture and its base network, the share
    of the train split, whether there is an ALL (and its activation), and every training
    setting except the seed, lr, all_lr, weight decay, schedule, epochs and target."""
    spec = plan.spec
    activation = spec.activation if spec is not None else None
    return (
        plan.arch,
        plan.head_width,
        plan.train_fraction,
        spec is None,
        activation,
        fixed(plan.train),
    )


def group_plans(plans: Sequence[RunPlan]) -> list[list[int]]:
    """The indices of `plans` split into cohorts (equal `cohort_key`), in order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(cohort_key(plan), []).append(i)
    return list(groups.values())


def cohort_blocker(plans: Sequence[RunPlan]) -> str | None:
    """Why `plans` cannot train as one vmapped cohort (known before training), or None."""
    if len({cohort_key(p) for p in plans}) > 1:
        return "their architectures or shared training settings differ"
    if plans and plans[0].train.compile:
        return "compile is set, and torch.compile is not applied to a vmapped cohort"
    return _cannot_batch.get(_structure(plans))


def fit_cohort(
    plans: Sequence[RunPlan],
    data: DeviceData,
    *,
    on_epoch: Sequence[EpochCallback | None] | None = None,
    on_end: EndCallback | None = None,
    evaluate_test: bool = False,
    checkpoints: Sequence[str | Path | None] | None = None,
    checkpoint_every: float = 0.0,
    on_trained: Sequence[Callable[[nn.Module], object] | None] | None = None,
) -> list[Outcome]:
    """Train `plans` (one cohort: `group_plans`) together; one outcome per plan, in order.

    `on_epoch[i]` is member i's callback as in `train()` (truthy: stop; an exception ends
    the member, whose outcome it becomes); `on_end(i, outcome)` runs as soon as member i has
    ended. `checkpoints[i]`: member i's checkpoint file, as `train()`'s `checkpoint`.
    `on_trained[i]` gets member i's trained model once it finished, as `fit`'s `on_trained`
    does (a plain module, eval mode; from a cohort, on the CPU), e.g. to log it.
    KeyboardInterrupt and out-of-memory (`TrainingOOMError`) end the whole cohort and are
    raised; so is an exception from `on_end`.
    """
    n = len(plans)
    callbacks = list(on_epoch) if on_epoch is not None else [None] * n
    files = [Path(c) if c is not None else None for c in (checkpoints or [None] * n)]
    trained = list(on_trained) if on_trained is not None else [None] * n
    if len(callbacks) != n or len(files) != n or len(trained) != n:
        raise InvalidValue(
            f"on_epoch, checkpoints and on_trained must have one entry per plan ({n})."
        )
    if not plans:
        return []
    if len({cohort_key(p) for p in plans}) > 1:
        raise InvalidValue(
            "a cohort's plans must share their architecture and training settings "
            "(autoall.training.cohort._cohort.group_plans splits them)."
        )
    reason = cohort_blocker(plans) if n > 1 else "a cohort of one"
    if reason is None:
        cohort = CohortLoop(
            plans, data, callbacks, files, evaluate_test, checkpoint_every, on_end, trained
        )
        try:
            return cohort.run()
        except CannotBatch as exc:
            reason = _cannot_batch.setdefault(_structure(plans), str(exc))
    if n > 1 and reason not in _said:  # once per reason and process
        _said.add(reason)
        log.warning("%s runs cannot train as one cohort (%s); training them one by one.",
                    plans[0].arch, reason)  # fmt: skip
    return [
        _alone(
            i,
            plan,
            data,
            callbacks[i],
            files[i],
            evaluate_test,
            checkpoint_every,
            on_end,
            trained[i],
        )
        for i, plan in enumerate(plans)
    ]


def _alone(
    i: int,
    plan: RunPlan,
    data: DeviceData,
    callback: EpochCallback | None,
    checkpoint: Path | None,
    evaluate_test: bool,
    checkpoint_every: float,
    on_end: EndCallback | None,
    on_trained: Callable[[nn.Module], object] | None,
) -> Outcome:
    outcome: Outcome
    try:
        outcome = fit(
            plan,
            data,
            on_epoch=callback,
            evaluate_test=evaluate_test,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            on_trained=on_trained,
        )
    except TrainingOOMError:
        raise
    except Exception as exc:
        outcome = exc
    if on_end is not None:
        on_end(i, outcome)
    return outcome


def _structure(plans: Sequence[RunPlan]) -> tuple[Any, ...]:
    positions = sorted({p.spec.positions for p in plans if p.spec is not None})
    return (plans[0].arch, plans[0].head_width, plans[0].spec is None, tuple(positions))
