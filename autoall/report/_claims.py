"""The article's claims as hypotheses, tested on the report's paired runs.

Each claim compares a variant V with a comparator C on one metric. Both were trained from each
replicate's own winners (independent searches) on every evaluation seed, so a claim's data is a
matrix d[r][i] = metric(V, replicate r, seed i) - metric(C, replicate r, seed i): paired by
seed (the same initialisation of the shared parts and the same batch order) within a replicate.
autoall/report/_decision.py tests it (the mixed model's test over replicates, the two-way bootstrap for
the test set's own noise, two one-sided tests for equivalence within the margin) and `decide`
adjusts every claim of one report together.

| claim | V | C | metric | article |
|---|---|---|---|---|
| accuracy | ALL | tuned baseline | test accuracy, higher | FAQ 3 |
| parameters | ALL | parameter-matched plain model (re-tuned) | test accuracy, higher | control |
| custom loss | ALL (custom loss) | same, aux_weight = 0 (re-tuned) | test accuracy, higher | section 2.2 |
| own learning rate | ALL | same, all_lr = lr (re-tuned) | test accuracy, higher | section 3.2 |
| more layers | ALL, positions blocks | ALL, positions head (one re-tuned) | test accuracy, higher | section 5.2 |
| generalisation gap | ALL | tuned baseline | train - test accuracy, lower | generalisation |
| 10 % / 30 % data | ALL | tuned baseline, both re-tuned on the share, equal steps | test accuracy, higher | generalisation |
| efficiency | ALL | tuned baseline, both trained alone | epochs / seconds to the target, lower | efficiency |
| tuning cost | ALL study | tuned-baseline study | expected best validation accuracy over 1..N trials, higher | tuning |

Margins of equivalence: the report's margin (accuracy points) for the accuracy-scale claims, a
tenth of the comparator's mean for epochs and seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoall.config import Kind
from autoall.report import _decision as decision
from autoall.report._names import VariantName, at_share, split_share
from autoall.report._types import ArchReport, ArmBudget, Claim, RunRecord

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
    "expected_best": "points",
}
RELATIVE_MARGIN = 0.10  # equivalence margin of epochs and seconds: a tenth of the comparator's


def claims_per_arch(fractions: int) -> int:
    """How many claims one architecture makes (for the check before training)."""
    return 9 + fractions


def arch_claims(rep: ArchReport, *, test_y: np.ndarray) -> list[Claim]:
    """Every claim of one architecture, tested (adjustment and verdicts come later, `decide`)."""
    out: list[Claim] = []
    names = {v.name for rp in rep.replicates for v in rp.variants}

    def claim(key: str, title: str, v: str, c: str, metric: str, sign: int, note: str = "") -> None:
        item = Claim(key, rep.arch, title, v, c, metric, sign, note=note)
        if v not in names or c not in names:
            missing = v if v not in names else c
            item.reason = f"not run: no {str(missing)!r} variant (see the notes)"
        else:
            _test(item, rep, test_y=test_y)
        out.append(item)

    claim(
        "accuracy",
        "Accuracy (FAQ 3): the tuned ALL beats the equal-budget tuned baseline",
        VariantName.ALL,
        VariantName.TUNED_BASELINE,
        "test_acc",
        +1,
    )
    claim(
        "parameters",
        "Not just parameters: the ALL beats a plain model with as many parameters",
        VariantName.ALL,
        VariantName.PARAM_MATCHED,
        "test_acc",
        +1,
    )
    claim(
        "custom-loss",
        "Custom loss (section 2.2): L(W, a) improves the ALL (vs aux_weight = 0)",
        VariantName.CUSTOM,
        VariantName.NO_AUX,
        "test_acc",
        +1,
        "the custom-loss ALL is each replicate's winner, or its best custom-loss trial where "
        "the winner has aux_loss none",
    )
    claim(
        "own-lr",
        "Own learning rate (section 3.2): all_lr beats training the ALL at the base lr",
        VariantName.ALL,
        VariantName.ALL_SHARED_LR,
        "test_acc",
        +1,
    )
    spec = rep.variant(VariantName.ALL).plan.spec
    blocks, head = (
        (VariantName.ALL, VariantName.OTHER_POSITIONS)
        if spec is not None and spec.positions == "blocks"
        else (VariantName.OTHER_POSITIONS, VariantName.ALL)
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
        VariantName.ALL,
        VariantName.TUNED_BASELINE,
        "gap",
        -1,
    )
    for share in sorted({s for n in names if (s := split_share(n)[1]) is not None}):
        claim(
            f"data-{share}",
            f"Less data: with {share} of the training data (equal steps, lr re-tuned on it) "
            "the ALL beats the tuned baseline",
            at_share(VariantName.ALL, share),
            at_share(VariantName.TUNED_BASELINE, share),
            "test_acc",
            +1,
        )
    target = f"validation accuracy {rep.target_acc:.4f}"
    claim(
        "epochs",
        f"Efficiency: the ALL needs fewer epochs to reach {target}",
        VariantName.ALL,
        VariantName.TUNED_BASELINE,
        "target_epoch",
        -1,
    )
    claim(
        "seconds",
        f"Efficiency: the ALL needs fewer seconds of training to reach {target}",
        VariantName.ALL,
        VariantName.TUNED_BASELINE,
        "target_seconds",
        -1,
    )
    out.append(tuning_claim(rep))
    return out


def paired(rep: ArchReport, variant: str, comparator: str) -> list[tuple[RunRecord, RunRecord]]:
    """The runs of `variant` and `comparator` that share a (replicate, seed), in that order."""
    by_v = {(r.replicate, r.seed): r for r in rep.runs_of(variant)}
    by_c = {(r.replicate, r.seed): r for r in rep.runs_of(comparator)}
    return [(by_v[k], by_c[k]) for k in sorted(by_v.keys() & by_c.keys())]


def _test(item: Claim, rep: ArchReport, *, test_y: np.ndarray) -> None:
    """Fill `item.test` from the runs paired by (replicate, seed), or say why it cannot be."""
    v, c = rep.runs_of(item.variant), rep.runs_of(item.comparator)
    by_v = {(r.replicate, r.seed): r for r in v}
    by_c = {(r.replicate, r.seed): r for r in c}
    cells = [(a.replicate, a.seed) for a, _ in paired(rep, item.variant, item.comparator)]
    if not cells:
        item.reason = "the variants share no (replicate, seed) pair"
        return
    replicates = sorted({r for r, _ in cells})
    seeds = [sorted(s for r2, s in cells if r2 == r) for r in replicates]
    if any(s != seeds[0] for s in seeds):
        item.reason = "the replicates were not run on the same seeds"
        return
    if len(replicates) < len(rep.replicates):
        item.note = _join(item.note, f"tested on replicates {replicates} (the others lack a run)")
    if item.metric == "target_seconds":
        arrangements = {r.arrangement for r in (*v, *c)}
        if len(arrangements) > 1:
            item.reason = (
                "not run: the two arms' seconds were measured in different arrangements "
                f"({', '.join(sorted(arrangements))}); time claims need runs timed alike"
            )
            return
        item.note = _join(item.note, f"every run timed {arrangements.pop()}")
    get = _METRICS[item.metric]
    values = [[(get(by_v[(r, s)]), get(by_c[(r, s)])) for s in seeds[0]] for r in replicates]
    missing = sum(1 for row in values for a, b in row if a is None or b is None)
    if missing:
        total = sum(len(row) for row in values)
        item.reason = (
            f"the target was not reached in {missing} of {total} run pairs "
            "(set a lower --target-acc)"
        )
        return
    d = [[float(a) - float(b) for a, b in row] for row in values]  # type: ignore[arg-type]
    correct = None
    if item.metric == "test_acc":
        rows = [[(by_v[(r, s)], by_c[(r, s)]) for s in seeds[0]] for r in replicates]
        if all(a.test_predictions is not None and b.test_predictions is not None
               for row in rows for a, b in row):  # fmt: skip
            correct = np.array(
                [[_correct(a, test_y) - _correct(b, test_y) for a, b in row] for row in rows]
            )
    untuned = _untuned(rep, item.variant, item.comparator)
    item.test = decision.claim_test(
        d,
        direction=item.direction,
        margin=_margin(rep, item.metric, c),
        correct_diff=correct,
        untuned=untuned,
    )


def _correct(run: RunRecord, test_y: np.ndarray) -> np.ndarray:
    assert run.test_predictions is not None
    return np.asarray(run.test_predictions == test_y, dtype=np.int8)


def _untuned(rep: ArchReport, *names: str) -> str | None:
    reasons = {v.untuned for rp in rep.replicates for v in rp.variants if v.name in names}
    reasons.discard(None)
    return "; ".join(sorted(r for r in reasons if r)) or None


def _margin(rep: ArchReport, metric: str, comparator: Sequence[RunRecord]) -> float | None:
    if UNITS[metric] == "points":
        return rep.margin
    values = [v for v in (_METRICS[metric](r) for r in comparator) if v is not None]
    return RELATIVE_MARGIN * float(np.mean(values)) if values and np.mean(values) > 0 else None


def tuning_claim(rep: ArchReport) -> Claim:
    """Expected best validation accuracy against the number of trials (Tang et al. 2020's
    unbiased estimator), averaged over n = 1..N, ALL study minus tuned-baseline study, one
    difference per replicate: tested across replicates."""
    item = Claim(
        "tuning-cost",
        rep.arch,
        "Tuning cost: for the same number of trials the ALL study finds better models "
        "(expected best validation accuracy, mean over 1..N trials)",
        VariantName.ALL,
        VariantName.TUNED_BASELINE,
        "expected_best",
        +1,
    )
    d = []
    for rp in rep.replicates:
        ours, theirs = rp.arms.get(Kind.ALL), rp.arms.get(Kind.BASELINE)
        if ours is None or theirs is None or not ours.values or not theirs.values:
            continue
        gap = budget_curve(ours) - budget_curve(theirs)
        d.append([float(np.mean(gap))])
    if not d:
        item.reason = "not run: no finished trials to draw the curves from"
        return item
    if len(d) < 2:
        item.reason = (
            "one search per arm: re-tuning variance is unmeasured, so tuning cost needs "
            "replicates >= 2 (`--replicates`)"
        )
        return item
    item.test = decision.claim_test(d, direction=+1, margin=rep.margin)
    return item


def budget_curve(arm: ArmBudget) -> np.ndarray:
    """Expected best validation accuracy of n = 1..N trials of one search."""
    return np.asarray(decision.expected_best(arm.values))


def decide(claims: Sequence[Claim], *, alpha: float) -> None:
    """Every tested claim of the report adjusted together (one family); verdicts and reasons."""
    tested = {i: c.test for i, c in enumerate(claims) if c.test is not None}
    adj_d, _ = decision.holm_shaffer(
        [t.p_difference for t in tested.values()], [t.p_equivalence for t in tested.values()]
    )  # the verdicts' own adjustment: kept apart so the difference p shows for every verdict
    for (i, verdict), adjusted in zip(
        decision.verdicts(tested, alpha=alpha).items(), adj_d, strict=True
    ):
        claims[i].adjusted_p = float(adjusted)
        claims[i].adjusted_p_equivalence = verdict.adjusted_p_equivalence
        claims[i].verdict = verdict.status
        claims[i].reason = _in_units(claims[i], verdict)
        claims[i].mde = verdict.mde
        claims[i].n_needed = verdict.n_needed
    for c in claims:
        if c.test is None:
            c.verdict = "undetermined"


def in_units(metric: str, value: float, *, sign: bool = False) -> str:
    """`value` in the metric's units: accuracies as percentage points."""
    unit = UNITS.get(metric, "")
    plus = "+" if sign else ""
    if unit == "points":
        return f"{100 * value:{plus}.2f} points"
    return f"{value:{plus}.3g} {unit}".rstrip()


def _in_units(c: Claim, verdict: decision.ClaimVerdict) -> str:
    """The verdict's reason with its effect sizes in the claim's units (decision.py writes them
    as plain numbers, blind to units)."""
    test = c.test
    assert test is not None
    if verdict.status == "equivalent" and test.margin is not None:
        return verdict.reason.replace(f"±{test.margin:g}", f"±{in_units(c.metric, test.margin)}")
    if (
        verdict.status != "inconclusive"
        or verdict.mde is None
        or "; the minimum" not in verdict.reason
    ):
        return verdict.reason
    est = test.estimate
    delta = max(abs(est.mean), test.margin or 0.0)
    need = f"n = {verdict.n_needed}" if verdict.n_needed is not None else "more than 10,000"
    return (
        f"{verdict.reason.split('; the minimum')[0]}; the minimum detectable effect (80 % "
        f"power) is {in_units(c.metric, verdict.mde)} with {est.n} {est.unit}; detecting "
        f"{in_units(c.metric, delta)} needs {need} {est.unit}"
    )


def family_size(claims: Sequence[Claim]) -> int:
    return sum(1 for c in claims if c.test is not None)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
