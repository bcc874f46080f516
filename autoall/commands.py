"""What each `autoall` command does, under its click declaration in autoall/cli.py.

Each function takes the command's options as keyword arguments, checks the input before
anything is stored (`preflight`), calls the library and prints. Failures are raised, never
turned into exit codes here: autoall/errors.py maps them, once, for every command.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from autoall.errors import UserError, hint
from autoall.options import DEFAULT_STORAGE, ReportOptions, RunOptions

if TYPE_CHECKING:  # autoall.config imports torch: only the commands that need it load it
    from autoall.config import StudyConfig
    from autoall.servers import Server


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
) -> list[Any]:
    """Everything a user can get wrong, checked before anything is stored, created or trained
    (exit code 2): the device, the largest model of the search space against its memory, and
    every output location (`folders`, the SQLite files' folders). Returns the model sizes."""
    from autoall.preflight import check_model_size, check_writable
    from autoall.tracking_store import tracking_sqlite_file
    from autoall.train import resolve_device
    from autoall.urls import sqlite_file

    dev = resolve_device(device)
    sizes = check_model_size(cfg, dev)
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


def train_one(
    *,
    arch: str,
    dataset: str,
    all_hidden: int | None,
    all_lr: float | None,
    aux_weight: float,
    aux_loss: str,
    positions: str,
    epochs: int | None,
    seed: int,
    data_root: str,
    download: bool,
    device: str | None,
) -> None:
    """`autoall train`: one model (baseline, or with an ALL), validation and test results."""
    from autoall.baselines import baseline
    from autoall.data import load_data
    from autoall.layer import ALLSpec
    from autoall.models import build_model
    from autoall.preflight import check_model_fits
    from autoall.train import resolve_device, seed_everything, train

    base = baseline(arch, dataset)
    # checked even for the baseline, so a typo never goes unnoticed
    checked = ALLSpec(
        hidden_size=1 if all_hidden is None else all_hidden,
        aux_loss=aux_loss,
        aux_weight=aux_weight,
        positions=positions,
    )
    spec = checked if all_hidden is not None else None
    cfg = replace(
        base.config,
        epochs=base.config.epochs if epochs is None else epochs,
        seed=seed,
        all_lr=all_lr if spec else None,
        device=device,
        evaluate_test=True,
    )
    dev = resolve_device(device)
    check_model_fits(arch, data=dataset, spec=spec, device=dev, option="--all-hidden")
    data = load_data(dataset, root=data_root, device=dev, download=download)
    seed_everything(seed)
    model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes, all_spec=spec)
    label = (
        f"{arch} + ALL(h={all_hidden}, {aux_loss}, w={aux_weight}, {positions})"
        if spec
        else f"{arch} baseline"
    )
    _echo(f"{label} on {dataset} ({dev}); settings: {base.source}")
    with click.progressbar(length=cfg.epochs, label="epochs", file=sys.stderr) as bar:

        def on_epoch(stats: Any) -> None:
            bar.label = f"epoch {stats.epoch} val_acc {stats.val_acc:.4f}"
            bar.update(1)

        result = train(model, data, cfg, on_epoch=on_epoch)
    print_table(
        [
            ("model", label),
            ("validation accuracy (final)", f"{result.final_val_acc:.4f}"),
            (
                "validation accuracy (best)",
                f"{result.best_val_acc:.4f} (epoch {result.best_epoch})",
            ),
            ("test accuracy", f"{result.test_acc:.4f}"),
            ("training time", f"{result.wall_seconds:.2f} s ({result.epochs_run} epochs)"),
            ("parameters", f"{result.params.total:,} (ALL: {result.params.all:,})"),
            ("device", result.device),
        ]
    )


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
    if log_models and cohort > 1:
        raise UserError(
            "--log-models needs --cohort 1: a cohort's members train as stacked rows of one "
            f"batched job, not as modules that can be logged (got --cohort {cohort})."
        )
    cfg = load(file, architectures, study_name, replicates)
    url = storage or DEFAULT_STORAGE
    sizes = preflight(
        cfg,
        device=device,
        storage=url,
        tracking_uri=tracking_uri,
        tracking=not no_tracking,
        folders=[(Path(checkpoint_dir), "--checkpoint-dir")],
    )
    import optuna
    import torch

    from autoall.preflight import WORKER_BASE_BYTES, cap_workers
    from autoall.train import resolve_device
    from autoall.urls import mask_secrets
    from autoall.workers import default_n_jobs, run_study

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
        kinds=("all", "baseline") if baseline else ("all",),
        system_metrics=on_cuda if system_metrics is None else system_metrics,
        log_models=log_models,
        cohort=cohort,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _echo(f"Optuna storage: {mask_secrets(opts.storage)}")
    resume = "autoall " + shlex.join(mask_secrets(a) for a in sys.argv[1:])
    with hint(
        failed=f"Resume with:\n  {resume}",
        interrupted=f"the running trials are marked FAIL. Resume with:\n  {resume}",
    ):
        counts = run_study(cfg, opts)
    for name, c in counts.items():
        _echo(f"{name}: {c.complete} complete, {c.pruned} pruned, {c.failed} failed")


def study_create(
    *, file: str, storage: str | None, study_name: str | None, replicates: int | None = None
) -> None:
    """`autoall study create`: the storage schema and the studies (every architecture, kind and
    replicate), once, before the workers."""
    from autoall.storage import make_storage
    from autoall.study import create_studies
    from autoall.urls import mask_secrets

    cfg = load(file, study_name=study_name, replicates=replicates)
    url = storage or DEFAULT_STORAGE
    create_studies(cfg, make_storage(url, cfg), n_trials=cfg.n_trials)
    names = ", ".join(cfg.study_name(a, k, r) for a, k, r in cfg.studies())
    click.echo(f"Studies {names} ready in {mask_secrets(url)}.")


def study_status(*, target: str, storage: str | None, replicates: int | None = None) -> None:
    """`autoall study status`: per study (every replicate), counts by state, the best trial,
    time spent."""
    from autoall.summary import study_summaries

    try:
        summaries = study_summaries(target, storage=storage, replicates=replicates)
    except KeyError as exc:  # Optuna's "no such study"
        raise UserError(str(exc)) from exc
    for s in summaries:
        click.echo(s.render())


def study_list(*, storage: str | None) -> None:
    """`autoall study list`: the studies of a storage, their trial counts and best values."""
    import optuna

    from autoall.storage import make_storage
    from autoall.urls import mask_secrets

    url = storage or DEFAULT_STORAGE
    # only reads: a SQLite file that is not there is an error, not a new database
    summaries = optuna.get_all_study_summaries(storage=make_storage(url, create=False))
    if not summaries:
        click.echo(f"No studies in {mask_secrets(url)}.")
        return
    for s in sorted(summaries, key=lambda s: s.study_name):
        best = f"{s.best_trial.values[0]:.4f}" if s.best_trial and s.best_trial.values else "-"
        click.echo(f"{s.study_name:<28} {s.n_trials:>5} trials  best {best}")


def study_export(*, name: str, fmt: str, output: str | None, storage: str | None) -> None:
    """`autoall study export`: the trials table as CSV or JSON, to a file or stdout."""
    from autoall.preflight import check_writable
    from autoall.summary import trials_table

    if output:
        check_writable(Path(output).absolute().parent, what="--output's folder")
    try:
        frame = trials_table(name, storage=storage)
    except KeyError as exc:  # Optuna's "no such study"
        raise UserError(str(exc)) from exc
    text = (  # datetimes as ISO 8601 strings in both, as pandas will default to
        frame.to_csv(index=False)
        if fmt == "csv"
        else frame.to_json(orient="records", indent=2, date_format="iso")
    )
    if output:
        Path(output).write_text(text)
        _echo(f"Wrote {len(frame)} trials to {output}")
    else:
        click.echo(text, nl=False)


def serve(server: Server) -> int:
    """Show where the server is, run it until it exits or we are told to stop; its exit code
    (autoall/servers.py)."""
    from autoall.servers import serve as supervise

    for line in server.lines:
        click.echo(line)
    code, stopped = supervise(server.cmd)
    _echo("stopped." if stopped else f"the server exited with code {code}.")
    return code


def report(
    *,
    targets: tuple[str, ...],
    seeds: int = ReportOptions.seeds,
    selection_seeds: int = ReportOptions.selection_seeds,
    top_k: int = ReportOptions.top_k,
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

    `replicates`, `margin` and `tuning_trials` (None: each file's) override the study files:
    in the configuration the report reads and in its options alike."""
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
    for cfg in cfgs:
        preflight(cfg, device=device, storage=url, tracking_uri=tracking_uri, folders=folders)
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
    with hint(interrupted="finished runs are kept. Rerun the same command to continue."):
        done = [run_report(c, opts, echo=_echo) for c in cfgs]
        if several:
            from autoall.across import write_summary

            summary = write_summary(done, Path(out or "reports/summary"))
    for r in done:
        assert r.out is not None
        click.echo(f"Report: {_shown(r.out / 'report.html')} (also report.md, results.csv, "
                   "claims.csv and the figures)")  # fmt: skip
    if several:
        click.echo(f"Summary: {_shown(summary / 'summary.html')}")


def _shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
