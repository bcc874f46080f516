"""Summaries across studies, after Agarwal et al. 2021 ("Deep RL at the edge of the statistical
precipice", NeurIPS 2021; the rliable library): ``iqm``, ``probability_of_improvement`` and
``stratified_bootstrap_ci`` for their intervals.

Like autoall/report/_stats.py (the paired tests of one report), every function takes plain values and has
no side effects; the bootstrap draws from a fixed seed, so a summary is reproducible to the digit.
autoall/report/_across.py applies them to the claims of several reports.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _scipy_stats

from autoall.errors import InvalidValue

_Key = TypeVar("_Key", bound=Hashable)


def iqm(values: ArrayLike) -> float:
    """Interquartile mean: the mean of the middle 50 % of the values (all axes pooled).

    ``scipy.stats.trim_mean(x, 0.25)``, as rliable computes it: floor(n / 4) values are cut from
    each end of the sorted values, the rest averaged. Robust to outlier runs, less noisy than
    the median.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise InvalidValue("iqm needs at least one value, but got none.")
    return float(_scipy_stats.trim_mean(x, 0.25))


def probability_of_improvement(
    x_by_task: Mapping[Hashable, ArrayLike], y_by_task: Mapping[Hashable, ArrayLike]
) -> float:
    """Average over tasks of P(X > Y), ties one half, over all pairs of runs of that task.

        P(X > Y) = (1/T) sum_t (1 / (n_t m_t)) sum_i sum_j ( [x_ti > y_tj] + 0.5 [x_ti == y_tj] )

    (the Mann-Whitney U of each task over n_t m_t). 0.5 means no tendency either way.
    """
    if set(x_by_task) != set(y_by_task) or not x_by_task:
        raise InvalidValue(
            f"x_by_task and y_by_task must have the same, non-empty tasks, "
            f"but got {sorted(map(str, x_by_task))} and {sorted(map(str, y_by_task))}."
        )
    per_task = []
    for task in x_by_task:
        a = np.asarray(x_by_task[task], dtype=float).ravel()[:, None]
        b = np.asarray(y_by_task[task], dtype=float).ravel()[None, :]
        if a.size == 0 or b.size == 0:
            raise InvalidValue(
                f"task {task!r} needs runs on both sides, but got {a.size}, {b.size}."
            )
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def stratified_bootstrap_ci(
    runs_by_task: Mapping[_Key, ArrayLike],
    statistic: Callable[[dict[_Key, np.ndarray]], float],
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` under resampling of runs within each stratum.

    ``runs_by_task`` maps a stratum to its runs, an array of shape (runs,) or (runs, variants).
    Each of ``n_boot`` replicates draws, in every stratum independently, as many rows as it has
    with replacement (rows stay whole, so paired variants of one seed stay paired), and
    evaluates ``statistic`` on the resampled mapping; the interval is the ((1 - level)/2,
    (1 + level)/2) quantiles of the replicates. Deterministic for a given ``seed`` and key order.

    IQM of a variant over tasks::

        stratified_bootstrap_ci(scores, lambda r: iqm(np.concatenate(list(r.values()))))

    Probability of improvement, paired seeds (columns V, C)::

        stratified_bootstrap_ci(
            pairs, lambda r: probability_of_improvement(
                {t: a[:, 0] for t, a in r.items()}, {t: a[:, 1] for t, a in r.items()}))

    Independent run sets (as rliable): key the strata by (task, variant) and split inside the
    statistic.
    """
    if not 0 < level < 1:
        raise InvalidValue(f"level must be in (0, 1), but got {level!r}.")
    if n_boot < 1:
        raise InvalidValue(f"n_boot must be a positive integer, but got {n_boot!r}.")
    arrays = {key: np.asarray(runs, dtype=float) for key, runs in runs_by_task.items()}
    if not arrays:
        raise InvalidValue("stratified_bootstrap_ci needs at least one stratum, but got none.")
    for key, runs in arrays.items():
        if runs.ndim not in (1, 2) or runs.shape[0] == 0:
            raise InvalidValue(
                f"stratum {key!r} must have shape (runs,) or (runs, variants) with runs >= 1, "
                f"but got {runs.shape}."
            )
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        resampled = {
            key: runs[rng.integers(0, runs.shape[0], size=runs.shape[0])]
            for key, runs in arrays.items()
        }
        replicates[b] = statistic(resampled)
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)
