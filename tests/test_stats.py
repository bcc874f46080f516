"""The report's statistics against scipy and against values computed by hand."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from autoall.stats import (
    bootstrap_ci,
    format_p,
    mean_std,
    prob_greater,
    time_to_target,
    verdict,
    welch_p,
)


def test_mean_std_uses_the_sample_standard_deviation() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n - 1 = 3
    assert std == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    single_mean, single_std = mean_std([0.9])
    assert single_mean == 0.9 and math.isnan(single_std)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_welch_p_equals_scipy_and_the_hand_formula() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0, 6.0]
    p = welch_p(a, b)
    assert p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    # by hand: s_a^2 = 5/3, s_b^2 = 5/2; t = -1.5 / sqrt(5/12 + 1/2); Welch-Satterthwaite df
    va, vb = (5 / 3) / 4, (5 / 2) / 5
    t = (2.5 - 4.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    assert t == pytest.approx(-1.5667, abs=1e-4)
    assert df == pytest.approx(6.98, abs=0.01)
    assert p == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)
    assert 0.15 < p < 0.17


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on the constant group
def test_welch_p_is_defined_when_both_groups_have_zero_variance() -> None:
    assert welch_p([0.9, 0.9, 0.9], [0.9, 0.9]) == 1.0
    assert welch_p([0.9, 0.9], [0.8, 0.8, 0.8]) == 0.0
    one_constant = welch_p([0.9, 0.9, 0.9], [0.8, 0.85, 0.9])  # scipy handles one such group
    assert one_constant == pytest.approx(
        sps.ttest_ind([0.9] * 3, [0.8, 0.85, 0.9], equal_var=False).pvalue
    )
    with pytest.raises(ValueError, match="at least 2 values per group"):
        welch_p([0.9], [0.8, 0.7])


def test_prob_greater_counts_ties_as_one_half() -> None:
    assert prob_greater([1, 2, 3], [2]) == 0.5  # (0 + 1/2 + 1) / 3
    assert prob_greater([3, 3], [1, 3]) == 0.75  # (1 + 1/2 + 1 + 1/2) / 4
    assert prob_greater([5, 6], [1, 2, 3]) == 1.0
    assert prob_greater([1, 2, 3], [5, 6]) == 0.0
    x, y = [0.91, 0.93, 0.93, 0.95], [0.92, 0.93, 0.94]
    u = sps.mannwhitneyu(x, y, alternative="two-sided").statistic  # U of x, ties one half
    assert prob_greater(x, y) == pytest.approx(u / (len(x) * len(y)))


def test_bootstrap_ci_is_deterministic_and_covers_the_true_difference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.95, 0.01, size=40)
    y = rng.normal(0.93, 0.01, size=40)
    low, high = bootstrap_ci(x, y)
    assert low < 0.02 < high  # the true difference of the means
    assert low < x.mean() - y.mean() < high
    assert high - low < 0.02  # about 4 standard errors of the difference (0.0022 each)
    assert bootstrap_ci(x, y) == (low, high)
    assert bootstrap_ci(x, y, seed=1) != (low, high)
    assert bootstrap_ci([0.9, 0.9], [0.8, 0.8]) == pytest.approx((0.1, 0.1))
    narrow = bootstrap_ci(x, y, level=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_time_to_target_finds_the_first_epoch_at_or_above_it() -> None:
    val_acc, seconds = [0.5, 0.8, 0.7, 0.9], [1.0, 2.0, 3.0, 4.0]
    assert time_to_target(val_acc, seconds, 0.8) == (2, 3.0)
    assert time_to_target(val_acc, seconds, 0.85) == (4, 10.0)
    assert time_to_target(val_acc, seconds, 0.95) == (None, None)


def test_verdict_says_not_significant_exactly_when_p_is_at_least_005() -> None:
    common = dict(label="ALL", baseline_label="baseline", ci=(-0.01, 0.02), prob=0.6, n=5)
    for p in (0.05, 0.2, 1.0):
        text = verdict(diff=0.004, p=p, **common)  # type: ignore[arg-type]
        assert "not significant" in text
        assert "n=5" in text and "+0.40 points" in text
    better = verdict(diff=0.004, p=0.01, **common)  # type: ignore[arg-type]
    assert "not significant" not in better
    assert "significant at the 5 % level: ALL is better" in better
    worse = verdict(diff=-0.004, p=0.0499, **common)  # type: ignore[arg-type]
    assert "ALL is worse" in worse and "p = 0.0499" in worse


def test_format_p_never_rounds_across_the_significance_level() -> None:
    assert format_p(0.04996) == "0.04996"
    assert format_p(0.41234) == "0.412"
    assert format_p(0.05) == "0.05"
    assert format_p(1e-7) == "< 0.0001"
    for p in np.linspace(0.0495, 0.0505, 101):
        assert (float(format_p(float(p))) < 0.05) == (p < 0.05)
