"""The worker loop: run trials of one study until it holds its target (Optuna's `_optimize.py`).

`run_worker` asks for one trial at a time (or `--cohort K` at once, autoall/study/_cohort_trials.py)
only while done + running < target or a retried trial waits, under the storage's start lock so
that workers on many hosts never overshoot; rides out a database outage of up to
`_MAX_OUTAGE_SECONDS`, but not a full disk (`StorageFullError`, raised at once with the trials
it leaves RUNNING) nor Ctrl-C (a KeyboardInterrupt even when the storage then failed to store
the trial's end); stops after `_MAX_CONSECUTIVE_FAILURES` trials in a row failed by their own
fault (out-of-memory failures count once their retries are spent; surplus trials and trials
dropped because the heartbeat failed them while this worker was paused count neither way).
One step of the loop ends with a `Step` (autoall/study/_trials.py); a trial itself is
autoall/study/_objective.py.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoall import _timing as timing
from autoall.errors import RunFailed
from autoall.study._cohort_trials import run_cohort, single_trials_reason
from autoall.study._objective import TrialFailedElsewhere, objective
from autoall.study._outage import StorageFullError, resume_waiting
from autoall.study._storage import _StartLock, _storage_error, fail_stale_trials, storage_reason
from autoall.study._trials import (
    Counts,
    Step,
    WorkerContext,
    after_trial,
    count_trials,
    drop_ended_checkpoint,
    failed_by_its_own_fault,
    sweep_checkpoints,
)

log = logging.getLogger("autoall.study")
_optuna_log = logging.getLogger("optuna.study._optimize")  # where `study.optimize` reports


class _QuietInterrupt(logging.Filter):
    """Drops what `study.optimize` logs about a trial cut short by Ctrl-C, by a full storage
    disk, or dropped because the heartbeat failed it while its worker was paused: the command
    says each in one line, so Optuna's traceback and its "failed with value None" line would
    only bury that. Every other failure is logged as Optuna logs it."""

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: int | None = None  # the trial whose second line is still to come

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _said_in_one_line(record.exc_info[1]):
            number = record.getMessage().split()[1]
            self._interrupted = int(number) if number.isdigit() else None
            return False
        if record.getMessage() == f"Trial {self._interrupted} failed with value None.":
            self._interrupted = None
            return False
        return True


def _said_in_one_line(exc: BaseException | None) -> bool:
    if isinstance(exc, KeyboardInterrupt | TrialFailedElsewhere):
        return True
    return _find(exc, StorageFullError) is not None


def _find(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """`exc`, or what caused it, that is a `kind`; None if none is."""
    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, kind):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None


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
    resume_waiting()  # storage calls ride out outages (again, after an earlier Ctrl-C)
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
    asked: list[int] = []  # the numbers of the trials this worker ran, for a full disk's error
    while True:
        try:
            step = _step(ctx, study, start_lock, unbeaten, poll_seconds, asked)
        except Exception as exc:
            if _find(exc, KeyboardInterrupt) is not None:  # Ctrl-C, then the storage failed
                raise KeyboardInterrupt from exc
            full = _find(exc, StorageFullError)
            if full is not None:  # waiting frees no space: stop now
                raise StorageFullError(f"{full}{_left_running(ctx, study, asked)}") from None
            error = _storage_error(exc)
            if error is None:
                raise
            # the database is down or restarting: a trial cut short stays RUNNING, its heartbeat
            # stops, and it is rerun as stale; this worker waits for the database to come back
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > _MAX_OUTAGE_SECONDS:
                raise RunFailed(
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
        if step.failed:
            consecutive_failures += 1
        elif step.last is not None and step.last.state != TrialState.FAIL:
            consecutive_failures = 0  # a success; FAIL not by its own fault counts neither way
        if consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
            last = step.last
            reason = last.user_attrs.get("fail_reason", "see the log") if last else ""
            raise RunFailed(
                f"{ctx.study_name}: {consecutive_failures} trials in a row failed; "
                f"stopping this worker. Last reason: {reason}"
            )


def _left_running(ctx: WorkerContext, study: optuna.Study, asked: list[int]) -> str:
    """What the full disk leaves RUNNING of this worker's trials, said honestly."""
    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:
        return " Trials this worker was running may stay RUNNING until the heartbeat fails them."
    host, pid = socket.gethostname(), os.getpid()
    mine = [
        t.number
        for t in running
        if t.number in asked
        or (t.user_attrs.get("worker_pid") == pid and t.user_attrs.get("worker_host") == host)
    ]
    if not mine:
        return ""
    numbers = ", ".join(str(n) for n in mine)
    return (
        f" Left RUNNING, as its end could not be stored: trial {numbers} of {ctx.study_name}; "
        "the heartbeat fails it and queues its retry when the study resumes."
    )


def _step(
    ctx: WorkerContext,
    study: optuna.Study,
    start_lock: _StartLock,
    unbeaten: dict[int, float],
    poll_seconds: float,
    asked: list[int],
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
            asked.append(trial.number)
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
        clock = _OptunaClock(guarded)
        try:
            with timing.span("trial.optimize"):
                study.optimize(
                    clock.objective,
                    n_trials=1,
                    catch=(Exception,),
                    callbacks=[clock.told, after_trial(ctx)],
                    gc_after_trial=False,
                )
        except Exception as exc:
            if clock.interrupted:  # Ctrl-C, then Optuna could not store the trial's end
                raise KeyboardInterrupt from exc
            if clock.dropped is None:
                raise
            # Optuna's tell of a trial already FAIL: "Cannot tell a FAIL trial."
        finally:
            start_lock.release()
            drop_ended_checkpoint(ctx, study)
        if clock.dropped is not None:
            log.warning("%s: %s", ctx.study_name, clock.dropped)
            return Step()  # neither a failure nor a success of this worker
        ctx.tracker.check()
        # the trial that ran (by number: a requeue after it, out of memory, comes last)
        trials = study.get_trials(deepcopy=False)
        last = trials[clock.number] if clock.number is not None else None
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
    (autoall/_timing.py)."""

    def __init__(self, objective: Callable[[optuna.Trial], float | tuple[float, float]]) -> None:
        self._objective = objective
        self.mark = time.perf_counter()
        self.number: int | None = None  # the trial that ran
        self.interrupted = False  # the objective ended by Ctrl-C
        self.dropped: TrialFailedElsewhere | None = None  # failed as stale while paused

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        timing.since("trial.optuna_ask", self.mark)
        self.number = trial.number
        try:
            return self._objective(trial)
        except BaseException as exc:  # Ctrl-C, also when storing its FAIL failed after it
            self.interrupted = _find(exc, KeyboardInterrupt) is not None
            self.dropped = exc if isinstance(exc, TrialFailedElsewhere) else None
            raise
        finally:
            self.mark = time.perf_counter()

    def told(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An Optuna callback: the first after `tell`."""
        timing.since("trial.optuna_tell", self.mark)
