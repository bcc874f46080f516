"""A study file's search space (`search:`, `baseline_search:`): every knob's type and range.

Each knob has one type: `hidden_size` an integer, `all_lr`, `aux_weight`, `lr` and
`weight_decay` real numbers, `aux_loss` and `positions` categories. A knob is given as

    {type: int|float, low: L, high: H, log: bool, step: S}     or
    {type: categorical, choices: [...]}                         or a plain value (fixed)

and is checked entirely here, before any storage is touched: numbers finite and of the knob's
type, `low <= high` inside the knob's range (`> 0` on a log scale), `step` a positive number of
the knob's type that divides `high - low` (Optuna would otherwise move `high`), no step on a log
scale, choices inside the knob's range. The size of the largest model a space allows is checked
against the device's memory by `autoall.preflight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from autoall.layer import AUX_LOSSES, POSITIONS

Fail = Callable[[str, str], NoReturn]  # (dotted key, message)
_INT_KNOBS = frozenset({"hidden_size"})
_REAL_KNOBS = frozenset({"all_lr", "aux_weight", "lr", "weight_decay"})
_CATEGORIES: dict[str, tuple[str, ...]] = {"aux_loss": AUX_LOSSES, "positions": POSITIONS}
_POSITIVE = frozenset({"hidden_size", "all_lr", "lr"})  # the others may be 0


@dataclass(frozen=True)
class ParamSpec:
    """One searched knob: `int`/`float` with low, high, log (and step), or `categorical`."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def largest(self) -> Any:
        """The largest value the knob can take (numbers), or its choices' largest."""
        if self.type == "categorical":
            numbers = [c for c in self.choices if isinstance(c, (int, float))]
            return max(numbers) if numbers else None
        return self.high


# The ALL study's knobs when the file's `search:` leaves them out.
DEFAULT_SEARCH: dict[str, dict[str, Any]] = {
    "hidden_size": {"type": "int", "low": 8, "high": 256, "log": True},
    "all_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "aux_weight": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "aux_loss": {"type": "categorical", "choices": list(AUX_LOSSES)},
    "positions": {"type": "categorical", "choices": list(POSITIONS)},
}


def parse_space(
    raw: Any,
    *,
    knobs: tuple[str, ...],
    defaults: dict[str, dict[str, Any]],
    section: str,
    fail: Fail,
    short: Callable[[Any], str] = repr,
) -> dict[str, ParamSpec]:
    """The knobs of the section `raw` (a mapping, or None for none), validated; a knob neither
    given nor in `defaults` is left out. `fail(key, message)` raises."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail(section, f"must be a mapping, but got {type(raw).__name__} {short(raw)}.")
    for k in raw:
        if k not in knobs:
            fail(f"{section}.{k}", f"unknown key; expected one of {', '.join(sorted(knobs))}.")
    specs = {}
    for knob in knobs:
        if knob not in raw and knob not in defaults:
            continue
        entry = raw.get(knob, defaults.get(knob))
        key = f"{section}.{knob}"
        if not isinstance(entry, dict):  # a fixed value: a one-choice categorical
            entry = {"type": "categorical", "choices": [entry]}
        specs[knob] = _parse_knob(knob, entry, key=key, fail=fail, short=short)
    return specs


def check_grid(spaces: dict[str, dict[str, ParamSpec]], knobs: dict[str, tuple[str, ...]],
               fail: Fail) -> None:  # fmt: skip
    """The grid sampler enumerates choices: every knob of every section (`search`,
    `baseline_search`) must be categorical (a plain value is a one-choice categorical)."""
    for section, specs in spaces.items():
        for knob in knobs[section]:
            spec = specs.get(knob)
            if spec is None or spec.type != "categorical":
                both = " (the ALL study and the tuned baseline both search lr and weight_decay)"
                fail(
                    f"{section}.{knob}",
                    "the grid sampler needs 'choices' for every knob"
                    + (both if section == "baseline_search" else "")
                    + ".",
                )


def _parse_knob(
    knob: str, entry: dict[str, Any], *, key: str, fail: Fail, short: Callable[[Any], str]
) -> ParamSpec:
    allowed = {"type", "low", "high", "log", "step", "choices"}
    for k in entry:
        if k not in allowed:
            fail(f"{key}.{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}.")
    if "type" not in entry:
        fail(f"{key}.type", "is required (int, float or categorical).")
    kind = entry["type"]
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            fail(f"{key}.choices", f"must be a non-empty list, but got {short(choices)}.")
        extra = set(entry) - {"type", "choices"}
        if extra:
            fail(key, f"a categorical takes only 'choices', but also got {sorted(extra)}.")
        for i, choice in enumerate(choices):
            check_value(knob, choice, key=f"{key}.choices[{i}]", fail=fail, short=short)
        return ParamSpec(knob, "categorical", choices=tuple(choices))
    if kind not in ("int", "float"):
        fail(f"{key}.type", f"must be one of int, float, categorical, but got {short(kind)}.")
    if knob in _CATEGORIES:
        fail(f"{key}.type", f"{knob} is categorical: give 'choices'.")
    if knob in _INT_KNOBS and kind != "int":
        fail(f"{key}.type", f"{knob} is an integer: use type 'int'.")
    if knob in _REAL_KNOBS and kind != "float":
        fail(f"{key}.type", f"{knob} is a real number: use type 'float' (or a plain value).")
    if "choices" in entry:
        fail(key, f"'choices' belongs to type categorical, not {short(kind)}.")
    for bound in ("low", "high"):
        if bound not in entry:
            fail(f"{key}.{bound}", f"is required for type {short(kind)}.")
        _check_number(entry[bound], kind, key=f"{key}.{bound}", fail=fail, short=short)
    low, high, log = entry["low"], entry["high"], entry.get("log", False)
    if not isinstance(log, bool):
        fail(f"{key}.log", f"must be true or false, but got {short(log)}.")
    if low > high:
        fail(key, f"low ({low}) must not exceed high ({high}).")
    if log and low <= 0:
        fail(f"{key}.low", f"must be > 0 on a log scale, but got {short(low)}.")
    for bound in ("low", "high"):
        check_value(knob, entry[bound], key=f"{key}.{bound}", fail=fail, short=short)
    step = entry.get("step")
    if step is not None:
        _check_step(step, kind, low=low, high=high, log=log, key=f"{key}.step", fail=fail)
    return ParamSpec(knob, kind, low=low, high=high, log=log, step=step)


def _check_number(value: Any, kind: str, *, key: str, fail: Fail, short: Callable) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(key, f"must be a number, but got {short(value)}.")
    if not math.isfinite(value):
        fail(key, f"must be a finite number, but got {short(value)}.")
    if kind == "int" and not isinstance(value, int):
        fail(key, f"must be an integer for type 'int', but got {short(value)}.")


def _check_step(
    step: Any, kind: str, *, low: float, high: float, log: bool, key: str, fail: Fail
) -> None:
    """A positive number of the knob's type, dividing high - low (Optuna's grid of values)."""
    what = "a positive integer" if kind == "int" else "a positive number"
    if (
        isinstance(step, bool)
        or not isinstance(step, int if kind == "int" else (int, float))
        or not math.isfinite(step)
        or step <= 0
    ):
        fail(key, f"must be {what} for type {kind!r}, but got {step!r}.")
    if log:
        fail(key, "cannot be combined with log: true (Optuna's rule).")
    span = high - low
    if span == 0:
        return
    ratio = span / step
    if step > span or abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio):
        fail(
            key,
            f"must divide high - low ({span:g}) into whole steps, but got {step:g} "
            f"({ratio:g} steps); Optuna would move high.",
        )


def check_value(knob: str, value: Any, *, key: str, fail: Fail, short: Callable = repr) -> None:
    """One value of `knob` (a choice or a bound): of its type and inside its range."""
    if knob in _CATEGORIES:
        if not isinstance(value, str) or value not in _CATEGORIES[knob]:
            fail(key, f"must be one of {', '.join(_CATEGORIES[knob])}, but got {short(value)}.")
        return
    if knob in _INT_KNOBS:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            fail(key, f"{knob} must be a positive integer, but got {short(value)}.")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(key, f"{knob} must be a finite number, but got {short(value)}.")
    if knob in _POSITIVE and not value > 0:
        fail(key, f"{knob} must be a positive number, but got {short(value)}.")
    if not value >= 0:
        fail(key, f"{knob} must be a non-negative number, but got {short(value)}.")
