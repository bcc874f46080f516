"""The report's small figures and the summaries across reports, against values computed by
hand. The decision rule of a claim is tested in tests/report/test_decision.py."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from autoall.report._stats import format_p, mean_std, time_to_target
from autoall.report._stats_across import iqm, probability_of_improvement, stratified_bootstrap_ci


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
