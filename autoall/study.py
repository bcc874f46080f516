"""Optuna studies over the ALL knobs: storage, sampler, pruner, objective, workers, resume.

One Optuna study per (study file `name`, architecture), named `<name>/<arch>`, in plain Optuna
RDB storage (SQLite by default, PostgreSQL for many hosts), so `optuna.load_study` and
optuna-dashboard open it. `n_trials` is a target for the study as a whole: COMPLETE plus PRUNED
trials across every worker and restart; a rerun runs only the remainder. A worker killed mid-trial
is detected by Optuna's heartbeat and its trial rerun with the same parameters
(`RetryHeartbeatStaleTrialCallback`). The objective never sees the test split.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

import autoall
from autoall.config import KINDS, ParamSpec, StudyConfig
from autoall.data import DeviceData, load_data
from autoall.host import WorkerRegistry, share_cores
from autoall.plan import fit, trial_plan
from autoall.samplers import per_trial
from autoall.storage import (
    RETRIED,
    retrying,
    set_state_through_outage,
    sqlite_file,
    storage_reason,
)
from autoall.tracking import NullTracker, Tracker, flatten, mask_secrets
from autoall.tracking_writer import TrackingWriter
from autoall.train import NonFiniteLossError, RunResult, TrainingOOMError
from autoall.urls import storage_url
from autoall.version import git_commit

log = logging.getLogger("autoall.study")

DEFAULT_STORAGE = "sqlite:///autoall.db"
_MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials all fail stops instead of looping
_MAX_OUTAGE_SECONDS = 300  # a worker waits this long for an unreachable database, then stops
_MAX_OOM_RETRIES = 2  # a trial that ran out of GPU memory is queued again this often
_SURPLUS_CHECK_SECONDS = 5.0  # a running fresh trial checks this often whether a retry replaced it


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        """What the target counts: COMPLETE plus PRUNED (failed trials are retried, not counted)."""
        return self.complete + self.pruned


def count_trials(trials: list[FrozenTrial]) -> Counts:
    by_state = {s: 0 for s in TrialState}
    for t in trials:
        by_state[t.state] += 1
    return Counts(
        complete=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL],
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
    )


def make_storage(url: str, cfg: StudyConfig | None = None, *, create: bool = True) -> RDBStorage:
    """Optuna RDB storage with heartbeat and retry of stale trials, and a bounded connection pool.

    `url` goes through `autoall.urls.storage_url` (a plain `postgresql://` gets the installed
    driver). With a study file's `cfg`, a trial's storage calls ride out a database outage
    shorter than the heartbeat's grace period less one interval (autoall/storage.py). With
    `create=False` (the inspecting commands) a SQLite file that does not exist is a
    StorageError instead of a new, empty database.
    """
    hb = cfg.heartbeat if cfg is not None else None
    shown = mask_secrets(url)
    url = storage_url(url)
    db = sqlite_file(url)
    if db is not None and not create and not db.is_file():
        raise StorageError(f"No Optuna storage at {shown} (no file {db}).")
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
            except (SQLAlchemyError, ValueError) as exc:
                reason = storage_reason(exc)
                # several workers creating the schema of an empty database at once: retry
                racing = any(w in reason.lower() for w in _RACE_WORDS)
                if racing and attempt < _SCHEMA_RACE_ATTEMPTS - 1:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise StorageError(f"Cannot open the Optuna storage {shown}: {reason}") from None
            if hb is not None:
                storage.outage_seconds = max(0.0, float(hb.grace_period - hb.interval))
            return storage
    raise AssertionError("unreachable")


_SCHEMA_RACE_ATTEMPTS = 5
_RACE_WORDS = ("already exists", "locked", "duplicate", "unique constraint", "alembic")


class StorageError(RuntimeError):
    """The Optuna storage cannot be opened (wrong URL, server down, bad password); no secrets."""


class _Storage(RDBStorage):
    """RDBStorage whose heartbeat outlives a database blip, and whose calls ride out an outage
    shorter than `outage_seconds` (autoall/storage.py; 0: no retry).

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
    if url.startswith("sqlite:///") and ":memory:" not in url:
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


def make_sampler(
    cfg: StudyConfig, *, space: dict[str, ParamSpec] | None = None
) -> optuna.samplers.BaseSampler:
    """The study file's sampler, drawing for each trial from its own stream `seed + number`
    (autoall/samplers.py), so workers started together never repeat each other's draws.

    `space` is the searched knobs (the grid sampler's grid); default: the ALL study's.
    """
    s = cfg.sampler
    seed = s.seed
    sampler: optuna.samplers.BaseSampler
    if s.name == "tpe":
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True, constant_liar=True
        )
    elif s.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif s.name == "cmaes":
        sampler = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    elif s.name == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    elif s.name == "nsgaii":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    else:  # the grid's order is shuffled once with `seed`: the same in every worker
        grid = {name: list(spec.choices) for name, spec in (space or cfg.search).items()}
        sampler = optuna.samplers.GridSampler(grid, seed=seed)
    return per_trial(sampler, seed)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


def create_studies(
    cfg: StudyConfig,
    storage: RDBStorage,
    *,
    n_trials: int,
    kinds: tuple[str, ...] = KINDS,
    attempts: int = 5,
) -> dict[str, optuna.Study]:
    """Create (or load) the studies of `kinds` per architecture, once, before any worker starts.

    Keyed by study name. Each study records its kind, target and per-trial budget (user
    attributes), so the report can check that the ALL study and its tuned baseline had the same
    budget. Several hosts may do this at the same moment on an empty database; the schema
    creation can then lose a race, so it is retried.
    """
    studies = {}
    for arch, kind in cfg.studies(kinds):
        name = cfg.study_name(arch, kind)
        for attempt in range(attempts):
            try:
                study = optuna.create_study(
                    study_name=name,
                    storage=storage,
                    directions=cfg.directions,  # type: ignore[arg-type]
                    load_if_exists=True,
                )
                break
            except Exception as exc:  # sqlalchemy IntegrityError / OperationalError on a race
                if attempt == attempts - 1:
                    raise
                log.info("creating study %s lost a race (%s); retrying", name, exc)
                time.sleep(0.5 * (attempt + 1))
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in cfg.directions]:
            raise ValueError(
                f"{cfg.path}: study {name!r} already exists in the storage with "
                f"directions {[d.name.lower() for d in study.directions]}, but the file asks for "
                f"{cfg.directions}; use another --study-name."
            )
        study.set_user_attr("n_trials", n_trials)
        study.set_user_attr("kind", kind)
        study.set_user_attr("search_space", search_space_summary(cfg.space(arch, kind)))
        study.set_user_attr("budget", trial_budget(cfg, arch))
        studies[name] = study
    return studies


def trial_budget(cfg: StudyConfig, arch: str) -> dict[str, Any]:
    """What every trial of both studies of `arch` gets: epochs, batch size, sampler, pruner."""
    tcfg = cfg.train_config(arch)
    return {
        "epochs": tcfg.epochs,
        "batch_size": tcfg.batch_size,
        "sampler": asdict(cfg.sampler),
        "pruner": asdict(cfg.pruner),
    }


def search_space_summary(space: dict[str, ParamSpec]) -> dict[str, str]:
    out = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            out[name] = f"categorical{list(spec.choices)}"
        else:
            out[name] = f"{spec.type}[{spec.low}, {spec.high}]" + (" log" if spec.log else "")
    return out


def suggest(trial: optuna.Trial, search: dict[str, ParamSpec]) -> dict[str, Any]:
    """Ask the trial for each knob of the search space."""
    params: dict[str, Any] = {}
    for name, spec in search.items():
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec.choices))
        elif spec.type == "int":
            assert spec.low is not None and spec.high is not None  # validated in config.py
            step = int(spec.step) if spec.step else 1
            params[name] = trial.suggest_int(
                name, int(spec.low), int(spec.high), step=step, log=spec.log
            )
        else:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_float(
                name, float(spec.low), float(spec.high), step=spec.step, log=spec.log
            )
    return params


@dataclass
class WorkerContext:
    """What one worker process needs to run trials of one architecture."""

    cfg: StudyConfig
    arch: str
    kind: str  # "all" (the ALL study) or "baseline" (its equal-budget tuned baseline)
    data: DeviceData
    device: str | None
    tracker: Tracker | TrackingWriter | NullTracker
    parent_run_id: str | None
    n_trials: int
    checkpoint_dir: Path | None = None  # mid-trial checkpoints; shared across hosts
    checkpoint_every: float = 0.0  # seconds between a trial's checkpoints (0: every epoch)
    # (trial number, checkpoint) of the trial just ended here: dropped once Optuna stored its state
    ended_checkpoint: tuple[int, Path] | None = None
    on_trial_end: Callable[[FrozenTrial], None] | None = None
    system_metrics: bool = False  # MLflow's system metrics in every trial's run
    log_models: bool = False  # a trial's model into its run when it becomes the study's best
    registry: WorkerRegistry | None = None  # this host's workers: torch threads = share of cores
    small_model: bool = False  # every model of the study trains fastest on one thread
    cohort: int = 1  # trials asked at once and trained together (autoall/study_cohort.py)

    @property
    def study_name(self) -> str:
        return self.cfg.study_name(self.arch, self.kind)

    def checkpoint_path(self, trial_key: int) -> Path | None:
        """Keyed by the original trial number, so every retry of a trial finds the same file."""
        if self.checkpoint_dir is None:
            return None
        study = self.study_name.replace("/", "__")
        return self.checkpoint_dir / study / f"trial-{trial_key}.pt"


class _StartLock:
    """Serialises "count, then create a trial" among workers on one host sharing a SQLite file.

    Held from the count until the new trial exists, so the target is never overshot. Across
    hosts (PostgreSQL) the surplus check in the objective catches the rare race instead.
    """

    def __init__(self, storage: Any) -> None:
        url = getattr(getattr(storage, "_backend", storage), "url", "")  # unwrap Optuna's cache
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else None
        self._path = f"{path}.lock" if path and path != ":memory:" else None
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


class _SurplusTrial(Exception):
    """Another worker met the target between our check and our ask: this trial is not needed."""


def run_worker(ctx: WorkerContext, study: optuna.Study, *, poll_seconds: float = 1.0) -> Counts:
    """Run trials until the study holds `n_trials` COMPLETE + PRUNED trials; return the counts.

    A trial is started only while done + running < target, or when a retried trial is waiting;
    otherwise the worker waits for running trials to finish or turn stale.
    """
    if ctx.cohort > 1:
        from autoall.study_cohort import single_trials_reason

        reason = single_trials_reason(ctx)
        if reason is not None:
            log.warning("%s: trials run one at a time, not in cohorts of %d (%s).",
                        ctx.study_name, ctx.cohort, reason)  # fmt: skip
            ctx.cohort = 1
    consecutive_failures = 0
    start_lock = _StartLock(study._storage)
    unbeaten: dict[int, float] = {}  # trial id -> when this worker first saw it without heartbeat
    outage_since: float | None = None
    while True:
        try:
            step = _step(ctx, study, start_lock, unbeaten, poll_seconds)
        except Exception as exc:
            error = _storage_error(exc)
            if error is None:
                raise
            # the database is down or restarting: a trial cut short stays RUNNING, its heartbeat
            # stops, and it is rerun as stale; this worker waits for the database to come back
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > _MAX_OUTAGE_SECONDS:
                raise RuntimeError(
                    f"{ctx.study_name}: the Optuna storage has failed for "
                    f"{_MAX_OUTAGE_SECONDS} s: {storage_reason(error)}"
                ) from None
            log.warning("Optuna storage error (%s); retrying", storage_reason(error))
            time.sleep(poll_seconds)
            continue
        outage_since = None
        if isinstance(step, Counts):
            return step
        failed, last = step
        consecutive_failures = consecutive_failures + 1 if failed else 0
        if consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
            reason = last.user_attrs.get("fail_reason", "see the log") if last else ""
            raise RuntimeError(
                f"{ctx.study_name}: {consecutive_failures} trials in a row failed; "
                f"stopping this worker. Last reason: {reason}"
            )


def _storage_error(exc: BaseException) -> BaseException | None:
    """The storage error in `exc`'s chain, if any (Optuna's _run_trial raises AssertionError
    from its `finally` when the database is gone at `tell`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, optuna.exceptions.StorageInternalError | SQLAlchemyError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _step(
    ctx: WorkerContext,
    study: optuna.Study,
    start_lock: _StartLock,
    unbeaten: dict[int, float],
    poll_seconds: float,
) -> Counts | tuple[bool, FrozenTrial | None]:
    """Until one trial has run: the final counts, or (whether that trial failed, the trial)."""
    while True:
        counts = count_trials(study.get_trials(deepcopy=False))
        if counts.done >= ctx.n_trials:
            return counts
        if counts.waiting == 0 and counts.done + counts.running >= ctx.n_trials:
            time.sleep(poll_seconds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a no-op without heartbeat
                _fail_trials_without_heartbeat(study, unbeaten)
            continue

        def guarded(trial: optuna.Trial) -> float | tuple[float, float]:
            start_lock.release()  # the trial exists now: others may count it
            return objective(trial, ctx)

        ctx.tracker.check()  # the writer process could not open the store: stop here
        start_lock.acquire()
        again = count_trials(study.get_trials(deepcopy=False))  # others may have started one
        if again.done >= ctx.n_trials or (
            again.waiting == 0 and again.done + again.running >= ctx.n_trials
        ):
            start_lock.release()
            continue
        if ctx.cohort > 1:
            from autoall.study_cohort import run_cohort

            outcome = run_cohort(ctx, study, start_lock)  # releases the lock
            ctx.tracker.check()
            return outcome
        try:
            study.optimize(
                guarded,
                n_trials=1,
                catch=(Exception,),
                callbacks=[_after_trial(ctx)],
                gc_after_trial=False,
            )
        finally:
            start_lock.release()
            _drop_ended_checkpoint(ctx, study)
        ctx.tracker.check()
        last = study.get_trials(deepcopy=False)[-1] if ctx.n_trials else None
        reason = last.user_attrs.get("fail_reason", "") if last is not None else ""
        failed = (
            last is not None
            and last.state == TrialState.FAIL
            and "out of memory" not in reason
            and not reason.startswith("surplus")  # not this worker's failure
        )
        return failed, last


def _fail_trials_without_heartbeat(study: optuna.Study, first_seen: dict[int, float]) -> None:
    """Fail RUNNING trials that have had no heartbeat for a grace period, and retry them.

    Optuna's stale check skips a trial with no heartbeat row at all: a worker killed between
    creating its trial and the first beat (TPE samples in between), or whose first beat failed
    while the database was down. Waiting workers would wait for it forever. The time is this
    worker's own clock (datetime_start is the creating host's), from when it first saw the trial.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # unwrap Optuna's cache
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return
    from optuna.storages._rdb import models

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


def objective(trial: optuna.Trial, ctx: WorkerContext) -> float | tuple[float, float]:
    """Train one ALL model with the trial's knobs; report validation accuracy every epoch.

    Every failure leaves its reason in the trial's user attribute `fail_reason`.
    """
    return noting_failure(trial, lambda: _objective(trial, ctx))


def noting_failure(
    trial: optuna.Trial, body: Callable[[], float | tuple[float, float]]
) -> float | tuple[float, float]:
    """`body()`, whose exceptions (but pruning) leave their reason in `fail_reason` first."""
    try:
        return body()
    except optuna.TrialPruned:
        raise
    except KeyboardInterrupt:  # also when Ctrl-C lands outside train(), e.g. in run set-up
        _note_failure(trial, "interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        _note_failure(trial, _failure_reason(exc))
        raise


def _failure_reason(exc: BaseException) -> str:
    """What a failed trial's `fail_reason` says: the database's own reason for a storage error
    (not Optuna's "e.g. exceeding max length"), else the exception; secrets masked."""
    if _storage_error(exc) is not None:
        return f"Optuna storage: {storage_reason(exc)}"
    return mask_secrets(repr(exc))[:500]


def _note_failure(trial: optuna.Trial, reason: str) -> None:
    """Keep the first, most specific reason a trial failed."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    if "fail_reason" not in frozen.user_attrs:
        trial.set_user_attr("fail_reason", reason)


def _objective(trial: optuna.Trial, ctx: WorkerContext) -> float | tuple[float, float]:
    run = TrialRun(trial, ctx)
    try:
        result = fit(  # every trial starts from the same initialisation (tcfg.seed)
            run.plan,
            ctx.data,
            on_epoch=run.on_epoch,
            checkpoint=run.checkpoint,
            checkpoint_every=ctx.checkpoint_every,
            on_trained=run.trained.append if ctx.log_models else None,
        )
    except BaseException as exc:
        return run.conclude(exc)
    return run.conclude(result)


class TrialRun:
    """One trial around its training: its knobs and plan, its MLflow run, its retry links and
    checkpoint (set up by the constructor), its per-epoch reports and pruning (`on_epoch`),
    and its end (`conclude`). A single trial (`objective`) and a cohort's members
    (autoall/study_cohort.py) both go through it.
    """

    def __init__(self, trial: optuna.Trial, ctx: WorkerContext) -> None:
        cfg, arch = ctx.cfg, ctx.arch
        self.trial, self.ctx = trial, ctx
        self.frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        self.retry_of = retry_of = self.frozen.system_attrs.get("failed_trial")
        if retry_of is None and _is_surplus(trial, ctx.n_trials):
            trial.set_user_attr("fail_reason", "surplus: the target was met by other workers")
            raise _SurplusTrial(f"trial {trial.number} is beyond the target of {ctx.n_trials}")
        if ctx.registry is not None and ctx.data.device.type == "cpu":
            threads = share_cores(ctx.registry, small=ctx.small_model)
            trial.set_user_attr("torch_threads", threads)
        self.params = params = suggest(trial, cfg.space(arch, ctx.kind))
        self.plan = trial_plan(cfg, arch, ctx.kind, params, device=ctx.device)
        tcfg = self.plan.train
        self.run = run = ctx.tracker.start_trial(  # first: a trial that fails from here has its run
            parent_id=ctx.parent_run_id or "",
            trial_number=trial.number,
            params=flat_params(ctx, params, tcfg),
            tags=_trial_tags(ctx, trial.number, retry_of),
            config_yaml=yaml.safe_dump(resolved_config(ctx, params, tcfg), sort_keys=False),
            run_name=f"{ctx.study_name}#{trial.number}",
            system_metrics=ctx.system_metrics,
        )
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("worker_pid", os.getpid())
        self.linked = _link_run(trial, run, linked=False)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
            lost_run = self.frozen.user_attrs.get("mlflow_run_id")  # copied from the stale trial
            if not lost_run and ctx.parent_run_id:  # killed before it learnt its run id
                lost_run = ctx.tracker.find_trial_run(ctx.parent_run_id, retry_of)
            if lost_run:
                ctx.tracker.fail_run(
                    lost_run, f"worker lost (heartbeat stale); retried as trial {trial.number}"
                )
        self.checkpoint = ctx.checkpoint_path(retry_of if retry_of is not None else trial.number)
        self.multi = cfg.second_objective is not None
        self.last_epoch = 0
        self.next_surplus_check = time.monotonic() + _SURPLUS_CHECK_SECONDS
        self.trained: list[torch.nn.Module] = []  # the trained model, for --log-models

    def on_epoch(self, stats: Any) -> None:
        trial = self.trial
        self.last_epoch = stats.epoch
        self.run.log_epoch(stats)
        self.linked = _link_run(trial, self.run, linked=self.linked)
        if not self.multi:
            trial.report(stats.val_acc, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")
        # a retry queued meanwhile (another host's worker died): checked every few seconds
        # (it reads every trial) and after the last epoch, so the target is never overshot
        last = stats.epoch >= self.plan.train.epochs
        if self.retry_of is None and (time.monotonic() >= self.next_surplus_check or last):
            self.next_surplus_check = time.monotonic() + _SURPLUS_CHECK_SECONDS
            if _is_surplus(trial, self.ctx.n_trials):
                raise _SurplusTrial("surplus: a retried trial took its place")

    def _finish(self, state: str, **kw: Any) -> None:
        _finish(self.ctx, self.run, self.trial, state, self.checkpoint, **kw)
        _link_run(self.trial, self.run, linked=self.linked)

    def conclude(self, outcome: RunResult | BaseException) -> float | tuple[float, float]:
        """The trial's end from its training's outcome: its run finished, the value returned,
        or what Optuna must see raised (TrialPruned; the error that failed it)."""
        trial, finish = self.trial, self._finish
        if isinstance(outcome, BaseException):
            try:
                raise outcome
            except optuna.TrialPruned:
                trial.set_user_attr("pruned_epoch", self.last_epoch)
                finish("PRUNED", epoch=self.last_epoch, reason=f"pruner at epoch {self.last_epoch}")
                raise
            except NonFiniteLossError as exc:
                trial.set_user_attr("pruned_reason", str(exc))
                trial.set_user_attr("pruned_epoch", exc.epoch)
                finish("PRUNED", epoch=exc.epoch, reason=str(exc))
                if self.multi:  # Optuna cannot prune a multi-objective trial: it fails
                    trial.set_user_attr("fail_reason", str(exc))
                    raise
                raise optuna.TrialPruned(str(exc)) from None
            except TrainingOOMError as exc:  # not the knobs' fault: rerun the same knobs later
                trial.set_user_attr("fail_reason", str(exc))
                finish("FAIL", reason=str(exc))
                oom_retries = int(self.frozen.user_attrs.get("oom_retries", 0))
                if oom_retries < _MAX_OOM_RETRIES:
                    trial.study.enqueue_trial(
                        self.params,
                        user_attrs={"retry_of": trial.number, "oom_retries": oom_retries + 1},
                    )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
            except BaseException as exc:  # KeyboardInterrupt included: never left RUNNING
                reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else repr(exc)
                if isinstance(exc, _SurplusTrial):
                    reason = str(exc)
                elif isinstance(exc, Exception):
                    reason = _failure_reason(exc)
                trial.set_user_attr("fail_reason", mask_secrets(reason)[:500])
                finish("FAIL", reason=reason)
                raise
        result = outcome
        if result.extra.get("resumed_from_epoch"):
            trial.set_user_attr("resumed_from_epoch", result.extra["resumed_from_epoch"])
        _record_result(trial, result)
        finish("COMPLETE", result=result)
        run_id = self.run.run_id
        if self.trained and run_id and _beats_the_best(trial.study, result.final_val_acc):
            _log_model(self.ctx, run_id, trial.number, self.trained[0])
        if not self.multi:
            return result.final_val_acc
        second = (
            float(result.params.total)
            if self.ctx.cfg.second_objective == "params"
            else result.median_epoch_seconds
        )
        return result.final_val_acc, second


def _beats_the_best(study: optuna.Study, value: float) -> bool:
    """Whether `value` beats every COMPLETE trial of `study` so far (first objective)."""
    best = _best_value(study)
    return best is None or value > best


def _log_model(ctx: WorkerContext, run_id: str, number: int, model: torch.nn.Module) -> None:
    """Hand the trial's model (a float32 CPU copy, with the data's normalisation inside) to the
    tracker, which logs it into the trial's run (autoall/registry.py)."""
    from autoall.registry import serving_copy

    data = ctx.data
    ctx.tracker.log_model(
        run_id,
        serving_copy(model, data),
        example=data.train_x[:2].cpu().numpy(),
        num_classes=data.num_classes,
        tags={"autoall.study": ctx.study_name, "optuna.trial_number": str(number)},
    )


def _is_surplus(trial: optuna.Trial, target: int) -> bool:
    """Whether the target is covered without this fresh trial.

    Ahead of it: finished trials, every live retry (it resumes a checkpoint, and it may be
    queued after this trial started: Optuna fails a stale trial first and queues its retry
    after), then live fresh trials with a smaller number.
    """
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    live = (TrialState.RUNNING, TrialState.WAITING)
    ahead = sum(
        1
        for t in trial.study.get_trials(deepcopy=False)
        if t.number != trial.number
        and (
            t.state in finished
            or (t.state in live and ("failed_trial" in t.system_attrs or t.number < trial.number))
        )
    )
    return ahead >= target


def _record_result(trial: optuna.Trial, result: RunResult) -> None:
    trial.set_user_attr("train_seconds", result.wall_seconds)
    trial.set_user_attr("epochs", result.epochs_run)
    trial.set_user_attr("params_total", result.params.total)
    trial.set_user_attr("params_all", result.params.all)
    trial.set_user_attr("device", result.device)


def _link_run(trial: optuna.Trial, run: Any, *, linked: bool) -> bool:
    """Set the trial's `mlflow_run_id` once the run exists (a writer process creates it)."""
    if not linked and run.run_id:
        trial.set_user_attr("mlflow_run_id", run.run_id)
        return True
    return linked


def _finish(
    ctx: WorkerContext,
    run: Any,
    trial: optuna.Trial,
    state: str,
    checkpoint: Path | None,
    **kw: Any,
) -> None:
    """End the MLflow run; the trial's checkpoint goes once Optuna has stored the trial's end.

    Not before: a worker killed (or a database lost) between here and Optuna's `tell` leaves a
    RUNNING trial, and its retry resumes from that checkpoint.
    """
    if checkpoint is not None:
        ctx.ended_checkpoint = (trial.number, checkpoint)
    run.finish(state, **kw)
    if run.lost:
        trial.set_user_attr("tracking_lost", "; ".join(run.lost)[:1000])
        log.warning("trial %d: MLflow logging lost: %s", trial.number, "; ".join(run.lost))


def _drop_ended_checkpoint(
    ctx: WorkerContext, study: optuna.Study, trial: FrozenTrial | None = None
) -> None:
    """Delete the checkpoint of the trial that just ended here if Optuna stored it as finished
    (`trial`: as Optuna's callback got it; otherwise read back, after an exception)."""
    if ctx.ended_checkpoint is None:
        return
    number, path = ctx.ended_checkpoint
    ctx.ended_checkpoint = None  # checked once: later, a stale FAIL's retry may use the file
    if trial is None:
        try:
            trial = study.get_trials(deepcopy=False)[number]
        except Exception:  # the database is down: the trial stays RUNNING and is retried
            return
    if trial.state.is_finished():
        path.unlink(missing_ok=True)


def _after_trial(ctx: WorkerContext) -> Callable[[optuna.Study, FrozenTrial], None]:
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        _drop_ended_checkpoint(ctx, study, trial)
        trials = study.get_trials(deepcopy=False)  # one snapshot: counts and best agree
        counts = count_trials(trials)
        best = best_trial(trials)
        if ctx.parent_run_id:
            new_best = best is not None and best.number == trial.number
            ctx.tracker.update_parent(
                ctx.parent_run_id,
                best_value=best.values[0] if best is not None else None,
                n_complete=counts.complete,
                n_pruned=counts.pruned,
                n_failed=counts.failed,
                step=counts.complete + counts.pruned + counts.failed,  # grows across workers
                best_trial=best.number if new_best and best is not None else None,
                best_params=dict(best.params) if new_best and best is not None else None,
            )
        if ctx.on_trial_end is not None:
            ctx.on_trial_end(trial)

    return callback


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The COMPLETE trial with the highest validation accuracy (first objective); ties: earliest."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    return max(complete, key=lambda t: (t.values[0], -t.number)) if complete else None


def _best_value(study: optuna.Study) -> float | None:
    """Best validation accuracy so far (first objective), or None before any COMPLETE trial."""
    values = [
        t.values[0]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values
    ]
    return max(values) if values else None


def resolved_config(ctx: WorkerContext, params: dict[str, Any], tcfg: Any) -> dict[str, Any]:
    """Everything that determines one trial, as plain data (logged as config.yaml).

    `all` holds the ALL's knobs (None for a tuned-baseline trial, whose knobs are in `train`).
    """
    cfg = ctx.cfg
    return {
        "study": ctx.study_name,
        "study_file": cfg.path,
        "kind": ctx.kind,
        "architecture": ctx.arch,
        "data": asdict(cfg.data),
        "all": {**params, "activation": cfg.activation} if ctx.kind == "all" else None,
        "train": asdict(tcfg),
    }


def flat_params(ctx: WorkerContext, params: dict[str, Any], tcfg: Any) -> dict[str, Any]:
    """The resolved configuration flattened to dotted keys (MLflow params)."""
    flat = flatten(resolved_config(ctx, params, tcfg))
    flat.pop("study_file", None)
    flat["seed"] = tcfg.seed
    flat["device"] = tcfg.device or "auto"
    return flat


def _trial_tags(ctx: WorkerContext, number: int, retry_of: int | None) -> dict[str, str]:
    tags = {
        "autoall.study": ctx.study_name,
        "autoall.architecture": ctx.arch,
        "autoall.kind": ctx.kind,
        "optuna.study_name": ctx.study_name,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "device_name": _device_label(),
        "torch_version": torch.__version__,
        "autoall_version": autoall.__version__,
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if retry_of is not None:
        tags["retry_of"] = str(retry_of)
    return tags


def _device_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def load_study_data(cfg: StudyConfig, device: str | None) -> DeviceData:
    """The study's data with the test split removed: searching must never see it."""
    from autoall.train import resolve_device

    data = load_data(
        cfg.data.name,
        root=cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed,
        device=resolve_device(device),
        download=cfg.data.download,
    )
    return replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])
