"""The report's conclusion per architecture, in plain words, read from its verdicts.

The accuracy claim (the ALL against the equal-budget tuned baseline) and the parameters claim
(the ALL against a plain model with as many parameters) are read together:

| accuracy     | parameters              | the conclusion says                                  |
|--------------|-------------------------|------------------------------------------------------|
| supported    | supported               | the ALL wins, and not by size                        |
| supported    | equivalent or opposite  | the ALL wins, and a plain model as big does too      |
| supported    | anything else           | the ALL wins; whether size explains it is open       |
| equivalent   | -                       | no difference within ±margin; which one is cheaper   |
| opposite     | -                       | the tuned baseline wins                              |
| inconclusive | -                       | nothing established at this n, and the n it needs    |
|              |                         | to detect the effect seen, or the margin if larger   |

then the other claims that were decided. `conclusion(report, arch)` is the sentence the report
prints first in each architecture's section; `cheaper` is the rule the registry's `champion`
alias uses too (autoall/report/_aliases.py): fewer parameters, then fewer seconds of training.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from autoall.errors import InvalidValue
from autoall.report._claims import in_units
from autoall.report._decision import N_NEEDED_CAP
from autoall.report._names import VariantName
from autoall.report._types import ArchReport, Claim, Report, RunRecord


@dataclass(frozen=True)
class Cost:
    """What a model costs: its parameters and the seconds its training took."""

    params: float
    seconds: float


def cheaper(a: Cost, b: Cost) -> int:
    """-1 when `a` is cheaper than `b` (fewer parameters, then fewer seconds), +1 when `b` is,
    0 when they cost the same."""
    for x, y in ((a.params, b.params), (a.seconds, b.seconds)):
        if x != y:
            return -1 if x < y else 1
    return 0


def cost_of(runs: Sequence[RunRecord]) -> Cost | None:
    """The mean parameters and training seconds of `runs` (None: no runs)."""
    if not runs:
        return None
    return Cost(
        params=statistics.fmean(r.metrics["params_total"] for r in runs),
        seconds=statistics.fmean(r.metrics["wall_seconds"] for r in runs),
    )


def conclusion(report: Report, arch: str) -> str:
    """The conclusion for architecture `arch` of `report` (ValueError: no such architecture)."""
    for rep in report.archs:
        if rep.arch == arch:
            return arch_conclusion(rep)
    have = ", ".join(r.arch for r in report.archs)
    raise InvalidValue(f"The report has no architecture {arch!r}; it has {have}.")


def arch_conclusion(rep: ArchReport) -> str:
    """`conclude` on one architecture's claims, with the costs of its ALL and tuned baseline."""
    return conclude(
        rep.claims,
        all_cost=cost_of(rep.runs_of(VariantName.ALL)),
        baseline_cost=cost_of(rep.runs_of(VariantName.TUNED_BASELINE)),
    )


def conclude(
    claims: Sequence[Claim], *, all_cost: Cost | None = None, baseline_cost: Cost | None = None
) -> str:
    """One paragraph from the verdicts of `claims` (one architecture's); see the module's table.
    The costs name the cheaper model when the ALL and the tuned baseline are equivalent."""
    by_key = {c.key: c for c in claims}
    accuracy = by_key.get("accuracy")
    if accuracy is None:
        text = "The accuracy claim was not made, so nothing is concluded about the ALL."
    else:
        text = _accuracy(accuracy, by_key.get("parameters"), all_cost, baseline_cost)
    others = [c for c in claims if c.key not in ("accuracy", "parameters")]
    return f"{text}{_others(others)}"


def _effect(c: Claim) -> str:
    assert c.test is not None
    return in_units(c.metric, c.test.estimate.mean, sign=True)


def _accuracy(
    acc: Claim, params: Claim | None, all_cost: Cost | None, baseline_cost: Cost | None
) -> str:
    if acc.test is None or acc.verdict == "undetermined":
        return f"The accuracy claim could not be tested ({acc.reason or 'no data'})."
    est = acc.test.estimate
    if acc.verdict == "supported":
        return _supported(acc, params)
    if acc.verdict == "equivalent":
        margin = in_units(acc.metric, acc.test.margin or 0.0)
        return (
            f"The ALL and the tuned baseline are equivalent within ±{margin} (ALL minus "
            f"baseline {_effect(acc)}); {_cheaper(all_cost, baseline_cost)}."
        )
    if acc.verdict == "opposite":
        worse = in_units(acc.metric, abs(est.mean))
        return (
            f"The tuned baseline beats the ALL by {worse}: the ALL makes the {acc.arch} worse here."
        )
    delta = in_units(acc.metric, max(abs(est.mean), acc.test.margin or 0.0))
    if acc.n_needed is not None and acc.n_needed > est.n:
        need = f"detecting {delta} would need ~{acc.n_needed} {est.unit}"
    elif acc.n_needed is None and acc.mde is not None:
        need = f"detecting {delta} would need more than {N_NEEDED_CAP:,} {est.unit}"
    else:
        need = acc.reason
    return (
        f"No difference between the ALL and the tuned baseline is established at {est.n} "
        f"{est.unit} (ALL minus baseline {_effect(acc)}; {need})."
    )


def _supported(acc: Claim, params: Claim | None) -> str:
    head = f"The ALL beats the tuned baseline by {_effect(acc)}"
    if params is None or params.test is None or params.verdict == "undetermined":
        why = params.reason if params is not None and params.reason else "not run"
        return (
            f"{head}; whether a plain model with as many parameters does as well was not "
            f"tested ({why}), so the gain may be explained by size."
        )
    if params.verdict == "supported":
        return (
            f"{head}, and a plain model with as many parameters by {_effect(params)}: the gain "
            "is not explained by size."
        )
    if params.verdict in ("equivalent", "opposite"):
        return (
            f"{head}, which a plain model with as many parameters also achieves (ALL minus it "
            f"{_effect(params)}, {params.verdict}): the gain is explained by size."
        )
    return (
        f"{head}; whether a plain model with as many parameters does as well is not established "
        f"(ALL minus it {_effect(params)}, {params.verdict}), so size may explain the gain."
    )


def _cheaper(all_cost: Cost | None, baseline_cost: Cost | None) -> str:
    if all_cost is None or baseline_cost is None:
        return "their costs are unknown"
    order = cheaper(all_cost, baseline_cost)
    if order == 0:
        return "they cost the same"
    first, second = ("ALL", "baseline") if order < 0 else ("baseline", "ALL")
    a, b = (all_cost, baseline_cost) if order < 0 else (baseline_cost, all_cost)
    if a.params != b.params:
        return f"the {first} is cheaper ({a.params:,.0f} parameters against {b.params:,.0f})"
    return (
        f"the {first} is cheaper (as many parameters, {a.seconds:.3g} s of training against "
        f"{b.seconds:.3g} s for the {second})"
    )


def _others(claims: Sequence[Claim]) -> str:
    decided = {
        status: [c.key.replace("-", " ") for c in claims if c.verdict == status]
        for status in ("supported", "opposite", "equivalent")
    }
    parts = [f"{status}: {', '.join(keys)}" for status, keys in decided.items() if keys]
    if not claims:
        return ""
    if not parts:
        return " No other claim is decided."
    rest = len(claims) - sum(len(k) for k in decided.values())
    undecided = f"; {rest} undecided" if rest else ""
    return f" Other claims: {'; '.join(parts)}{undecided}."
