"""Picking a study's winner robustly, on validation only.

A study ranks its trials by one validation accuracy each, at the search seed; with a few hundred
validation images several trials tie or differ by one image. So the report re-evaluates the
top-k COMPLETE trials (ties at the cut included) on `selection seeds` that neither the search
nor the evaluation uses, and picks by

    max over candidates of  mean_s final_val_acc(candidate, s),

ties broken by the lower mean final validation loss, then by fewer parameters; never by trial
order. Every selection run is trained without the test split in memory.

Only the first `budget` finished trials (COMPLETE or PRUNED, by trial number) count, so an ALL
study and its tuned baseline are judged on the same number of trials.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoall.config import StudyConfig, trial_plan
from autoall.report._types import Candidate, RunRecord, Selection
from autoall.training import DeviceData

if TYPE_CHECKING:
    from autoall.report._store import RunStore


def finished_trials(study: optuna.Study, budget: int | None = None) -> list[FrozenTrial]:
    """COMPLETE and PRUNED trials in number order, the first `budget` of them."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    trials = sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)
    return trials if budget is None else trials[:budget]


def top_k(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The k COMPLETE trials with the highest validation accuracy, every trial tied with the
    k-th included (the cut is never made by trial order)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    ranked = sorted(complete, key=lambda t: -t.values[0])
    if len(ranked) <= k:
        return ranked
    cut = ranked[k - 1].values[0]
    return [t for t in ranked if t.values[0] >= cut]


def select(
    cfg: StudyConfig,
    arch: str,
    kind: str,
    study: optuna.Study,
    *,
    budget: int,
    k: int,
    seeds: tuple[int, ...],
    data: DeviceData,
    store: RunStore,
    split: dict[str, Any],
    device: str | None,
    accept: Callable[[Mapping[str, Any]], bool] | None = None,
    label: str = "",
    cohort: bool = True,
    replicate: int = 0,
) -> tuple[Selection, list[RunRecord]] | None:
    """Re-evaluate the study's top-k trials (those `accept` takes) on `seeds`; rank them.

    `data` must hold no test split. Returns None when no COMPLETE trial qualifies. A trial's
    missing seeds train as one cohort unless `cohort` is False. `replicate`: the search the
    study is (its runs are tagged with it).
    """
    pool = [t for t in finished_trials(study, budget) if accept is None or accept(t.params)]
    chosen = top_k(pool, k)
    if not chosen:
        return None
    notes = []
    complete = sum(1 for t in pool if t.state == TrialState.COMPLETE)
    what = f"{label} " if label else ""
    if complete < k:
        notes.append(
            f"{study.study_name}: only {complete} COMPLETE {what}trial(s) in the budget of "
            f"{budget}, fewer than top-k {k}; all of them were re-evaluated."
        )
    elif len(chosen) > k:
        notes.append(
            f"{study.study_name}: {len(chosen)} {what}trials tie at the top-{k} cut "
            f"(validation accuracy {chosen[-1].values[0]:.4f}); all were re-evaluated."
        )
    candidates, runs = [], []
    for trial in chosen:
        plan = trial_plan(cfg, arch, kind, trial.params, device=device, replicate=replicate)
        name = f"select-{kind}-{trial.number}"
        done = store.get_or_train_seeds(
            name,
            [plan.with_seed(s) for s in seeds],
            data,
            split=split,
            evaluate_test=False,
            cohort=cohort,
            replicate=replicate,
        )
        runs += done
        candidates.append(
            Candidate(
                trial=trial.number,
                params=dict(trial.params),
                value=trial.values[0],
                val_acc=tuple(r.metrics["final_val_acc"] for r in done),
                val_loss=tuple(r.metrics["final_val_loss"] for r in done),
                params_total=int(done[0].metrics["params_total"]),
            )
        )
    ranked = sorted(candidates, key=lambda c: (-c.mean_val_acc, c.mean_val_loss, c.params_total))
    return Selection(study.study_name, budget, tuple(ranked), tuple(notes)), runs
