"""Trial cohorts: `autoall study run --cohort K` asks Optuna for K trials at once, trains them
as one batched job (autoall/training/cohort/_cohort.py) and tells each its own result.

Every member is a single trial in all but its training: its knobs, plan, MLflow run, retry links,
checkpoint, per-epoch reports, pruning, surplus checks and end go through the same
`autoall.study._objective.TrialRun` as a trial of `objective`, and its end is told to Optuna as
`study.optimize` tells a trial (`study.tell`: COMPLETE with its value, PRUNED, or FAIL with the
reason in `fail_reason`), followed by the same per-trial callback (checkpoint removal, the parent
run's summary). Around them:

- Exact targets: the trials are asked while the start lock is held, one at a time, each only
  while the study has room (done + running < target, or a retry is waiting), so a cohort never
  overshoots; across hosts each fresh member checks for surplus as a single trial does.
- Heartbeats: one thread records every live member's heartbeat every interval (Optuna's is per
  trial); a member stops beating when it is told. A killed worker's members all go stale and
  are retried, each from its own checkpoint, in any cohort or alone (the formats are the same).
- A member that is pruned, diverges or turns out surplus is told at once and leaves the
  stacked state: it stops counting and stops costing.
- Ctrl-C marks every member that has not ended FAIL ("interrupted (Ctrl-C)") and is raised.
  Out of memory fails the members as for a single trial (each queued again with its knobs)
  and halves this worker's cohort size. A storage error is raised at once (the members left
  RUNNING are failed as stale and retried), as for a single trial.
- What cannot be batched (`autoall.training.cohort._cohort.cohort_blocker`) runs trials one at a time, with
  one logged line saying why.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from autoall import _timing as timing
from autoall._secrets import mask_secrets
from autoall.study._objective import TrialRun, noting_failure
from autoall.study._storage import (
    Heartbeats,
    _StartLock,
    _storage_error,
    fail_stale_trials_as_optuna,
    stored_trial,
)
from autoall.study._trials import (
    Step,
    WorkerContext,
    after_trial,
    count_trials,
    drop_ended_checkpoint,
    failed_by_its_own_fault,
)
from autoall.training import TrainingOOMError
from autoall.training.cohort import Outcome, cohort_blocker, fit_cohort, group_plans

log = logging.getLogger("autoall.study")
_optuna_log = optuna.logging.get_logger("optuna.study._optimize")  # where optimize says it


def single_trials_reason(ctx: WorkerContext) -> str | None:
    """Why this worker's trials cannot form cohorts at all (known before any trial), or None."""
    if ctx.cfg.train_config(ctx.arch).compile:
        return "compile is set, and torch.compile is not applied to a vmapped cohort"
    return None


def run_cohort(ctx: WorkerContext, study: optuna.Study, start_lock: _StartLock) -> Step:
    """Ask up to `ctx.cohort` trials (the caller holds `start_lock`, released once they exist),
    train them together, tell each its end. The worker loop's `Step`: whether every member failed
    by its own fault (not out of memory, not surplus), and the last member."""
    try:
        fail_stale_trials_as_optuna(study)  # as optimize does before each ask
        trials = [_ask(study)]  # the caller saw room for one
        while len(trials) < ctx.cohort:
            c = count_trials(study.get_trials(deepcopy=False))
            if c.waiting == 0 and c.done + c.running >= ctx.n_trials:
                break
            trials.append(_ask(study))
    finally:
        start_lock.release()  # the trials exist now: others may count them
    cohort = _Cohort(ctx, study, trials)
    try:
        cohort.train()
    finally:
        cohort.heartbeats.stop()
    ends = [stored_trial(study, t) for t in trials]
    return Step(failed=all(failed_by_its_own_fault(t) for t in ends), last=ends[-1])


def _ask(study: optuna.Study) -> optuna.Trial:
    """`study.ask()`; its heartbeats are this module's (`Heartbeats`), so Optuna's warning
    that heartbeats are meant for `optimize` does not apply."""
    with warnings.catch_warnings(), timing.span("trial.optuna_ask"):
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


class _Cohort:
    """The members of one cohort: set up, trained together, each told as it ends."""

    def __init__(self, ctx: WorkerContext, study: optuna.Study, trials: list[optuna.Trial]):
        self.ctx, self.study, self.trials = ctx, study, trials
        self.told: set[int] = set()  # trial numbers
        self.heartbeats = Heartbeats(study, trials)
        self.heartbeats.start()

    def train(self) -> None:
        runs: list[TrialRun] = []
        try:
            for trial in self.trials:
                try:
                    runs.append(TrialRun(trial, self.ctx))
                except Exception as exc:  # e.g. surplus: this member ends before training
                    self._end(trial, None, exc)
            for group in group_plans([r.plan for r in runs]):
                members = [runs[i] for i in group]

                def on_end(i: int, outcome: Outcome, members: list[TrialRun] = members) -> None:
                    self._end(members[i].trial, members[i], outcome)

                with timing.span("cohort.train"):
                    fit_cohort(
                        [r.plan for r in members],
                        self.ctx.data,
                        on_epoch=[r.on_epoch for r in members],
                        on_end=on_end,
                        checkpoints=[r.checkpoint for r in members],
                        checkpoint_every=self.ctx.checkpoint_every,
                        on_trained=[
                            r.trained.append if self.ctx.log_models else None for r in members
                        ],
                    )
                if cohort_blocker([r.plan for r in members]) is not None:
                    self.ctx.cohort = 1  # fit_cohort said why; the next trials run alone
        except BaseException as exc:
            if _storage_error(exc) is not None:
                raise  # the members left RUNNING are failed as stale and retried
            by_number = {r.trial.number: r for r in runs}
            for trial in self.trials:
                if trial.number not in self.told:
                    self._end(trial, by_number.get(trial.number), exc)
            if isinstance(exc, TrainingOOMError) and self.ctx.cohort > 1:
                self.ctx.cohort = max(1, self.ctx.cohort // 2)
                log.warning("%s: out of memory; cohorts of %d from now on (--cohort)",
                            self.ctx.study_name, self.ctx.cohort)  # fmt: skip
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt: every member is FAIL now, as optimize leaves it

    def _end(
        self, trial: optuna.Trial, run: TrialRun | None, outcome: Outcome | BaseException
    ) -> None:
        """Conclude the member as `objective` would have ended, tell Optuna, run the callback."""

        def conclude() -> float | tuple[float, float]:
            if run is None:
                raise outcome if isinstance(outcome, BaseException) else AssertionError(outcome)
            return run.conclude(outcome)

        values: Any = None
        state: TrialState | None = None
        error: BaseException | None = None
        try:
            values = noting_failure(trial, conclude)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except BaseException as exc:
            state, error = TrialState.FAIL, exc
        self.told.add(trial.number)
        self.heartbeats.drop(trial)
        if stored_trial(self.study, trial).state.is_finished():
            # failed as stale meanwhile (its heartbeat late through a database blip): its retry
            # is queued and resumes from the checkpoint, which stays
            self.ctx.ended_checkpoint = None
            log.warning("trial %d was failed as stale before its end was told; its retry "
                        "resumes it", trial.number)  # fmt: skip
            return
        with timing.span("trial.optuna_tell"):
            self.study.tell(trial, values, state=state)
        frozen = stored_trial(self.study, trial)
        if error is not None and not isinstance(error, KeyboardInterrupt):  # said once, above
            _optuna_log.warning(
                "Trial %d failed with parameters: %s because of the following error: %s.",
                trial.number, frozen.params, mask_secrets(repr(error)),
            )  # fmt: skip
        if isinstance(error, KeyboardInterrupt):
            drop_ended_checkpoint(self.ctx, self.study, frozen)
        else:
            after_trial(self.ctx)(self.study, frozen)
