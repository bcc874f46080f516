"""The `autoall` command: train, study run/status/list/export, ui, dashboard, report, demo.

Bad input is one line on stderr and exit code 2 (click's convention for usage errors);
nothing is written to any store before the input has been validated.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:  # autoall.config imports torch: only the commands that need it load it
    from autoall.config import StudyConfig
    from autoall.servers import Server

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings=_SETTINGS)
@click.version_option(package_name="autoall")
def main() -> None:
    """autoall: find out, with evidence, whether an Auto-Learning Layer improves a network."""
    from autoall.tracking_store import quiet_mlflow  # no torch, no MLflow imported here

    quiet_mlflow()  # MLflow's INFO lines would land among the progress lines
    from autoall.urls import install_log_masking

    install_log_masking()  # no password in any log line or traceback, whoever logs it


@main.command("train")
@click.option("--arch", default="mlp", show_default=True, help="mlp, cnn, vgg16 or resnet18.")
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits, mnist, fashion-mnist or cifar10.",
)
@click.option(
    "--all-hidden", type=int, default=None, help="ALL hidden size; without it the baseline trains."
)
@click.option(
    "--all-lr", type=float, default=None, help="The ALL's own learning rate [default: the base lr]."
)
@click.option(
    "--aux-weight",
    type=float,
    default=0.1,
    show_default=True,
    help="Weight of the ALL's custom loss.",
)
@click.option(
    "--aux-loss",
    default="reconstruction",
    show_default=True,
    help="reconstruction, sparsity, orthogonality or none.",
)
@click.option(
    "--positions",
    type=click.Choice(["head", "blocks"]),
    default="head",
    show_default=True,
    help="The ALL before the head only, or after every block or stage too.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="[default: the architecture's baseline settings, autoall/baselines.py]",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Initialisation, batch order and augmentation.",
)
@click.option(
    "--data-root",
    default="data",
    show_default=True,
    help="Where mnist / fashion-mnist / cifar10 files live.",
)
@click.option("--download", is_flag=True, help="Download a missing data set (needs the internet).")
@click.option(
    "--device", default=None, help="cpu, cuda, cuda:1, mps [default: cuda, then mps, then cpu]."
)
def train_cmd(
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
    """Train one model (baseline, or with an ALL) and print validation and test results."""
    from autoall.baselines import baseline
    from autoall.data import load_data
    from autoall.layer import ALLSpec
    from autoall.models import build_model
    from autoall.preflight import check_model_fits
    from autoall.train import (
        NonFiniteLossError,
        TrainingOOMError,
        resolve_device,
        seed_everything,
        train,
    )

    try:
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
    except ValueError as exc:
        _fail(str(exc))
    seed_everything(seed)
    model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes, all_spec=spec)
    label = (
        f"{arch} + ALL(h={all_hidden}, {aux_loss}, w={aux_weight}, {positions})"
        if spec
        else f"{arch} baseline"
    )
    click.echo(f"{label} on {dataset} ({dev}); settings: {base.source}", err=True)
    with click.progressbar(length=cfg.epochs, label="epochs", file=sys.stderr) as bar:

        def on_epoch(stats: Any) -> None:
            bar.label = f"epoch {stats.epoch} val_acc {stats.val_acc:.4f}"
            bar.update(1)

        try:
            result = train(model, data, cfg, on_epoch=on_epoch)
        except (NonFiniteLossError, TrainingOOMError) as exc:
            _fail(str(exc), code=1)
    _print_table(
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


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


_storage_option = click.option(
    "--storage",
    default=None,
    envvar="AUTOALL_STORAGE",
    help="Optuna storage URL [default: $AUTOALL_STORAGE or sqlite:///autoall.db].",
)


@main.group("study", context_settings=_SETTINGS)
def study_group() -> None:
    """Run and inspect Optuna studies of the ALL knobs."""


def _load(file: str, architectures: str | None = None) -> StudyConfig:
    from autoall.config import StudyFileError, load_study_file

    try:
        cfg = load_study_file(file)
        if architectures is not None:
            cfg = cfg.with_architectures(_names(architectures))
    except StudyFileError as exc:
        _fail(str(exc))
    return cfg


def _names(option: str) -> list[str]:
    """`--architectures a, b` -> ["a", "b"] (empty items dropped; none at all is refused)."""
    return [a.strip() for a in option.split(",") if a.strip()]


def _study_name(cfg: StudyConfig, study_name: str | None) -> StudyConfig:
    from autoall.config import check_name

    if study_name is None:
        return cfg
    try:
        return replace(cfg, name=check_name(study_name, what="--study-name"))
    except ValueError as exc:
        _fail(str(exc))


@study_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="Target per architecture (COMPLETE + PRUNED, across workers and restarts) [default: the file's n_trials].",
)
@click.option(
    "--n-jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes [default: one per GPU, else 1].",
)
@_storage_option
@click.option(
    "--study-name", default=None, help="Overrides the file's name (studies are <name>/<arch>)."
)
@click.option(
    "--architectures", default=None, help="Comma-separated subset of the file's architectures."
)
@click.option("--device", default=None, help="cpu, cuda, mps [default: cuda, then mps, then cpu].")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].",
)
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also run each architecture's tuned-baseline study (<name>/<arch>/tuned-baseline: the "
    "plain network's lr and weight_decay searched with the same sampler, pruner, trials and "
    "epochs), the report's comparator.",
)
@click.option(
    "--checkpoint-dir",
    default=".autoall/checkpoints",
    show_default=True,
    help="Mid-trial checkpoints (share it across hosts so a retried trial resumes).",
)
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between a trial's checkpoints (0: after every epoch).",
)
@click.option(
    "--trials-per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes per GPU (with several GPUs or this option, --n-jobs defaults to GPUs x this).",
)
@click.option(
    "--system-metrics/--no-system-metrics",
    default=None,
    help="MLflow's system metrics (CPU, memory, GPU utilisation and memory) in every trial's "
    "run [default: on when training on CUDA, off otherwise].",
)
@click.option(
    "--log-models",
    is_flag=True,
    help="Log a trial's model (mlflow.pytorch, uint8 images in, logits out) into its run "
    "whenever it becomes its study's best so far. Off by default: it costs seconds per model.",
)
@click.option(
    "--cohort",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials each worker asks Optuna for at once and trains together as one batched job "
    "(each trial the run it is alone, told its own result); 1: one trial at a time.",
)
def study_run(**options: Any) -> None:
    """Run the study in FILE until each architecture holds its target of finished trials."""
    from autoall.tracking_writer import prestarted

    with prestarted(enabled=not options["no_tracking"]):  # MLflow loads in its process meanwhile
        _study_run(**options)


def _study_run(
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
    checkpoint_dir: str = ".autoall/checkpoints",
    checkpoint_every: float = 30.0,
    trials_per_gpu: int = 1,
    system_metrics: bool | None = None,
    log_models: bool = False,
    cohort: int = 1,
) -> None:
    import optuna

    from autoall.preflight import WORKER_BASE_BYTES, cap_workers
    from autoall.storage import DEFAULT_STORAGE, StorageError
    from autoall.tracking import TrackingError, mask_secrets
    from autoall.workers import RunOptions, default_n_jobs, run_study

    if log_models and cohort > 1:
        _fail(
            "--log-models needs --cohort 1: a cohort's members train as stacked rows of one "
            f"batched job, not as modules that can be logged (got --cohort {cohort})."
        )
    cfg = _study_name(_load(file, architectures), study_name)
    url = storage or DEFAULT_STORAGE
    sizes = _preflight(
        cfg,
        device=device,
        storage=url,
        tracking_uri=tracking_uri,
        tracking=not no_tracking,
        folders=[(Path(checkpoint_dir), "--checkpoint-dir")],
    )
    import torch

    from autoall.train import resolve_device

    on_cuda = resolve_device(device).type == "cuda"  # checked by _preflight
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
        click.echo(capped, err=True)
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
    click.echo(f"Optuna storage: {mask_secrets(opts.storage)}", err=True)
    resume = "autoall " + shlex.join(mask_secrets(a) for a in sys.argv[1:])
    try:
        counts = run_study(cfg, opts)
    except KeyboardInterrupt:
        click.echo(
            f"\nInterrupted; the running trials are marked FAIL. Resume with:\n  {resume}", err=True
        )
        sys.exit(130)
    except (TrackingError, StorageError) as exc:  # a wrong URL or password, a server down
        _fail(mask_secrets(str(exc)))
    except ValueError as exc:  # e.g. a data set missing under --data-root
        _fail(mask_secrets(str(exc)))
    except RuntimeError as exc:
        _fail(f"{mask_secrets(str(exc))}\nResume with:\n  {resume}", code=1)
    for name, c in counts.items():
        click.echo(f"{name}: {c.complete} complete, {c.pruned} pruned, {c.failed} failed", err=True)


def _preflight(
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
    from autoall.preflight import PreflightError, check_model_size, check_writable
    from autoall.storage import sqlite_file
    from autoall.tracking_store import tracking_sqlite_file
    from autoall.train import resolve_device

    try:
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
    except (PreflightError, ValueError) as exc:
        _fail(str(exc))
    return sizes


@study_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False))
@_storage_option
@click.option("--study-name", default=None, help="Overrides the file's name.")
def study_create(file: str, storage: str | None, study_name: str | None) -> None:
    """Create the storage schema and the studies of FILE once, before many workers start."""
    from autoall.storage import DEFAULT_STORAGE, StorageError, make_storage
    from autoall.study import create_studies
    from autoall.tracking import mask_secrets

    cfg = _study_name(_load(file), study_name)
    url = storage or DEFAULT_STORAGE
    try:
        create_studies(cfg, make_storage(url, cfg), n_trials=cfg.n_trials)
    except (StorageError, ValueError) as exc:  # a wrong URL or password; other directions
        _fail(mask_secrets(str(exc)))
    names = ", ".join(cfg.study_name(a, k) for a, k in cfg.studies())
    click.echo(f"Studies {names} ready in {mask_secrets(url)}.")


@study_group.command("status")
@click.argument("target")
@_storage_option
def study_status(target: str, storage: str | None) -> None:
    """Per architecture: counts by state, best value and parameters, time spent.

    TARGET is a study file or a study name (`digits` for all its architectures, or `digits/mlp`).
    """
    from autoall.config import StudyFileError
    from autoall.storage import StorageError
    from autoall.summary import study_summaries
    from autoall.urls import mask_secrets

    try:
        summaries = study_summaries(target, storage=storage)
    except (StudyFileError, StorageError, ValueError, KeyError) as exc:
        _fail(mask_secrets(str(exc)))
    for s in summaries:
        click.echo(s.render())


@study_group.command("list")
@_storage_option
def study_list(storage: str | None) -> None:
    """List the studies in a storage."""
    import optuna

    from autoall.storage import DEFAULT_STORAGE, StorageError, make_storage
    from autoall.urls import mask_secrets

    url = storage or DEFAULT_STORAGE
    try:  # only reads: a SQLite file that is not there is an error, not a new database
        summaries = optuna.get_all_study_summaries(storage=make_storage(url, create=False))
    except StorageError as exc:
        _fail(str(exc))
    if not summaries:
        click.echo(f"No studies in {mask_secrets(url)}.")
        return
    for s in sorted(summaries, key=lambda s: s.study_name):
        best = f"{s.best_trial.values[0]:.4f}" if s.best_trial and s.best_trial.values else "-"
        click.echo(f"{s.study_name:<28} {s.n_trials:>5} trials  best {best}")


@study_group.command("export")
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write [default: stdout].",
)
@_storage_option
def study_export(name: str, fmt: str, output: str | None, storage: str | None) -> None:
    """Write the trials table of NAME (`digits/mlp`, or `digits` for every architecture)."""
    from autoall.preflight import PreflightError, check_writable
    from autoall.storage import StorageError
    from autoall.summary import trials_table
    from autoall.urls import mask_secrets

    try:
        if output:
            check_writable(Path(output).absolute().parent, what="--output's folder")
        frame = trials_table(name, storage=storage)
    except (KeyError, ValueError, StorageError, PreflightError) as exc:
        _fail(mask_secrets(str(exc)))
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=2)
    if output:
        Path(output).write_text(text)
        click.echo(f"Wrote {len(frame)} trials to {output}", err=True)
    else:
        click.echo(text, nl=False)


_PORT = click.IntRange(1, 65535)


@main.command("ui")
@click.option("--port", type=_PORT, default=5000, show_default=True)
@click.option(
    "--tracking-uri",
    default=None,
    help="[default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db]",
)
def ui(port: int, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's tracking store.

    Ctrl-C, SIGTERM and SIGHUP stop it and every process it started.
    """
    from autoall.servers import ServerError, mlflow_ui

    try:
        server = mlflow_ui(port, tracking_uri)
    except ServerError as exc:
        _fail(str(exc))
    _serve(server)


@main.command("dashboard")
@_storage_option
@click.option("--port", type=_PORT, default=8080, show_default=True)
def dashboard(storage: str | None, port: int) -> None:
    """Start optuna-dashboard on the study storage (Ctrl-C, SIGTERM and SIGHUP stop it)."""
    from autoall.servers import ServerError, optuna_dashboard

    try:
        server = optuna_dashboard(port, storage)
    except ServerError as exc:
        _fail(str(exc))
    _serve(server)


def _serve(server: Server) -> NoReturn:
    """Show where the server is, run it until it exits or we are told to stop, exit with its
    code (autoall/servers.py)."""
    from autoall.servers import serve

    for line in server.lines:
        click.echo(line)
    code, stopped = serve(server.cmd)
    click.echo("stopped." if stopped else f"the server exited with code {code}.", err=True)
    sys.exit(code)


@main.command("demo")
@click.option("--n-trials", type=int, default=8, show_default=True)
@click.option("--seeds", type=click.IntRange(min=2), default=10, show_default=True)
def demo(n_trials: int, seeds: int) -> None:
    """The embedded default: a small digits study (mlp) and its tuned baseline, their summary,
    then the report.

    The report uses 10 evaluation seeds (the `autoall report` default is 5): the fewest with which
    its claims can be decided (the exact sign-flip test needs n >= 9 for ten claims).
    """
    from autoall.storage import DEFAULT_STORAGE

    study_file = Path(__file__).resolve().parent.parent / "studies" / "digits.yaml"
    start = time.monotonic()
    ctx = click.get_current_context()
    ctx.invoke(
        study_run,
        file=str(study_file),
        n_trials=n_trials,
        architectures="mlp",
        storage=DEFAULT_STORAGE,
    )
    ctx.invoke(study_status, target=str(study_file), storage=DEFAULT_STORAGE)
    ctx.invoke(
        report, targets=(str(study_file),), seeds=seeds, architectures="mlp",
        storage=DEFAULT_STORAGE,
    )  # fmt: skip
    click.echo(f"demo finished in {time.monotonic() - start:.0f} s; `autoall ui` shows the runs.")


@main.command("report")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--seeds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Evaluation seeds per variant (seed = search seed + 1000 + i). The exact sign-flip "
    "test needs n >= 6 for one claim, 9 for ten; with fewer the verdicts say undetermined.",
)
@click.option(
    "--selection-seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Seeds each top-k trial is retrained on to pick the winner (validation only).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Trials per study re-evaluated on the selection seeds.",
)
@click.option(
    "--target-acc",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Validation accuracy whose first crossing is timed [default: 99 % of the weaker "
    "winner's mean validation accuracy on the selection seeds].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder [default: reports/<name>; with several study files, the summary's "
    "folder, default reports/summary].",
)
@_storage_option
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].",
)
@click.option("--device", default=None, help="cpu, cuda, mps [default: cuda, then mps, then cpu].")
@click.option(
    "--architectures", default=None, help="Comma-separated subset of the file's architectures."
)
@click.option(
    "--run-baseline/--no-run-baseline",
    default=True,
    show_default=True,
    help="Run a missing or short tuned-baseline study to the ALL study's budget first "
    "(otherwise: an error naming the command).",
)
@click.option(
    "--cohorts/--no-cohorts",
    default=True,
    show_default=True,
    help="Train a variant's missing seeds (and a candidate's selection seeds) together as one "
    "batched job, each the run it is alone within float tolerance; --no-cohorts: one by one.",
)
def report(
    targets: tuple[str, ...],
    seeds: int,
    selection_seeds: int = 3,
    top_k: int = 3,
    target_acc: float | None = None,
    out: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    architectures: str | None = None,
    run_baseline: bool = True,
    cohorts: bool = True,
) -> None:
    """The tuned ALL against an equal-budget tuned baseline, paired over seeds, with the
    article's claims tested (Holm-corrected) and plots.

    TARGETS are study files, or study names whose file studies/<name>.yaml exists. Per
    architecture: each study's winner is picked on validation (top-k trials retrained on
    selection seeds); every variant (ALL, tuned and hand-set baselines, controls, reduced-data
    runs) trains on each evaluation seed and is evaluated once on the test split; every run is
    logged to MLflow and reused when nothing that determines it changed. Writes report.md,
    report.html, results.csv, claims.csv and the figures; with several files, also a summary.
    """
    from autoall.config import StudyFileError
    from autoall.report import (
        ReportError,
        ReportOptions,
        check_out,
        check_studies,
        resolve_study_file,
        run_report,
    )
    from autoall.storage import DEFAULT_STORAGE, StorageError
    from autoall.tracking import TrackingError, mask_secrets

    url = storage or DEFAULT_STORAGE
    several = len(targets) > 1
    try:
        cfgs = [resolve_study_file(t) for t in targets]
        if architectures is not None:
            cfgs = [c.with_architectures(_names(architectures)) for c in cfgs]
        if len({c.name for c in cfgs}) != len(cfgs):
            raise ReportError("Two study files have the same name; each report is named after it.")
        folders = [
            (Path(out) if out and not several else Path("reports") / c.name, "the report folder")
            for c in cfgs
        ]
        if several:
            folders.append((Path(out or "reports/summary"), "the summary folder"))
        for cfg in cfgs:
            _preflight(cfg, device=device, storage=url, tracking_uri=tracking_uri, folders=folders)
            check_studies(cfg, url)  # every study there, before the first report trains
        for folder, _ in folders:
            check_out(folder)
    except (ReportError, StorageError) as exc:
        _fail(mask_secrets(str(exc)))
    except (StudyFileError, ValueError) as exc:
        _fail(str(exc))
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
    )
    try:
        done = [run_report(c, opts, echo=lambda line: click.echo(line, err=True)) for c in cfgs]
        if several:
            from autoall.across import write_summary

            summary = write_summary(done, Path(out or "reports/summary"))
    except KeyboardInterrupt:
        click.echo(
            "\nInterrupted; finished runs are kept. Rerun the same command to continue.", err=True
        )
        sys.exit(130)
    except (ReportError, StorageError, TrackingError) as exc:  # user errors: exit code 2
        _fail(mask_secrets(str(exc)))
    except ValueError as exc:  # e.g. a data set missing under its data root
        _fail(mask_secrets(str(exc)))
    for r in done:
        assert r.out is not None
        click.echo(f"Report: {_shown(r.out / 'report.html')} (also report.md, results.csv, "
                   "claims.csv and the figures)")  # fmt: skip
    if several:
        click.echo(f"Summary: {_shown(summary / 'summary.html')}")


def _shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


if __name__ == "__main__":
    main()
