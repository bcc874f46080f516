"""The worker loop: run trials of one study until it holds its target (Optuna's `_optimize.py`).

`run_worker` asks for one trial at a time (or `--cohort K` at once, autoall/study_cohort.py)
only while done + running < target or a retried trial waits, under the storage's start lock so
that workers on many hosts never overshoot; rides out a database outage of up to
`_MAX_OUTAGE_SECONDS`; stops after `_MAX_CONSECUTIVE_FAILURES` trials in a row failed by their
own fault. One step of the loop ends with a `Step` (autoall/study.py); a trial itself is
autoall/objective.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

from autoall import timing
from autoall.objective import objective
from autoall.storage import _StartLock, _storage_error, fail_stale_trials, storage_reason
from autoall.study import (
    Counts,
    Step,
    WorkerContext,
    after_trial,
    count_trials,
    drop_ended_checkpoint,
    failed_by_its_own_fault,
    sweep_checkpoints,
)
from autoall.study_cohort import run_cohort, single_trials_reason

log = logging.getLogger("autoall.study")
_optuna_log = logging.getLogger("optuna.study._optimize")  # where `study.optimize` reports


class _QuietInterrupt(logging.Filter):
    """Drops what `study.optimize` logs about a trial cut short by Ctrl-C: the trial is FAIL
    with `fail_reason` "interrupted (Ctrl-C)", and the command says so in one line, so
    Optuna's traceback of the KeyboardInterrupt and its "failed with value None" line would
    only bury that. Every other failure is logged as Optuna logs it."""

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: int | None = None  # the trial whose second line is still to come

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            number = record.getMessage().split()[1]
            self._interrupted = int(number) if number.isdigit() else None
            return False
        if record.getMessage() == f"Trial {self._interrupted} failed with value None.":
            self._interrupted = None
            return False
        return True


_QUIET_INTERRUPT = _QuietInterrupt()

_MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials all fail stops instead of looping
_MAX_OUTAGE_SECONDS = 300  # a worker waits this long for an unreachable database, then stops


@timing.span("loop.run_worker")
def run_worker(ctx: WorkerContext, study: optuna.Study, *, poll_seconds: float = 1.0) -> Counts:
    """Run trials until the study holds `n_trials` COMPLETE + PRUNED trials; return the counts.

    A trial is started only while done + running < target, or when a retried trial is waiting;
    otherwise the worker waits for running trials to finish or turn stale.
    """
    _optuna_log.addFilter(_QUIET_INTERRUPT)  # once per process: addFilter skips a repeat
    if ctx.cohort > 1:
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
            _sweep(ctx, study)
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
                    callbacks=[clock.told, after_trial(ctx)],
                    gc_after_trial=False,
                )
        finally:
            start_lock.release()
            drop_ended_checkpoint(ctx, study)
        ctx.tracker.check()
        last = study.get_trials(deepcopy=False)[-1] if ctx.n_trials else None
        return Step(failed=last is not None and failed_by_its_own_fault(last), last=last)


def _sweep(ctx: WorkerContext, study: optuna.Study) -> None:
    """The study's target is met: delete the checkpoints no trial can resume from any more."""
    folder = ctx.checkpoint_folder
    if folder is None or not folder.is_dir():
        return
    try:
        trials = study.get_trials(deepcopy=False)
    except Exception as exc:
        if _storage_error(exc) is None:
            raise
        return  # the database is down: a later run sweeps
    for path in sweep_checkpoints(folder, trials):
        log.info("%s: deleted %s, left by a trial whose end was stored", ctx.study_name, path)


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
