"""The Optuna storage through a database outage, and opened read-only by the inspecting commands.

A live trial makes storage calls all along: its parameters, `trial.report` and
`trial.should_prune` every epoch, the surplus check, user attributes, Optuna's `tell` at the end.
During a database restart each of them fails at once ("connection refused"), and before this
module a 2-second PostgreSQL restart failed every running trial, which was then run again.
`ride_out` retries such a call, with growing waits, for up to `seconds`: autoall gives a trial's
calls the heartbeat's grace period less one interval, so an outage that no other worker can
tell from a dead worker (the heartbeat is still fresh) fails no trial, and a longer one takes the
existing failure path (the trial is failed as stale and rerun from its checkpoint).

Only calls that are safe to repeat are retried (reads, and writes that are upserts); a trial is
never created twice. Only connection failures are retried (SQLAlchemy's OperationalError and
InterfaceError, a connection invalidated mid-call): an IntegrityError or a value too long for
its column fails at once, with its own message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from autoall.urls import mask_secrets

log = logging.getLogger("autoall.study")
T = TypeVar("T")
_FIRST_WAIT = 0.25  # seconds; doubled after each failed attempt, up to _LONGEST_WAIT
_LONGEST_WAIT = 2.0


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a lost or refused database connection."""
    from sqlalchemy import exc as sa

    for error in _chain(exc):
        if isinstance(error, sa.OperationalError | sa.InterfaceError):
            return True
        if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
            return True
    return False


def storage_reason(exc: BaseException) -> str:
    """The real reason of a storage error, one line, secrets masked.

    Optuna wraps every database error of a commit in a StorageInternalError that says "This
    typically happens due to invalid data in the commit, e.g. exceeding max length", also when
    the server is simply down; the driver's own message is further down the chain.
    """
    from sqlalchemy import exc as sa

    for error in _chain(exc):
        if isinstance(error, sa.DBAPIError) and error.orig is not None:
            return _first_line(error.orig)
    for error in _chain(exc):
        if not isinstance(error, optuna.exceptions.StorageInternalError):
            return _first_line(error)
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return mask_secrets(f"{type(exc).__name__}: {lines[0].strip() if lines else ''}")[:500]


def ride_out(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """`call()`, retried while the database is unreachable, for up to `seconds` in all."""
    deadline = time.monotonic() + seconds
    wait = _FIRST_WAIT
    warned = False
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() + wait > deadline:
                raise
            if not warned:
                log.warning(
                    "Optuna storage unreachable during %s (%s); retrying for up to %.0f s",
                    what,
                    storage_reason(exc),
                    max(0.0, deadline - time.monotonic()),
                )
                warned = True
        time.sleep(wait)
        wait = min(2 * wait, _LONGEST_WAIT)


# RDBStorage methods that are safe to repeat: reads, and writes that are upserts (Optuna
# checks for the row first, or ignores the duplicate). Not creating a study or a trial.
RETRIED = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "_get_trials",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_set_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
)


def retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` of an RDBStorage with an `outage_seconds` attribute, ridden through outages."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        seconds = getattr(self, "outage_seconds", 0.0)
        if seconds <= 0:
            return method(self, *args, **kwargs)
        return ride_out(
            lambda: method(self, *args, **kwargs), seconds=seconds, what=method.__name__
        )

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def set_state_through_outage(
    storage: Any,
    method: Callable[..., bool],
    trial_id: int,
    state: TrialState,
    values: Any = None,
) -> bool:
    """Optuna's `set_trial_state_values`, retried: a retry that finds the trial already in
    `state` (the first attempt was committed, only its answer was lost) has succeeded."""
    attempts = 0

    def once() -> bool:
        nonlocal attempts
        attempts += 1
        try:
            return method(storage, trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            if attempts > 1 and storage.get_trial(trial_id).state == state:
                return True
            raise

    seconds = getattr(storage, "outage_seconds", 0.0)
    if seconds <= 0:
        return method(storage, trial_id, state, values)
    return ride_out(once, seconds=seconds, what="set_trial_state_values")


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class NoStorageError(ValueError):
    """An inspecting command was pointed at a SQLite file that does not exist."""
