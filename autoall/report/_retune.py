"""What a control or a reduced-data arm re-tunes, and reduced data at equal optimizer steps.

A control changes one thing about the ALL winner (its own lr, its custom loss, its positions) or
about the tuned baseline (its width). Knobs tuned for the winner favour the winner, so each
control is re-tuned on what its change frees, with a stated budget (`tuning_trials`):

| variant | knobs re-tuned |
|---|---|
| parameter-matched plain model | lr, weight_decay |
| ALL, all_lr = lr | lr (shared by the ALL), weight_decay |
| ALL, aux_weight = 0 | lr, all_lr |
| ALL, other positions | lr, all_lr |
| ALL and tuned baseline on a share of the train split | lr, weight_decay |

The candidates are the inherited knobs first, then `tuning_trials - 1` random draws from the
study file's ranges (Optuna's `RandomSampler`, seeded per replicate and variant); each trains on
the train split (or its share) at the replicate's search seed and is judged on validation, the
best final validation accuracy winning (ties: lower validation loss, then the earlier
candidate, the inherited one first). Both arms of a reduced-data claim get the same budget. With
`tuning_trials: 0` nothing is re-tuned and the variant is labelled untuned: a claim against it
is never "supported".

Reduced data trains with as many optimizer steps as a full-data run, not as many epochs: a 10 %
split has a tenth of the steps per epoch, so it trains ten times the epochs, with the warm-up
and the cosine schedule at the same steps. The steps match exactly when the share's steps per
epoch divide the full run's, else within 1 % (whole epochs); a share that cannot come that close
(a full run of few steps) is refused before training (`ReducedDataError`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import optuna

from autoall.config import ParamSpec
from autoall.errors import InvalidValue
from autoall.report._names import VariantName
from autoall.report._types import Retuned, RunRecord
from autoall.study import suggest
from autoall.training import DeviceData, RunPlan, steps_per_epoch, train_subset

if TYPE_CHECKING:
    from autoall.report._store import RunStore

STEP_TOLERANCE = 0.01  # reduced-data steps within 1 % of the full run's (whole epochs)
REDUCED = "reduced"  # FREED's key of every variant on a share of the train split (`at_share`)
FREED: dict[str, tuple[str, ...]] = {
    VariantName.PARAM_MATCHED: ("lr", "weight_decay"),
    VariantName.ALL_SHARED_LR: ("lr", "weight_decay"),
    VariantName.NO_AUX: ("lr", "all_lr"),
    VariantName.OTHER_POSITIONS: ("lr", "all_lr"),
    REDUCED: ("lr", "weight_decay"),
}


class ReducedDataError(InvalidValue):
    """A share of the train split whose optimizer steps cannot match a full-data run's."""


def equal_steps(plan: RunPlan, data: DeviceData, fraction: float) -> RunPlan:
    """`plan` on `fraction` of the train split, with the full-data run's optimizer steps.

        S = epochs * s(n),   s(n) = n // batch if n > batch else 1 (train() drops the last batch)
        epochs' = round(S / s(n')),  warmup_epochs' = warmup_epochs * s(n) / s(n')

    n' is the size of the stratified share (the same for every seed). The steps match exactly
    when s(n') divides S, else within `STEP_TOLERANCE` of S (whole epochs only);
    `ReducedDataError` when they cannot.
    """
    cfg = plan.train
    n = int(data.train_y.numel())
    n_share = int(train_subset(data, fraction, seed=0).train_y.numel())
    full, share = steps_per_epoch(n, cfg.batch_size), steps_per_epoch(n_share, cfg.batch_size)
    total = cfg.epochs * full
    epochs = max(1, round(total / share))
    if abs(epochs * share - total) > STEP_TOLERANCE * total:
        raise ReducedDataError(
            f"--fractions: {fraction:g} of the train split is {n_share} images, {share} optimizer "
            f"steps per epoch at batch {cfg.batch_size}; whole epochs of it give "
            f"{epochs * share} steps, not the {total} of a full-data run ({cfg.epochs} epochs x "
            f"{full}) within {100 * STEP_TOLERANCE:g} %: use a smaller share or more epochs."
        )
    warmup = min(cfg.warmup_epochs * full / share, epochs)  # the same warm-up steps
    train = replace(cfg, epochs=epochs, warmup_epochs=warmup)
    return replace(plan, train=train, train_fraction=fraction)


def apply(plan: RunPlan, params: Mapping[str, Any]) -> RunPlan:
    """`plan` with the re-tuned knobs (lr, weight_decay, all_lr) set."""
    train = plan.train
    if "lr" in params:
        train = replace(train, lr=float(params["lr"]))
    if "weight_decay" in params:
        train = replace(train, weight_decay=float(params["weight_decay"]))
    if "all_lr" in params:
        train = replace(train, all_lr=float(params["all_lr"]))
    return replace(plan, train=train)


def inherited(plan: RunPlan, knobs: Sequence[str]) -> dict[str, Any]:
    """The values `plan` has for `knobs` (the winner's, before re-tuning)."""
    values = {"lr": plan.train.lr, "weight_decay": plan.train.weight_decay}
    values["all_lr"] = plan.train.all_lr if plan.train.all_lr is not None else plan.train.lr
    return {k: values[k] for k in knobs}


def stream(*parts: object) -> int:
    """A 32-bit seed from `parts` (replicate, variant, ...), the same in every run."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def retune(
    store: RunStore,
    *,
    name: str,
    plan: RunPlan,
    space: Mapping[str, ParamSpec],
    trials: int,
    seed: int,
    data: DeviceData,
    split: dict[str, Any],
    replicate: int,
    cohort: bool,
) -> tuple[RunPlan, Retuned, list[RunRecord]]:
    """Re-tune `plan` over `space` with `trials` candidates (the inherited knobs first) on
    validation; `data` must hold no test split. Returns the tuned plan, what the re-tuning
    spent and picked, and its runs (tag variant `tune-<name>`)."""
    if trials < 1:
        raise InvalidValue(f"trials must be a positive integer, but got {trials!r}.")
    knobs = tuple(space)
    sampler = optuna.samplers.RandomSampler(seed=stream(seed, replicate, name))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(inherited(plan, knobs), skip_if_exists=False)
    candidates = [suggest(study.ask(), dict(space)) for _ in range(trials)]
    plans = [apply(plan, p) for p in candidates]
    runs = store.get_or_train_seeds(
        f"tune-{name}",
        plans,
        data,
        split=split,
        evaluate_test=False,
        cohort=cohort,
        replicate=replicate,
    )
    order = sorted(
        range(len(runs)),
        key=lambda i: (-runs[i].metrics["final_val_acc"], runs[i].metrics["final_val_loss"], i),
    )
    best = order[0]
    summary = Retuned(
        variant=name,
        knobs=knobs,
        trials=len(runs),
        epochs=sum(len(r.val_acc) for r in runs),
        seconds=sum(sum(r.epoch_seconds) for r in runs),
        best=dict(candidates[best]),
        best_val_acc=runs[best].metrics["final_val_acc"],
    )
    return plans[best], summary, runs
