"""The Optuna storage: opening it, riding out a database outage, and every use of Optuna's
private API, each with its reason.

Opening (`make_storage`): a SQLite file gets a write-ahead log; several workers creating the
schema of an empty database at once retry; PostgreSQL gets one connection per call. The storage
is an RDBStorage subclass (`_Storage`) with Optuna's heartbeat (a worker killed mid-trial has its
trial rerun with the same parameters) whose beat survives a database blip.

Outage and failures (autoall/study/_outage.py): a trial's storage calls ride out a database
outage shorter than the heartbeat's grace period less one interval (`ride_out`); a full disk
and a damaged SQLite file are one line at once, by a hook on the database engine
(`translate_errors`); an in-memory SQLite URL is refused (each process would see its own empty
database).

Workers on one host sharing a SQLite file count and create trials under a file lock
(`_StartLock`); a RUNNING trial that never got a heartbeat row is failed and retried here
(`_fail_trials_without_heartbeat`), as Optuna's own stale check skips it.

Optuna's private API, used only in this module:
- `Study._storage`: the start lock and the reaper need the study's storage, which Optuna keeps
  private (no public accessor as of Optuna 5.0).
- `_CachedStorage._backend`: Optuna wraps an RDBStorage in a cache; its URL and heartbeat
  settings are on the wrapped one.
- `Study._study_id` and `optuna.storages._rdb.models`: the reaper's query for RUNNING trials
  without a heartbeat row (Optuna's `_get_stale_trial_ids` joins on that row, so skips them).
- `Trial._trial_id` and `optuna.storages._heartbeat.is_heartbeat_enabled`: a cohort's members
  are asked with `study.ask` and beat by one thread here (`Heartbeats`); Optuna's heartbeat
  thread is per trial and only inside `study.optimize`.
- The RDBStorage methods named in RETRIED, some private (`_get_trials`, `_set_trial_param`, ...):
  overridden to ride out an outage; they are what the public Study methods call.
- For the samplers (`autoall/study/_samplers.py`): `reseed`, which seeds the random states each
  sampler keeps in private attributes (`_rng`, `_cma_rng`, `LazyRandomState`, the inner
  samplers); `Study._get_trials(use_cache=True)`, the snapshot
  a sampler decides on (`finished_trials`); and a running trial's user attribute set from a
  FrozenTrial (`set_user_attr`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState  # private
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled  # private: not re-exported
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from autoall import _timing as timing
from autoall._secrets import mask_secrets, sqlite_file, storage_url
from autoall.study._outage import (
    StorageError,
    StorageFullError,
    fatal_error,
    retrying,
    set_state_through_outage,
    storage_reason,
    translate_errors,
)

if TYPE_CHECKING:
    from autoall.config import StudyConfig

log = logging.getLogger("autoall.study")


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


@timing.span("setup.storage")
def make_storage(url: str, cfg: StudyConfig | None = None, *, create: bool = True) -> RDBStorage:
    """Optuna RDB storage with heartbeat and retry of stale trials, and a bounded connection pool.

    `url` goes through `autoall._secrets.storage_url` (a plain `postgresql://` gets the installed
    driver). With a study file's `cfg`, a trial's storage calls ride out a database outage
    shorter than the heartbeat's grace period less one interval (`ride_out`). With
    `create=False` (the inspecting commands) a SQLite file that does not exist is a
    StorageError, one line saying where it looked and what to pass, instead of a new, empty
    database: nothing is created.
    """
    hb = cfg.heartbeat if cfg is not None else None
    shown = mask_secrets(url)
    url = storage_url(url)
    db = sqlite_file(url)
    if db is None and url.startswith("sqlite"):
        raise StorageError(
            f"The Optuna storage {shown} is an in-memory database: each worker, the progress "
            "monitor and every later command would open its own empty one. Pass --storage (or "
            "set AUTOALL_STORAGE) to a file, e.g. sqlite:///autoall.db."
        )
    if db is not None and not create and not db.is_file():
        raise StorageError(
            f"No Optuna storage at {shown} (no file {db}); pass --storage (or set "
            "AUTOALL_STORAGE) to the storage the studies were run with."
        )
    if db is not None and not db.parent.is_dir():
        raise StorageError(
            f"Cannot open the Optuna storage {shown}: the folder {db.parent} does not exist."
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers wait for the file lock, not fail
    else:
        from sqlalchemy.pool import NullPool  # one connection per call: 32 workers fit in 100

        engine_kwargs["poolclass"] = NullPool
    with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(_SCHEMA_RACE_ATTEMPTS):
            try:
                storage = _rdb_storage(url, engine_kwargs, hb)
            except ImportError:
                raise StorageError(
                    f"Cannot open the Optuna storage {shown}: its database driver is not "
                    "installed; for PostgreSQL, pip install 'autoall[postgres]' (psycopg2) and use "
                    "a postgresql:// or postgresql+psycopg2:// URL."
                ) from None
            except (SQLAlchemyError, ValueError, optuna.exceptions.StorageInternalError) as exc:
                fatal = fatal_error(url, exc)
                if fatal is not None:
                    raise fatal from None
                reason = storage_reason(exc)
                # several workers creating the schema of an empty database at once: retry
                racing = any(w in reason.lower() for w in _RACE_WORDS)
                if racing and attempt < _SCHEMA_RACE_ATTEMPTS - 1:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise StorageError(f"Cannot open the Optuna storage {shown}: {reason}") from None
            if hb is not None:
                storage.outage_seconds = max(0.0, float(hb.grace_period - hb.interval))
            from sqlalchemy import event

            event.listen(storage.engine, "handle_error", translate_errors(url))
            return storage
    raise AssertionError("unreachable")


_SCHEMA_RACE_ATTEMPTS = 5
_RACE_WORDS = ("already exists", "locked", "duplicate", "unique constraint", "alembic")


class _Storage(RDBStorage):
    """RDBStorage whose heartbeat outlives a database blip, and whose calls ride out an outage
    shorter than `outage_seconds` (`ride_out`; 0: no retry).

    Optuna's heartbeat thread ends at the first exception of `record_heartbeat`; the trial then
    trains on with no heartbeat and is failed as stale (and rerun elsewhere) although alive.
    """

    outage_seconds: float = 0.0

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # the next beat, one interval later, tries again
            log.warning("heartbeat of trial id %d not recorded: %s", trial_id, storage_reason(exc))

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return set_state_through_outage(
            self, RDBStorage.set_trial_state_values, trial_id, state, values
        )


for _name in RETRIED:  # the calls that are safe to repeat, each ridden through an outage
    setattr(_Storage, _name, retrying(getattr(RDBStorage, _name)))


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], hb: Any) -> _Storage:
    storage = _new_storage(url, engine_kwargs, hb)
    if sqlite_file(url) is not None:
        # write-ahead log: a commit is one append (trial.report ~1 ms instead of ~3-10), readers
        # never block the writer; durable as before (synchronous stays FULL). Stored in the file.
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _new_storage(url: str, engine_kwargs: dict[str, Any], hb: Any) -> _Storage:
    return _Storage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=hb.interval if hb else None,
        grace_period=hb.grace_period if hb else None,
        heartbeat_stale_trial_callback=(
            # the rerun resumes from its checkpoint, so it keeps the reported epochs too
            RetryHeartbeatStaleTrialCallback(
                max_retry=hb.max_retry, inherit_intermediate_values=True
            )
            if hb
            else None
        ),
    )


class _StartLock:
    """Serialises "count, then create a trial" among workers on one host sharing a SQLite file.

    Held from the count until the new trial exists, so the target is never overshot. Across
    hosts (PostgreSQL) the surplus check in the objective catches the rare race instead.
    """

    def __init__(self, study: optuna.Study) -> None:
        storage = study._storage  # private in Optuna: no public accessor
        url = getattr(getattr(storage, "_backend", storage), "url", "")  # unwrap Optuna's cache
        path = sqlite_file(url)
        self._path = f"{path}.lock" if path is not None else None
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._path is not None and self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _storage_error(exc: BaseException) -> BaseException | None:
    """The storage error in `exc`'s chain, if any (Optuna's _run_trial raises AssertionError
    from its `finally` when the database is gone at `tell`)."""
    seen: BaseException | None = exc
    while seen is not None:
        storage_errors = optuna.exceptions.StorageInternalError | SQLAlchemyError
        if isinstance(seen, storage_errors | StorageFullError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def fail_stale_trials(study: optuna.Study, first_seen: dict[int, float]) -> None:
    """Fail (and retry) RUNNING trials whose heartbeat is stale, as Optuna does, and those that
    never had one (`_fail_trials_without_heartbeat`); no-ops without heartbeat."""
    with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _fail_trials_without_heartbeat(study, first_seen)


def _fail_trials_without_heartbeat(study: optuna.Study, first_seen: dict[int, float]) -> None:
    """Fail RUNNING trials that have had no heartbeat for a grace period, and retry them.

    Optuna's stale check skips a trial with no heartbeat row at all: a worker killed between
    creating its trial and the first beat (TPE samples in between), or whose first beat failed
    while the database was down. Waiting workers would wait for it forever. The time is this
    worker's own clock (datetime_start is the creating host's), from when it first saw the trial.
    """
    storage = study._storage  # private in Optuna: no public accessor
    backend = getattr(storage, "_backend", storage)  # unwrap Optuna's cache
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return
    from optuna.storages._rdb import models  # private: Optuna's ORM, for a query it has not

    grace = backend.grace_period or 2 * backend.heartbeat_interval
    session = backend.scoped_session()
    try:
        ids = {
            trial_id
            for (trial_id,) in session.query(models.TrialModel.trial_id)
            .outerjoin(models.TrialHeartbeatModel)
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
        }
    finally:
        backend.scoped_session.remove()
    now = time.monotonic()
    for trial_id in set(first_seen) - ids:
        del first_seen[trial_id]
    callback = backend.get_heartbeat_stale_trial_callback()
    for trial_id in ids:
        if now - first_seen.setdefault(trial_id, now) <= grace:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        log.warning("trial id %d had no heartbeat for %s s; failed as stale", trial_id, grace)
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


def fail_stale_trials_as_optuna(study: optuna.Study) -> None:
    """Optuna's own stale check alone, as `study.optimize` runs it before each trial."""
    if is_heartbeat_enabled(study._storage):  # private in Optuna: no public accessor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def stored_trial(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored now, read by its id (one row; `study.get_trials` reads them all).

    Private in Optuna: `Study._storage` and `Trial._trial_id` (no public read of one trial).
    """
    return study._storage.get_trial(trial._trial_id)


class Heartbeats:
    """One thread that records the heartbeat of every live member (Optuna's is per trial)."""

    def __init__(self, study: optuna.Study, trials: Iterable[optuna.Trial]) -> None:
        self._storage: Any = study._storage  # private in Optuna: no public accessor
        self._enabled = is_heartbeat_enabled(self._storage)
        self._ids = {t._trial_id for t in trials}  # private: the storage's key of a trial
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autoall-heartbeats", daemon=True)

    def start(self) -> None:
        if self._enabled:
            self._thread.start()

    def drop(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._ids.discard(trial._trial_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while True:
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                self._storage.record_heartbeat(trial_id)  # autoall's storage logs a failure
            if self._stop.wait(timeout=interval):
                return


def finished_trials(study: Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The trials in `states` from Optuna's cached snapshot, the one its samplers read to decide
    (private: `Study._get_trials(use_cache=True)`), so a phase counts what the sampler counted."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def set_user_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """A running trial's user attribute, set from a sampler, which holds a FrozenTrial and not a
    Trial (private: `Study._storage` and `FrozenTrial._trial_id`)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


# Optuna offers only `reseed_rng()` (fresh entropy from the OS), not a seed. The random states
# its samplers draw from are these private attributes (Optuna 4 and 5): `_rng` (TPE, random,
# GP, grid, NSGA-II), `_cma_rng` (CMA-ES), and the random sampler each keeps for start-up and
# independent draws. `reseed` is the one place autoall reaches into them; `PerTrialSeed` checks
# at construction that the wrapped sampler has at least one, so an Optuna that renames them
# fails loudly instead of silently sharing streams.
_STATES = ("_rng", "_cma_rng")
_INNER = ("_random_sampler", "_independent_sampler")


def reseed(sampler: BaseSampler, seed: int) -> int:
    """Seed every random state of `sampler` (and of its inner samplers) with `seed`; returns
    how many were seeded."""
    seeded = 0
    for name in _STATES:
        state = getattr(sampler, name, None)
        if isinstance(state, LazyRandomState):
            state.rng.seed(seed % 2**32)
            seeded += 1
    for name in _INNER:
        inner = getattr(sampler, name, None)
        if isinstance(inner, BaseSampler):
            seeded += reseed(inner, seed)
    return seeded
