"""Optuna studies over the ALL knobs: counts, sampler, pruner, creation, suggest, and what every
ended trial is followed by (`after_trial`, `drop_ended_checkpoint`; `sweep_checkpoints` when
the target is met). The worker loop that runs
trials is autoall/study/_worker_loop.py.

One Optuna study per (study file `name`, architecture, kind, replicate), named `<name>/<arch>`,
`<name>/<arch>/tuned-baseline` and, for replicates r >= 1, `.../r<r>` (`StudyConfig.study_name`),
in plain Optuna RDB storage (SQLite by default, PostgreSQL for many hosts; autoall/study/_storage.py),
so `optuna.load_study` and optuna-dashboard open it. Each replicate is an independent search:
its own training seed (`train.seed + r`) and its own sampler streams (autoall/study/_samplers.py).
`n_trials` is a target for the study as a
whole: COMPLETE plus PRUNED trials across every worker and restart; a rerun runs only the
remainder. A worker killed mid-trial is detected by Optuna's heartbeat and its trial rerun with
the same parameters (`RetryHeartbeatStaleTrialCallback`). A trial itself is run by
autoall/study/_objective.py, which never sees the test split (`load_study_data`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autoall import _timing as timing
from autoall.config import KINDS, Kind, ParamSpec, SamplerConfig, StudyConfig
from autoall.errors import InvalidValue
from autoall.study._host import HostWorkers
from autoall.study._samplers import GUIDED, PHASE_ATTR, SAMPLER_FACTORIES, STARTUP, PerTrialSeed
from autoall.tracking import StudyTracker
from autoall.training import (
    DeviceData,
    load_data,
    remove_checkpoint,
    sweep_temp_files,
    without_test,
)

log = logging.getLogger("autoall.study")


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
    cfg: StudyConfig, *, space: dict[str, ParamSpec] | None = None, replicate: int = 0
) -> optuna.samplers.BaseSampler:
    """The study file's sampler (made by its entry in `SAMPLER_FACTORIES`), drawing for each
    trial from its own stream, a hash of (seed, `replicate`, trial number)
    (autoall/study/_samplers.py), so workers started together never repeat each other's draws
    and replicates share no stream; each trial it draws records its `sampler_phase`.

    `space` is the searched knobs (the grid sampler's grid); default: the ALL study's.
    """
    s = cfg.sampler
    if s.name not in SAMPLER_FACTORIES:
        raise InvalidValue(
            f"sampler must be one of {', '.join(SAMPLER_FACTORIES)}, but got {s.name!r}."
        )

    def searched() -> dict[str, ParamSpec]:
        # every architecture's: the grid's lr and weight_decay are choices
        return space if space is not None else cfg.space(cfg.architectures[0], Kind.ALL)

    sampler = SAMPLER_FACTORIES[s.name](s, searched)
    return PerTrialSeed(sampler, s.seed, replicate=replicate, n_startup_trials=s.n_startup_trials)


def sampler_phase(trial: FrozenTrial, sampler: SamplerConfig | None = None) -> str:
    """How the sampler drew `trial`: "startup" at random (too few trials had finished for its
    model, or a random or grid sampler), "guided" from its model. The trial's `sampler_phase`
    attribute (autoall/study/_samplers.py); a trial stored before it was recorded is judged by its
    number against `sampler.n_startup_trials` (pass the study file's `cfg.sampler`; default:
    SamplerConfig's), exact for one worker, approximate for several.
    """
    recorded = trial.user_attrs.get(PHASE_ATTR)
    if recorded in (STARTUP, GUIDED):
        return str(recorded)
    s = sampler or SamplerConfig()
    if s.name in ("random", "grid") or trial.number < s.n_startup_trials:
        return STARTUP
    return GUIDED


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
    """Create (or load) the studies of `kinds` per architecture and replicate, once, before any
    worker starts.

    Keyed by study name. Each study records its kind, replicate, target and per-trial budget
    (user attributes), so the report can check that the ALL study and its tuned baseline had the
    same budget. Several hosts may do this at the same moment on an empty database; the schema
    creation can then lose a race, so it is retried.
    """
    studies = {}
    for arch, kind, replicate in cfg.studies(kinds):
        name = cfg.study_name(arch, kind, replicate)
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
            raise InvalidValue(
                f"{cfg.path}: study {name!r} already exists in the storage with "
                f"directions {[d.name.lower() for d in study.directions]}, but the file asks for "
                f"{cfg.directions}; use another --study-name."
            )
        study.set_user_attr("n_trials", n_trials)
        study.set_user_attr("kind", kind.value)  # "all" or "baseline"
        study.set_user_attr("replicate", replicate)
        study.set_user_attr("train_seed", cfg.train_config(arch, replicate).seed)
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
    kind: Kind  # the ALL study or its equal-budget tuned baseline
    data: DeviceData
    device: str | None
    tracker: StudyTracker
    parent_run_id: str | None
    n_trials: int
    checkpoint_dir: Path | None = None  # mid-trial checkpoints; shared across hosts
    checkpoint_every: float = 0.0  # seconds between a trial's checkpoints (0: every epoch)
    # (trial number, checkpoint) of the trial just ended here: dropped once Optuna stored its state
    ended_checkpoint: tuple[int, Path] | None = None
    system_metrics: bool = False  # MLflow's system metrics in every trial's run
    log_models: bool = False  # a trial's model into its run when it becomes the study's best
    host_workers: HostWorkers | None = None  # this host's workers: torch threads = share of cores
    small_model: bool = False  # every model of the study trains fastest on one thread
    cohort: int = 1  # trials asked at once and trained together (autoall/study/_cohort_trials.py)
    replicate: int = 0  # which independent search of the study (its seeds and its name)

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)  # a stored or typed "all" is Kind.ALL

    @property
    def study_name(self) -> str:
        return self.cfg.study_name(self.arch, self.kind, self.replicate)

    @property
    def checkpoint_folder(self) -> Path | None:
        """This study's checkpoints:
        `<checkpoint_dir>/<name>__<arch>[__tuned-baseline][__r<replicate>]`."""
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / self.study_name.replace("/", "__")

    def checkpoint_path(self, trial_key: int) -> Path | None:
        """Keyed by the original trial number, so every retry of a trial finds the same file."""
        folder = self.checkpoint_folder
        return None if folder is None else folder / f"trial-{trial_key}.pt"


def drop_ended_checkpoint(
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
        remove_checkpoint(path)  # a folder that refuses (read-only) is a warning


def sweep_checkpoints(folder: Path, trials: list[FrozenTrial]) -> list[Path]:
    """Delete the checkpoints in `folder` (one study's) that no trial can resume from: those of
    finished trials that no RUNNING or WAITING retry points at; return them. Also delete the
    temp files of checkpoint writers that are gone (killed mid-write; logged, not returned).

    `drop_ended_checkpoint` deletes a trial's checkpoint as it ends; this catches what it could
    not (a worker killed, or the database lost, between Optuna's `tell` and the deletion). A
    directory in a checkpoint's place is left; a folder that refuses is a warning.
    """
    pending = {
        t.system_attrs.get("failed_trial")
        for t in trials
        if t.state in (TrialState.RUNNING, TrialState.WAITING)
    }
    finished = {t.number for t in trials if t.state.is_finished()}
    swept = []
    for path in sorted(folder.glob("trial-*.pt")):
        key = path.stem.removeprefix("trial-")
        resumable = not key.isdigit() or int(key) not in finished or int(key) in pending
        if not resumable and remove_checkpoint(path):
            swept.append(path)
    sweep_temp_files(folder)
    return swept


def after_trial(ctx: WorkerContext) -> Callable[[optuna.Study, FrozenTrial], None]:
    @timing.span("trial.after_trial")
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        drop_ended_checkpoint(ctx, study, trial)
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

    return callback


def failed_by_its_own_fault(trial: FrozenTrial) -> bool:
    """FAIL, but not out of memory while its knobs are queued again (once its retries are
    spent, `oom_retries_spent`, it counts) and not surplus (another worker met the target):
    what the worker's stop after repeated failures counts."""
    reason = trial.user_attrs.get("fail_reason", "")
    requeued = "out of memory" in reason and not trial.user_attrs.get("oom_retries_spent")
    return trial.state == TrialState.FAIL and not requeued and not reason.startswith("surplus")


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The COMPLETE trial with the highest validation accuracy (first objective); ties: earliest."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    return max(complete, key=lambda t: (t.values[0], -t.number)) if complete else None


@timing.span("setup.data")
def load_study_data(cfg: StudyConfig, device: str | None) -> DeviceData:
    """The study's data with the test split removed: searching must never see it."""
    from autoall.training import resolve_device

    data = load_data(
        cfg.data.name,
        root=cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed,
        device=resolve_device(device),
        download=cfg.data.download,
    )
    return without_test(data)
