"""The objective: one trial around its training, from its knobs to the state Optuna stores.

`objective` trains one model with the trial's knobs (autoall/training/_plan.py) and reports validation
accuracy every epoch; `TrialRun` holds what a trial owns (its plan, its MLflow run, its retry
links and checkpoint) and decides its end (`TrialRun.conclude`, through one failure table,
`_ending`): COMPLETE with its value, PRUNED (the pruner, or a non-finite loss), or FAIL with the
reason in the user attribute `fail_reason`, queued again when the GPU ran out of memory. A fresh
trial that turns out beyond the study's target (a retry took its place) fails as surplus. A
trial that the heartbeat failed as stale while its worker was paused (SIGSTOP, a suspended
laptop) is dropped (`TrialFailedElsewhere`): its retry owns it and its checkpoint now. A
single trial and a cohort's members (autoall/study/_cohort_trials.py) both go through `TrialRun`. The
objective never sees the test split.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

import autoall
from autoall import _timing as timing
from autoall._provenance import git_commit
from autoall._secrets import mask_secrets
from autoall.config import BASELINE_KNOBS, Kind, trial_plan
from autoall.errors import RunFailed
from autoall.study._host import share_cores
from autoall.study._outage import stop_waiting
from autoall.study._samplers import PHASE_ATTR
from autoall.study._storage import _storage_error, storage_reason, stored_trial
from autoall.study._trials import WorkerContext, best_trial, suggest
from autoall.tracking import TrackedRun, flatten
from autoall.training import NonFiniteLossError, RunResult, TrainingOOMError, fit

log = logging.getLogger("autoall.study")

_MAX_OOM_RETRIES = 2  # a trial that ran out of GPU memory is queued again this often
_SURPLUS_CHECK_SECONDS = 5.0  # a running fresh trial checks this often whether a retry replaced it


class _SurplusTrial(Exception):
    """Another worker met the target between our check and our ask: this trial is not needed."""


class TrialFailedElsewhere(RunFailed):
    """The trial was failed as stale by the heartbeat (another worker's check) while this
    worker was paused; its retry runs elsewhere, so this worker drops it and goes on."""

    def __init__(self, number: int) -> None:
        self.number = number
        super().__init__(
            f"trial {number} was failed as stale while this worker was paused; "
            "its retry runs elsewhere"
        )


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
        stop_waiting()  # stop now: no storage call rides out an outage any more
        with contextlib.suppress(Exception):  # a storage that fails keeps the trial RUNNING
            _note_failure(trial, "interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        if _failed_elsewhere(trial, exc):
            raise TrialFailedElsewhere(trial.number) from None
        _note_failure(trial, _failure_reason(exc))
        raise


def _failed_elsewhere(trial: optuna.Trial, exc: BaseException) -> bool:
    """Whether `exc` comes from writing to a trial that is already FAIL in the storage (the
    heartbeat failed it as stale while this worker was paused)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, optuna.exceptions.UpdateFinishedTrialError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return False
    try:
        return stored_trial(trial.study, trial).state == TrialState.FAIL
    except Exception:  # the storage cannot tell: the trial ends as any failed trial does
        return False


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
    (autoall/study/_cohort_trials.py) both go through it.
    """

    def __init__(self, trial: optuna.Trial, ctx: WorkerContext) -> None:
        cfg, arch = ctx.cfg, ctx.arch
        self.trial, self.ctx = trial, ctx
        self.frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        self.retry_of = retry_of = self.frozen.system_attrs.get("failed_trial")
        if retry_of is None and _is_surplus(trial, ctx.n_trials):
            trial.set_user_attr("fail_reason", "surplus: the target was met by other workers")
            raise _SurplusTrial(f"trial {trial.number} is beyond the target of {ctx.n_trials}")
        if ctx.host_workers is not None and ctx.data.device.type == "cpu":
            threads = share_cores(ctx.host_workers, small=ctx.small_model)
            trial.set_user_attr("torch_threads", threads)
        with timing.span("trial.suggest"):
            self.params = params = suggest(trial, cfg.space(arch, ctx.kind))
        self.plan = trial_plan(
            cfg, arch, ctx.kind, params, device=ctx.device, replicate=ctx.replicate
        )
        tcfg = self.plan.train
        with timing.span("tracking.start_trial"):  # first: a trial that fails from here has its run
            self.run = run = ctx.tracker.start_trial(
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
            lost = self.frozen.system_attrs.get("retry_history", [retry_of])[-1]  # the stale one
            reason = f"worker lost (heartbeat stale); retried as trial {trial.number}"
            lost_run = self.frozen.user_attrs.get("mlflow_run_id")  # copied from the stale trial
            if lost != retry_of:  # a retry's retry: the id copied may be the first trial's
                lost_run = None
            if not lost_run and ctx.parent_run_id:  # killed before it learnt its run id
                lost_run = ctx.tracker.find_trial_run(ctx.parent_run_id, lost)
            if lost_run:
                ctx.tracker.fail_run(lost_run, reason)
            elif ctx.parent_run_id:  # killed before its run was made: made now, FAILED
                self._lost_run(lost, flat_params(ctx, params, tcfg), reason)
        self.checkpoint = ctx.checkpoint_path(retry_of if retry_of is not None else trial.number)
        self.multi = cfg.second_objective is not None
        self.last_epoch = 0
        self.next_surplus_check = time.monotonic() + _SURPLUS_CHECK_SECONDS
        self.trained: list[torch.nn.Module] = []  # the trained model, for --log-models

    def _lost_run(self, number: int, params: dict[str, Any], reason: str) -> None:
        """The MLflow run of stale trial `number`, whose worker was killed before the run was
        made (its tracking writer still connecting): made now and ended FAILED with `reason`,
        so that every trial has its run. Its host and pid are unknown: not tagged."""
        ctx = self.ctx
        tags = _trial_tags(ctx, number, None)
        for unknown in ("host", "pid", "device_name"):
            tags.pop(unknown)
        lost = ctx.tracker.start_trial(
            parent_id=ctx.parent_run_id or "",
            trial_number=number,
            params=params,
            tags={**tags, "autoall.run_made_by_retry": str(self.trial.number)},
            config_yaml=yaml.safe_dump(
                resolved_config(ctx, self.params, self.plan.train), sort_keys=False
            ),
            run_name=f"{ctx.study_name}#{number}",
        )
        lost.finish("FAIL", reason=reason)

    def on_epoch(self, stats: Any) -> None:
        trial = self.trial
        self.last_epoch = stats.epoch
        timing.add("epoch.compute", stats.epoch_seconds)
        with timing.span("tracking.log_epoch"):
            self.run.log_epoch(stats)
        self.linked = _link_run(trial, self.run, linked=self.linked)
        if not self.multi:
            with timing.span("epoch.optuna_report"):
                trial.report(stats.val_acc, stats.epoch)
            with timing.span("epoch.should_prune"):
                prune = trial.should_prune()
            if prune:
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

    def _requeue(self) -> None:
        """The same knobs queued again (at most _MAX_OOM_RETRIES times), GPU memory freed. When
        the retries are spent, the trial is marked `oom_retries_spent`: its failure then counts
        toward the worker's stop after repeated failures (autoall/study/_trials.py)."""
        oom_retries = int(self.frozen.user_attrs.get("oom_retries", 0))
        if oom_retries < _MAX_OOM_RETRIES:
            attrs = {"retry_of": self.trial.number, "oom_retries": oom_retries + 1}
            stored = self.trial.study.get_trials(deepcopy=False)[self.trial.number]
            if PHASE_ATTR in stored.user_attrs:  # the same knobs, drawn as they were drawn
                attrs[PHASE_ATTR] = stored.user_attrs[PHASE_ATTR]
            self.trial.study.enqueue_trial(self.params, user_attrs=attrs)
        else:
            self.trial.set_user_attr("oom_retries_spent", True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def conclude(self, outcome: RunResult | BaseException) -> float | tuple[float, float]:
        """The trial's end from its training's outcome: its run finished, the value returned,
        or what Optuna must see raised (TrialPruned; the error that failed it).

        A trial that the heartbeat failed as stale meanwhile (its worker was paused) cannot be
        written to any more: its run ends FAILED, its checkpoint stays for its retry, and the
        storage's UpdateFinishedTrialError is raised (`noting_failure` makes it a
        `TrialFailedElsewhere`)."""
        if isinstance(outcome, KeyboardInterrupt):
            stop_waiting()  # stop now: no storage call rides out an outage any more
        try:
            return self._conclude(outcome)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.run.finish("FAIL", reason="failed as stale while its worker was paused; retried")
            raise

    def _conclude(self, outcome: RunResult | BaseException) -> float | tuple[float, float]:
        trial, finish = self.trial, self._finish
        if isinstance(outcome, BaseException):
            end = _ending(outcome, last_epoch=self.last_epoch, multi=self.multi)
            for key, value in end.attrs.items():
                trial.set_user_attr(key, value)
            finish(end.state, reason=end.reason, epoch=end.epoch)
            if end.requeue:
                self._requeue()
            if end.raises is not None:
                raise end.raises from None
            raise outcome
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


@dataclass(frozen=True)
class _Ending:
    """How a trial ends when its training raised: one row of the failure table."""

    state: str  # its MLflow run's end: PRUNED or FAIL
    reason: str
    attrs: dict[str, Any]  # the user attributes the trial keeps: fail_reason, pruned_*
    epoch: int | None = None  # the epoch it stopped after (pruned)
    requeue: bool = False  # not the knobs' fault (out of memory): the same knobs queued again
    raises: BaseException | None = None  # what Optuna sees instead (None: the exception itself)


def _ending(exc: BaseException, *, last_epoch: int, multi: bool) -> _Ending:
    """The failure table: from what a trial's training raised to (state, reason, requeue).

    | raised | run | Optuna | requeue |
    | TrialPruned (the pruner) | PRUNED | PRUNED | no |
    | NonFiniteLossError | PRUNED | PRUNED (FAIL if multi-objective: Optuna cannot prune it) | no |
    | TrainingOOMError | FAIL | FAIL | yes, twice; then `oom_retries_spent`, counted as a failure |
    | anything else, Ctrl-C and surplus included | FAIL | FAIL (never left RUNNING) | no |
    """
    if isinstance(exc, optuna.TrialPruned):
        reason = f"pruner at epoch {last_epoch}"
        return _Ending("PRUNED", reason, {"pruned_epoch": last_epoch}, epoch=last_epoch)
    if isinstance(exc, NonFiniteLossError):
        attrs: dict[str, Any] = {"pruned_reason": str(exc), "pruned_epoch": exc.epoch}
        if multi:
            return _Ending("PRUNED", str(exc), {**attrs, "fail_reason": str(exc)}, epoch=exc.epoch)
        pruned = optuna.TrialPruned(str(exc))
        return _Ending("PRUNED", str(exc), attrs, epoch=exc.epoch, raises=pruned)
    if isinstance(exc, TrainingOOMError):
        return _Ending("FAIL", str(exc), {"fail_reason": str(exc)}, requeue=True)
    if isinstance(exc, KeyboardInterrupt):
        reason = "interrupted (Ctrl-C)"
    elif isinstance(exc, _SurplusTrial):
        reason = str(exc)
    elif isinstance(exc, Exception):
        reason = _failure_reason(exc)
    else:
        reason = repr(exc)
    return _Ending("FAIL", reason, {"fail_reason": mask_secrets(reason)[:500]})


def _beats_the_best(study: optuna.Study, value: float) -> bool:
    """Whether `value` beats every COMPLETE trial of `study` so far (first objective)."""
    best = best_trial(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return best is None or value > best.values[0]


def _log_model(ctx: WorkerContext, run_id: str, number: int, model: torch.nn.Module) -> None:
    """Hand the trial's model (a float32 CPU copy, with the data's normalisation inside) to the
    tracker, which logs it into the trial's run and the study file's experiment as
    `<study>-trial<n>` with the study's '/' as '-' (e.g. `digits-mlp-tuned-baseline-r1-trial7`;
    autoall/tracking/_model_registry.py)."""
    from autoall.tracking import logged_model_name, serving_copy

    data = ctx.data
    ctx.tracker.log_model(
        run_id,
        serving_copy(model, data),
        example=data.train_x[:2].cpu().numpy(),
        num_classes=data.num_classes,
        tags={"autoall.study": ctx.study_name, "optuna.trial_number": str(number)},
        name=logged_model_name(ctx.study_name, f"trial{number}"),
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


def _link_run(trial: optuna.Trial, run: TrackedRun, *, linked: bool) -> bool:
    """Set the trial's `mlflow_run_id` once the run exists (a writer process creates it)."""
    if not linked and run.run_id:
        trial.set_user_attr("mlflow_run_id", run.run_id)
        return True
    return linked


def _finish(
    ctx: WorkerContext,
    run: TrackedRun,
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
    with timing.span("tracking.finish"):
        run.finish(state, **kw)
    if run.lost:
        trial.set_user_attr("tracking_lost", "; ".join(run.lost)[:1000])
        log.warning("trial %d: MLflow logging lost: %s", trial.number, "; ".join(run.lost))


def resolved_config(ctx: WorkerContext, params: dict[str, Any], tcfg: Any) -> dict[str, Any]:
    """Everything that determines one trial, as plain data (logged as config.yaml).

    `all` holds the ALL's knobs (None for a tuned-baseline trial); the base network's lr and
    weight_decay, searched by both kinds, are in `train`.
    """
    cfg = ctx.cfg
    knobs = {k: v for k, v in params.items() if k not in BASELINE_KNOBS}
    return {
        "study": ctx.study_name,
        "study_file": cfg.path,
        "kind": ctx.kind.value,  # a plain string: config.yaml is plain YAML
        "replicate": ctx.replicate,
        "architecture": ctx.arch,
        "data": asdict(cfg.data),
        "all": {**knobs, "activation": cfg.activation} if ctx.kind == Kind.ALL else None,
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
        "autoall.kind": ctx.kind.value,
        "autoall.replicate": str(ctx.replicate),
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
