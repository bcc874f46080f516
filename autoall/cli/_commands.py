"""What each `autoall` command does, under its click declaration in autoall/cli/_main.py.

Each function takes the command's options as keyword arguments, checks the input before
anything is stored (`preflight`), calls the library and prints. Failures are raised, never
turned into exit codes here: autoall/errors.py maps them, once, for every command.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from autoall.config import DEFAULT_STORAGE, KINDS, Kind, ReportOptions, RunOptions
from autoall.errors import AutoallError, RunFailed, UserError, hint

if TYPE_CHECKING:  # autoall.config imports torch: only the commands that need it load it
    from autoall.cli._servers import Server
    from autoall.config import StudyConfig


def _echo(line: str) -> None:
    click.echo(line, err=True)


def names(option: str) -> list[str]:
    """`--architectures a, b` -> ["a", "b"] (empty items dropped; none at all is refused)."""
    return [a.strip() for a in option.split(",") if a.strip()]


def load(
    file: str,
    architectures: str | None = None,
    study_name: str | None = None,
    replicates: int | None = None,
) -> StudyConfig:
    """The study file, narrowed to `--architectures`, renamed by `--study-name`, with
    `--replicates` independent searches per study instead of the file's `replicates`."""
    from autoall.config import check_name, load_study_file

    cfg = load_study_file(file)
    if architectures is not None:
        cfg = cfg.with_architectures(names(architectures))
    if study_name is not None:
        cfg = replace(cfg, name=check_name(study_name, what="--study-name"))
    if replicates is not None:
        cfg = cfg.with_replicates(replicates)
    return cfg


def preflight(
    cfg: StudyConfig,
    *,
    device: str | None,
    storage: str,
    tracking_uri: str | None,
    folders: list[tuple[Path, str]],
    tracking: bool = True,
    cohort: Any = None,
) -> list[Any]:
    """Everything a user can get wrong, checked before anything is stored, created or trained
    (exit code 2): the storage apart from the MLflow database, the device, the largest model of
    the search space against its memory (`cohort` copies at once: a `preflight.Cohort`), and
    every output location (`folders`, the SQLite files' folders). Returns the model sizes."""
    from autoall._secrets import sqlite_file
    from autoall.study import check_model_size, check_storage_apart, check_writable
    from autoall.tracking import tracking_sqlite_file
    from autoall.training import resolve_device

    check_storage_apart(storage, tracking_uri)
    dev = resolve_device(device)
    sizes = check_model_size(cfg, dev, cohort)
    places = list(folders)
    db = sqlite_file(storage)
    if db is not None and db.parent.is_dir():  # else make_storage says the folder is missing
        places.append((db.parent, "the Optuna storage's folder"))
    mlflow_db = tracking_sqlite_file(tracking_uri) if tracking else None
    if mlflow_db is not None:
        places.append((mlflow_db.parent, "the MLflow store's folder"))
    for folder, what in places:
        check_writable(folder, what=what)
    return sizes


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def train_one(options: Mapping[str, Any], given: frozenset[str] = frozenset()) -> None:
    """`autoall train`: one model (baseline, or with an ALL) from the options, given or default
    (`given`: those the user gave), and a --study file (autoall/cli/_train_command.py); its
    validation and test results, and with --tracking its MLflow run."""
    from autoall._secrets import mask_secrets
    from autoall.cli._train_command import TrainTracking, resolve, result_rows
    from autoall.study import check_model_fits, check_writable
    from autoall.tracking import tracking_sqlite_file
    from autoall.training import build_model, load_data, resolve_device, seed_everything, train

    setup = resolve(options, given)
    cfg, spec = setup.config, setup.spec
    dev = resolve_device(cfg.device)
    check_model_fits(setup.arch, data=setup.dataset, spec=spec, device=dev, option="--all-hidden")
    store = tracking_sqlite_file(options["tracking_uri"]) if options["tracking"] else None
    if store is not None:
        check_writable(store.parent, what="the MLflow store's folder")
    data = load_data(setup.dataset, root=setup.root, val_fraction=setup.val_fraction,
                     split_seed=setup.split_seed, device=dev, download=setup.download)  # fmt: skip
    tracking = TrainTracking(setup, options["tracking_uri"]) if options["tracking"] else None
    seed_everything(cfg.seed)
    model = build_model(setup.arch, in_shape=data.in_shape, num_classes=data.num_classes,
                        all_spec=spec)  # fmt: skip
    _echo(f"{setup.label} on {setup.dataset} ({dev}); settings: {setup.settings}")
    if setup.split_source:
        _echo(f"validation: {data.sizes['val']:,} images ({setup.split_source})")
    with click.progressbar(length=cfg.epochs, label="epochs", file=sys.stderr) as bar:

        def on_epoch(stats: Any) -> None:
            bar.label = f"epoch {stats.epoch} val_acc {stats.val_acc:.4f}"
            bar.update(1)
            if tracking is not None:
                tracking.log_epoch(stats)

        try:
            result = train(model, data, cfg, on_epoch=on_epoch)
        except BaseException as exc:
            if tracking is not None:
                tracking.fail(exc)
            if isinstance(exc, RuntimeError) and not isinstance(exc, AutoallError):
                raise RunFailed(str(exc)) from exc  # torch's: the run failed, exit 1
            raise
    if tracking is not None:
        tracking.finish(result)
    print_table(result_rows(setup, model, result))
    if tracking is not None:
        where = f"experiment {tracking.experiment!r} of {mask_secrets(tracking.uri)}"
        _echo(f"MLflow: run {tracking.run_id} in {where}")
        for line in tracking.lost:
            _echo(line)


def study_run(
    *,
    file: str,
    n_trials: int | None,
    n_jobs: int | None,
    storage: str | None,
    study_name: str | None,
    architectures: str | None,
    device: str | None,
    tracking_uri: str | None,
    no_tracking: bool,
    baseline: bool = True,
    checkpoint_dir: str = RunOptions.checkpoint_dir,
    checkpoint_every: float = RunOptions.checkpoint_every,
    trials_per_gpu: int = 1,
    system_metrics: bool | None = None,
    log_models: bool = RunOptions.log_models,
    cohort: int = RunOptions.cohort,
    replicates: int | None = None,
) -> None:
    """`autoall study run`: every study of the file (per architecture and replicate) to its
    target; the counts at the end."""
    cfg = load(file, architectures, study_name, replicates)
    url = storage or DEFAULT_STORAGE
    from autoall.study import Cohort

    sizes = preflight(
        cfg,
        device=device,
        storage=url,
        tracking_uri=tracking_uri,
        tracking=not no_tracking,
        folders=[(Path(checkpoint_dir), "--checkpoint-dir")],
        cohort=Cohort(cohort, f"--cohort {cohort}", "lower --cohort"),
    )
    import optuna
    import torch

    from autoall._secrets import mask_secrets
    from autoall.study import WORKER_BASE_BYTES, cap_workers, default_n_jobs, run_study
    from autoall.training import resolve_device

    on_cuda = resolve_device(device).type == "cuda"  # checked by preflight
    gpus = (
        torch.cuda.device_count() if torch.cuda.is_available() and device in (None, "cuda") else 0
    )
    workers, capped = cap_workers(
        n_jobs or default_n_jobs(trials_per_gpu),
        gpus=gpus,
        trials_per_gpu=trials_per_gpu,
        per_worker_bytes=WORKER_BASE_BYTES + max(s.train_bytes for s in sizes),
    )
    if capped:
        _echo(capped)
    opts = RunOptions(
        storage=url,
        n_trials=n_trials or cfg.n_trials,
        n_jobs=workers,
        device=device,
        tracking_uri=tracking_uri,
        tracking=not no_tracking,
        gpus=gpus,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        kinds=KINDS if baseline else (Kind.ALL,),
        system_metrics=on_cuda if system_metrics is None else system_metrics,
        log_models=log_models,
        cohort=cohort,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _echo(f"Optuna storage: {mask_secrets(opts.storage)}")
    resume = "autoall " + shlex.join(mask_secrets(a) for a in sys.argv[1:])
    with hint(
        failed=f"Resume with:\n  {resume}",
        interrupted=f"Resume with:\n  {resume}",  # run_study says first what became of the trials
    ):
        counts = run_study(cfg, opts)
    for name, c in counts.items():
        _echo(f"{name}: {c.complete} complete, {c.pruned} pruned, {c.failed} failed")


def study_create(
    *, file: str, storage: str | None, study_name: str | None, replicates: int | None = None
) -> None:
    """`autoall study create`: the storage schema and the studies (every architecture, kind and
    replicate), once, before the workers."""
    from autoall._secrets import mask_secrets
    from autoall.study import check_storage_apart, create_studies, make_storage

    cfg = load(file, study_name=study_name, replicates=replicates)
    url = storage or DEFAULT_STORAGE
    check_storage_apart(url, None)
    create_studies(cfg, make_storage(url, cfg), n_trials=cfg.n_trials)
    names = ", ".join(cfg.study_name(a, k, r) for a, k, r in cfg.studies())
    click.echo(f"Studies {names} ready in {mask_secrets(url)}.")


def study_status(*, target: str, storage: str | None, replicates: int | None = None) -> None:
    """`autoall study status`: per study (every replicate), counts by state, the best trial,
    time spent."""
    from autoall.study import study_summaries

    try:
        summaries = study_summaries(target, storage=storage, replicates=replicates)
    except KeyError as exc:  # Optuna's "no such study"
        raise UserError(str(exc)) from exc
    for s in summaries:
        click.echo(s.render())


def study_list(*, storage: str | None) -> None:
    """`autoall study list`: the studies of a storage, their trial counts and best values."""
    import optuna

    from autoall._secrets import mask_secrets
    from autoall.study import make_storage

    url = storage or DEFAULT_STORAGE
    # only reads: a SQLite file that is not there is an error, not a new database
    summaries = optuna.get_all_study_summaries(storage=make_storage(url, create=False))
    if not summaries:
        click.echo(f"No studies in {mask_secrets(url)}.")
        return
    for s in sorted(summaries, key=lambda s: s.study_name):
        best = f"{s.best_trial.values[0]:.4f}" if s.best_trial and s.best_trial.values else "-"
        click.echo(f"{s.study_name:<28} {s.n_trials:>5} trials  best {best}")


def study_export(
    *, name: str, fmt: str, output: str | None, storage: str | None, force: bool = False
) -> None:
    """`autoall study export`: the trials table as CSV or JSON (ISO 8601 times and durations,
    floats that read back exactly), to stdout or `-o`: its missing folders made, an existing
    file replaced only with `--force`, the storage, the MLflow database and study files never."""
    from autoall.study import check_export_file, export_text, trial_records, write_export

    path = check_export_file(output, storage=storage, force=force) if output else None
    try:
        columns, records = trial_records(name, storage=storage)
    except KeyError as exc:  # Optuna's "no such study"
        raise UserError(str(exc)) from exc
    text = export_text(columns, records, fmt)
    if path is None:
        click.echo(text, nl=False)
        return
    write_export(text, path)
    _echo(f"Wrote {len(records)} trials to {output}")


def serve(server: Server) -> int:
    """Show where the server is, run it until it exits or we are told to stop (quiet unless
    `--verbose`); its exit code: the server's, or 130 after Ctrl-C, 128 + the signal after
    SIGTERM or SIGHUP (autoall/cli/_servers.py)."""
    from autoall.cli._servers import serve as supervise

    for line in server.lines:
        click.echo(line)
    code, stopped = supervise(server)
    _echo("stopped." if stopped else f"the server exited with code {code}.")
    return code


def report(
    *,
    targets: tuple[str, ...],
    seeds: int | None = None,
    selection_seeds: int | None = None,
    top_k: int | None = None,
    target_acc: float | None = None,
    out: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    architectures: str | None = None,
    run_baseline: bool = ReportOptions.run_baseline,
    cohorts: bool = ReportOptions.cohorts,
    replicates: int | None = None,
    margin: float | None = None,
    tuning_trials: int | None = None,
) -> None:
    """`autoall report`: each study file's report; with several files, their summary too.

    `replicates`, `margin`, `tuning_trials`, `seeds`, `selection_seeds` and `top_k` (None: each
    file's) override the study files: in the configuration the report reads and in its options
    alike."""
    from autoall.report import ReportError, check_out, check_studies, resolve_study_file, run_report

    url = storage or DEFAULT_STORAGE
    several = len(targets) > 1
    cfgs = [resolve_study_file(t) for t in targets]
    if architectures is not None:
        cfgs = [c.with_architectures(names(architectures)) for c in cfgs]
    if replicates is not None:
        cfgs = [c.with_replicates(replicates) for c in cfgs]
    if margin is not None:
        cfgs = [replace(c, report=replace(c.report, margin=margin)) for c in cfgs]
    if tuning_trials is not None:
        cfgs = [replace(c, report=replace(c.report, tuning_trials=tuning_trials)) for c in cfgs]
    if len({c.name for c in cfgs}) != len(cfgs):
        raise ReportError("Two study files have the same name; each report is named after it.")
    folders = [
        (Path(out) if out and not several else Path("reports") / c.name, "the report folder")
        for c in cfgs
    ]
    if several:
        folders.append((Path(out or "reports/summary"), "the summary folder"))
    from autoall.study import report_cohort

    for cfg in cfgs:
        cohort = report_cohort(cfg, seeds=seeds, selection_seeds=selection_seeds, cohorts=cohorts)
        preflight(cfg, device=device, storage=url, tracking_uri=tracking_uri, folders=folders,
                  cohort=cohort)  # fmt: skip
        check_studies(cfg, url)  # every study there, before the first report trains
    for folder, _ in folders:
        check_out(folder)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opts = ReportOptions(
        seeds=seeds,
        selection_seeds=selection_seeds,
        top_k=top_k,
        target_acc=target_acc,
        out=Path(out) if out and not several else None,
        storage=url,
        tracking_uri=tracking_uri,
        device=device,
        run_baseline=run_baseline,
        cohorts=cohorts,
        replicates=replicates,
        margin=margin,
        tuning_trials=tuning_trials,
    )
    from autoall.report import hold_all

    held = hold_all([folder for folder, _ in folders])  # every folder's lock, before training
    with hint(interrupted="finished runs are kept. Rerun the same command to continue."), held:
        done = [run_report(c, opts, echo=_echo) for c in cfgs]
        if several:
            from autoall.report import write_summary

            summary = write_summary(done, Path(out or "reports/summary"))
    for r in done:
        assert r.out is not None
        click.echo(f"Report: {_shown(r.out / 'report.html')} (also report.md, results.csv, "
                   "claims.csv and the figures)")  # fmt: skip
    if several:
        click.echo(f"Summary: {_shown(summary / 'summary.html')}")


def _shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
