"""The article's claims as hypotheses, tested on the report's paired runs (DESIGN section 6).

Each claim compares a variant V with a comparator C on one metric, per evaluation seed i (seed i
trains both from the same shared initialisation and batch order): d_i = metric(V, i) -
metric(C, i). autoall/stats.py tests the d_i (paired t, exact sign-flip) and, for test
accuracy, the test set's own noise (per test example, the seed-averaged difference in correct
predictions); `decide` Holm-corrects every claim of one report together.

| claim | V | C | metric | article |
|---|---|---|---|---|
| accuracy | ALL | tuned baseline | test accuracy, higher | FAQ 3 |
| parameters | ALL | parameter-matched plain model | test accuracy, higher | control |
| custom loss | ALL (custom loss) | same, aux_weight = 0 | test accuracy, higher | section 2.2 |
| own learning rate | ALL | same, all_lr = lr | test accuracy, higher | section 3.2 |
| more layers | ALL, positions blocks | ALL, positions head | test accuracy, higher | section 5.2 |
| generalisation gap | ALL | tuned baseline | train - test accuracy, lower | generalisation |
| 10 % / 30 % data | ALL | tuned baseline | test accuracy on a share of train, higher | generalisation |
| efficiency | ALL | tuned baseline | epochs / seconds to the target, lower | efficiency |

Tuning cost (trials and seconds until the ALL study first beats the tuned baseline's best) is one
number per pair of searches: it is described, and undetermined without repeated searches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import optuna

from autoall import stats
from autoall.report_types import ArchReport, Claim, RunRecord, TuningCost
from autoall.selection import finished_trials
from autoall.study import best_trial

_METRICS: dict[str, Callable[[RunRecord], float | None]] = {
    "test_acc": lambda r: r.metrics["test_acc"],
    "gap": lambda r: r.gap,
    "target_epoch": lambda r: r.target_epoch,
    "target_seconds": lambda r: r.target_seconds,
}
UNITS: dict[str, str] = {
    "test_acc": "points",
    "gap": "points",
    "target_epoch": "epochs",
    "target_seconds": "s",
}


def arch_claims(rep: ArchReport, *, test_y: np.ndarray) -> list[Claim]:
    """Every claim of one architecture, tested (Holm and verdicts come later, in `decide`)."""
    out: list[Claim] = []

    def claim(key: str, title: str, v: str, c: str, metric: str, sign: int, note: str = "") -> None:
        item = Claim(key, rep.arch, title, v, c, metric, sign, note=note)
        names = {x.name for x in rep.variants}
        if v not in names or c not in names:
            missing = v if v not in names else c
            item.reason = f"not run: no {missing!r} variant (see the notes)"
        else:
            _test(item, rep.runs_of(v), rep.runs_of(c), test_y=test_y)
        out.append(item)

    claim(
        "accuracy",
        "Accuracy (FAQ 3): the tuned ALL beats the equal-budget tuned baseline",
        "all",
        "tuned-baseline",
        "test_acc",
        +1,
    )
    claim(
        "parameters",
        "Not just parameters: the ALL beats a plain model with as many parameters",
        "all",
        "param-matched",
        "test_acc",
        +1,
    )
    custom = "custom" if any(v.name == "custom" for v in rep.variants) else "all"
    note = ""
    if custom == "custom":
        trial = rep.selections["custom"].winner.trial
        note = (
            "the winner has aux_loss none, so the claim is tested with the best custom-loss "
            f"trial (#{trial}) against the same model with aux_weight = 0"
        )
    claim(
        "custom-loss",
        "Custom loss (section 2.2): L(W, a) improves the ALL (vs aux_weight = 0)",
        custom,
        "no-aux",
        "test_acc",
        +1,
        note,
    )
    claim(
        "own-lr",
        "Own learning rate (section 3.2): all_lr beats training the ALL at the base lr",
        "all",
        "all-shared-lr",
        "test_acc",
        +1,
    )
    spec = rep.variant("all").plan.spec
    blocks, head = (
        ("all", "other-positions")
        if spec is not None and spec.positions == "blocks"
        else ("other-positions", "all")
    )
    claim(
        "more-layers",
        "More layers (section 5.2): ALLs after every block beat one ALL at the head",
        blocks,
        head,
        "test_acc",
        +1,
    )
    claim(
        "gap",
        "Generalisation: the ALL has a smaller train-test gap than the tuned baseline",
        "all",
        "tuned-baseline",
        "gap",
        -1,
    )
    for name in sorted({v.name.split("@")[1] for v in rep.variants if "@" in v.name}):
        claim(
            f"data-{name}",
            f"Generalisation with {name} of the training data: the ALL beats the tuned baseline",
            f"all@{name}",
            f"tuned-baseline@{name}",
            "test_acc",
            +1,
        )
    target = f"validation accuracy {rep.target_acc:.4f}"
    claim(
        "epochs",
        f"Efficiency: the ALL needs fewer epochs to reach {target}",
        "all",
        "tuned-baseline",
        "target_epoch",
        -1,
    )
    claim(
        "seconds",
        f"Efficiency: the ALL needs fewer seconds of training to reach {target}",
        "all",
        "tuned-baseline",
        "target_seconds",
        -1,
    )
    out.append(_tuning_claim(rep))
    return out


def _test(
    item: Claim, v: Sequence[RunRecord], c: Sequence[RunRecord], *, test_y: np.ndarray
) -> None:
    """Fill `item.test` from the runs paired by seed, or say why it cannot be tested."""
    seeds = [r.seed for r in v]
    if seeds != [r.seed for r in c]:
        item.reason = "the variants were not run on the same seeds"
        return
    get = _METRICS[item.metric]
    values = [(get(a), get(b)) for a, b in zip(v, c, strict=True)]
    missing = sum(1 for a, b in values if a is None or b is None)
    if missing:
        item.reason = (
            f"the target was not reached in {missing} of {len(values)} seed pairs "
            "(set a lower --target-acc)"
        )
        return
    d = [float(a) - float(b) for a, b in values]  # type: ignore[arg-type]
    correct_v = correct_c = None
    if item.metric == "test_acc" and all(r.test_predictions is not None for r in (*v, *c)):
        correct_v = np.stack([r.test_predictions == test_y for r in v])  # type: ignore[operator]
        correct_c = np.stack([r.test_predictions == test_y for r in c])  # type: ignore[operator]
    item.test = stats.claim_test(
        d, correct_v=correct_v, correct_c=correct_c, direction=item.direction
    )


def _tuning_claim(rep: ArchReport) -> Claim:
    item = Claim(
        "tuning-cost",
        rep.arch,
        "Tuning cost: the ALL study beats the tuned baseline's best within its budget",
        "all",
        "tuned-baseline",
        "trials",
        -1,
        reason="one search per study: repeat both studies with other sampler seeds to test it",
    )
    t = rep.tuning
    if t is None:
        return item
    if t.trials is None:
        item.note = (
            f"no ALL trial beat the tuned baseline's best validation accuracy {t.baseline_best:.4f}"
            f" (ALL study best {t.all_best:.4f})"
        )
    else:
        item.note = (
            f"the ALL study first beat the tuned baseline's best ({t.baseline_best:.4f}) at its "
            f"finished trial {t.trials} ({t.seconds:.1f} s of search); the tuned baseline "
            f"reached that best at its finished trial {t.baseline_trials} "
            f"({t.baseline_seconds:.1f} s)"
        )
    return item


def decide(claims: Sequence[Claim], *, alpha: float) -> None:
    """Holm over every tested claim of the report (one family); fill verdicts and reasons."""
    tested = {i: c.test for i, c in enumerate(claims) if c.test is not None}
    for i, verdict in stats.verdicts(tested, alpha=alpha).items():
        claims[i].adjusted_p = verdict.adjusted_p
        claims[i].verdict = verdict.status
        claims[i].reason = verdict.reason
    for c in claims:
        if c.test is None:
            c.verdict = "undetermined"


def family_size(claims: Sequence[Claim]) -> int:
    return sum(1 for c in claims if c.test is not None)


def tuning_cost(study: optuna.Study, base_study: optuna.Study, budget: int) -> TuningCost | None:
    """Finished trials (and their summed seconds) until the ALL study beat the tuned baseline's
    best validation accuracy, both studies cut at `budget` finished trials."""
    ours, theirs = finished_trials(study, budget), finished_trials(base_study, budget)
    base_best, all_best = best_trial(theirs), best_trial(ours)
    if base_best is None or all_best is None:
        return None
    best = base_best.values[0]
    base_at = theirs.index(base_best) + 1  # number order: the first trial to reach it
    all_values = [_value(t) for t in ours]
    beat = next((i for i, v in enumerate(all_values, start=1) if v is not None and v > best), None)
    return TuningCost(
        baseline_best=best,
        all_best=all_best.values[0],
        trials=beat,
        seconds=_seconds(ours[:beat]) if beat is not None else None,
        baseline_trials=base_at,
        baseline_seconds=_seconds(theirs[:base_at]),
    )


def _value(trial: optuna.trial.FrozenTrial) -> float | None:
    ok = trial.state == optuna.trial.TrialState.COMPLETE and trial.values
    return trial.values[0] if ok else None


def _seconds(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )


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
