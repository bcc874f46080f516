"""The `autoall` command: train, study run/create/status/list/export, ui, dashboard, report, demo.

This module declares the commands and their options (defaults read from autoall/config/_options.py);
what each command does is in autoall/cli/_commands.py. Bad input is one line on stderr and exit code
2 (click's convention for usage errors), a failed run exit code 1, Ctrl-C 130: the one mapping
is autoall/errors.py. Nothing is written to any store before the input has been validated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from autoall.cli import _commands as commands
from autoall.cli._train_command import NumberRange, given_options, train_options
from autoall.config import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    MAX_REPLICATES,
    REPORT_COUNTS,
    ReportOptions,
    RunOptions,
)

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """A click group whose commands' failures are mapped to exit codes by autoall/errors.py."""

    def invoke(self, ctx: click.Context) -> Any:
        from autoall.errors import exit_code, message

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own: --help, usage errors
        except BaseException as exc:
            code = exit_code(exc)
            if code is None:  # a bug: the traceback says where
                raise
            click.echo(message(exc), err=True)
            sys.exit(code)


@click.group(cls=_Group, context_settings=_SETTINGS)
@click.version_option(package_name="autoall")
def main() -> None:
    """autoall: find out, with evidence, whether an Auto-Learning Layer improves a network."""
    from autoall.tracking import quiet_mlflow

    quiet_mlflow()  # MLflow's INFO lines would land among the progress lines
    from autoall._secrets import install_log_masking

    install_log_masking()  # no password in any log line or traceback, whoever logs it


@main.command("train")
@train_options
def train_cmd(**options: Any) -> None:
    """Train one model (baseline, or with an ALL) and print validation and test results.

    Settings come from the architecture's baseline (autoall/training/_baselines.py), then --study's
    file (its data set, split and training settings), then the options given here.
    """
    commands.train_one(options, given_options(click.get_current_context(), options))


_storage_option = click.option(
    "--storage",
    default=None,
    envvar="AUTOALL_STORAGE",
    help=f"Optuna storage URL [default: $AUTOALL_STORAGE or {DEFAULT_STORAGE}].",
)


_architectures_option = click.option(
    "--architectures", default=None, help="Comma-separated subset of the file's architectures."
)
_device_option = click.option(
    "--device", default=None, help="cpu, cuda, cuda:N, mps [default: cuda, then mps, then cpu]."
)
_tracking_uri_option = click.option(
    "--tracking-uri",
    default=None,
    help=f"MLflow tracking URI [default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI}].",
)


_replicates_option = click.option(
    "--replicates",
    type=click.IntRange(1, MAX_REPLICATES),
    default=None,
    help="Independent searches of each study, each with its own seeds: replicate r trains "
    "with train.seed + r and is named <name>/<arch>/r<r> (r >= 1) [default: the file's "
    "replicates].",
)


@main.group("study", context_settings=_SETTINGS)
def study_group() -> None:
    """Run and inspect Optuna studies of the ALL knobs."""


@study_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="Target per study (COMPLETE + PRUNED, across workers and restarts) [default: the file's n_trials].",
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
@_architectures_option
@_device_option
@_tracking_uri_option
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
    default=RunOptions.checkpoint_dir,
    show_default=True,
    help="Mid-trial checkpoints (share it across hosts so a retried trial resumes).",
)
@click.option(
    "--checkpoint-every",
    type=NumberRange(min=0),
    default=RunOptions.checkpoint_every,
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
    default=RunOptions.cohort,
    show_default=True,
    help="Trials each worker asks Optuna for at once and trains together as one batched job "
    "(each trial the run it is alone, told its own result); 1: one trial at a time.",
)
@_replicates_option
def study_run(**options: Any) -> None:
    """Run the studies in FILE (per architecture and replicate: the ALL study, then its tuned
    baseline) until each holds its target of finished trials."""
    from autoall.tracking import prestarted

    with prestarted(enabled=not options["no_tracking"]):  # MLflow loads in its process meanwhile
        commands.study_run(**options)


@study_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False))
@_storage_option
@click.option("--study-name", default=None, help="Overrides the file's name.")
@_replicates_option
def study_create(**options: Any) -> None:
    """Create the storage schema and the studies of FILE once, before many workers start."""
    commands.study_create(**options)


@study_group.command("status")
@click.argument("target")
@_storage_option
@click.option(
    "--replicates",
    type=click.IntRange(1, MAX_REPLICATES),
    default=None,
    help="Show replicates 0 to R - 1 [default: a study file's replicates; for a study name, "
    "every replicate stored].",
)
def study_status(**options: Any) -> None:
    """Per study (architecture, kind, replicate): counts by state, best value and parameters,
    time spent.

    TARGET is a study file or a study name (`digits` for all its architectures and replicates,
    or `digits/mlp`, `digits/mlp/r1`).
    """
    commands.study_status(**options)


@study_group.command("list")
@_storage_option
def study_list(**options: Any) -> None:
    """List the studies in a storage."""
    commands.study_list(**options)


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
    help="File to write (missing folders are made) [default: stdout]. Never the storage, the "
    "MLflow database or a study file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing -o file.")
@_storage_option
def study_export(**options: Any) -> None:
    """Write the trials table of NAME (`digits/mlp`, or `digits` for every architecture): the
    columns of Optuna's trials_dataframe after a `study` column, times and durations in ISO
    8601 (times as Optuna stores them: local, no UTC offset), floats in full."""
    commands.study_export(**options)


_PORT = click.IntRange(1, 65535)


_verbose_option = click.option(
    "--verbose",
    is_flag=True,
    help="Everything the server prints: its access log, start-up lines and warnings in full "
    "(default: none of these, each warning on one line, errors always).",
)


@main.command("ui")
@click.option("--port", type=_PORT, default=5000, show_default=True)
@click.option(
    "--tracking-uri",
    default=None,
    help=f"[default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI}]",
)
@_verbose_option
def ui(port: int, tracking_uri: str | None, verbose: bool) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's tracking store.

    Ctrl-C (exit code 130), SIGTERM and SIGHUP stop it and every process it started.
    """
    from autoall.cli._servers import mlflow_ui

    sys.exit(commands.serve(mlflow_ui(port, tracking_uri, verbose=verbose)))


@main.command("dashboard")
@_storage_option
@click.option("--port", type=_PORT, default=8080, show_default=True)
@_verbose_option
def dashboard(storage: str | None, port: int, verbose: bool) -> None:
    """Start optuna-dashboard on the study storage (Ctrl-C, exit code 130, SIGTERM and SIGHUP
    stop it)."""
    from autoall.cli._servers import optuna_dashboard

    sys.exit(commands.serve(optuna_dashboard(port, storage, verbose=verbose)))


@main.command("demo")
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="Trials per study [default: studies/demo.yaml's n_trials, 12].",
)
@click.option(
    "--seeds",
    type=click.IntRange(*REPORT_COUNTS["seeds"]),
    default=None,
    help="Evaluation seeds [default: studies/demo.yaml's report.seeds, 3].",
)
@click.option(
    "--tuning-trials",
    type=click.IntRange(min=0, max=1000),
    default=None,
    help="Re-tuning candidates per control and reduced-data arm [default: studies/demo.yaml's "
    "report.tuning_trials, 4].",
)
def demo(n_trials: int | None, seeds: int | None, tuning_trials: int | None) -> None:
    """The embedded default, small: studies/demo.yaml, the digits mlp study and its tuned
    baseline, each searched twice (2 replicates, 2 workers), their summary, then the report
    (3 evaluation seeds, the top 2 trials of each search on 2 selection seeds, 4 re-tuning
    candidates per control). What it runs is that file, so `autoall report studies/demo.yaml`
    afterwards reuses every run.

    A few minutes on 2 cores. With 2 replicates every test has one degree of freedom, so the
    report says before training that no verdict is reachable and how many replicates would be:
    `autoall study run studies/digits.yaml` and `autoall report studies/digits.yaml` give that
    answer.
    """
    path = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"
    study_file = str(_shown(path))
    start = time.monotonic()
    ctx = click.get_current_context()
    ctx.invoke(study_run, file=study_file, n_trials=n_trials, storage=DEFAULT_STORAGE, n_jobs=2)
    commands.study_status(target=study_file, storage=DEFAULT_STORAGE)
    commands.report(targets=(study_file,), seeds=seeds, storage=DEFAULT_STORAGE,
                    tuning_trials=tuning_trials)  # fmt: skip
    given = [("--seeds", seeds), ("--tuning-trials", tuning_trials)]
    extra = "".join(f" {option} {value}" for option, value in given if value is not None)
    name = commands.load(study_file).name
    click.echo(
        f"demo finished in {time.monotonic() - start:.0f} s. Next:\n"
        f"  autoall ui                                 # the studies and the report in MLflow\n"
        f"  autoall report {study_file}{extra}   # reuses every run: nothing trains again\n"
        f"  python -c \"import autoall; print(autoall.load_best('{name}-mlp@champion').accuracy())\"\n"
        f"Then the full answer: autoall study run studies/digits.yaml && "
        f"autoall report studies/digits.yaml"
    )


def _shown(path: Path) -> Path:
    """`path` relative to the working folder when it is inside it (what a user types)."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


@main.command("report")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--seeds",
    type=click.IntRange(*REPORT_COUNTS["seeds"]),
    default=None,
    help="Evaluation seeds per variant and replicate (seed = search seed + 1000 + i) "
    "[default: the file's report.seeds, 3]. The tests' unit is the replicate (df = replicates "
    "- 1; the seeds with one replicate), so more replicates sharpen a verdict more than seeds.",
)
@click.option(
    "--selection-seeds",
    type=click.IntRange(*REPORT_COUNTS["selection_seeds"]),
    default=None,
    help="Seeds each top-k trial is retrained on to pick the winner (validation only) "
    "[default: the file's report.selection_seeds, 3].",
)
@click.option(
    "--top-k",
    type=click.IntRange(*REPORT_COUNTS["top_k"]),
    default=None,
    help="Trials per study re-evaluated on the selection seeds [default: the file's "
    "report.top_k, 3].",
)
@click.option(
    "--target-acc",
    type=NumberRange(0, 1, min_open=True),
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
@_tracking_uri_option
@_device_option
@_architectures_option
@click.option(
    "--run-baseline/--no-run-baseline",
    default=ReportOptions.run_baseline,
    show_default=True,
    help="Run a missing or short tuned-baseline study to the ALL study's budget first "
    "(otherwise: an error naming the command).",
)
@click.option(
    "--cohorts/--no-cohorts",
    default=ReportOptions.cohorts,
    show_default=True,
    help="Train a variant's missing seeds (and a candidate's selection seeds) together as one "
    "batched job, each the run it is alone within float tolerance; --no-cohorts: one by one.",
)
@click.option(
    "--replicates",
    type=click.IntRange(1, MAX_REPLICATES),
    default=None,
    help="Independent searches per study to report on [default: the file's replicates].",
)
@click.option(
    "--margin",
    type=NumberRange(0, 100, min_open=True, max_open=True),
    default=None,
    metavar="POINTS",
    help="Equivalence margin in accuracy percentage points: a difference inside +-POINTS "
    "counts as none [default: the file's report.margin, else derived by the report].",
)
@click.option(
    "--tuning-trials",
    type=click.IntRange(0, 1000),
    default=None,
    help="Re-tuning trials per control and per reduced-data arm (0: controls keep the "
    "winner's knobs, labelled untuned) [default: the file's report.tuning_trials, 8].",
)
def report(**options: Any) -> None:
    """The tuned ALL against an equal-budget tuned baseline, paired over seeds, with the
    article's claims tested (Holm-corrected) and plots.

    TARGETS are study files, or study names whose file studies/<name>.yaml exists. Per
    architecture: each study's winner is picked on validation (top-k trials retrained on
    selection seeds); every variant (ALL, tuned and hand-set baselines, controls, reduced-data
    runs) trains on each evaluation seed and is evaluated once on the test split; every run is
    logged to MLflow and reused when nothing that determines it changed. Writes report.md,
    report.html, results.csv, claims.csv and the figures; with several files, also a summary.
    """
    commands.report(**options)


if __name__ == "__main__":
    main()
