"""Distributed studies: trials per minute with 1, 2 and 4 workers on PostgreSQL, and the storage
overhead of one trial on PostgreSQL against the SQLite default.

1. Throughput. Per run, a fresh digits study (mlp, short trials, TPE, no pruning), created once
   with `autoall study create`, then N separate `python -m autoall.cli study run FILE --storage
   postgresql+psycopg2://... --no-tracking` processes (OMP_NUM_THREADS=1 each), as on N hosts.
   Trials per minute are counted once every worker runs a trial (Optuna's timestamps), and
   over the wall time, which also holds the processes' start-up (imports, data). The worker
   counts alternate within every run, so background load hits them alike.
2. Storage overhead per trial. In one process, autoall's own worker loop (`run_worker`: counts,
   heartbeat thread, stale-trial check, callbacks) with an objective that does every storage
   call of the real one (4 suggestions, user attributes, one report per epoch) but no training,
   on: the SQLite file autoall uses by default, PostgreSQL as autoall opens it (NullPool: one
   connection per storage call), and PostgreSQL with a small QueuePool for comparison. SQL
   statements and new connections per trial are counted with SQLAlchemy events.

PostgreSQL is a private cluster started for the run (initdb + pg_ctl on loopback, default
durability settings: fsync and synchronous_commit on, as a real server), the same way as the
tests' fixture (tests/conftest.py); `--postgres URL` uses an existing server instead. Figures go
to `bench/RESULTS.md` between `<!-- bench_distributed -->` markers.

    .venv/bin/python bench/bench_distributed.py                 # the full run (~5 min on 2 cores)
    .venv/bin/python bench/bench_distributed.py --quick --no-write   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import yaml
from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _common import machine_header, markdown_table, median, publish  # noqa: E402

import autoall.study._objective  # noqa: E402
import autoall.study._storage  # noqa: E402
from autoall.config._study_file import StudyConfig, load_study_file  # noqa: E402
from autoall.study._storage import make_storage  # noqa: E402
from autoall.study._trials import WorkerContext, create_studies, suggest  # noqa: E402
from autoall.study._worker_loop import run_worker  # noqa: E402
from autoall.tracking._run import NullTracker  # noqa: E402

SECTION = "bench_distributed"
WORKER_COUNTS = (1, 2, 4)
EPOCHS_OVERHEAD = 5  # reports per trial in the no-training objective


def study_dict(name: str, *, n_trials: int, epochs: int) -> dict[str, Any]:
    """A digits study of short mlp trials (the tests' study, longer and without a pruner)."""
    return {
        "name": name,
        "data": {"name": "digits"},
        "architectures": ["mlp"],
        "train": {"epochs": epochs, "batch_size": 128, "warmup_epochs": 0},
        "search": {
            "hidden_size": {"type": "int", "low": 8, "high": 64, "log": True},
            "all_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "aux_weight": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "aux_loss": {"type": "categorical", "choices": ["reconstruction", "none"]},
        },
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
        "pruner": {"name": "none"},
        "n_trials": n_trials,
    }


def write_study_file(folder: Path, name: str, **kw: Any) -> Path:
    """The study file `<folder>/<name>.yaml`."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_dict(name, **kw), sort_keys=False))
    return path


@contextmanager
def postgres(url: str | None) -> Iterator[tuple[str, str]]:
    """(URL, description): `url` as given, or a private cluster stopped afterwards."""
    if url:
        yield url, "an existing server (--postgres)"
        return
    from conftest import start_postgres

    cluster = start_postgres()
    try:
        version = subprocess.run(
            [str(cluster.bindir / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
        yield cluster.url, f"{version}, private cluster on 127.0.0.1 (TCP), default settings"
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


# --- 1. throughput ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputRun:
    workers: int
    trials: int
    per_minute: float  # trials ending once every worker had started its first trial
    end_to_end_per_minute: float  # all trials over the wall time, start-up included
    wall_seconds: float  # first process start -> last process exit
    workers_used: int  # distinct worker processes that finished a trial


def run_throughput(
    url: str, folder: Path, *, workers: int, run: int, trials: int, epochs: int
) -> ThroughputRun:
    """`workers` processes on a fresh study of `trials` trials; its rates and wall time."""
    name = f"tput{workers}w{run}"
    path = write_study_file(folder, name, n_trials=trials, epochs=epochs)
    cli = [sys.executable, "-m", "autoall.cli", "study"]
    subprocess.run([*cli, "create", str(path), "--storage", url], check=True, capture_output=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [*cli, "run", str(path), "--storage", url, "--no-tracking", "--no-baseline"]
    command += ["--checkpoint-dir", str(folder / "checkpoints"), "--device", "cpu"]
    start = time.perf_counter()
    logs = [open(folder / f"{name}-{i}.log", "wb") for i in range(workers)]  # noqa: SIM115
    try:
        procs = [
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
            for log in logs
        ]
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for log in logs:
            log.close()
    wall = time.perf_counter() - start
    if any(codes):
        tail = (folder / f"{name}-0.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{workers} workers, run {run}: exit codes {codes}\n{tail}")
    done = [
        t
        for t in optuna.load_study(study_name=f"{name}/mlp", storage=url).get_trials()
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(done) == trials, f"{len(done)} finished trials, expected {trials}"
    first_by_worker: dict[int, datetime] = {}
    for t in done:
        pid = int(t.user_attrs["worker_pid"])
        if t.datetime_start and (
            pid not in first_by_worker or t.datetime_start < first_by_worker[pid]
        ):
            first_by_worker[pid] = t.datetime_start
    # steady state: from the moment every worker runs a trial (the last one to start has
    # finished importing), count the trials that end after it
    all_running = max(first_by_worker.values())
    ends = sorted(t.datetime_complete for t in done if t.datetime_complete)
    after = [e for e in ends if e > all_running]
    return ThroughputRun(
        workers=workers,
        trials=trials,
        per_minute=60 * len(after) / (ends[-1] - all_running).total_seconds(),
        end_to_end_per_minute=60 * trials / wall,
        wall_seconds=wall,
        workers_used=len(first_by_worker),
    )


# --- 2. storage overhead per trial -----------------------------------------------------------


def _storage_only_objective(trial: optuna.Trial, ctx: WorkerContext) -> float:
    """The storage traffic of autoall's objective without the training (see autoall/study/_objective.py)."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    frozen.system_attrs.get("failed_trial")
    autoall.study._objective._is_surplus(trial, ctx.n_trials)
    params = suggest(trial, ctx.cfg.search)
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    for epoch in range(1, EPOCHS_OVERHEAD + 1):
        trial.report(0.5 + 0.01 * epoch, epoch)
        trial.should_prune()
    for key in ("train_seconds", "epochs", "params_total", "params_all", "device"):
        trial.set_user_attr(key, 1)
    return float(params["hidden_size"]) / 100


@dataclass(frozen=True)
class OverheadRun:
    kind: str
    ms_per_trial: float
    statements: float  # SQL statements per trial
    connections: float  # new database connections per trial


def _storage_for(kind: str, url: str, cfg: StudyConfig) -> optuna.storages.RDBStorage:
    """The storage of one kind: autoall's `make_storage`, or RDBStorage with a small pool."""
    if kind == "postgres-pool":  # for comparison: what NullPool costs
        engine_kwargs = {"pool_size": 2, "max_overflow": 0, "pool_pre_ping": True}
        return autoall.study._storage._rdb_storage(url, engine_kwargs, cfg.heartbeat)
    return make_storage(url, cfg)  # autoall's own settings


def run_overhead(kind: str, url: str, folder: Path, *, run: int, trials: int) -> OverheadRun:
    """`run_worker` over `trials` no-training trials on one storage kind; ms and SQL per trial."""
    name = f"ovh{kind.replace('-', '')}{run}"
    path = write_study_file(folder, name, n_trials=trials, epochs=1)
    cfg = load_study_file(str(path))
    storage = _storage_for(kind, url, cfg)
    study = create_studies(cfg, storage, n_trials=trials, kinds=("all",))[cfg.study_name("mlp")]
    study = optuna.load_study(
        study_name=study.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=run),  # constant, tiny sampler cost
        pruner=optuna.pruners.NopPruner(),
    )
    ctx = WorkerContext(
        cfg=cfg,
        arch="mlp",
        kind="all",
        data=None,  # type: ignore[arg-type]  # the objective below does not train
        device="cpu",
        tracker=NullTracker(),
        parent_run_id=None,
        n_trials=trials,
    )
    counts = {"statements": 0, "connections": 0}

    def on_statement(*_: Any) -> None:
        counts["statements"] += 1

    def on_connect(*_: Any) -> None:
        counts["connections"] += 1

    event.listen(storage.engine, "before_cursor_execute", on_statement)
    event.listen(storage.engine, "connect", on_connect)
    real = autoall.study._objective.objective
    autoall.study._objective.objective = _storage_only_objective  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        run_worker(ctx, study)
        seconds = time.perf_counter() - start
    finally:
        autoall.study._objective.objective = real
        event.remove(storage.engine, "before_cursor_execute", on_statement)
        event.remove(storage.engine, "connect", on_connect)
        storage.engine.dispose()
    return OverheadRun(
        kind=kind,
        ms_per_trial=1000 * seconds / trials,
        statements=counts["statements"] / trials,
        connections=counts["connections"] / trials,
    )


# --- report ----------------------------------------------------------------------------------


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


OVERHEAD_LABELS = {
    "sqlite": "SQLite file (autoall's default)",
    "postgres": "PostgreSQL, NullPool (autoall)",
    "postgres-pool": "PostgreSQL, QueuePool(2) (comparison)",
}


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the section and write it into bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per worker count")
    parser.add_argument("--trials", type=int, default=16, help="trials per throughput run")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per throughput trial")
    parser.add_argument("--overhead-runs", type=int, default=5)
    parser.add_argument("--overhead-trials", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="use this server, not a private one")
    parser.add_argument("--quick", action="store_true", help="1 run, few trials: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    parser.add_argument("--note", default="", help="a line added to the section, e.g. load")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.trials, args.overhead_runs, args.overhead_trials = 1, 4, 1, 5
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the private cluster too
    header = machine_header()
    folder = Path(tempfile.mkdtemp(prefix="autoall-bench-"))
    sqlite_url = f"sqlite:///{folder / 'autoall.db'}"
    throughput: list[ThroughputRun] = []
    overhead: list[OverheadRun] = []
    try:
        with postgres(args.postgres) as (pg_url, pg_label):
            for run in range(args.overhead_runs):  # the storages alternate within every run
                for kind in OVERHEAD_LABELS:
                    url = sqlite_url if kind == "sqlite" else pg_url
                    overhead.append(
                        run_overhead(kind, url, folder, run=run, trials=args.overhead_trials)
                    )
                    print(overhead[-1], flush=True)
            for run in range(args.runs):
                for workers in WORKER_COUNTS[run % 3 :] + WORKER_COUNTS[: run % 3]:
                    throughput.append(
                        run_throughput(
                            pg_url,
                            folder,
                            workers=workers,
                            run=run,
                            trials=args.trials,
                            epochs=args.epochs,
                        )
                    )
                    print(throughput[-1], flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_end = os.getloadavg()

    rows = []
    base = median([r.per_minute for r in throughput if r.workers == 1])
    for workers in WORKER_COUNTS:
        mine = [r for r in throughput if r.workers == workers]
        rate = [r.per_minute for r in mine]
        rows.append(
            [
                str(workers),
                str(len(mine)),
                f"**{_spread(rate)}**",
                f"{median(rate) / base:.2f}x",
                _spread([r.end_to_end_per_minute for r in mine]),
                _spread([r.wall_seconds for r in mine]),
                ", ".join(str(r.workers_used) for r in mine),
            ]
        )
    table_tput = markdown_table(
        [
            "workers",
            "runs",
            "trials/min, all workers running",
            "vs 1 worker",
            "trials/min incl. start-up",
            "wall s",
            "workers that ran trials",
        ],
        rows,
    )
    rows = []
    sqlite_ms = median([r.ms_per_trial for r in overhead if r.kind == "sqlite"])
    for kind, label in OVERHEAD_LABELS.items():
        of_kind = [r for r in overhead if r.kind == kind]
        ms = [r.ms_per_trial for r in of_kind]
        rows.append(
            [
                label,
                str(len(of_kind)),
                f"**{_spread(ms)}**",
                f"{median(ms) / sqlite_ms:.2f}x",
                f"{statistics.mean(r.statements for r in of_kind):.0f}",
                f"{statistics.mean(r.connections for r in of_kind):.0f}",
            ]
        )
    table_overhead = markdown_table(
        [
            "storage",
            "runs",
            "ms per trial, median (min-max)",
            "vs SQLite",
            "SQL statements / trial",
            "new connections / trial",
        ],
        rows,
    )
    versions = (
        f"optuna {optuna.__version__}, SQLAlchemy {__import__('sqlalchemy').__version__}, "
        f"psycopg2 {__import__('psycopg2').__version__.split()[0]}"
    )
    load = ", ".join(f"{x:.2f}" for x in load_end)
    note = f"\n- Note: {args.note}" if args.note else ""
    body = f"""
## Distributed studies: workers on PostgreSQL, storage overhead (`bench/bench_distributed.py`)

{header}
- Also: {versions}; PostgreSQL: {pg_label}.
- Load average at the end (1, 5, 15 min): {load}. The 2 cores are shared with other
  processes; with 4 workers on 2 cores the workers also share them with each other.{note}

### Trials per minute with N worker processes on one PostgreSQL study

Per run: {args.trials} digits mlp trials ({args.epochs} epochs, batch 128, TPE, no pruner, no
MLflow), the study created once with `autoall study create`, then N separate `autoall study run`
processes (OMP_NUM_THREADS=1 each), as on N hosts. "All workers running": trials that end after
the last worker started its first trial, over the time from then to the last trial's end (from
Optuna's timestamps). "Incl. start-up": all trials over the wall time, the processes' imports
and data loading included. {args.runs} runs per worker count, the counts alternating within
each run. Values: median (min-max).

{table_tput}

On this 2-core CPU machine more than 2 workers cannot add throughput: the figures show the
study's coordination at work (every run met its target of finished trials exactly; the last
column shows how many workers took trials), not what N GPUs would give.

### Storage overhead of one trial (no training)

autoall's worker loop (`run_worker`: counts, heartbeat thread, stale-trial check, callbacks) with
an objective that makes every storage call of the real one (4 suggestions, 7 user attributes,
{EPOCHS_OVERHEAD} reports + should_prune) but does not train; RandomSampler, heartbeat interval
10 s. {args.overhead_trials} trials per run, {args.overhead_runs} runs, the storages alternating
within each run. Values: median (min-max). PostgreSQL runs on this machine (loopback TCP): over
a network every statement and every new connection (TCP connect + SCRAM authentication with
NullPool) adds round trips.

{table_overhead}
"""
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
