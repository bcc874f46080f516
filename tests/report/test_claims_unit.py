"""The article's claims on a small report built by hand (tests/report/_fixed_report.py): each
claim's pair of variants, metric and direction; the verdict words for a clear effect either
way, an equivalence, too little data, an untuned control; Holm-Shaffer across the report."""

from __future__ import annotations

import copy
import statistics
from dataclasses import replace

import numpy as np
import pytest
from _fixed_report import (
    ALPHA,
    MLP_D,
    MLP_GAP_D,
    MLP_SECONDS,
    NO_AUX_UNTUNED,
    TEST_Y,
    build_report,
    cnn_report,
    mlp_report,
)

from autoall.report import _claims as claims
from autoall.report import _decision as decision
from autoall.report._types import Claim, Report


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report()


def _by_key(report: Report, arch: str) -> dict[str, Claim]:
    return {c.key: c for c in report.claims if c.arch == arch}


def _mean(table: list[list[float]]) -> float:
    return statistics.fmean(x for row in table for x in row)


# (variant, comparator, metric, direction) of each claim, as the article states it
PAIRS = {
    "accuracy": ("all", "tuned-baseline", "test_acc", +1),
    "parameters": ("all", "param-matched", "test_acc", +1),
    "custom-loss": ("custom", "no-aux", "test_acc", +1),
    "own-lr": ("all", "all-shared-lr", "test_acc", +1),
    "gap": ("all", "tuned-baseline", "gap", -1),
    "epochs": ("all", "tuned-baseline", "target_epoch", -1),
    "seconds": ("all", "tuned-baseline", "target_seconds", -1),
    "tuning-cost": ("all", "tuned-baseline", "expected_best", +1),
}


def test_each_claim_compares_the_article_s_pair_on_its_metric_and_direction(
    report: Report,
) -> None:
    mlp, cnn = _by_key(report, "mlp"), _by_key(report, "cnn")
    assert list(mlp) == [
        "accuracy", "parameters", "custom-loss", "own-lr", "more-layers", "gap", "data-10%",
        "epochs", "seconds", "tuning-cost",
    ]  # fmt: skip
    assert len(mlp) == claims.claims_per_arch(1) and len(cnn) == claims.claims_per_arch(0)
    for arch in (mlp, cnn):
        for key, pair in PAIRS.items():
            c = arch[key]
            assert (c.variant, c.comparator, c.metric, c.direction) == pair, (c.arch, key)
    data = mlp["data-10%"]
    assert (data.variant, data.comparator, data.metric, data.direction) == (
        "all@10%", "tuned-baseline@10%", "test_acc", +1,
    )  # fmt: skip
    # more layers: blocks vs head, whichever of the two the ALL winner used
    assert (mlp["more-layers"].variant, mlp["more-layers"].comparator) == ("other-positions", "all")
    assert (cnn["more-layers"].variant, cnn["more-layers"].comparator) == ("all", "other-positions")
    assert all(c.direction == +1 for c in (mlp["more-layers"], cnn["more-layers"]))


def test_each_effect_is_the_variant_minus_its_comparator_on_the_claim_s_metric(
    report: Report,
) -> None:
    mlp, cnn = _by_key(report, "mlp"), _by_key(report, "cnn")

    def mean(c: Claim) -> float:
        assert c.test is not None, (c.arch, c.key, c.reason)
        return c.test.estimate.mean

    assert mean(mlp["accuracy"]) == pytest.approx(_mean(MLP_D["tuned-baseline"]))  # +0.05
    assert mean(mlp["parameters"]) == pytest.approx(_mean(MLP_D["param-matched"]))
    assert mean(mlp["custom-loss"]) == pytest.approx(0.03)
    assert mean(mlp["own-lr"]) == pytest.approx(-0.04)
    assert mean(mlp["more-layers"]) == pytest.approx(_mean(MLP_D["other-positions"]))
    assert mean(mlp["gap"]) == pytest.approx(_mean(MLP_GAP_D))  # train - test, not test
    assert mean(mlp["data-10%"]) == pytest.approx(0.02)
    assert mean(mlp["epochs"]) == pytest.approx(-3.0)
    seconds = _mean(MLP_SECONDS["all"]) - _mean(MLP_SECONDS["tuned-baseline"])
    assert mean(mlp["seconds"]) == pytest.approx(seconds)
    assert mean(mlp["tuning-cost"]) == pytest.approx(0.05)  # the ALL's trials shifted by ~0.05
    assert mean(cnn["accuracy"]) == pytest.approx(0.0003)
    assert mean(cnn["more-layers"]) == pytest.approx(0.03)  # blocks (the ALL) minus head
    assert mean(cnn["gap"]) == pytest.approx(0.03)
    est = mlp["accuracy"].test.estimate  # type: ignore[union-attr]
    assert (est.replicates, est.seeds, est.unit, est.df) == (3, 2, "replicates", 2)
    tuning = mlp["tuning-cost"].test.estimate  # type: ignore[union-attr]
    assert (tuning.replicates, tuning.seeds, tuning.unit) == (3, 1, "replicates")


def test_margins_are_the_report_s_for_accuracies_and_a_tenth_of_the_comparator_for_time(
    report: Report,
) -> None:
    mlp = _by_key(report, "mlp")
    for key in ("accuracy", "parameters", "gap", "tuning-cost"):
        assert mlp[key].test.margin == 0.01, key  # type: ignore[union-attr]
    assert mlp["seconds"].test.margin == pytest.approx(  # type: ignore[union-attr]
        0.1 * _mean(MLP_SECONDS["tuned-baseline"])
    )
    assert mlp["epochs"].test.margin == pytest.approx(0.1 * 31 / 6)  # type: ignore[union-attr]


def test_only_test_accuracy_claims_with_predictions_add_the_test_set_bootstrap(
    report: Report,
) -> None:
    mlp = _by_key(report, "mlp")
    boot = mlp["accuracy"].test.bootstrap  # type: ignore[union-attr]
    assert boot is not None and boot.mean == pytest.approx(0.05)
    # the difference p is the larger of the t's and the bootstrap's (intersection-union)
    test = mlp["accuracy"].test
    assert test is not None and test.p_difference == max(test.estimate.p or 0, boot.p)
    for key in ("parameters", "gap", "seconds"):  # no predictions, or not test accuracy
        assert mlp[key].test.bootstrap is None, key  # type: ignore[union-attr]


def test_the_verdicts_of_the_fixed_report(report: Report) -> None:
    verdicts = {(c.arch, c.key): c.verdict for c in report.claims}
    assert verdicts == {
        ("mlp", "accuracy"): "supported",
        ("mlp", "parameters"): "equivalent",
        ("mlp", "custom-loss"): "inconclusive",  # a clear effect, but against an untuned control
        ("mlp", "own-lr"): "opposite",
        ("mlp", "more-layers"): "inconclusive",
        ("mlp", "gap"): "supported",  # lower is better: a negative difference supports it
        ("mlp", "data-10%"): "undetermined",
        ("mlp", "epochs"): "inconclusive",  # p = 0.009 alone, not after Holm-Shaffer over 13
        ("mlp", "seconds"): "supported",
        ("mlp", "tuning-cost"): "supported",
        ("cnn", "accuracy"): "equivalent",
        ("cnn", "parameters"): "undetermined",
        ("cnn", "custom-loss"): "undetermined",
        ("cnn", "own-lr"): "undetermined",
        ("cnn", "more-layers"): "supported",
        ("cnn", "gap"): "opposite",  # the ALL's gap is larger
        ("cnn", "epochs"): "undetermined",
        ("cnn", "seconds"): "undetermined",
        ("cnn", "tuning-cost"): "undetermined",
    }


def test_the_reasons_use_the_code_s_words_and_the_claim_s_units(report: Report) -> None:
    mlp, cnn = _by_key(report, "mlp"), _by_key(report, "cnn")
    family = "(m = 13 claims, t on 3 replicates, df = 2)"  # one family: both architectures
    assert mlp["accuracy"].reason == (
        f"Holm-Shaffer adjusted p = 0.0065 < 0.05 {family}, mean +0.05 as claimed"
    )
    assert mlp["parameters"].reason == (
        "equivalent within ±1.00 points: Holm-Shaffer adjusted p (two one-sided tests) = "
        f"0.000491 < 0.05 {family}"
    )
    assert mlp["own-lr"].reason.startswith(
        "opposite direction: mean -0.04, Holm-Shaffer adjusted p"
    )
    assert mlp["custom-loss"].reason.startswith(
        f"against an untuned control ({NO_AUX_UNTUNED}): Holm-Shaffer adjusted p = 0.0012 < 0.05"
    )
    assert mlp["epochs"].reason == (
        f"Holm-Shaffer adjusted p = 0.119 >= 0.05 {family}; the minimum detectable effect (80 % "
        "power) is 4.95 epochs with 3 replicates; detecting 3 epochs needs n = 4 replicates"
    )
    assert mlp["more-layers"].reason.endswith(
        "is 8.92 points with 3 replicates; detecting 1.00 points needs n = 16 replicates"
    )
    assert mlp["data-10%"].reason == "zero variance across replicates"
    assert mlp["seconds"].note == "every run timed alone"
    assert cnn["accuracy"].reason.startswith("equivalent within ±1.00 points: ")
    assert cnn["parameters"].reason == "not run: no 'param-matched' variant (see the notes)"
    assert cnn["epochs"].reason == (
        "the target was not reached in 1 of 6 run pairs (set a lower --target-acc)"
    )
    assert cnn["seconds"].reason == (
        "not run: the two arms' seconds were measured in different arrangements (alone, "
        "cohort of 2); time claims need runs timed alike"
    )
    assert cnn["tuning-cost"].reason == (
        "one search per arm: re-tuning variance is unmeasured, so tuning cost needs "
        "replicates >= 2 (`--replicates`)"
    )
    for c in report.claims:  # planning figures only where the verdict is inconclusive for n
        assert (c.mde is not None) == (c.test is not None and c.test.undetermined is None), c.key


def test_an_untuned_control_is_what_keeps_a_clear_effect_from_being_supported() -> None:
    report = build_report(decided=False)
    mlp = report.archs[0]
    custom = next(c for c in mlp.claims if c.key == "custom-loss")
    assert custom.test is not None and custom.test.untuned == NO_AUX_UNTUNED
    for rp in mlp.replicates:  # the same runs, the control re-tuned
        rp.variants = [replace(v, untuned=None) for v in rp.variants]
    mlp.claims = claims.arch_claims(mlp, test_y=TEST_Y)
    claims.decide(report.claims, alpha=ALPHA)
    custom = next(c for c in mlp.claims if c.key == "custom-loss")
    assert custom.test is not None and custom.test.untuned is None
    assert custom.verdict == "supported"


def test_an_untuned_control_never_gives_supported_but_may_give_opposite() -> None:
    strong = [[0.030, 0.031, 0.029, 0.030, 0.032]]  # one replicate: the seeds are the unit

    def judged(d: list[list[float]], untuned: str | None) -> Claim:
        item = Claim("x", "mlp", "x", "all", "no-aux", "test_acc", +1)
        item.test = decision.claim_test(d, direction=+1, margin=0.01, untuned=untuned)
        claims.decide([item], alpha=ALPHA)
        return item

    assert judged(strong, None).verdict == "supported"
    against = judged(strong, "no-aux: tuning_trials is 0")
    assert against.verdict == "inconclusive"
    assert against.reason.startswith("against an untuned control (no-aux: tuning_trials is 0): ")
    assert against.reason.endswith(", re-tuning variance unmeasured (1 replicate)")
    negative = [[-x for x in strong[0]]]
    assert judged(negative, "no-aux: tuning_trials is 0").verdict == "opposite"


def test_too_little_data_is_undetermined_and_says_why() -> None:
    rep = mlp_report()
    keep = {(0, 1000)}  # one replicate, one seed
    rep.runs = [r for r in rep.runs if (r.replicate, r.seed) in keep or r.variant != "all"]
    [one] = [c for c in claims.arch_claims(rep, test_y=TEST_Y) if c.key == "accuracy"]
    assert one.test is not None and one.test.undetermined == "fewer than 2 seeds (n = 1)"
    assert one.note == "tested on replicates [0] (the others lack a run)"
    claims.decide([one], alpha=ALPHA)
    assert (one.verdict, one.reason) == ("undetermined", "fewer than 2 seeds (n = 1)")

    rep = mlp_report()
    rep.runs = [
        r for r in rep.runs if not (r.variant == "all" and r.replicate > 0 and r.seed == 1001)
    ]
    [uneven] = [c for c in claims.arch_claims(rep, test_y=TEST_Y) if c.key == "accuracy"]
    assert uneven.test is None and uneven.reason == "the replicates were not run on the same seeds"

    rep = mlp_report()
    for r in rep.runs:
        if r.variant == "tuned-baseline":
            r.replicate += 10  # no (replicate, seed) in common with the ALL's runs
    [apart] = [c for c in claims.arch_claims(rep, test_y=TEST_Y) if c.key == "accuracy"]
    assert apart.test is None and apart.reason == "the variants share no (replicate, seed) pair"
    claims.decide([apart], alpha=ALPHA)
    assert apart.verdict == "undetermined" and apart.adjusted_p is None


def test_one_replicate_tests_over_seeds_and_says_re_tuning_variance_is_unmeasured() -> None:
    rep = cnn_report()
    rep.runs = [r for r in rep.runs if r.replicate == 1]  # the others lack runs
    [more] = [c for c in claims.arch_claims(rep, test_y=TEST_Y) if c.key == "more-layers"]
    assert more.test is not None and more.note == "tested on replicates [1] (the others lack a run)"
    assert (more.test.estimate.unit, more.test.estimate.n) == ("seeds", 2)
    claims.decide([more], alpha=ALPHA)
    assert more.reason.endswith(", re-tuning variance unmeasured (1 replicate)")


def _borderline() -> Claim:
    """Five seeds of one replicate whose t-test gives p = 0.021 (between alpha / 3 and alpha)."""
    d = [[0.004, 0.012, 0.002, 0.010, 0.006]]
    item = Claim("borderline", "mlp", "b", "all", "tuned-baseline", "test_acc", +1)
    item.test = decision.claim_test(d, direction=+1, margin=None)
    return item


def _strong(key: str) -> Claim:
    item = Claim(key, "mlp", key, "all", "tuned-baseline", "test_acc", +1)
    item.test = decision.claim_test([[0.05, 0.051, 0.049, 0.05, 0.052]], direction=+1, margin=None)
    return item


def test_holm_shaffer_over_several_claims_turns_a_borderline_support_inconclusive() -> None:
    alone = _borderline()
    p = alone.test.p_difference  # type: ignore[union-attr]
    assert ALPHA / 3 < p < ALPHA
    claims.decide([alone], alpha=ALPHA)
    assert alone.verdict == "supported" and alone.adjusted_p == pytest.approx(p)

    family = [_strong("a"), _strong("b"), _borderline()]
    claims.decide(family, alpha=ALPHA)
    assert [c.verdict for c in family] == ["supported", "supported", "inconclusive"]
    # sorted third of 2m = 6 hypotheses: multiplier min(6 - 3 + 1, m = 3) = 3
    assert family[2].adjusted_p == pytest.approx(3 * p)
    assert "(m = 3 claims" in family[2].reason
    # an untested claim is no member of the family: it changes nothing
    untested = Claim("u", "mlp", "u", "all", "x", "test_acc", +1, reason="not run: no 'x'")
    again = [_borderline(), untested]
    claims.decide(again, alpha=ALPHA)
    assert again[0].verdict == "supported" and again[1].verdict == "undetermined"
    assert again[1].adjusted_p is None and again[1].reason == "not run: no 'x'"


def test_the_fixed_report_s_epochs_claim_is_decided_by_the_adjustment(report: Report) -> None:
    epochs = copy.deepcopy(_by_key(report, "mlp")["epochs"])
    assert epochs.test is not None and epochs.test.p_difference < ALPHA  # significant alone
    assert epochs.verdict == "inconclusive" and epochs.adjusted_p > ALPHA  # type: ignore[operator]
    claims.decide([epochs], alpha=ALPHA)
    assert epochs.verdict == "supported"


def test_adjusted_p_values_are_holm_shaffer_over_every_tested_claim_of_the_report(
    report: Report,
) -> None:
    tested = [c for c in report.claims if c.test is not None]
    assert claims.family_size(report.claims) == len(tested) == 13
    adj_d, adj_e = decision.holm_shaffer(
        [c.test.p_difference for c in tested],  # type: ignore[union-attr]
        [c.test.p_equivalence for c in tested],  # type: ignore[union-attr]
    )
    assert [c.adjusted_p for c in tested] == pytest.approx(list(adj_d))
    assert [c.adjusted_p_equivalence for c in tested] == pytest.approx(list(adj_e))
    assert all(c.adjusted_p is None for c in report.claims if c.test is None)
    assert np.all(np.asarray(adj_d) >= [c.test.p_difference for c in tested])  # type: ignore[union-attr]
