"""The report's decision rule: per claim an estimate, a test and a verdict; one family per report.

A claim compares variant V with comparator C. Each arm was tuned R times independently
(replicates r = 0..R-1), each replicate's winner trained on K seeds, runs paired by (r, i):

    d[r, i] = metric(V, r, i) - metric(C, r, i) = mu + a_r + e_ri

a_r: re-tuning variance (sigma_a^2); e_ri: seed variance (sigma_e^2). Chosen test
(``mixed_effect``): a t-test on the R replicate means, df = R - 1. For balanced data the
replicate means are independent with variance sigma_a^2 + sigma_e^2 / K and their grand mean is the
generalised least squares estimate of mu, so this t is exact under normality; it is the F test of
the intercept of the balanced one-way random-effects ANOVA (denominator MS_between), which is what
REML with Kenward-Roger degrees of freedom gives for balanced data (unless REML truncates the
sigma_a^2 estimate at 0, where this test stays the exact one). Not chosen: a t over all R K
runs treats the seeds of one tuning as independent, ignores sigma_a^2 and rejects far too often;
a two-level (cluster) bootstrap with 3 replicates has 10 distinct cluster resamples and is
anti-conservative. With R = 1 the unit is the seed (df = K - 1): the test is conditional on the
one tuning and re-tuning variance is unmeasured (the verdict says so). Unbalanced d: ValueError.

Test accuracy also carries test-set noise: ``two_way_bootstrap`` resamples replicates, seeds and
test examples together, and ``claim_test`` joins it to the t by intersection-union. ``verdicts``
adjusts all claims of a report as one family (``holm_shaffer``); ``reachable`` says before
training whether a verdict can be reached.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import special as _special
from scipy import stats as _scipy_stats

from autoall.errors import InvalidValue

ALPHA = 0.05  # significance level of every verdict
POWER = 0.80  # the power that ``mde`` and ``n_needed`` plan for
N_NEEDED_CAP = 10_000
MIN_EQUIVALENCE_DF = 2  # "equivalent" needs 3 units: one df cannot bound an effect  # ``n_needed`` searches no further
_REL_TOL = 1e-12  # relative float tolerance for "constant" differences
_T_ONE_DF = float(_scipy_stats.t.ppf(0.975, 1))  # 12.706: a two-sided 5 % test on 1 df


@dataclass(frozen=True)
class Estimate:
    """The mean paired difference, its standard error and t-test over the testing units."""

    replicates: int  # R
    seeds: int  # K per replicate
    unit: str  # "replicates" (R >= 2) or "seeds" (R == 1)
    n: int  # number of units: R, or K when R == 1
    mean: float  # mean of all d (== mean of the unit means)
    sd: float  # sample sd of the unit means (ddof=1); NaN when n < 2
    se: float | None  # sd / sqrt(n); None when n < 2 or zero variance
    df: int  # n - 1
    ci: tuple[float, float] | None  # mean +- t_{(1+level)/2, df} se
    p: float | None  # two-sided p of mean == 0 from the same t; None when se is None
    level: float


def mixed_effect(d: Sequence[Sequence[float]], *, level: float = 0.95) -> Estimate:
    """The balanced mixed model's exact test of mu == 0 on ``d[r][i]`` (replicate r, seed i).

        u_r = (1/K) sum_i d[r, i]  (R >= 2; with R == 1 the units are the seeds, u_i = d[0, i])
        se = sd(u) / sqrt(n),   t = mean / se,   df = n - 1
        ci = mean +- t_{(1+level)/2, df} se,   p = 2 P(T_df >= |t|)

    Equals ``scipy.stats.ttest_1samp(u, 0)``; the interval excludes 0 exactly when p < 1 - level
    (where rounding alone would make them disagree, p moves to the interval's side). n < 2, or
    unit means equal to a relative 1e-12: se, ci and p are None. Unbalanced d: ValueError.
    """
    _check_unit("level", level)
    x = _balanced(d)
    n_rep, n_seed = x.shape
    units = x.mean(axis=1) if n_rep >= 2 else x[0]
    n = units.size
    mean = float(np.mean(x))
    sd = float(np.std(units, ddof=1)) if n > 1 else math.nan
    unit = "replicates" if n_rep >= 2 else "seeds"
    if n < 2 or bool(np.ptp(units) <= _REL_TOL * np.max(np.abs(units))):
        return Estimate(n_rep, n_seed, unit, n, mean, sd, None, n - 1, None, None, level)
    se = sd / math.sqrt(n)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * se
    ci, alpha = (mean - half, mean + half), float(f"{1 - level:.12g}")  # 0.05, not 0.05...04
    p = float(2 * _scipy_stats.t.sf(abs(mean) / se, n - 1))
    if (ci[0] > 0 or ci[1] < 0) != (p < alpha):  # only at the boundary, to rounding
        p = math.nextafter(alpha, 0.0) if p >= alpha else alpha
    return Estimate(n_rep, n_seed, unit, n, mean, sd, se, n - 1, ci, p, level)


def tost_p(est: Estimate, margin: float) -> float | None:
    """Two one-sided t-tests (Schuirmann 1987) of H0: |mu| >= ``margin`` (> 0), est's se and df:

        p = max( P(T_df >= (mean + margin) / se),  P(T_df <= (mean - margin) / se) )

    p < alpha rejects both mu <= -margin and mu >= +margin. None when ``est.se`` is None.
    """
    _check_margin(margin)
    if est.se is None:
        return None
    t_low, t_high = (est.mean + margin) / est.se, (est.mean - margin) / est.se
    return float(max(_scipy_stats.t.sf(t_low, est.df), _scipy_stats.t.cdf(t_high, est.df)))


@dataclass(frozen=True)
class Bootstrap:
    """The two-way bootstrap distribution of the mean correctness difference, summarised."""

    mean: float  # the observed mean of diff (the statistic, not the resamples' mean)
    ci: tuple[float, float]  # percentile interval at ``level``
    p: float  # two-sided: min(1, 2 min(P*(theta <= 0), P*(theta >= 0))), smoothed
    p_equivalence: float | None  # max(P*(theta <= -margin), P*(theta >= margin)), smoothed
    n_boot: int


def two_way_bootstrap(
    diff: np.ndarray,
    *,
    margin: float | None = None,
    n_boot: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> Bootstrap:
    """Bootstrap of the mean of ``diff`` (R, K, N) = correct_v - correct_c in {-1, 0, 1}.

    Runs (seeds nested in replicates) and test examples are crossed random factors, so each
    resample draws both, independently (Owen 2007's "pigeonhole" bootstrap, replicate level
    nested): R replicates with replacement (counts c_r), K seeds with replacement within each
    drawn copy of a replicate (weights w_ri), N examples with replacement (counts u_j):

        theta* = sum_{r,i} w_ri sum_j u_j diff[r, i, j] / (R K N)

    w_r. is a sum of c_r independent Multinomial(K, 1/K) draws, i.e. one Multinomial(c_r K, 1/K).
    P*(A) = (1 + #A) / (1 + n_boot). Sums are exact integers: deterministic for a ``seed``. Chunks
    of ~2^23 / N resamples (~70 MB at N = 10000).
    """
    x = np.asarray(diff)
    if x.ndim != 3 or 0 in x.shape:
        raise InvalidValue(
            f"diff must have shape (replicates, seeds, examples), but got {x.shape}."
        )
    if not np.isin(x, (-1, 0, 1)).all():
        raise InvalidValue(f"diff must be in {{-1, 0, 1}}, but got values {np.unique(x)[:5]}.")
    if margin is not None:
        _check_margin(margin)
    if n_boot < 1:
        raise InvalidValue(f"n_boot must be a positive integer, but got {n_boot!r}.")
    _check_unit("level", level)
    n_rep, n_seed, n_ex = x.shape
    exact = np.float32 if n_ex < 2**24 else np.float64  # float32 sums of ints < 2^24 are exact
    runs = np.ascontiguousarray(x.reshape(n_rep * n_seed, n_ex).T, dtype=exact)
    rng = np.random.default_rng(seed)
    numerators = np.empty(n_boot, dtype=np.int64)
    chunk = max(1, min(n_boot, 2**23 // n_ex))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        counts = rng.multinomial(n_rep, np.full(n_rep, 1 / n_rep), size=rows)
        weights = rng.multinomial(counts * n_seed, np.full(n_seed, 1 / n_seed))
        picks = rng.integers(0, n_ex, size=(rows, n_ex), dtype=np.int32)
        u = np.empty((rows, n_ex), dtype=runs.dtype)
        for k in range(rows):
            u[k] = np.bincount(picks[k], minlength=n_ex)
        per_run = np.rint(u @ runs).astype(np.int64)  # sum_j u_j diff[r, i, j], (rows, R K)
        numerators[start : start + rows] = (weights.reshape(rows, -1) * per_run).sum(axis=1)
    total = n_rep * n_seed * n_ex
    theta = numerators / total
    low, high = np.quantile(theta, [(1 - level) / 2, (1 + level) / 2])

    def smoothed(hits: np.ndarray) -> float:
        return (1 + int(np.count_nonzero(hits))) / (1 + n_boot)

    p = min(1.0, 2 * min(smoothed(numerators <= 0), smoothed(numerators >= 0)))
    p_eq = None
    if margin is not None:
        p_eq = min(1.0, max(smoothed(theta <= -margin), smoothed(theta >= margin)))
    mean = float(np.sum(x, dtype=np.int64) / total)
    return Bootstrap(mean, (float(low), float(high)), p, p_eq, n_boot)


@dataclass(frozen=True)
class ClaimTest:
    """Every test of one claim; p_difference and p_equivalence are 1.0 when undetermined."""

    direction: int  # +1: the claim is V > C; -1: V < C
    margin: float | None  # equivalence margin in the metric's units; None: no equivalence test
    estimate: Estimate
    bootstrap: Bootstrap | None  # only for test-accuracy claims (test-set noise)
    p_difference: float  # intersection-union: max(estimate.p, bootstrap.p)
    p_equivalence: float  # max(tost_p, bootstrap.p_equivalence)
    undetermined: str | None  # why the data cannot decide; None when testable
    untuned: str | None  # why the comparator is untuned; such a claim is never "supported"


def claim_test(
    d: Sequence[Sequence[float]],
    *,
    direction: int,
    margin: float | None,
    correct_diff: np.ndarray | None = None,
    untuned: str | None = None,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> ClaimTest:
    """The tests of one claim on ``d[r][i]`` (V - C per replicate and seed, in the metric's units).

    ``correct_diff`` (R, K, N) adds ``two_way_bootstrap`` for test-accuracy claims (d then in
    accuracy fractions, like ``margin``). Intersection-union combination (Berger 1982):

        p_difference = max(p_t, p_bootstrap),   p_equivalence = max(p_tost, p_bootstrap_eq)

    The claim is rejected only when every component rejects: its null is the union of theirs.
    Each component is a valid level-alpha test of a null that contains the claim's null, so when
    the claim's null holds, all of them rejecting is no likelier than any one rejecting, <= alpha:
    the max is a valid p-value, with no multiplicity penalty. The p-values are two-sided;
    ``verdicts`` reads the direction. Undetermined (both p = 1.0): one unit ("fewer than 2 seeds
    (n = 1)") or equal unit means ("zero variance across replicates" or "... seeds").
    """
    if direction not in (1, -1):
        raise InvalidValue(f"direction must be +1 or -1, but got {direction!r}.")
    if margin is not None:
        _check_margin(margin)
    est = mixed_effect(d, level=level)
    boot = None
    if correct_diff is not None:
        shape = np.shape(correct_diff)
        if len(shape) != 3 or shape[:2] != (est.replicates, est.seeds):
            want = f"({est.replicates}, {est.seeds}, examples)"
            raise InvalidValue(f"correct_diff must have shape {want} like d, but got {shape}.")
        boot = two_way_bootstrap(correct_diff, margin=margin, n_boot=n_boot, seed=seed, level=level)
    undetermined = None
    if est.n < 2:
        undetermined = f"fewer than 2 seeds (n = {est.n})"
    elif est.p is None:
        undetermined = f"zero variance across {est.unit}"
    p_diff, p_eq = 1.0, 1.0
    if undetermined is None:
        p_diff = max(est.p or 0.0, boot.p if boot is not None else 0.0)
        if margin is not None:
            boot_eq = boot.p_equivalence if boot is not None else None
            p_eq = max(tost_p(est, margin) or 0.0, boot_eq or 0.0)
    return ClaimTest(direction, margin, est, boot, p_diff, p_eq, undetermined, untuned)


def holm_shaffer(p_diff: ArrayLike, p_eq: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down over the 2m p-values of m claims, with Shaffer's bound on the multiplier.

    Arrays of shape (..., m), claim k's difference and equivalence p at index k. With the 2m
    p-values sorted, p_(1) <= ... <= p_(2m) (ties in input order, differences first):

        adj_(j) = max_{i <= j} min(1, min(2m - i + 1, m) p_(i))

    For one claim the nulls mu == 0 and |mu| >= margin are disjoint, so at most m of the 2m are
    true (Shaffer 1986). Family-wise error: let t <= m nulls be true and p_min the smallest of
    their p-values, at sorted position j. Its rank is at most 2m - t + 1, so its multiplier is
    min(2m - j + 1, m) >= t, and any false rejection needs adj(p_min) < alpha, hence
    p_min < alpha / t, which by Bonferroni over the t true nulls has probability <= alpha. Holm's
    own multiplier 2m - i + 1 is the case without the bound. Returns (adj_diff, adj_eq).
    """
    p_d, p_e = np.asarray(p_diff, dtype=float), np.asarray(p_eq, dtype=float)
    if p_d.shape != p_e.shape or p_d.ndim == 0:
        raise InvalidValue(
            f"p-values must share a shape (..., m), but got {p_d.shape}, {p_e.shape}."
        )
    p = np.concatenate([p_d, p_e], axis=-1)
    if not np.all((p >= 0) & (p <= 1)):
        raise InvalidValue(f"p-values must be in [0, 1], but got {p[~((p >= 0) & (p <= 1))]}.")
    m = p_d.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    multiplier = np.minimum(2 * m - np.arange(2 * m), m)
    ranked = np.minimum(1.0, multiplier * np.take_along_axis(p, order, axis=-1))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.maximum.accumulate(ranked, axis=-1), axis=-1)
    return adjusted[..., :m], adjusted[..., m:]


Status = Literal["supported", "opposite", "equivalent", "inconclusive", "undetermined"]


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's status, adjusted p-values and the reason, in one sentence."""

    status: Status
    adjusted_p: float  # of the finding reported: equivalence for "equivalent", else difference
    adjusted_p_equivalence: float
    reason: str
    mde: float | None  # minimum detectable effect at this n (metric's units)
    n_needed: int | None  # units for power 0.80 at max(|mean|, margin); None beyond the cap


_Key = TypeVar("_Key", bound=Hashable)


def verdicts(tests: Mapping[_Key, ClaimTest], *, alpha: float = ALPHA) -> dict[_Key, ClaimVerdict]:
    """Judge every claim of one report as one family of m = len(tests) claims, 2m hypotheses.

    Undetermined claims stay in the family with p = 1. Adjusted p-values from ``holm_shaffer``
    control the family-wise error rate of all findings (supported, opposite and equivalent
    together) at alpha. Per claim, in order:

    1. undetermined: "undetermined", with the reason;
    2. adjusted difference p < alpha: directional decisions from a two-sided test, by the signs
       of the mean of d and (if tested) the bootstrap's mean. Both the claim's sign: "supported",
       but "inconclusive" against an untuned control; both opposite: "opposite"; mixed:
       "inconclusive". A wrong sign after a rejection has probability <= alpha / 2 per test; for
       Holm's step-down, type I and sign errors together stay at alpha for independent test
       statistics (Shaffer 1980);
    3. adjusted equivalence p < alpha: "equivalent" (within +-margin), from at least
       ``MIN_EQUIVALENCE_DF`` + 1 units (with one degree of freedom two nearly equal runs make
       the variance look small: "inconclusive" then);
    4. otherwise "inconclusive", naming mde = (t_{1-alpha/(2m), df} + t_{0.80, df}) se and
       n_needed, the smallest n (cap 10000) at which the noncentral t (df = n - 1, noncentrality
       max(|mean|, margin) sqrt(n) / sd, sd of the unit means) rejects at alpha / m with power 0.80.
    """
    _check_unit("alpha", alpha)
    keys = list(tests)
    m = len(keys)
    adj_d, adj_e = holm_shaffer(
        [tests[k].p_difference for k in keys], [tests[k].p_equivalence for k in keys]
    )
    return {
        k: _verdict(tests[k], float(a_d), float(a_e), m, alpha)
        for k, a_d, a_e in zip(keys, adj_d, adj_e, strict=True)
    }


def _verdict(test: ClaimTest, adj_d: float, adj_e: float, m: int, alpha: float) -> ClaimVerdict:
    est = test.estimate
    if test.undetermined is not None:
        return ClaimVerdict("undetermined", adj_d, adj_e, test.undetermined, None, None)
    family = f"(m = {m} claim{'s' * (m != 1)}, t on {est.n} {est.unit}, df = {est.df})"
    caveat = ", re-tuning variance unmeasured (1 replicate)" if est.replicates == 1 else ""
    mde, n_needed = _planning(test, alpha, m)

    def verdict(status: Status, reason: str) -> ClaimVerdict:
        p = adj_e if status == "equivalent" else adj_d
        return ClaimVerdict(status, p, adj_e, reason + caveat, mde, n_needed)

    if adj_d < alpha:
        below = f"{_p_text(adj_d, alpha)} {family}"
        effects = [est.mean] + ([test.bootstrap.mean] if test.bootstrap is not None else [])
        signs = {int(np.sign(e)) for e in effects}
        if signs == {test.direction} and test.untuned is not None:
            return verdict("inconclusive", f"against an untuned control ({test.untuned}): {below}")
        if signs == {test.direction}:
            return verdict("supported", f"{below}, mean {est.mean:+.4g} as claimed")
        if signs == {-test.direction}:
            return verdict("opposite", f"opposite direction: mean {est.mean:+.4g}, {below}")
        shown = ", ".join(f"{e:+.4g}" for e in effects)
        return verdict("inconclusive", f"the effects differ in sign ({shown}), {below}")
    if adj_e < alpha and test.margin is not None and est.df < MIN_EQUIVALENCE_DF:
        return verdict(
            "inconclusive",
            f"the equivalence test passes, but equivalence needs at least "
            f"{MIN_EQUIVALENCE_DF + 1} {est.unit} (df >= {MIN_EQUIVALENCE_DF}): with df = "
            f"{est.df} two nearly equal runs make the variance, and so the bound, look small "
            f"{family}",
        )
    if adj_e < alpha and test.margin is not None:
        text = f"{_p_text(adj_e, alpha, 'Holm-Shaffer adjusted p (two one-sided tests)')} {family}"
        return verdict("equivalent", f"equivalent within ±{test.margin:g}: {text}")
    delta = max(abs(est.mean), test.margin or 0.0)
    need = f"n = {n_needed}" if n_needed is not None else f"more than {N_NEEDED_CAP}"
    return verdict(
        "inconclusive",
        f"{_p_text(adj_d, alpha)} {family}; the minimum detectable effect at n = {est.n} "
        f"{est.unit} is {mde:.3g}, and detecting {delta:.3g} with power {POWER:g} needs {need} "
        f"{est.unit}",
    )


def reachable(*, replicates: int, seeds: int, claims: int, alpha: float = ALPHA) -> str | None:
    """Before training: None when a verdict is reachable, else one sentence of why not.

    The unit is the replicate (R >= 2) or the seed (R == 1, n = K); n < 2 is unreachable. A warning
    (not None) too when the critical t_{1-alpha/(2 claims), n-1} >= t_{0.975,1} = 12.71, i.e. no
    better than one degree of freedom, naming the n that brings it under 4.0.
    """
    for name, value in (("replicates", replicates), ("seeds", seeds), ("claims", claims)):
        if not isinstance(value, int) or value < 1:
            raise InvalidValue(f"{name} must be a positive integer, but got {value!r}.")
    _check_unit("alpha", alpha)
    unit, letter = ("replicates", "R") if replicates >= 2 else ("seeds", "K")
    n = replicates if replicates >= 2 else seeds
    if n < 2:
        return (
            "No verdict is reachable: 1 replicate of 1 seed gives one run per arm and no variance "
            "to test against; train at least 2 seeds, or better 3 or more replicates."
        )
    crit = _critical_t(alpha / claims, n - 1)
    if crit < _T_ONE_DF - 1e-9:
        return None
    ks = np.arange(n + 1, N_NEEDED_CAP + 1)
    under = ks[_scipy_stats.t.isf(alpha / claims / 2, ks - 1) < 4.0]
    bring = f"{letter} = {under[0]} {unit} bring it" if under.size else f"no {letter} brings it"
    return (
        f"A verdict needs an effect of more than {crit:.4g} standard errors: with {n} {unit} "
        f"(df = {n - 1}) and {claims} claim{'s' * (claims != 1)} the critical t at alpha / m = {alpha / claims:.3g} "
        f"is {crit:.4g}; {bring} under 4.0."
    )


def expected_best(values: Sequence[float]) -> np.ndarray:
    """Expected best of n trials drawn without replacement from the N observed ``values``, n = 1..N.

    The unbiased estimator of Tang et al. 2020, correcting the with-replacement estimate of Dodge
    et al. 2019: with v_(1) <= ... <= v_(N) sorted ascending (i 1-based),

        E[max_n] = sum_{i=n}^{N} v_(i) C(i - 1, n - 1) / C(N, n)

    (the chance that the best of a random n-subset is v_(i)), with log-gamma weights renormalised
    to sum 1 (stable for N in the hundreds): n = 1 gives the mean, n = N the maximum.
    """
    v = np.sort(np.asarray(values, dtype=float))
    if v.ndim != 1 or v.size == 0:
        raise InvalidValue(f"values must be a non-empty 1-D sequence, but got shape {v.shape}.")
    if not np.all(np.isfinite(v)):
        raise InvalidValue(f"values must be finite, but got {v.tolist()}.")
    big_n = v.size
    log_fact = _special.gammaln(np.arange(big_n + 1) + 1.0)  # log k!, k = 0..N
    i, n = np.meshgrid(np.arange(1, big_n + 1), np.arange(1, big_n + 1))  # rank i, subset size n
    a, b = np.maximum(i - 1, n - 1), n - 1  # log C(i - 1, n - 1), clamped where i < n

    def log_comb(top: np.ndarray | int, k: np.ndarray) -> np.ndarray:
        return np.asarray(log_fact[top] - log_fact[k] - log_fact[top - k])

    log_w = log_comb(a, b) - log_comb(big_n, n)
    w = np.where(i >= n, np.exp(log_w), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.asarray(w @ v, dtype=float)


def _balanced(d: Sequence[Sequence[float]]) -> np.ndarray:
    rows = [np.asarray(row, dtype=float) for row in d]
    sizes = [row.size if row.ndim == 1 else 0 for row in rows]
    if not rows or min(sizes) == 0 or len(set(sizes)) > 1:
        raise InvalidValue(
            "d must be balanced (replicates, seeds): the same number >= 1 of seeds in every "
            f"replicate, but got seeds per replicate {sizes}."
        )
    x = np.stack(rows)
    if not np.all(np.isfinite(x)):
        raise InvalidValue(f"d must be finite, but got {x.tolist()}.")
    return x


def _check_unit(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise InvalidValue(f"{name} must be in (0, 1), but got {value!r}.")


def _check_margin(margin: float) -> None:
    if not isinstance(margin, (int, float, np.floating)) or not 0 < margin < math.inf:
        raise InvalidValue(f"margin must be a positive finite number, but got {margin!r}.")


def _critical_t(alpha: float, df: int) -> float:
    return float(_scipy_stats.t.isf(alpha / 2, df))


def _planning(test: ClaimTest, alpha: float, m: int) -> tuple[float | None, int | None]:
    """(mde, n_needed) for ``verdicts``: power rises with n, so a coarse geometric grid of n
    brackets the answer and the integers inside the bracket find it (two vectorised passes)."""
    est = test.estimate
    if est.se is None:
        return None, None
    mde = (_critical_t(alpha / m, est.df) + float(_scipy_stats.t.ppf(POWER, est.df))) * est.se
    delta = max(abs(est.mean), test.margin or 0.0)

    def power(n: np.ndarray) -> np.ndarray:
        crit, nc = _scipy_stats.t.isf(alpha / m / 2, n - 1), delta / est.sd * np.sqrt(n)
        return np.asarray(
            _scipy_stats.nct.sf(crit, n - 1, nc) + _scipy_stats.nct.cdf(-crit, n - 1, nc)
        )

    grid = np.unique(np.geomspace(2, N_NEEDED_CAP, 48).astype(int))
    hit = power(grid) >= POWER  # never with delta = 0: power is then alpha / m
    j = int(np.argmax(hit))
    if not hit[j] or j == 0:
        return mde, int(grid[0]) if hit[j] else None
    inside = np.arange(grid[j - 1] + 1, grid[j] + 1)
    return mde, int(inside[np.argmax(power(inside) >= POWER)])


def _p_text(p: float, alpha: float, label: str = "Holm-Shaffer adjusted p") -> str:
    """ "Holm-Shaffer adjusted p = 0.00312 < 0.05", never rounded across alpha (0.04996 stays)."""
    if p < 1e-4 <= alpha:
        return f"{label} < 0.0001"
    digits = next(k for k in range(3, 18) if (float(f"{p:.{k}g}") < alpha) == (p < alpha))
    return f"{label} = {p:.{digits}g} {'<' if p < alpha else '>='} {alpha:g}"
