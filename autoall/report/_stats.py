"""Small, pure figures for the report: mean and spread, time to a target, p-values as text.

Every function takes plain sequences of floats and has no side effects. Accuracies are fractions
in [0, 1]; sentences state differences in percentage points. The decision rule of a claim (its
tests, adjustment and verdict) is autoall/report/_decision.py; the summaries across studies (IQM,
probability of improvement, stratified bootstrap) are autoall/report/_stats_across.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autoall.errors import InvalidValue

ALPHA = 0.05  # significance level of every verdict


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``.

        mean = (1/n) sum x_i,    std = sqrt( sum (x_i - mean)^2 / (n - 1) )

    One value: std is NaN (a spread needs two). No values: ValueError.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise InvalidValue("mean_std needs at least one value, but got none.")
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
