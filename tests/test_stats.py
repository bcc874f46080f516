"""The report's statistics against scipy and against values computed by hand."""

from __future__ import annotations

import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from autoall.stats import (
    ClaimTest,
    ClaimVerdict,
    claim_test,
    example_level_test,
    format_p,
    holm,
    mean_std,
    paired_t,
    seeds_needed,
    sign_flip_min_p,
    sign_flip_p,
    time_to_target,
    verdicts,
)
from autoall.stats_across import iqm, probability_of_improvement, stratified_bootstrap_ci


def test_mean_std_uses_the_sample_standard_deviation() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n - 1 = 3
    assert std == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    single_mean, single_std = mean_std([0.9])
    assert single_mean == 0.9 and math.isnan(single_std)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_time_to_target_finds_the_first_epoch_at_or_above_it() -> None:
    val_acc, seconds = [0.5, 0.8, 0.7, 0.9], [1.0, 2.0, 3.0, 4.0]
    assert time_to_target(val_acc, seconds, 0.8) == (2, 3.0)
    assert time_to_target(val_acc, seconds, 0.85) == (4, 10.0)
    assert time_to_target(val_acc, seconds, 0.95) == (None, None)


def test_format_p_never_rounds_across_the_significance_level() -> None:
    assert format_p(0.04996) == "0.04996"
    assert format_p(0.41234) == "0.412"
    assert format_p(0.05) == "0.05"
    assert format_p(1e-7) == "< 0.0001"
    for p in np.linspace(0.0495, 0.0505, 101):
        assert (float(format_p(float(p))) < 0.05) == (p < 0.05)


# --- paired t ------------------------------------------------------------------------------------


def test_paired_t_by_hand_and_against_scipy() -> None:
    r = paired_t([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3), df 2; t_{0.975, 2} = 4.3027
    assert (r.n, r.mean, r.sd) == (3, 2.0, 1.0)
    assert r.ci == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    assert r.p == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2), rel=1e-12)
    assert r.p == pytest.approx(0.0742, abs=1e-4)
    d = [0.012, -0.003, 0.02, 0.008, 0.011, 0.004]
    ref = sps.ttest_1samp(d, 0.0)
    for level in (0.9, 0.95, 0.99):
        r = paired_t(d, level=level)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-12)
        assert r.ci == pytest.approx(tuple(ref.confidence_interval(level)), rel=1e-12)


def test_paired_t_interval_excludes_zero_exactly_when_p_is_below_one_minus_level() -> None:
    rng = np.random.default_rng(0)
    # the mean is set so that t sits on the critical value, to rounding and beyond; unreconciled,
    # about one in five of the cases within 1e-15 of it disagree
    rel_offsets = [0.0, 1e-16, -1e-16, 2e-16, -2e-16, 1e-15, -1e-15, 1e-9, -1e-9, 0.3, -0.3]
    for case in range(100):
        n = int(rng.integers(2, 30))
        level = [0.9, 0.95, 0.99, float(rng.uniform(0.5, 0.999))][case % 4]
        z = rng.normal(size=n)
        z -= z.mean()
        crit = sps.t.ppf((1 + level) / 2, n - 1)
        sign = 1 if case % 2 else -1
        for rel in rel_offsets:
            d = z + sign * crit * (1 + rel) * z.std(ddof=1) / math.sqrt(n)
            r = paired_t(d, level=level)
            assert r.ci is not None and r.p is not None
            assert (r.ci[0] > 0 or r.ci[1] < 0) == (r.p < 1 - level), (n, level, rel)
            t = np.mean(d) / (np.std(d, ddof=1) / math.sqrt(n))
            assert r.p == pytest.approx(2 * sps.t.sf(abs(t), n - 1), abs=1e-9)  # moved by rounding
        d = rng.normal(rng.normal(), rng.uniform(0.1, 3), size=n)  # and plain random inputs
        r = paired_t(d, level=level)
        assert r.ci is not None and r.p is not None
        assert (r.ci[0] > 0 or r.ci[1] < 0) == (r.p < 1 - level)


def test_paired_t_gives_no_interval_or_p_for_zero_variance_or_one_seed() -> None:
    for d in ([0.01, 0.01, 0.01], [0.0, 0.0], [0.93 - 0.83, 0.92 - 0.82, 0.91 - 0.81]):
        r = paired_t(d)  # the last: equal differences that differ in the last bits
        assert r.ci is None and r.p is None
        assert r.n == len(d) and r.mean == pytest.approx(d[0])
    one = paired_t([0.02])
    assert one.ci is None and one.p is None and math.isnan(one.sd)
    for bad in ([], [0.1, math.nan]):
        with pytest.raises(ValueError):
            paired_t(bad)
    with pytest.raises(ValueError, match="level must be in"):
        paired_t([0.1, 0.2], level=95)


# --- sign flip -----------------------------------------------------------------------------------


def _brute_force_sign_flip(d: list[str]) -> float:
    """Exact rational arithmetic over all 2^n sign vectors."""
    x = [Fraction(v) for v in d]
    observed = abs(sum(x))
    signs = list(itertools.product((1, -1), repeat=len(x)))
    hits = sum(abs(sum(e * v for e, v in zip(eps, x, strict=True))) >= observed for eps in signs)
    return hits / len(signs)


def test_sign_flip_p_by_hand() -> None:
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25  # only +++ and --- reach |6|: 2/8
    assert sign_flip_p([1.0] * 6) == 2 / 64
    assert sign_flip_p([1.0, -1.0]) == 1.0  # observed sum 0: every flip ties or exceeds
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_p([0.0, 1.0, 2.0, 3.0]) == 0.25  # a zero doubles hits and total alike
    assert sign_flip_p([0.5]) == 1.0
    # |1 + 2 - 3 + 4| = 4 is reached by 4 of 16 sign vectors: +-+ on (1, 2, -3) flips to a tie
    assert sign_flip_p([1.0, 2.0, -3.0, 4.0]) == _brute_force_sign_flip(["1", "2", "-3", "4"])
    with pytest.raises(ValueError, match="at least one difference"):
        sign_flip_p([])


def test_sign_flip_p_equals_brute_force_with_float_ties() -> None:
    rng = np.random.default_rng(3)
    # accuracy differences in hundredths: many exact ties that floats only nearly reproduce
    cases = [["0.1", "0.2", "-0.3", "0.6"], ["0.07", "0.01", "0.06", "-0.02", "0.04"]]
    cases += [[f"{v / 100:.2f}" for v in rng.integers(-4, 5, size=n)] for n in range(1, 10)]
    cases += [[f"{v:.6f}" for v in rng.normal(size=n)] for n in (3, 7, 10)]
    for d in cases:
        assert sign_flip_p([float(v) for v in d]) == pytest.approx(_brute_force_sign_flip(d)), d
    tie = [0.1, 0.2, -0.3, 0.6]  # -0.1 - 0.2 + 0.3 + 0.6 == 0.6 only up to rounding
    assert abs(-0.1 - 0.2 + 0.3 + 0.6) != abs(sum(tie))
    assert sign_flip_p(tie) == _brute_force_sign_flip(["0.1", "0.2", "-0.3", "0.6"])


def test_sign_flip_p_is_symmetric_and_permutation_invariant() -> None:
    d = [0.013, -0.002, 0.021, 0.008, 0.0, 0.011, -0.004]
    p = sign_flip_p(d)
    assert sign_flip_p([-v for v in d]) == p
    assert sign_flip_p(d[::-1]) == p
    assert sign_flip_p([10 * v for v in d]) == p  # scale-free


def test_sign_flip_p_monte_carlo_is_close_to_exact_and_reproducible() -> None:
    rng = np.random.default_rng(5)
    d = list(rng.normal(0.3, 1.0, size=13))
    exact = sign_flip_p(d, exact_max_n=13)
    mc = sign_flip_p(d)  # n = 13 > exact_max_n = 12
    assert exact * 2**13 == round(exact * 2**13)
    assert mc * 100_001 == pytest.approx(round(mc * 100_001))  # (1 + hits) / (1 + n_resamples)
    assert abs(mc - exact) < 0.007  # 4 standard errors at p = 1/2
    assert sign_flip_p(d) == mc
    assert sign_flip_p(d, seed=1) != mc
    assert sign_flip_p([1.0] * 20, n_resamples=999) == 1 / 1000  # never p = 0


def test_sign_flip_min_p_and_seeds_needed() -> None:
    assert [sign_flip_min_p(n) for n in range(6)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
    for n in range(1, 12):
        assert sign_flip_p([0.01] * n) == sign_flip_min_p(n)
    assert seeds_needed(0.05) == 6  # 2/32 = 0.0625 >= 0.05 > 2/64
    assert seeds_needed(0.05 / 10) == 9  # 2/256 = 0.0078 >= 0.005 > 2/512
    assert seeds_needed(0.0625) == 6  # strictly below
    assert seeds_needed(1.0) == 2
    with pytest.raises(ValueError, match="alpha_threshold"):
        seeds_needed(0.0)


# --- example level -------------------------------------------------------------------------------


def test_example_level_test_is_a_paired_t_over_examples() -> None:
    rng = np.random.default_rng(7)
    correct_c = rng.random((5, 400)) < 0.90
    correct_v = rng.random((5, 400)) < 0.93
    r = example_level_test(correct_v, correct_c)
    assert r.n == 400
    assert r.mean == pytest.approx(correct_v.mean() - correct_c.mean())  # difference of accuracy
    delta = (correct_v.astype(float) - correct_c).mean(axis=0)
    assert r.p == pytest.approx(sps.ttest_1samp(delta, 0.0).pvalue, rel=1e-9)
    assert r.ci is not None and r.p is not None
    assert (r.ci[0] > 0) == (r.p < 0.05)


def test_example_level_test_with_one_seed_agrees_with_mcnemar() -> None:
    n, b, c = 1000, 40, 20  # b: V right and C wrong; c: V wrong and C right
    correct_c = np.ones((1, n), dtype=bool)
    correct_v = np.ones((1, n), dtype=bool)
    correct_c[0, :b] = False
    correct_v[0, b : b + c] = False
    r = example_level_test(correct_v, correct_c)
    mcnemar_p = 2 * sps.norm.sf(abs(b - c) / math.sqrt(b + c))  # z = 2.582, p = 0.0098
    assert r.p == pytest.approx(mcnemar_p, rel=0.03)
    assert r.mean == pytest.approx((b - c) / n)


def test_example_level_test_without_variation_or_with_bad_shapes() -> None:
    same = np.random.default_rng(0).random((3, 50)) < 0.9
    r = example_level_test(same, same)
    assert r.p is None and r.ci is None and r.mean == 0.0
    with pytest.raises(ValueError, match="same shape"):
        example_level_test(same, same[:2])
    with pytest.raises(ValueError, match="shape \\(seeds, examples\\)"):
        example_level_test(same[0], same[0])
    with pytest.raises(ValueError, match="boolean"):
        example_level_test(same * 0.5, same)


# --- Holm ----------------------------------------------------------------------------------------


def _holm_reference(p: list[float]) -> list[float]:
    """statsmodels' multipletests(method="holm"), written out as a loop."""
    m = len(p)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_holm_by_hand_and_against_a_reference() -> None:
    # sorted: 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert holm([0.5, 0.5, 0.5]) == [1.0, 1.0, 1.0]  # clipped
    assert holm([]) == []
    rng = np.random.default_rng(2)
    for m in (1, 2, 5, 17):
        p = list(rng.random(m) ** 3)
        assert holm(p) == pytest.approx(_holm_reference(p))
        assert all(a >= b for a, b in zip(holm(p), p, strict=True))


def test_holm_counts_missing_p_values_as_one() -> None:
    assert holm([0.01, None]) == pytest.approx([0.02, 1.0])
    assert holm([0.01, math.nan, 0.02]) == pytest.approx([0.03, 1.0, 0.04])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([0.5, 1.5])


# --- claims and verdicts -------------------------------------------------------------------------

STRONG = [0.021, 0.018, 0.025, 0.02, 0.017, 0.023, 0.019, 0.022, 0.024, 0.016]  # n = 10, all > 0


def test_claim_test_is_the_intersection_union_of_its_components() -> None:
    c = claim_test(STRONG)
    assert isinstance(c, ClaimTest)
    assert c.n == 10 and c.undetermined is None and c.example is None
    assert c.p_sign_flip == 2 / 1024
    assert c.p_t is not None and c.p_t < 1e-6
    assert c.decision_p == max(c.p_t, c.p_sign_flip) == 2 / 1024
    # the same per-seed gains made on three test examples only: the test set's noise decides
    n_examples, gains = 100, [2, 1, 3, 2, 1, 3, 2, 2, 3, 1]
    correct_c = np.random.default_rng(4).random((10, n_examples)) < 0.9
    correct_c[:, :3] = False
    correct_v = correct_c.copy()
    for seed, k in enumerate(gains):
        correct_v[seed, :k] = True
    d = list(correct_v.mean(axis=1) - correct_c.mean(axis=1))
    c = claim_test(d, correct_v=correct_v, correct_c=correct_c)
    assert c.example is not None and c.example.p is not None and c.p_t is not None
    assert c.example.mean == pytest.approx(c.mean)
    assert c.decision_p == max(c.p_t, c.p_sign_flip, c.example.p) == c.example.p
    assert c.decision_p > 0.05
    assert verdicts({"few examples": c})["few examples"].status == "not supported"
    assert verdicts({"seeds only": claim_test(d)})["seeds only"].status == "supported"


def test_claim_test_interval_agrees_with_its_own_test() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        c = claim_test(list(rng.normal(0.01, 0.01, size=n)), level=0.95)
        assert c.t_ci is not None and c.p_t is not None
        assert (c.t_ci[0] > 0 or c.t_ci[1] < 0) == (c.p_t < 0.05)


def test_claim_test_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="direction must be"):
        claim_test(STRONG, direction=0)
    with pytest.raises(ValueError, match="at least one"):
        claim_test([])
    ones = np.ones((10, 20), dtype=bool)
    with pytest.raises(ValueError, match="given together"):
        claim_test(STRONG, correct_v=ones)
    with pytest.raises(ValueError, match="one row per seed"):
        claim_test(STRONG, correct_v=ones[:5], correct_c=ones[:5])


def test_zero_variance_or_one_seed_is_undetermined_never_p_zero() -> None:
    constant = claim_test([0.93 - 0.83, 0.92 - 0.82, 0.91 - 0.81, 0.9 - 0.8, 0.89 - 0.79])
    single = claim_test([0.05])
    assert constant.decision_p == 1.0 and constant.p_t is None
    result = verdicts({"constant": constant, "single": single})
    assert result["constant"].status == "undetermined"
    assert result["constant"].reason == "zero variance across seeds"
    assert result["constant"].adjusted_p == 1.0
    assert result["single"].status == "undetermined"
    assert "fewer than 2 seeds" in result["single"].reason
    same = np.ones((3, 20), dtype=bool)
    same[:, 0] = False
    flat = verdicts({"x": claim_test([0.01, 0.02, 0.03], correct_v=same, correct_c=same)})
    assert flat["x"] == ClaimVerdict("undetermined", 1.0, "zero variance across test examples")


def test_five_seeds_in_a_family_of_ten_claims_are_undetermined() -> None:
    rng = np.random.default_rng(8)
    claims = {f"claim {i}": claim_test(list(rng.normal(0.02, 0.01, size=5))) for i in range(10)}
    for v in verdicts(claims).values():
        assert v.status == "undetermined"
        assert v.reason.startswith("needs n >= 9")


def test_strong_effects_are_supported_in_their_direction_only() -> None:
    negative = [-v for v in STRONG]
    result = verdicts(
        {
            "up": claim_test(STRONG),
            "down, claimed up": claim_test(negative),
            "down, claimed down": claim_test(negative, direction=-1),
        }
    )
    assert result["up"].status == "supported"
    assert result["up"].adjusted_p == pytest.approx(3 * 2 / 1024)  # Holm, all three tied
    assert result["down, claimed up"].status == "not supported"
    assert result["down, claimed up"].reason.startswith("opposite direction")
    assert result["down, claimed down"].status == "supported"


def test_effects_of_opposite_sign_per_seed_and_per_example_are_not_supported() -> None:
    correct_c = np.ones((10, 400), dtype=bool)
    correct_v = np.ones((10, 400), dtype=bool)
    correct_v[:, :100] = False  # V clearly worse on the examples ...
    result = verdicts({"x": claim_test(STRONG, correct_v=correct_v, correct_c=correct_c)})
    assert result["x"].status == "not supported"  # ... but the per-seed differences say better
    assert "differ in sign" in result["x"].reason


def test_holm_makes_a_claim_that_passes_alone_fail_in_a_large_family() -> None:
    modest = [0.3, -0.1, 0.5, 0.2, 0.4, 0.1, 0.6, 0.1, 0.3, 0.2]  # p_t 0.0032, sign flip 8/1024
    alone = verdicts({"modest": claim_test(modest)})["modest"]
    assert alone.status == "supported" and alone.adjusted_p == 8 / 1024
    rng = np.random.default_rng(9)
    family = {"modest": claim_test(modest)}
    family |= {f"null {i}": claim_test(list(rng.normal(0, 1, size=10))) for i in range(9)}
    crowded = verdicts(family)["modest"]
    assert crowded.adjusted_p == pytest.approx(10 * 8 / 1024)  # the smallest p, times m
    assert crowded.status == "not supported" and ">= 0.05 (m = 10 claims)" in crowded.reason
    # undetermined claims still count in m
    undetermined = {f"flat {i}": claim_test([0.01] * 10) for i in range(4)}
    counted = verdicts({"strong": claim_test(STRONG)} | undetermined)["strong"]
    assert counted.status == "supported" and counted.adjusted_p == pytest.approx(5 * 2 / 1024)


def test_verdicts_validates_alpha_and_accepts_no_claims() -> None:
    assert verdicts({}) == {}
    with pytest.raises(ValueError, match="alpha must be"):
        verdicts({"x": claim_test(STRONG)}, alpha=5)


# --- across studies ------------------------------------------------------------------------------


def test_iqm_is_the_25_percent_trimmed_mean() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # mean of 3, 4, 5, 6
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # one cut from each end: mean of 2, 3, 4
    assert iqm([[8, 1], [2, 7], [3, 6], [4, 5]]) == 4.5  # pooled over every axis
    x = np.random.default_rng(0).normal(size=37)
    assert iqm(x) == pytest.approx(sps.trim_mean(x, 0.25))
    with pytest.raises(ValueError, match="at least one value"):
        iqm([])


def test_probability_of_improvement_averages_over_tasks() -> None:
    x = {"a": [1, 2, 3], "b": [5, 6]}
    y = {"a": [2], "b": [1, 2, 3]}
    assert probability_of_improvement(x, y) == 0.75  # (1/2 + 1) / 2
    assert probability_of_improvement(y, x) == 0.25
    assert probability_of_improvement({"a": [3, 3]}, {"a": [1, 3]}) == 0.75  # ties one half
    with pytest.raises(ValueError, match="same, non-empty tasks"):
        probability_of_improvement({"a": [1]}, {"b": [1]})


def test_stratified_bootstrap_ci_by_hand() -> None:
    # one stratum with runs 0 and 1: the resampled mean is 0, 1/2, 1 with probability 1/4, 1/2, 1/4
    def mean(r: dict[str, np.ndarray]) -> float:
        return float(np.mean(np.concatenate(list(r.values()))))

    assert stratified_bootstrap_ci({"t": [0.0, 1.0]}, mean, level=0.9) == (0.0, 1.0)
    assert stratified_bootstrap_ci({"t": [0.0, 1.0]}, mean, level=0.4) == (0.5, 0.5)
    # runs never move between strata: 3 zeros and 2 ones pooled always average 2/5
    assert stratified_bootstrap_ci({"a": [0.0] * 3, "b": [1.0] * 2}, mean) == pytest.approx(
        (0.4, 0.4)
    )


def test_stratified_bootstrap_ci_for_iqm_and_probability_of_improvement() -> None:
    rng = np.random.default_rng(12)
    scores = {task: rng.normal(0.9, 0.02, size=5) for task in ("mnist", "digits", "cifar")}

    def pooled_iqm(r: dict[str, np.ndarray]) -> float:
        return iqm(np.concatenate(list(r.values())))

    low, high = stratified_bootstrap_ci(scores, pooled_iqm, n_boot=500)
    assert low < pooled_iqm(scores) < high
    assert stratified_bootstrap_ci(scores, pooled_iqm, n_boot=500) == (low, high)  # fixed seed
    assert stratified_bootstrap_ci(scores, pooled_iqm, n_boot=500, seed=1) != (low, high)
    # paired seeds: columns (V, C) of one row stay together
    pairs = {task: np.column_stack([s + 0.01, s]) for task, s in scores.items()}

    def poi(r: dict[str, np.ndarray]) -> float:
        return probability_of_improvement(
            {t: a[:, 0] for t, a in r.items()}, {t: a[:, 1] for t, a in r.items()}
        )

    def paired_gain(r: dict[str, np.ndarray]) -> float:
        return float(np.mean([np.mean(a[:, 0] - a[:, 1]) for a in r.values()]))

    assert stratified_bootstrap_ci(pairs, paired_gain, n_boot=200) == pytest.approx((0.01, 0.01))
    poi_low, poi_high = stratified_bootstrap_ci(pairs, poi, n_boot=200)
    assert 0 <= poi_low <= poi(pairs) <= poi_high <= 1
    # independent run sets (as rliable): strata keyed by (task, variant)
    apart = {(t, "V"): s + 1.0 for t, s in scores.items()} | {
        (t, "C"): s for t, s in scores.items()
    }

    def poi_apart(r: dict[tuple[str, str], np.ndarray]) -> float:
        tasks = {t for t, _ in r}
        return probability_of_improvement(
            {t: r[(t, "V")] for t in tasks}, {t: r[(t, "C")] for t in tasks}
        )

    assert stratified_bootstrap_ci(apart, poi_apart, n_boot=200) == (1.0, 1.0)
    with pytest.raises(ValueError, match="runs >= 1"):
        stratified_bootstrap_ci({"a": []}, pooled_iqm)
