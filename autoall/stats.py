"""Small, pure statistics for the report: paired seeds in, intervals, p-values and verdicts out.

Every function takes plain sequences of floats (one value per seed) and has no side effects;
randomness (the Monte Carlo sign flips) comes from a fixed seed, so a report is reproducible to the
digit. Accuracies are fractions in [0, 1]; sentences state differences in percentage points.

Per claim (variant V against comparator C over K seeds; seed i trains both with the same
initialisation and batch order, so the runs are paired): ``paired_t`` and ``sign_flip_p`` on the
per-seed differences, ``example_level_test`` for the test set's own sampling noise, combined by
``claim_test`` into one intersection-union p-value; ``verdicts`` Holm-corrects all the claims of a
report together (``holm``). The summaries across studies (IQM, probability of improvement,
stratified bootstrap) are in autoall/stats_across.py.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _scipy_stats

ALPHA = 0.05  # significance level of every verdict


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``.

        mean = (1/n) sum x_i,    std = sqrt( sum (x_i - mean)^2 / (n - 1) )

    One value: std is NaN (a spread needs two). No values: ValueError.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value, but got none.")
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return float(np.mean(x)), std


def time_to_target(
    val_acc: Sequence[float], epoch_seconds: Sequence[float], target: float
) -> tuple[int | None, float | None]:
    """First epoch (1-based) whose validation accuracy is >= ``target``, and the seconds to it.

    seconds = sum of ``epoch_seconds`` up to and including that epoch. ``(None, None)`` when the
    target is never reached ("not reached" is a valid answer).
    """
    elapsed = 0.0
    for epoch, (acc, seconds) in enumerate(zip(val_acc, epoch_seconds, strict=True), start=1):
        elapsed += seconds
        if acc >= target:
            return epoch, elapsed
    return None, None


def format_p(p: float, *, alpha: float = ALPHA) -> str:
    """A p-value with 3 significant digits, more where rounding would cross ``alpha``.

    The printed value and the verdict must agree: 0.04996 is printed 0.04996, not 0.05.
    """
    if math.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "< 0.0001"
    for digits in range(3, 18):
        text = f"{p:.{digits}g}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return repr(p)


# --- Paired statistics per claim -----------------------------------------------------------------

_REL_TOL = 1e-12  # relative float tolerance: ties of sums, "constant" differences


@dataclass(frozen=True)
class PairedT:
    """Paired t interval and test of ``mean(d) == 0``; ``ci`` and ``p`` are None when undefined."""

    n: int
    mean: float
    sd: float  # sample standard deviation (ddof=1); NaN when n < 2
    ci: tuple[float, float] | None  # mean +- t_{(1+level)/2, n-1} sd / sqrt(n)
    p: float | None  # two-sided, from the same t distribution as ci
    level: float


def paired_t(d: Sequence[float], *, level: float = 0.95) -> PairedT:
    """Paired t interval and two-sided t-test of the mean of the differences ``d``.

        se = sd / sqrt(n),   t = mean / se,   df = n - 1
        ci = mean +- t_{(1+level)/2, df} se,   p = 2 P(T_df >= |t|)

    Both come from the same t distribution, so the interval excludes 0 exactly when
    p < 1 - level; where floating-point rounding alone would make them disagree (|t| equal to the
    critical value to ~15 digits), p is moved to the interval's side of 1 - level by that rounding.
    Equals ``scipy.stats.ttest_1samp(d, 0)`` and its ``confidence_interval(level)``.

    n < 2 or zero variance (all d equal, to a relative 1e-12 so that 0.93 - 0.83 and 0.92 - 0.82
    count as equal): ``ci`` and ``p`` are None. Never p = 0 from a 0/0 standard error.
    """
    x = _finite_1d(d, "d")
    _check_level(level)
    n = x.size
    if n == 0:
        raise ValueError("paired_t needs at least one difference, but got none.")
    mean = float(np.mean(x))
    sd = float(np.std(x, ddof=1)) if n > 1 else math.nan
    if n < 2 or _is_constant(x):
        return PairedT(n=n, mean=mean, sd=sd, ci=None, p=None, level=level)
    se = sd / math.sqrt(n)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * se
    ci = (mean - half, mean + half)
    p = float(2 * _scipy_stats.t.sf(abs(mean) / se, n - 1))
    alpha = 1 - level
    excludes_zero = ci[0] > 0 or ci[1] < 0
    if excludes_zero != (p < alpha):  # only at the boundary, to rounding
        assert abs(p - alpha) < 1e-9, (p, alpha)
        p = math.nextafter(alpha, 0.0) if excludes_zero else alpha
    return PairedT(n=n, mean=mean, sd=sd, ci=ci, p=p, level=level)


def sign_flip_p(
    d: Sequence[float], *, exact_max_n: int = 12, n_resamples: int = 100_000, seed: int = 0
) -> float:
    """Two-sided sign-flip (paired permutation) p-value of ``mean(d) == 0``.

        p = #{eps in {-1, +1}^n : |sum_i eps_i d_i| >= |sum_i d_i|} / 2^n

    Under the null hypothesis each seed's pair is exchangeable, so each difference is equally
    likely to have either sign. Enumerated exactly for n <= ``exact_max_n``; above it, Monte Carlo
    with ``n_resamples`` random sign vectors from ``seed``: p = (1 + hits) / (1 + n_resamples).
    Sums that tie |sum d| up to float rounding (1e-12 sum |d_i|) count as ties. Zeros in d are
    kept: flipping them changes nothing. The smallest exact p is ``sign_flip_min_p(n)``.
    """
    x = _finite_1d(d, "d")
    if x.size == 0:
        raise ValueError("sign_flip_p needs at least one difference, but got none.")
    if not 0 <= exact_max_n <= 24:
        raise ValueError(
            f"exact_max_n must be in [0, 24] (2**n sums are held in memory), "
            f"but got {exact_max_n!r}."
        )
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, but got {n_resamples!r}.")
    threshold = abs(float(np.sum(x))) - _REL_TOL * float(np.sum(np.abs(x)))
    if x.size <= exact_max_n:
        sums = np.zeros(1)
        for value in x:  # all 2^n signed sums, doubling once per difference
            sums = np.concatenate([sums + value, sums - value])
        return float(np.mean(np.abs(sums) >= threshold))
    rng = np.random.default_rng(seed)
    hits, left = 0, n_resamples
    while left > 0:  # chunks bound the memory at 10_000 x n
        rows = min(left, 10_000)
        signs = rng.integers(0, 2, size=(rows, x.size)) * 2.0 - 1.0
        hits += int(np.count_nonzero(np.abs(signs @ x) >= threshold))
        left -= rows
    return (1 + hits) / (1 + n_resamples)


def sign_flip_min_p(n: int) -> float:
    """The smallest p the exact sign-flip test can give with n differences: min(1, 2 / 2^n).

    Reached when all n differences have the same sign (only all-plus and all-minus tie).
    """
    if n < 0:
        raise ValueError(f"n must be a non-negative integer, but got {n!r}.")
    return min(1.0, 2.0 / 2.0**n)


def seeds_needed(alpha_threshold: float) -> int:
    """The fewest seeds n with ``sign_flip_min_p(n) < alpha_threshold``: 6 for 0.05, 9 for 0.005.

    With fewer, the sign-flip test cannot reject at that threshold whatever the data.
    """
    if not 0 < alpha_threshold <= 1:
        raise ValueError(f"alpha_threshold must be in (0, 1], but got {alpha_threshold!r}.")
    n = 1
    while sign_flip_min_p(n) >= alpha_threshold:
        n += 1
    return n


def example_level_test(
    correct_v: ArrayLike, correct_c: ArrayLike, *, level: float = 0.95
) -> PairedT:
    """Paired t-test over test examples: does V beat C beyond the test set's sampling noise?

    ``correct_v``, ``correct_c``: boolean arrays of shape (K seeds, N test examples), True where
    that run got that example right; row i of both comes from seed i.

        delta_j = (1/K) sum_i (correct_v[i, j] - correct_c[i, j]),   j = 1..N

    The effect mean_j delta_j equals mean accuracy(V) - mean accuracy(C); ``paired_t`` over the N
    deltas gives its interval and p (``n`` of the result is N). With K = 1 this is the
    large-sample form of McNemar's test, z = (b - c) / sqrt(b + c) with b, c the discordant
    counts. All delta_j equal: no interval and no p.
    """
    v = _correctness(correct_v, "correct_v")
    c = _correctness(correct_c, "correct_c")
    if v.shape != c.shape:
        raise ValueError(
            f"correct_v and correct_c must have the same shape (seeds, examples), "
            f"but got {v.shape} and {c.shape}."
        )
    delta = (v.sum(axis=0) - c.sum(axis=0)) / v.shape[0]  # integer sums: equal deltas are equal
    return paired_t(delta, level=level)


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    With p_(1) <= ... <= p_(m) sorted (ties keep their input order):

        adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))

    Rejecting where adj < alpha controls the family-wise error rate at alpha (Holm 1979). None
    and NaN (a test that could not be run) are treated as p = 1.0 and still count in m: every
    claim the report makes is part of the family, whether or not it could be tested.
    """
    p = np.array([1.0 if v is None or math.isnan(v) else float(v) for v in pvalues])
    bad = [float(v) for v in p if not 0 <= v <= 1]
    if bad:
        raise ValueError(f"p-values must be in [0, 1] (or None/NaN), but got {bad}.")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return [float(v) for v in adjusted]


@dataclass(frozen=True)
class ClaimTest:
    """The tests of one claim, "V differs from C in ``direction``", on paired per-seed differences.

    ``decision_p`` is the intersection-union p-value (see ``claim_test``); 1.0 when
    ``undetermined`` says why the data cannot decide.
    """

    n: int  # seeds
    direction: int  # +1: the claim is V > C; -1: V < C
    mean: float  # mean per-seed difference V - C
    sd: float  # its sample standard deviation; NaN when n < 2
    t_ci: tuple[float, float] | None  # paired t interval at ``level``
    p_t: float | None
    p_sign_flip: float
    example: PairedT | None  # over test examples, when correctness arrays were given
    decision_p: float
    undetermined: str | None  # "zero variance across seeds", ...; None when testable
    level: float


def claim_test(
    d: Sequence[float],
    *,
    correct_v: ArrayLike | None = None,
    correct_c: ArrayLike | None = None,
    direction: int = 1,
    level: float = 0.95,
) -> ClaimTest:
    """Every test of one claim on the per-seed differences ``d`` (V - C, one per seed).

    Components: the paired t-test (``paired_t``), the exact sign-flip test (``sign_flip_p``) and,
    when ``correct_v``/``correct_c`` (shape (n seeds, N examples)) are given, the example-level
    test (``example_level_test``). The decision combines them by the intersection-union test:

        decision_p = max(p_t, p_sign_flip, p_example)

    The claim is supported only if every component rejects, i.e. the null hypothesis is the
    union of the components' nulls. If any component's null is true, that component alone
    rejects with probability <= alpha, so rejecting when max(p) <= alpha, i.e. when all of them
    reject, also has probability <= alpha: the max is a valid p-value, with no multiplicity
    penalty (Berger 1982). The p-values are two-sided; ``verdicts`` checks the sign.

    Undetermined (decision_p = 1.0): n < 2; zero variance across seeds; all per-example
    differences equal (zero variance across test examples).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, but got {direction!r}.")
    if len(d) == 0:
        raise ValueError("claim_test needs at least one per-seed difference, but got none.")
    if (correct_v is None) != (correct_c is None):
        raise ValueError("correct_v and correct_c must be given together, but got only one.")
    t = paired_t(d, level=level)
    example = None
    if correct_v is not None and correct_c is not None:
        rows = np.shape(correct_v)[0] if np.ndim(correct_v) else 0
        if rows != t.n:
            raise ValueError(
                f"correct_v/correct_c must have one row per seed ({t.n}), but got {rows} rows."
            )
        example = example_level_test(correct_v, correct_c, level=level)
    p_sign_flip = sign_flip_p(d)
    undetermined = None
    if t.n < 2:
        undetermined = f"fewer than 2 seeds (n = {t.n})"
    elif t.p is None:
        undetermined = "zero variance across seeds"
    elif example is not None and example.p is None:
        undetermined = "zero variance across test examples"
    components = [t.p, p_sign_flip] + ([example.p] if example is not None else [])
    decision_p = 1.0
    if undetermined is None:
        decision_p = max(p for p in components if p is not None)  # none is None here
    return ClaimTest(
        n=t.n,
        direction=direction,
        mean=t.mean,
        sd=t.sd,
        t_ci=t.ci,
        p_t=t.p,
        p_sign_flip=p_sign_flip,
        example=example,
        decision_p=decision_p,
        undetermined=undetermined,
        level=level,
    )


Status = Literal["supported", "not supported", "undetermined"]


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's Holm-adjusted decision p-value, its status and the reason, in words."""

    status: Status
    adjusted_p: float
    reason: str


_Key = TypeVar("_Key", bound=Hashable)


def verdicts(claims: Mapping[_Key, ClaimTest], *, alpha: float = ALPHA) -> dict[_Key, ClaimVerdict]:
    """Holm-adjust the decision p-values of all ``claims`` (one family) and judge each claim.

    The family is every claim and architecture of one report, m = len(claims), undetermined
    claims included (their decision p is 1). Per claim, with adj its Holm-adjusted p:

    1. ``claim.undetermined`` (n < 2, zero variance): "undetermined", that reason;
    2. adj < alpha and every effect (per-seed mean and, if tested, per-example mean) has the
       claim's sign: "supported";
    3. adj < alpha otherwise: "not supported", "opposite direction" when every effect has the
       other sign;
    4. n < seeds_needed(alpha / m), i.e. the sign-flip test could not reach Holm's smallest
       threshold alpha / m: "undetermined", "needs n >= N";
    5. otherwise "not supported" (the test could have rejected and did not).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), but got {alpha!r}.")
    keys = list(claims)
    adjusted = holm([claims[k].decision_p for k in keys])
    m = len(keys)
    needed = seeds_needed(alpha / m) if m else 1
    out: dict[_Key, ClaimVerdict] = {}
    for key, adj in zip(keys, adjusted, strict=True):
        claim = claims[key]
        text = format_p(adj, alpha=alpha)
        shown = f"Holm-adjusted p {text}" if text.startswith("<") else f"Holm-adjusted p = {text}"
        below = shown if text.startswith("<") else f"{shown} < {alpha:g}"
        family = f"(m = {m} claims)"
        if claim.undetermined is not None:
            out[key] = ClaimVerdict("undetermined", adj, claim.undetermined)
            continue
        if adj < alpha:
            effects = [claim.mean] + ([claim.example.mean] if claim.example is not None else [])
            signs = {int(np.sign(e)) for e in effects}
            if signs == {claim.direction}:
                out[key] = ClaimVerdict("supported", adj, f"{below} {family}")
            elif signs == {-claim.direction}:
                reason = f"opposite direction: mean effect {claim.mean:+.4g}, {below} {family}"
                out[key] = ClaimVerdict("not supported", adj, reason)
            else:
                reason = f"the per-seed and per-example effects differ in sign, {shown} {family}"
                out[key] = ClaimVerdict("not supported", adj, reason)
        elif claim.n < needed:
            reason = (
                f"needs n >= {needed} seeds: with n = {claim.n} the sign-flip test's smallest "
                f"p is {sign_flip_min_p(claim.n):.3g}, not below alpha / m = {alpha / m:.3g}"
            )
            out[key] = ClaimVerdict("undetermined", adj, reason)
        else:
            out[key] = ClaimVerdict("not supported", adj, f"{shown} >= {alpha:g} {family}")
    return out


# --- Helpers -------------------------------------------------------------------------------------


def _finite_1d(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one value per seed (1-D), but got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, but got {x.tolist()}.")
    return x


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got {level!r}.")


def _is_constant(x: np.ndarray) -> bool:
    """All values equal up to float rounding (differences of accuracies are not exact)."""
    return bool(np.ptp(x) <= _REL_TOL * np.max(np.abs(x)))


def _correctness(values: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (seeds, examples), both >= 1, but got shape {a.shape}."
        )
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be boolean (or 0/1), but got dtype {a.dtype}.")
    return a.astype(np.int64)
