"""What each arm's search spent, where its winner sits in its ranges, and the report's margin.

Read from the Optuna studies alone (no training): the report states them next to the verdicts,
since an unequal or uninformative search makes every comparison after it weaker.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from autoall.config import KINDS, SamplerConfig, StudyConfig
from autoall.errors import InvalidValue
from autoall.report._selection import finished_trials
from autoall.report._types import ArmBudget, Replicate
from autoall.study import sampler_phase

BOUNDARY = 0.05  # a winner within 5 % of a range's end (log scale where searched so) is flagged


def arm_budget(study: optuna.Study, budget: int, sampler: SamplerConfig) -> ArmBudget:
    """What one search spent within its first `budget` finished trials: trials (random start-up
    and guided), trial-epochs, seconds, and each trial's validation accuracy (a pruned trial's
    last reported one) for the expected-best curves. `sampler`: the study file's, for trials
    stored before their phase was recorded."""
    trials = finished_trials(study, budget)
    phases = [sampler_phase(t, sampler) for t in trials]
    values = []
    for t in trials:
        if t.values:
            values.append(float(t.values[0]))
        elif t.intermediate_values:
            values.append(float(t.intermediate_values[max(t.intermediate_values)]))
    return ArmBudget(
        study=study.study_name,
        finished=len(trials),
        complete=sum(1 for t in trials if t.state == TrialState.COMPLETE),
        startup=phases.count("startup"),
        guided=phases.count("guided"),
        trial_epochs=sum(len(t.intermediate_values) for t in trials),
        seconds=sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.datetime_complete is not None and t.datetime_start is not None
        ),
        values=tuple(values),
    )


def boundary_notes(cfg: StudyConfig, arch: str, rp: Replicate) -> list[str]:
    """A note for each winner knob within `BOUNDARY` of its range's end: the best value may lie
    outside the range searched."""
    out = []
    for kind in KINDS:
        sel = rp.selections.get(kind)
        if sel is None:
            continue
        space = cfg.space(arch, kind)
        for knob, value in sel.winner.params.items():
            spec = space.get(knob)
            if spec is None or spec.type == "categorical" or spec.low == spec.high:
                continue
            assert spec.low is not None and spec.high is not None
            lo, hi, v = float(spec.low), float(spec.high), float(value)
            if spec.log:
                lo, hi, v = math.log(lo), math.log(hi), math.log(v)
            where = (v - lo) / (hi - lo)
            if where <= BOUNDARY or where >= 1 - BOUNDARY:
                end = "lower" if where <= BOUNDARY else "upper"
                out.append(
                    f"{sel.study}: the winner's {knob} = {value:.4g} sits at the {end} end of its "
                    f"range [{spec.low:g}, {spec.high:g}]; the best value may lie outside it "
                    "(widen the range in the study file)."
                )
    return out


def budget_notes(study: optuna.Study, base_study: optuna.Study) -> list[str]:
    """A note when the two studies' recorded per-trial budgets differ (or one is unknown)."""
    ours, theirs = study.user_attrs.get("budget"), base_study.user_attrs.get("budget")
    if ours is None or theirs is None:
        return [
            f"{study.study_name} or {base_study.study_name} records no per-trial budget (made by "
            "an older autoall): equal epochs, sampler and pruner could not be checked."
        ]
    if ours != theirs:
        return [
            f"Unequal per-trial budgets: {study.study_name} {ours}, {base_study.study_name} "
            f"{theirs} (the study file changed between the two searches)."
        ]
    return []


def default_margin(validation_acc: float, test_size: int) -> float:
    """The equivalence margin of the accuracy claims when the study file sets none: one binomial
    standard error of a test accuracy a on N test images,

        margin = sqrt(a (1 - a) / N),

    a difference smaller than which cannot be told apart from which test set was drawn. `a` is
    the tuned baseline's validation accuracy, so the margin is fixed before any test accuracy is
    seen; it is clamped to [1/N, 1 - 1/N] so that a perfect validation score still gives one."""
    if test_size < 1:
        raise InvalidValue(f"test_size must be a positive integer, but got {test_size!r}.")
    a = min(max(validation_acc, 1 / test_size), 1 - 1 / test_size)
    return math.sqrt(a * (1 - a) / test_size)
