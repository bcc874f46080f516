"""The report's decision rule (autoall/report/_decision.py): against scipy, by hand and by simulation.

The simulations are seeded, so every figure below is reproducible; each states its Monte Carlo
standard error, mc_se = sqrt(p (1 - p) / n). The large ones run the t part of the rule vectorised
(``_decide``, the same formulas as ``mixed_effect`` / ``tost_p`` and the module's own
``holm_shaffer``) and check that it agrees with ``claim_test`` + ``verdicts`` on a subset.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from autoall.report._decision import (
    claim_test,
    expected_best,
    holm_shaffer,
    mixed_effect,
    reachable,
    tost_p,
    two_way_bootstrap,
    verdicts,
)

ALPHA = 0.05


def _mc_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _draw(
    rng: np.random.Generator, shape: tuple[int, ...], *, mu: float, rep: float, seed: float
) -> np.ndarray:
    """d[..., r, i] = mu + a_r + e_ri with a ~ N(0, rep^2), e ~ N(0, seed^2); shape (..., R, K)."""
    a = rng.normal(0.0, rep, size=(*shape[:-1], 1))
    return mu + a + rng.normal(0.0, seed, size=shape)


def _decide(d: np.ndarray, *, direction: int, margin: float | None) -> np.ndarray:
    """Statuses (S, m) of S families of m claims, d of shape (S, m, R, K), without a bootstrap."""
    units = d.mean(axis=3) if d.shape[2] >= 2 else d[:, :, 0, :]
    n = units.shape[-1]
    mean, se = units.mean(axis=-1), units.std(axis=-1, ddof=1) / math.sqrt(n)
    p_diff = sps.ttest_1samp(units, 0.0, axis=-1).pvalue
    p_eq = np.ones_like(p_diff)
    if margin is not None:
        p_eq = np.maximum(
            sps.t.sf((mean + margin) / se, n - 1), sps.t.cdf((mean - margin) / se, n - 1)
        )
    adj_d, adj_e = holm_shaffer(p_diff, p_eq)
    status = np.full(mean.shape, "inconclusive", dtype=object)
    found = adj_d < ALPHA
    status[found & (np.sign(mean) == direction)] = "supported"
    status[found & (np.sign(mean) == -direction)] = "opposite"
    status[~found & (adj_e < ALPHA)] = "equivalent"
    return status


def _agrees_with_verdicts(
    d: np.ndarray, status: np.ndarray, *, direction: int, margin: float | None
) -> None:
    for family, expected in zip(d, status, strict=True):
        tests = {
            k: claim_test(dk, direction=direction, margin=margin) for k, dk in enumerate(family)
        }
        assert [v.status for v in verdicts(tests).values()] == list(expected)


# --- mixed_effect and tost_p ---------------------------------------------------------------------


def test_mixed_effect_is_the_t_test_on_replicate_means() -> None:
    d = np.random.default_rng(1).normal(0.3, 1.0, size=(4, 3))
    est = mixed_effect(d.tolist())
    ref = sps.ttest_1samp(d.mean(axis=1), 0.0)
    assert (est.unit, est.n, est.df, est.replicates, est.seeds) == ("replicates", 4, 3, 4, 3)
    assert est.mean == pytest.approx(d.mean())
    assert est.sd == pytest.approx(np.std(d.mean(axis=1), ddof=1))
    assert est.p == pytest.approx(ref.pvalue)
    assert est.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert est.se == pytest.approx(est.sd / 2)


def test_mixed_effect_with_one_replicate_tests_the_seeds() -> None:
    d = np.random.default_rng(2).normal(0.5, 1.0, size=(1, 6))
    est = mixed_effect(d, level=0.9)
    ref = sps.ttest_1samp(d[0], 0.0)
    assert (est.unit, est.n, est.df) == ("seeds", 6, 5)
    assert est.p == pytest.approx(ref.pvalue)
    assert est.ci == pytest.approx(tuple(ref.confidence_interval(0.9)))


def test_mixed_effect_interval_and_p_agree_at_the_boundary() -> None:
    """Units placed so that |t| is the critical value: float rounding alone often puts the
    interval and p on different sides of 0.05; the estimate must not."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        u = rng.normal(0.0, 1.0, size=n)
        u += sps.t.ppf(0.975, n - 1) * u.std(ddof=1) / math.sqrt(n) - u.mean()
        est = mixed_effect(np.stack([u - 0.1, u + 0.1], axis=1))  # n replicates of 2 seeds
        assert est.ci is not None and est.p is not None
        assert est.p == pytest.approx(ALPHA, abs=1e-9)
        assert (est.ci[0] > 0 or est.ci[1] < 0) == (est.p < ALPHA)


def test_mixed_effect_refuses_unbalanced_replicates() -> None:
    with pytest.raises(ValueError, match="balanced"):
        mixed_effect([[0.1, 0.2, 0.3], [0.1, 0.2]])
    with pytest.raises(ValueError, match="balanced"):
        mixed_effect([])


def test_constant_differences_have_no_standard_error() -> None:
    est = mixed_effect([[0.93 - 0.83], [0.92 - 0.82], [0.91 - 0.81]])  # equal up to rounding
    assert est.se is None and est.ci is None and est.p is None
    assert tost_p(est, 0.01) is None
    test = claim_test([[0.1, 0.1], [0.1, 0.1]], direction=1, margin=0.05)
    assert test.undetermined == "zero variance across replicates"
    assert (test.p_difference, test.p_equivalence) == (1.0, 1.0)
    assert (
        claim_test([[0.2]], direction=1, margin=None).undetermined == "fewer than 2 seeds (n = 1)"
    )
    verdict = verdicts({"a": test})["a"]
    assert (verdict.status, verdict.reason) == ("undetermined", "zero variance across replicates")


def test_tost_p_is_the_larger_one_sided_p() -> None:
    est = mixed_effect([[0.1, 0.3], [0.4, 0.2], [0.0, 0.3]])
    assert est.se is not None
    lower = sps.t.sf((est.mean + 0.3) / est.se, 2)  # H0: mu <= -0.3
    upper = sps.t.cdf((est.mean - 0.3) / est.se, 2)  # H0: mu >= +0.3
    assert tost_p(est, 0.3) == pytest.approx(max(lower, upper))
    assert upper > lower  # the mean is above 0: the upper bound is the harder one
    with pytest.raises(ValueError, match="margin must be"):
        tost_p(est, 0.0)


# --- The whole rule by simulation ----------------------------------------------------------------


@pytest.mark.parametrize("replicates", [3, 5])
def test_null_family_wise_error_with_retuning_variance(replicates: int) -> None:
    """mu = 0, sigma_rep = sigma_seed = 1, K = 5, m = 10 claims, 4000 families: any "supported"
    or "opposite" in at most alpha + 2 mc_se = 0.0569 of them (measured 0.046 for R = 3, 0.048
    for R = 5). The naive seed-level t over all R K runs, same data and same adjustment, errs in
    0.68 (R = 3) and 0.69 (R = 5) of the families."""
    families, m, seeds = 4000, 10, 5
    d = _draw(
        np.random.default_rng(replicates), (families, m, replicates, seeds), mu=0, rep=1, seed=1
    )
    margin = 12.0  # wide: most equivalence nulls are rejected, so Shaffer's bound is exercised
    status = _decide(d, direction=1, margin=margin)
    fwer = float(np.mean(np.any((status == "supported") | (status == "opposite"), axis=1)))
    assert fwer <= ALPHA + 2 * _mc_se(ALPHA, families), fwer
    assert np.mean(status == "equivalent") > 0.5
    pooled = d.reshape(families, m, 1, replicates * seeds)
    naive = _decide(pooled, direction=1, margin=margin)
    naive_fwer = float(np.mean(np.any((naive == "supported") | (naive == "opposite"), axis=1)))
    assert naive_fwer > 0.4, naive_fwer
    _agrees_with_verdicts(d[:15], status[:15], direction=1, margin=margin)


def test_power_matches_the_noncentral_t_at_80_percent() -> None:
    """mu = 1 sd of the replicate means, R = 10, m = 1: the noncentral t (df 9, noncentrality
    sqrt(10)) predicts power 0.803; 4000 simulated claims are "supported" at that rate within
    3 mc_se (0.019; measured 0.814), and at least 0.78."""
    claims, replicates, seeds = 4000, 10, 5
    sd_unit = math.sqrt(1 + 1 / seeds)
    d = _draw(np.random.default_rng(3), (claims, 1, replicates, seeds), mu=sd_unit, rep=1, seed=1)
    status = _decide(d, direction=1, margin=None)
    rate = float(np.mean(status == "supported"))
    predicted = sps.nct.sf(sps.t.ppf(0.975, 9), 9, math.sqrt(10))
    assert predicted == pytest.approx(0.803, abs=0.001)
    assert abs(rate - predicted) <= 3 * _mc_se(predicted, claims), (rate, predicted)
    assert rate >= 0.78
    _agrees_with_verdicts(d[:100], status[:100], direction=1, margin=None)


def test_identical_arms_are_equivalent_at_enough_n() -> None:
    """mu = 0, sigma_rep = sigma_seed = 0.2 margin, R = K = 5, 200 claims: "equivalent" in >= 90 %
    (measured 187); the others are differences found at the test's alpha, never "inconclusive"."""
    rng = np.random.default_rng(4)
    statuses = []
    for _ in range(200):
        d = _draw(rng, (5, 5), mu=0.0, rep=0.2, seed=0.2)
        statuses.append(verdicts({0: claim_test(d, direction=1, margin=1.0)})[0].status)
    assert statuses.count("equivalent") >= 180
    assert "inconclusive" not in statuses


def test_two_seeds_are_never_equivalent_however_close() -> None:
    """R = 1, K = 2 (n = 2, df = 1): the two one-sided tests pass whenever the two seeds agree
    within about a third of the margin (t_{0.95,1} = 6.31), which one degree of freedom cannot
    back; the verdict is never "equivalent" and says why, while 3 seeds can be."""
    grid = np.linspace(-1.23, 1.21, 15)
    pairs = [(a, b) for a, b in itertools.product(grid, grid) if a != b]
    pairs += [(0.5, 0.5001), (0.02, 0.03), (-0.3, -0.25), (0.9, 0.95)]
    passed = 0
    for first, second in pairs:
        mean, se = (first + second) / 2, abs(first - second) / 2
        verdict = verdicts({0: claim_test([[first, second]], direction=1, margin=1.0)})[0]
        assert verdict.status != "equivalent"
        tost = abs(mean) + sps.t.ppf(0.95, 1) * se < 1.0
        if tost and abs(mean) / se < sps.t.ppf(0.975, 1):
            passed += 1
            assert verdict.status == "inconclusive" and "needs at least 3 seeds" in verdict.reason
    assert passed > 0  # the rule, not the data, kept them from "equivalent"
    three = verdicts({0: claim_test([[0.02, 0.03, 0.01]], direction=1, margin=1.0)})[0]
    assert three.status == "equivalent"


def test_an_effect_at_the_margin_is_equivalent_at_most_alpha_of_the_time() -> None:
    """mu = margin, R = K = 5, 4000 claims. TOST alone (sigma = 0.1 margin) rejects at its level:
    0.050 within 2 mc_se = 0.0069 (measured 0.048). The whole rule (sigma = 0.4 margin, where the
    difference test does not always reject) says "equivalent" in at most alpha + 2 mc_se
    (measured 0.004)."""
    rng = np.random.default_rng(5)
    d = _draw(rng, (4000, 1, 5, 5), mu=1.0, rep=0.1, seed=0.1)
    units = d.mean(axis=3)[:, 0]
    se = units.std(axis=1, ddof=1) / math.sqrt(5)
    p = np.maximum(
        sps.t.sf((units.mean(axis=1) + 1) / se, 4), sps.t.cdf((units.mean(axis=1) - 1) / se, 4)
    )
    tol = 2 * _mc_se(ALPHA, 4000)
    assert abs(np.mean(p < ALPHA) - ALPHA) <= tol
    assert [tost_p(mixed_effect(x[0]), 1.0) for x in d[:50]] == pytest.approx(p[:50].tolist())
    wide = _draw(rng, (4000, 1, 5, 5), mu=1.0, rep=0.4, seed=0.4)
    status = _decide(wide, direction=1, margin=1.0)
    assert np.mean(status == "equivalent") <= ALPHA + tol
    _agrees_with_verdicts(wide[:50], status[:50], direction=1, margin=1.0)


def test_an_untuned_control_never_supports_a_claim() -> None:
    rng = np.random.default_rng(6)
    for _ in range(20):
        d = _draw(rng, (5, 5), mu=10.0, rep=0.1, seed=0.1)
        knobs = "a control trained with inherited knobs"
        verdict = verdicts({0: claim_test(d, direction=1, margin=None, untuned=knobs)})[0]
        assert verdict.status == "inconclusive"
        assert verdict.reason.startswith(f"against an untuned control ({knobs})")
        assert verdicts({0: claim_test(d, direction=1, margin=None)})[0].status == "supported"


# --- two_way_bootstrap ---------------------------------------------------------------------------


def _issue_null(rng: np.random.Generator, seeds: int, examples: int) -> np.ndarray:
    """correct_v - correct_c (1, K, N): both arms from one distribution whose per-seed quality
    varies a lot (seed noise dominates), then each seed's V and C rows swapped with p = 1/2."""
    difficulty = rng.normal(1.5, 1.5, size=examples)
    quality = rng.normal(0.0, 0.5, size=(seeds, 2, 1))
    correct = rng.random((seeds, 2, examples)) < 1 / (1 + np.exp(-(difficulty + quality)))
    swap = rng.random(seeds) < 0.5
    correct[swap] = correct[swap][:, ::-1]
    return (correct[:, 0].astype(np.int8) - correct[:, 1])[None]


def _shared_example_effects(rng: np.random.Generator, seeds: int, favour_v: float) -> np.ndarray:
    """(1, K, 300): a fraction favour_v of the examples favours V, 0.15 favours C, in all seeds."""
    kind = rng.choice([0, 1, 2], p=[0.85 - favour_v, favour_v, 0.15], size=300)
    p_v, p_c = np.choose(kind, [0.9, 0.95, 0.05]), np.choose(kind, [0.9, 0.05, 0.95])
    correct_v, correct_c = rng.random((seeds, 300)) < p_v, rng.random((seeds, 300)) < p_c
    return (correct_v.astype(np.int8) - correct_c)[None]


@pytest.mark.slow
def test_bootstrap_in_the_issue_null_covers_zero_where_a_per_example_t_does_not() -> None:
    """R = 1, K = 10, N = 360, 200 cases, n_boot = 500: the bootstrap's 95 % interval covers 0 in
    >= 90 % (measured 0.92); a paired t over the seed-averaged example differences rejects in
    > 20 % (measured 0.59); claim_test + verdicts find a difference in at most alpha + 2 mc_se
    = 0.081 (measured 0.07)."""
    rng = np.random.default_rng(7)
    covered = per_example = decided = 0
    for case in range(200):
        diff = _issue_null(rng, 10, 360)
        test = claim_test(
            diff.mean(axis=2), direction=1, margin=None, correct_diff=diff, n_boot=500, seed=case
        )
        assert test.bootstrap is not None
        covered += test.bootstrap.ci[0] <= 0 <= test.bootstrap.ci[1]
        per_example += sps.ttest_1samp(diff[0].mean(axis=0), 0.0).pvalue < ALPHA
        decided += verdicts({0: test})[0].status in ("supported", "opposite")
    assert covered >= 180, covered
    assert per_example > 40, per_example
    assert decided / 200 <= ALPHA + 2 * _mc_se(ALPHA, 200), decided


def test_bootstrap_is_wider_than_the_seed_interval_with_test_set_noise() -> None:
    """Example effects shared by all seeds (15 % of examples favour V, 15 % favour C): the seeds
    agree, but another test set would not."""
    diff = _shared_example_effects(np.random.default_rng(8), 8, favour_v=0.15)
    boot = two_way_bootstrap(diff, n_boot=2000)
    seed_ci = mixed_effect(diff.mean(axis=2)).ci
    assert seed_ci is not None
    assert boot.ci[1] - boot.ci[0] > 1.5 * (seed_ci[1] - seed_ci[0])
    assert boot.mean == pytest.approx(diff.mean())


def test_claim_test_is_the_intersection_union_of_t_and_bootstrap() -> None:
    diff = _shared_example_effects(np.random.default_rng(12), 8, favour_v=0.2)
    test = claim_test(diff.mean(axis=2), direction=1, margin=0.1, correct_diff=diff, n_boot=500)
    assert test.bootstrap is not None and test.bootstrap.p_equivalence is not None
    assert test.estimate.p is not None and test.bootstrap.p > test.estimate.p  # the test set binds
    assert test.p_difference == max(test.estimate.p, test.bootstrap.p)
    tost = tost_p(test.estimate, 0.1)
    assert tost is not None and test.bootstrap.p_equivalence > tost
    assert test.p_equivalence == max(tost, test.bootstrap.p_equivalence)
    other_sign = replace(test, bootstrap=replace(test.bootstrap, mean=-0.01), p_difference=0.001)
    verdict = verdicts({0: other_sign})[0]
    assert verdict.status == "inconclusive" and "differ in sign" in verdict.reason


def test_bootstrap_resamples_replicates() -> None:
    """Replicate r wins on a fraction r / 10 of the examples in all its seeds: the spread is
    between replicates (sd of their means 0.129), which only the replicate level can see."""
    diff = np.zeros((4, 3, 400), dtype=np.int8)
    for r in range(4):
        diff[r, :, : 40 * r] = 1
    boot = two_way_bootstrap(diff, n_boot=2000)
    assert boot.ci[1] - boot.ci[0] > 0.15
    assert boot.ci[0] <= 0.15 <= boot.ci[1]


def test_bootstrap_is_deterministic_and_its_p_values_are_smoothed() -> None:
    diff = _issue_null(np.random.default_rng(9), 5, 200)
    first, again, other = (two_way_bootstrap(diff, seed=s, n_boot=300) for s in (3, 3, 4))
    assert first == again and first != other
    always = two_way_bootstrap(np.ones((2, 3, 50), dtype=np.int8), margin=0.5, n_boot=99)
    assert always.ci == (1.0, 1.0) and always.p == 2 / 100 and always.p_equivalence == 1.0
    assert always.mean == 1.0
    with pytest.raises(ValueError, match="diff must"):
        two_way_bootstrap(np.full((1, 2, 3), 2))
    with pytest.raises(ValueError, match="correct_diff must have shape"):
        claim_test([[0.1, 0.2]], direction=1, margin=None, correct_diff=np.zeros((1, 3, 5)))


def test_inconclusive_names_the_minimum_detectable_effect_and_the_n_needed() -> None:
    d = _draw(np.random.default_rng(13), (4, 3), mu=0.1, rep=0.5, seed=0.5)
    test = claim_test(d, direction=1, margin=0.3)
    verdict = verdicts({0: test, 1: test})[0]  # m = 2: each test at alpha / 2
    est = test.estimate
    assert verdict.status == "inconclusive" and est.se is not None
    t_crit = sps.t.ppf(1 - ALPHA / 4, est.df)
    assert verdict.mde == pytest.approx((t_crit + sps.t.ppf(0.8, est.df)) * est.se)
    delta = max(abs(est.mean), 0.3)

    def power(n: int) -> float:
        crit, nc = sps.t.ppf(1 - ALPHA / 4, n - 1), delta * math.sqrt(n) / est.sd
        return sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)

    needed = next(n for n in range(2, 10_000) if power(n) >= 0.8)
    assert verdict.n_needed == needed
    assert f"is {verdict.mde:.3g}" in verdict.reason and f"needs n = {needed} rep" in verdict.reason
    assert verdicts({}) == {}


# --- Holm-Shaffer --------------------------------------------------------------------------------


def test_holm_shaffer_by_hand() -> None:
    # sorted: 0.01 (d0, x min(4, 2)), 0.03 (e0, x min(3, 2)), 0.04 (d1, x 2), 0.5 (e1, x 1)
    adj_d, adj_e = holm_shaffer([0.01, 0.04], [0.03, 0.5])
    assert adj_d.tolist() == pytest.approx([0.02, 0.08])
    assert adj_e.tolist() == pytest.approx([0.06, 0.5])
    plain_holm = [0.04, 0.09]  # 4 x 0.01, max(3 x 0.03, 2 x 0.04): Shaffer's bound is smaller
    assert all(a < h for a, h in zip(adj_d.tolist(), plain_holm, strict=True))


def test_holm_shaffer_without_equivalence_is_no_more_lenient_than_holm() -> None:
    rng = np.random.default_rng(10)
    for m in (1, 3, 6):
        for _ in range(50):
            p = rng.random(m) ** 3
            adj_d, adj_e = holm_shaffer(p, np.ones(m))
            order = np.argsort(p)
            holm = np.empty(m)
            holm[order] = np.maximum.accumulate(np.minimum(1, (m - np.arange(m)) * p[order]))
            assert np.all(adj_d >= holm - 1e-15)
            assert np.all(adj_e == 1.0)


# --- Planning: expected_best and reachable -------------------------------------------------------


def test_expected_best_is_the_average_best_of_all_subsets() -> None:
    values = [0.71, 0.90, 0.80, 0.90, 0.62, 0.80, 0.75]  # ties included
    got = expected_best(values)
    for n in range(1, len(values) + 1):
        subsets = list(itertools.combinations(values, n))
        assert got[n - 1] == pytest.approx(sum(map(max, subsets)) / len(subsets), rel=1e-12)
    assert got[0] == pytest.approx(np.mean(values)) and got[-1] == max(values)
    with pytest.raises(ValueError, match="non-empty"):
        expected_best([])


def test_expected_best_is_stable_and_monotone_for_500_values() -> None:
    values = np.random.default_rng(11).random(500)
    got = expected_best(values)
    assert np.all(np.diff(got) >= -1e-12) and got[-1] == values.max()
    v = sorted(Fraction(x) for x in values)
    for n in (2, 40, 250, 499):
        exact = sum(v[i - 1] * math.comb(i - 1, n - 1) for i in range(n, 501)) / math.comb(500, n)
        assert got[n - 1] == pytest.approx(float(exact), rel=1e-9)


def test_reachable() -> None:
    assert "No verdict is reachable" in (reachable(replicates=1, seeds=1, claims=1) or "")
    warning = reachable(replicates=2, seeds=5, claims=1)
    assert warning is not None and "df = 1" in warning and "12.71" in warning
    assert "R = 4 replicates" in warning  # t_{0.975,3} = 3.18 < 4.0
    assert reachable(replicates=5, seeds=5, claims=10) is None
    assert reachable(replicates=1, seeds=10, claims=1) is None
    seeds_warning = reachable(replicates=1, seeds=2, claims=3)
    assert seeds_warning is not None and "K = " in seeds_warning
