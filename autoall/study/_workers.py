"""`autoall study run`: create the studies once, start the workers, show progress, resume.

Workers are processes (spawned, so each has its own torch threads and, on a machine with several
GPUs, its own `CUDA_VISIBLE_DEVICES`). With one worker the trials run in this process. A monitor
thread polls the storage, so the progress shown is the study's, whichever worker or host ran it.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import optuna

from autoall import _timing as timing
from autoall import errors
from autoall._secrets import install_log_masking, mask_secrets
from autoall.config import RunOptions, StudyConfig
from autoall.errors import RunFailed
from autoall.study._host import HostWorkers
from autoall.study._outage import stop_waiting
from autoall.study._preflight import SMALL_STEP_FLOPS, step_flops
from autoall.study._storage import make_storage
from autoall.study._trials import (
    Counts,
    WorkerContext,
    best_trial,
    count_trials,
    create_studies,
    load_study_data,
    make_pruner,
    make_sampler,
    search_space_summary,
)
from autoall.study._worker_loop import run_worker
from autoall.tracking import (
    NullTracker,
    StudyTracker,
    TrackingWriter,
    check_artifact_location,
    check_server,
    resolve_tracking_uri,
)
from autoall.training import gpu_count


def default_n_jobs(trials_per_gpu: int = 1) -> int:
    """`trials_per_gpu` workers per GPU on a machine with GPUs, else one."""
    n = gpu_count()
    return n * trials_per_gpu if n * trials_per_gpu > 1 else 1


def run_study(
    cfg: StudyConfig, opts: RunOptions, *, out: IO[str] | None = None
) -> dict[str, Counts]:
    """Run every study of the file (per architecture, per replicate: the ALL study, then its
    tuned baseline, as `opts.kinds` says) to its target; return the final counts per study
    name."""
    out = out or sys.stderr
    # first what fails without creating anything: a tracking server that is down, then the
    # Optuna storage (a wrong URL or password); only then the MLflow store and the studies
    if opts.tracking:
        uri = resolve_tracking_uri(opts.tracking_uri, create=False)
        check_server(uri)
        check_artifact_location(uri, cfg.name)  # not after a project folder moved
    storage = make_storage(opts.storage, cfg)
    with _tracking(cfg, opts) as tracker:  # the writer process opens the store meanwhile
        studies = create_studies(cfg, storage, n_trials=opts.n_trials, kinds=opts.kinds)
        counts = {name: count_trials(s.get_trials(deepcopy=False)) for name, s in studies.items()}
        if all(c.done >= opts.n_trials for c in counts.values()):
            print(
                f"Target met: every study of {cfg.name} already holds {opts.n_trials} finished "
                "trials; nothing to run (raise --n-trials to run more).",
                file=out,
            )
            return counts  # the parent runs stay as they are
        parents = _parents(tracker, cfg, opts)
        monitor = _Monitor(cfg, opts, out=out)
        monitor.start()
        pids = {os.getpid()}  # the processes whose trials this command ran
        started = datetime.datetime.now()  # Optuna's trial times: naive, this host's clock
        try:
            if opts.n_jobs == 1:
                with errors.remember_interrupts():
                    _work(cfg, opts, tracker=tracker, parents=parents)
            else:
                _spawn_workers(cfg, opts, pids)
        except KeyboardInterrupt:
            with errors.hint(interrupted=_after_interrupt(studies, pids, started)):
                raise
        finally:
            monitor.stop()
            _summarise_parents(tracker, studies, parents)
        counts = {name: count_trials(s.get_trials(deepcopy=False)) for name, s in studies.items()}
        for name, c in counts.items():
            if c.done >= opts.n_trials and parents[name]:
                with timing.span("tracking.finish_parent"):
                    tracker.finish_parent(parents[name])
    for message in tracker.lost:
        print(f"warning: {message}", file=out)
    tracker.check()
    return counts


def _after_interrupt(
    studies: dict[str, optuna.Study], pids: set[int], started: datetime.datetime
) -> str:
    """What Ctrl-C made of the trials this command's workers were running, read from the
    storage: FAIL, or still RUNNING (the storage could not store their end, or Ctrl-C came while
    Optuna was creating them) until the heartbeat fails them and queues their retries when the
    study resumes. A trial counts as this command's when one of its processes (`pids`) ran it,
    or when it has no worker yet and was created on this host's clock since `started`."""
    stop_waiting()  # the storage is read once, not waited for
    host, left = socket.gethostname(), []
    try:
        for name, study in studies.items():
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                attrs = t.user_attrs
                ours = attrs.get("worker_host") == host and attrs.get("worker_pid") in pids
                unowned = "worker_pid" not in attrs and (t.datetime_start or started) > started
                if ours or unowned:
                    left.append(f"{t.number} of {name}")
    except Exception:
        return (
            "the storage could not be read: trials that were running may stay RUNNING until the "
            "heartbeat fails them when the study resumes."
        )
    if not left:
        return "the running trials are marked FAIL."
    return (
        f"trial {', '.join(left)} stayed RUNNING: the heartbeat fails it and queues its retry "
        "when the study resumes."
    )


def _summarise_parents(
    tracker: StudyTracker, studies: dict[str, optuna.Study], parents: dict[str, str]
) -> None:
    """On each parent run: the trials table as `trials.csv` (Optuna's trials_dataframe) and the
    best trial's parameters as `best.<param>` tags, as the study stands at this run's end."""
    for name, study in studies.items():
        if not parents.get(name):
            continue
        try:  # the database may be what stopped the workers: then the tables stay as they were
            trials = study.get_trials(deepcopy=False)
            table = study.trials_dataframe().to_csv(index=False)
            c = count_trials(trials)
            best = best_trial(trials)
            with timing.span("tracking.update_parent"):
                tracker.update_parent(
                    parents[name],
                    best_value=best.values[0] if best is not None else None,
                    n_complete=c.complete,
                    n_pruned=c.pruned,
                    n_failed=c.failed,
                    step=c.complete + c.pruned + c.failed,
                    best_trial=best.number if best is not None else None,
                    best_params=dict(best.params) if best is not None else None,
                )
            tracker.log_parent_text(parents[name], table, "trials.csv")
        except Exception:  # never hides why the workers stopped (this runs in a `finally`)
            continue


@contextlib.contextmanager
def _tracking(cfg: StudyConfig, opts: RunOptions) -> Iterator[StudyTracker]:
    """A worker's MLflow tracking: a writer process beside it (autoall/tracking/_writer.py), or
    nothing (--no-tracking); closed at the end, which waits for the last trial's logging."""
    with timing.span("tracking.connect"):
        tracker: StudyTracker = (
            TrackingWriter.connect(opts.tracking_uri, experiment=cfg.name)
            if opts.tracking
            else NullTracker()
        )
    try:
        yield tracker
    finally:
        with timing.span("tracking.close"):
            tracker.close()


def _parents(tracker: StudyTracker, cfg: StudyConfig, opts: RunOptions) -> dict[str, str]:
    return {
        cfg.study_name(arch, kind, r): _parent(tracker, cfg, arch, kind, r, opts)
        for arch, kind, r in cfg.studies(opts.kinds)
    }


@timing.span("tracking.parent_run")
def _parent(
    tracker: StudyTracker,
    cfg: StudyConfig,
    arch: str,
    kind: str,
    replicate: int,
    opts: RunOptions,
) -> str:
    space = search_space_summary(cfg.space(arch, kind))
    params: dict[str, Any] = {f"search.{k}": v for k, v in space.items()}
    params.update(
        {
            "kind": kind,
            "replicate": replicate,
            "seed": cfg.train_config(arch, replicate).seed,
            "sampler": cfg.sampler.name,
            "sampler.seed": cfg.sampler.seed,
            "pruner": cfg.pruner.name,
            "data": cfg.data.name,
            "architecture": arch,
            "objective": "val_acc (max)"
            + (f", {cfg.second_objective} (min)" if cfg.second_objective else ""),
            "storage": mask_secrets(opts.storage),
        }
    )
    name = cfg.study_name(arch, kind, replicate)
    tags = {"optuna.study_name": name, "autoall.architecture": arch, "autoall.kind": kind}
    tags["autoall.replicate"] = str(replicate)
    return tracker.parent_run(study_name=name, arch=arch, params=params, tags=tags)


def _work(
    cfg: StudyConfig, opts: RunOptions, *, tracker: StudyTracker, parents: dict[str, str]
) -> None:
    """One worker: every study in turn (per architecture, per replicate, the ALL study, then
    its tuned baseline), each until its target is met (autoall/study/_worker_loop.py)."""
    host_workers = HostWorkers()
    host_workers.register()  # this host's workers share its cores (autoall/study/_host.py)
    try:
        storage = make_storage(opts.storage, cfg)
        data = load_study_data(cfg, opts.device)
        for arch, kind, replicate in cfg.studies(opts.kinds):
            name = cfg.study_name(arch, kind, replicate)
            # a stream per (replicate, trial number)
            sampler = make_sampler(cfg, space=cfg.space(arch, kind), replicate=replicate)
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(cfg)
            )
            ctx = WorkerContext(
                cfg=cfg,
                arch=arch,
                kind=kind,
                data=data,
                device=opts.device,
                tracker=tracker,
                parent_run_id=parents.get(name),
                n_trials=opts.n_trials,
                checkpoint_dir=Path(opts.checkpoint_dir),
                checkpoint_every=opts.checkpoint_every,
                system_metrics=opts.system_metrics,
                log_models=opts.log_models,
                host_workers=host_workers,
                small_model=step_flops(cfg, arch) < SMALL_STEP_FLOPS,
                cohort=opts.cohort,
                replicate=replicate,
            )
            run_worker(ctx, study)
    finally:
        host_workers.unregister()


def _worker_process(cfg: StudyConfig, opts: RunOptions, index: int, stop: Any) -> None:
    """A spawned worker. It starts with Ctrl-C ignored (`_spawn_workers`), so a Ctrl-C during
    its imports prints no traceback there; from here on Ctrl-C stops it once, and `stop` says
    whether one came before."""
    try:
        signal.signal(signal.SIGINT, _interrupt_once)
        if stop.is_set():  # Ctrl-C while this worker was starting up: nothing to fail
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(130)
    if opts.gpus > 0:  # before any CUDA call in this process; respects an inherited list
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        visible = [d.strip() for d in inherited.split(",") if d.strip()]
        visible = visible or [str(i) for i in range(opts.gpus)]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index % len(visible)]
    install_log_masking()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with _tracking(cfg, opts) as tracker:  # its own writer process; the same parent runs
            # torch's threads: this worker's share of the host's cores
            _work(cfg, opts, tracker=tracker, parents=_parents(tracker, cfg, opts))
    except KeyboardInterrupt:  # the trial is already marked FAIL by Optuna
        sys.exit(130)
    except Exception as exc:  # multiprocessing would print the traceback unmasked
        code = errors.exit_code(exc)
        if code is None:  # a bug: its traceback is the message
            sys.stderr.write(mask_secrets(traceback.format_exc()))
            sys.exit(1)
        print(f"{mp.current_process().name}: {errors.message(exc)}", file=sys.stderr)
        sys.exit(code)


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C in a worker: one KeyboardInterrupt (its running trials are marked FAIL); a
    second SIGINT, the one `_spawn_workers` passes on, is ignored meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _spawn_workers(cfg: StudyConfig, opts: RunOptions, pids: set[int] | None = None) -> None:
    """The workers as processes until each has ended (their process ids added to `pids`). On
    Ctrl-C: `stop` set and SIGINT passed on to each (a worker still starting up ignored the
    terminal's), 30 s for them to mark their trials FAIL, then SIGTERM to any left; the
    KeyboardInterrupt is raised. A worker's error is one line (a bug: its traceback)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [
        ctx.Process(target=_worker_process, args=(cfg, opts, i, stop), name=f"autoall-worker-{i}")
        for i in range(opts.n_jobs)
    ]
    try:
        with _ctrl_c_ignored():  # inherited: a worker ignores Ctrl-C until it is ready
            for p in procs:
                p.start()
                if pids is not None and p.pid is not None:
                    pids.add(p.pid)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        stop.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
        for p in procs:
            if p.is_alive():  # its trials stay RUNNING until the heartbeat fails them
                p.terminate()
                p.join(timeout=10)
        raise
    bad = [p for p in procs if p.exitcode not in (0, None)]
    if bad:
        codes = ", ".join(f"{p.name}: {p.exitcode}" for p in bad)
        raise RunFailed(f"worker processes ended abnormally ({codes}); see their output above.")


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored in this process (and in the processes it starts meanwhile, which inherit
    the disposition); a no-op outside the main thread, where signals cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Monitor:
    """A live line per study: trials done of the target, best value, ETA.

    A study's ETA counts from when this monitor first saw it running (the studies of one worker
    run one after the other), at the rate of the trials finished since.
    """

    def __init__(self, cfg: StudyConfig, opts: RunOptions, *, out: IO[str], every: float = 1.0):
        self.cfg, self.opts, self.out, self.every = cfg, opts, out, every
        self.tty = out.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autoall-progress", daemon=True)
        self._first: dict[str, tuple[int, float]] = {}  # study -> (done, when) when first active
        self._seen: dict[str, int] = {}
        self._drawn = 0

    def start(self) -> None:
        self._storage = make_storage(self.opts.storage)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):  # the database may be what stopped the workers
            self._draw()  # the final state
        if self.tty:
            self.out.write("\n")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._draw()
            except Exception:  # a busy database must not kill the progress display
                continue

    @timing.span("monitor.draw")  # in the monitor's thread, and once at the end
    def _draw(self) -> None:
        lines = []
        for arch, kind, replicate in self.cfg.studies(self.opts.kinds):
            name = self.cfg.study_name(arch, kind, replicate)
            study = optuna.load_study(study_name=name, storage=self._storage)
            trials = study.get_trials(deepcopy=False)
            c = count_trials(trials)
            if name not in self._first and (c.running or c.done >= self.opts.n_trials):
                self._first[name] = (c.done, time.monotonic())
            lines.append(self._line(name, c, trials))
            if not self.tty and c.done + c.failed != self._seen.get(name):
                self._seen[name] = c.done + c.failed
                print(lines[-1], file=self.out, flush=True)
        if self.tty:
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.out.flush()
            self._drawn = len(lines)

    def _line(self, name: str, c: Counts, trials: list[Any]) -> str:
        target = self.opts.n_trials
        width = 20
        filled = min(width, round(width * c.done / target))
        bar = "#" * filled + "-" * (width - filled)
        top = best_trial(trials)
        best = f"{top.values[0]:.4f}" if top is not None else "-"
        first_done, since = self._first.get(name, (c.done, time.monotonic()))
        new = c.done - first_done
        eta = "-"
        if c.done >= target:
            eta = "done"
        elif new > 0:
            rate = (time.monotonic() - since) / new
            eta = _hms(rate * (target - c.done))
        return (
            f"{name:<32} [{bar}] {min(c.done, target)}/{target} "
            f"({c.complete} complete, {c.pruned} pruned, {c.failed} failed, {c.running} running)"
            f"  best {best}  ETA {eta}"
        )


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
