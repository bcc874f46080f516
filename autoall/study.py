"""Optuna studies over the ALL knobs: counts, sampler, pruner, creation, suggest, the worker loop.

One Optuna study per (study file `name`, architecture), named `<name>/<arch>`, in plain Optuna
RDB storage (SQLite by default, PostgreSQL for many hosts; autoall/storage.py), so
`optuna.load_study` and optuna-dashboard open it. `n_trials` is a target for the study as a
whole: COMPLETE plus PRUNED trials across every worker and restart; a rerun runs only the
remainder. A worker killed mid-trial is detected by Optuna's heartbeat and its trial rerun with
the same parameters (`RetryHeartbeatStaleTrialCallback`). A trial itself is run by
autoall/objective.py, which never sees the test split (`load_study_data`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autoall import timing
from autoall.config import KINDS, ParamSpec, StudyConfig
from autoall.data import DeviceData, load_data
from autoall.host import WorkerRegistry
from autoall.samplers import per_trial
from autoall.storage import _StartLock, _storage_error, fail_stale_trials, storage_reason
from autoall.tracking import StudyTracker

log = logging.getLogger("autoall.study")

_MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials all fail stops instead of looping
_MAX_OUTAGE_SECONDS = 300  # a worker waits this long for an unreachable database, then stops


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


@timing.span("setup.create_studies")
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


@dataclass(frozen=True)
class Step:
    """What one step of the worker loop ended with."""

    final: Counts | None = None  # the study met its target: the counts, and the worker stops
    failed: bool = False  # the trial (each member of a cohort) failed by its own fault
    last: FrozenTrial | None = None  # the trial (the cohort's last member) that ran


@dataclass
class WorkerContext:
    """What one worker process needs to run trials of one architecture."""

    cfg: StudyConfig
    arch: str
    kind: str  # "all" (the ALL study) or "baseline" (its equal-budget tuned baseline)
    data: DeviceData
    device: str | None
    tracker: StudyTracker
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


@timing.span("loop.run_worker")
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
    start_lock = _StartLock(study)
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
        if step.final is not None:
            return step.final
        consecutive_failures = consecutive_failures + 1 if step.failed else 0
        if consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
            last = step.last
            reason = last.user_attrs.get("fail_reason", "see the log") if last else ""
            raise RuntimeError(
                f"{ctx.study_name}: {consecutive_failures} trials in a row failed; "
                f"stopping this worker. Last reason: {reason}"
            )


def _step(
    ctx: WorkerContext,
    study: optuna.Study,
    start_lock: _StartLock,
    unbeaten: dict[int, float],
    poll_seconds: float,
) -> Step:
    """Until one trial (or one cohort) has run, or the study has met its target."""
    from autoall.objective import objective  # here: autoall.objective imports this module

    while True:
        counts = count_trials(study.get_trials(deepcopy=False))
        if counts.done >= ctx.n_trials:
            return Step(final=counts)
        if counts.waiting == 0 and counts.done + counts.running >= ctx.n_trials:
            time.sleep(poll_seconds)
            fail_stale_trials(study, unbeaten)
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
            clock = _OptunaClock(guarded)
            with timing.span("trial.optimize"):
                study.optimize(
                    clock.objective,
                    n_trials=1,
                    catch=(Exception,),
                    callbacks=[clock.told, _after_trial(ctx)],
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
        return Step(failed=failed, last=last)


class _OptunaClock:
    """Times Optuna's own work around the objective of one `study.optimize` call, which
    autoall does not call itself: from the call to the objective (Optuna's stale-trial check,
    `ask` with the sampler, the heartbeat's start) as `trial.optuna_ask`, and from the
    objective's end to the first callback (the heartbeat's stop, `tell`) as `trial.optuna_tell`
    (autoall/timing.py)."""

    def __init__(self, objective: Callable[[optuna.Trial], float | tuple[float, float]]) -> None:
        self._objective = objective
        self.mark = time.perf_counter()

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        timing.since("trial.optuna_ask", self.mark)
        try:
            return self._objective(trial)
        finally:
            self.mark = time.perf_counter()

    def told(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An Optuna callback: the first after `tell`."""
        timing.since("trial.optuna_tell", self.mark)


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
    @timing.span("trial.after_trial")
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        _drop_ended_checkpoint(ctx, study, trial)
        trials = study.get_trials(deepcopy=False)  # one snapshot: counts and best agree
        counts = count_trials(trials)
        best = best_trial(trials)
        if ctx.parent_run_id:
            new_best = best is not None and best.number == trial.number
            with timing.span("tracking.update_parent"):
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


@timing.span("setup.data")
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
