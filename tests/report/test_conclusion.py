"""The report's conclusion in plain words, one case per reading of the accuracy and parameters
verdicts, and where the report prints it: first in each architecture's section, in report.md and
report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from autoall.report import _decision as decision
from autoall.report import _render as render
from autoall.report._conclusion import Cost, cheaper, conclude, conclusion, cost_of
from autoall.report._types import ArchReport, Claim, Replicate, Report, RunRecord


def _claim(
    key: str,
    verdict: str,
    mean: float,
    *,
    n: int = 2,
    n_needed: int | None = None,
    mde: float | None = None,
    reason: str = "",
) -> Claim:
    """A claim of the mlp whose paired differences (n replicates, one seed) have mean `mean`,
    judged `verdict` (the verdict is the input the conclusion reads)."""
    offsets = np.linspace(-0.001, 0.001, n)
    test = decision.claim_test([[mean + o] for o in offsets], direction=+1, margin=0.005)
    comparator = "param-matched" if key == "parameters" else "tuned-baseline"
    item = Claim(key, "mlp", key, "all", comparator, "test_acc", +1, test=test, verdict=verdict)
    item.n_needed, item.mde, item.reason = n_needed, mde, reason
    return item


def test_supported_and_explained_by_size() -> None:
    text = conclude(
        [_claim("accuracy", "supported", 0.0013), _claim("parameters", "equivalent", 0.0002)]
    )
    assert text == (
        "The ALL beats the tuned baseline by +0.13 points, which a plain model with as many "
        "parameters also achieves (ALL minus it +0.02 points, equivalent): the gain is "
        "explained by size."
    )
    opposite = conclude(
        [_claim("accuracy", "supported", 0.0013), _claim("parameters", "opposite", -0.003)]
    )
    assert opposite.endswith(
        "(ALL minus it -0.30 points, opposite): the gain is explained by size."
    )


def test_supported_and_not_explained_by_size() -> None:
    text = conclude(
        [_claim("accuracy", "supported", 0.0013), _claim("parameters", "supported", 0.004)]
    )
    assert text == (
        "The ALL beats the tuned baseline by +0.13 points, and a plain model with as many "
        "parameters by +0.40 points: the gain is not explained by size."
    )


def test_supported_with_the_size_control_undecided_leaves_size_open() -> None:
    text = conclude(
        [_claim("accuracy", "supported", 0.0013), _claim("parameters", "inconclusive", 0.001)]
    )
    assert text == (
        "The ALL beats the tuned baseline by +0.13 points; whether a plain model with as many "
        "parameters does as well is not established (ALL minus it +0.10 points, inconclusive), "
        "so size may explain the gain."
    )


def test_equivalent_names_the_cheaper_model() -> None:
    claims = [_claim("accuracy", "equivalent", 0.0002)]
    fewer = conclude(claims, all_cost=Cost(1200, 2.0), baseline_cost=Cost(1000, 3.0))
    assert fewer == (
        "The ALL and the tuned baseline are equivalent within ±0.50 points (ALL minus baseline "
        "+0.02 points); the baseline is cheaper (1,000 parameters against 1,200)."
    )
    faster = conclude(claims, all_cost=Cost(1000, 2.0), baseline_cost=Cost(1000, 3.0))
    assert faster.endswith(
        "; the ALL is cheaper (as many parameters, 2 s of training against 3 s for the baseline)."
    )
    assert conclude(claims, all_cost=Cost(1, 1), baseline_cost=Cost(1, 1)).endswith(
        "; they cost the same."
    )


def test_opposite() -> None:
    assert conclude([_claim("accuracy", "opposite", -0.004)]) == (
        "The tuned baseline beats the ALL by 0.40 points: the ALL makes the mlp worse here."
    )


def test_inconclusive_says_the_n_it_would_need() -> None:
    text = conclude([_claim("accuracy", "inconclusive", 0.0013, n_needed=14, mde=0.05)])
    assert text == (
        "No difference between the ALL and the tuned baseline is established at 2 replicates "
        "(ALL minus baseline +0.13 points; detecting 0.50 points would need ~14 replicates)."
    )
    beyond = conclude([_claim("accuracy", "inconclusive", 0.0, n_needed=None, mde=0.05)])
    assert beyond.endswith("; detecting 0.50 points would need more than 10,000 replicates).")


def test_an_untested_accuracy_claim_says_why() -> None:
    item = Claim("accuracy", "mlp", "a", "all", "tuned-baseline", "test_acc", +1)
    item.reason = "not run: no 'all' variant (see the notes)"
    assert conclude([item]) == (
        "The accuracy claim could not be tested (not run: no 'all' variant (see the notes))."
    )


def test_the_other_decided_claims_follow() -> None:
    claims = [
        _claim("accuracy", "opposite", -0.004),
        _claim("custom-loss", "supported", 0.002),
        _claim("gap", "opposite", 0.002),
        _claim("own-lr", "inconclusive", 0.0),
    ]
    assert conclude(claims).endswith(
        " Other claims: supported: custom loss; opposite: gap; 1 undecided."
    )
    none = [_claim("accuracy", "opposite", -0.004), _claim("own-lr", "inconclusive", 0.0)]
    assert conclude(none).endswith(" No other claim is decided.")


def test_cheaper_compares_parameters_then_seconds() -> None:
    assert cheaper(Cost(10, 9), Cost(11, 1)) == -1
    assert cheaper(Cost(10, 2), Cost(10, 1)) == 1
    assert cheaper(Cost(10, 1), Cost(10, 1)) == 0


def _run(variant: str, seed: int, params: int, seconds: float) -> RunRecord:
    metrics = {"params_total": float(params), "wall_seconds": seconds, "test_acc": 0.9}
    metrics |= {"train_eval_acc": 0.95, "params_all": 0.0, "median_epoch_seconds": 0.1}
    return RunRecord("mlp", variant, seed, f"{variant}-{seed}", metrics, [0.9], [0.1], None, False)


def _report() -> Report:
    study = optuna.create_study()
    runs = [_run("all", s, 1200, 2.0 + s) for s in (0, 1)]
    runs += [_run("tuned-baseline", s, 1000, 1.0) for s in (0, 1)]
    rep = ArchReport("mlp", [Replicate(0, study, study, 3, {})], runs=runs, margin=0.005)
    rep.claims = [_claim("accuracy", "equivalent", 0.0002)]
    return Report(
        name="t", path="t.yaml", data="digits", test_size=360, archs=[rep], seeds=(1000,),
        selection_seeds=((2000,),), top_k=1, alpha=0.05, tracking_uri="sqlite:///x.db",
        parent_run_id="p",
    )  # fmt: skip


def test_conclusion_reads_an_architecture_of_a_report_with_its_runs_costs() -> None:
    report = _report()
    assert cost_of(report.archs[0].runs_of("all")) == Cost(1200, 2.5)
    assert conclusion(report, "mlp").endswith(
        "; the baseline is cheaper (1,000 parameters against 1,200)."
    )
    with pytest.raises(ValueError, match=r"The report has no architecture 'cnn'; it has mlp\."):
        conclusion(report, "cnn")


def test_the_conclusion_opens_each_architecture_s_section_in_md_and_html(tmp_path: Path) -> None:
    report = _report()
    render.write(report, tmp_path)
    text = conclusion(report, "mlp")
    md = (tmp_path / "report.md").read_text()
    assert f"## mlp\n\n**Conclusion.** {text}\n\n### Search budgets" in md
    page = (tmp_path / "report.html").read_text()
    assert f"<h2>mlp</h2>\n<p><strong>Conclusion.</strong> {text}</p>\n<h3>Search budgets" in page
