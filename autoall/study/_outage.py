"""How an Optuna storage call fails, and what autoall does about it (autoall/study/_storage.py opens
the storage and uses these).

Outage: a live trial makes storage calls all along: its parameters, `trial.report` and
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
its column fails at once, with its own message. After Ctrl-C nothing is retried any more
(`stop_waiting`): the interrupted trial's end is stored if the database answers at once.

Failures that waiting cannot mend are raised at once, as one line naming the file, by a hook
on the database engine (`translate_errors`): a full disk (`StorageFullError`, exit code 1: free
space, then resume; a trial whose end could not be stored stays RUNNING until the heartbeat
fails it) and a damaged SQLite file (`StorageError`, exit code 2).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from autoall._secrets import mask_secrets, sqlite_file
from autoall.errors import RunFailed, UserError

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


_NO_WAITING = threading.Event()  # set after Ctrl-C: no call is retried any more


def stop_waiting() -> None:
    """After Ctrl-C: storage calls are no longer retried through an outage, so the interrupted
    trial's end is stored at once or not at all (it then stays RUNNING until the heartbeat
    fails it), and the command stops within seconds."""
    _NO_WAITING.set()


def resume_waiting() -> None:
    """Storage calls ride out outages again (a worker loop starting after an earlier Ctrl-C in
    the same process)."""
    _NO_WAITING.clear()


def ride_out(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """`call()`, retried while the database is unreachable, for up to `seconds` in all (not
    after Ctrl-C: `stop_waiting`)."""
    deadline = time.monotonic() + seconds
    wait = _FIRST_WAIT
    warned = False
    while True:
        try:
            return call()
        except Exception as exc:
            late = time.monotonic() + wait > deadline
            if not is_outage(exc) or late or _NO_WAITING.is_set():
                raise
            if not warned:
                log.warning(
                    "Optuna storage unreachable during %s (%s); retrying for up to %.0f s",
                    what,
                    storage_reason(exc),
                    max(0.0, deadline - time.monotonic()),
                )
                warned = True
        try:
            time.sleep(wait)
        except KeyboardInterrupt:
            stop_waiting()
            raise
        wait = min(2 * wait, _LONGEST_WAIT)


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


class StorageError(UserError, RuntimeError):
    """The Optuna storage cannot be opened (wrong URL, server down, bad password, a damaged
    file); no secrets."""


class StorageFullError(RunFailed, RuntimeError):
    """The Optuna storage cannot be written: its disk is full (exit code 1, an environment
    failure). Raised at once, never retried: waiting frees no space."""


_SQLITE_FULL, _SQLITE_CORRUPT, _SQLITE_NOTADB = 13, 11, 26  # sqlite3's primary result codes
_PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


def fatal_error(url: str, exc: BaseException) -> Exception | None:
    """The one-line error for a database failure that no retry mends (a full disk, a damaged
    SQLite file) anywhere in `exc`'s chain, else None."""
    for error in _chain(exc):
        if isinstance(error, StorageFullError | StorageError):
            return error
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            code &= 0xFF  # the primary code of an extended one
        text = str(error)
        pg_code = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
        db = sqlite_file(url)
        where = str(db) if db is not None else mask_secrets(url)
        if (
            code == _SQLITE_FULL
            or pg_code == _PG_DISK_FULL
            or "database or disk is full" in text
            or "No space left on device" in text
        ):
            return StorageFullError(
                f"The Optuna storage {where} cannot be written: its disk is full "
                f"({_first_line(error)}). Free space there (or pass --storage a file on another "
                "disk), then run the same command again to resume."
            )
        if db is not None and (
            code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
            or "database disk image is malformed" in text
            or "file is not a database" in text
        ):
            return StorageError(
                f"The Optuna storage {db} is damaged ({_first_line(error)}): restore it from a "
                f"backup (or try `sqlite3 {db} .recover`), or pass --storage (or set "
                "AUTOALL_STORAGE) to another file."
            )
    return None


def translate_errors(url: str) -> Callable[[Any], None]:
    """A SQLAlchemy `handle_error` hook: a full disk or a damaged file is raised as its
    one-line error (`fatal_error`), not as the StorageInternalError Optuna makes of every
    database error, which says "e.g. exceeding max length" and which a worker would retry."""

    def hook(context: Any) -> None:
        fatal = fatal_error(url, context.original_exception)
        if fatal is not None:
            raise fatal

    return hook
