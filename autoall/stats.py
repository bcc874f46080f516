"""Small, pure statistics for the report: seeds in, numbers and one honest sentence out.

Every function takes plain sequences of floats (one value per seed) and has no side effects;
randomness (the bootstrap) comes from a fixed seed, so a report is reproducible to the digit.
Accuracies are fractions in [0, 1]; sentences state differences in percentage points.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats

ALPHA = 0.05  # significance level of every verdict
N_BOOT = 10_000  # bootstrap resamples
BOOT_SEED = 0  # fixed: the same inputs always give the same interval


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


def bootstrap_ci(
    variant: Sequence[float],
    baseline: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the difference of means, ``mean(variant) - mean(baseline)``.

    Each group is resampled with replacement independently (they are independent seeds, not
    pairs), ``n_boot`` times: d_b = mean(variant*_b) - mean(baseline*_b). The interval is the
    ((1 - level)/2, (1 + level)/2) quantiles of the d_b. Deterministic for a given ``seed``.
    """
    x = np.asarray(variant, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError(
            f"bootstrap_ci needs values in both groups, but got {x.size} and {y.size}."
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got {level!r}.")
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    dy = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(dx - dy, [tail, 1 - tail])
    return float(low), float(high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) for mean(a) != mean(b).

        t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b),   Welch-Satterthwaite d.o.f.

    Computed by ``scipy.stats.ttest_ind(a, b, equal_var=False)``. When both groups have zero
    variance t is 0/0 and scipy returns NaN; then the data decide exactly: 1.0 if the means are
    equal (no evidence of a difference), 0.0 if they differ (every seed agrees). Needs >= 2
    values per group.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ValueError(
            f"welch_p needs at least 2 values per group, but got {x.size} and {y.size}."
        )
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if x[0] == y[0] else 0.0
    with warnings.catch_warnings():  # "precision loss" when one group is constant: harmless
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_scipy_stats.ttest_ind(x, y, equal_var=False).pvalue)


def prob_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) over all pairs, ties counted one half (the common-language effect size).

        P = (1 / (n_x n_y)) sum_i sum_j ( [x_i > y_j] + 0.5 [x_i == y_j] )

    0.5 means no tendency; it equals the Mann-Whitney U statistic of x divided by n_x n_y.
    """
    a = np.asarray(x, dtype=float)[:, None]
    b = np.asarray(y, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        raise ValueError(
            f"prob_greater needs values in both groups, but got {a.size} and {b.size}."
        )
    return float(np.mean((a > b) + 0.5 * (a == b)))


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


def is_significant(p: float, alpha: float = ALPHA) -> bool:
    """p < alpha; a NaN p-value is never significant."""
    return bool(p < alpha)


def verdict(
    *,
    label: str,
    baseline_label: str,
    diff: float,
    ci: tuple[float, float],
    p: float,
    prob: float,
    n: int,
    alpha: float = ALPHA,
) -> str:
    """One sentence comparing a variant with the baseline; says "not significant" when p >= alpha.

    ``diff`` and ``ci`` are differences of mean accuracy (fractions; printed in points), ``p`` the
    Welch p-value, ``prob`` P(variant > baseline), ``n`` the seeds per group.
    """
    lo, hi = ci
    head = (
        f"{label[:1].upper()}{label[1:]} vs {baseline_label}: {100 * diff:+.2f} points "
        f"(95 % CI {100 * lo:+.2f} to {100 * hi:+.2f}; n={n} seeds each), "
        f"Welch p = {format_p(p)}"
    )
    if is_significant(p, alpha):
        direction = "better" if diff > 0 else "worse"
        judgement = f"significant at the {100 * alpha:g} % level: {label} is {direction}"
    else:
        judgement = f"not significant at the {100 * alpha:g} % level"
    return f"{head}, {judgement}; P({label} > {baseline_label}) = {prob:.2f}."


def format_p(p: float) -> str:
    """A p-value with 3 significant digits, more where rounding would cross ``ALPHA``.

    The printed value and the verdict must agree: 0.04996 is printed 0.04996, not 0.05.
    """
    if math.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "< 0.0001"
    for digits in range(3, 18):
        text = f"{p:.{digits}g}"
        if (float(text) < ALPHA) == (p < ALPHA):
            return text
    return repr(p)
