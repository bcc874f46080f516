"""`autoall report`: the tuned ALL against an equally tuned baseline and re-tuned controls,
paired over seeds, over independent searches.

Per architecture, for each replicate r (an independent search of each arm: its own sampler
streams, search seed and selection seeds):

1. The ALL study `<name>/<arch>` (`.../r<r>` for r >= 1) and its tuned baseline
   `<name>/<arch>/tuned-baseline[/r<r>]` are read; both search the base network's lr and
   weight_decay over the same ranges with the same sampler, pruner and epochs, the ALL study its
   knobs too. A baseline with fewer finished trials than its ALL study is run first. Both are
   judged on their first `budget` finished trials, and the report states each arm's budget
   (trials, random start-up and guided, trial-epochs, seconds).
2. Each study's winner is picked on validation only (autoall/report/_selection.py), on the replicate's
   own selection seeds.
3. Every variant (autoall/report/_variants.py) trains on each evaluation seed and is evaluated
   once on the test split; controls and reduced-data arms are first re-tuned on what their
   change frees (autoall/report/_retune.py). The ALL and the tuned baseline train alone, so
   their seconds are their own.
4. The claims are tested on the (replicate, seed) pairs (autoall/report/_claims.py,
   autoall/report/_decision.py), adjusted over the whole report, and written as report.md,
   report.html, results.csv, claims.csv and figures.

The better-on-validation replicate's winners log their models on the first evaluation seed and
are registered as `<name>-<arch>-all` and `<name>-<arch>-baseline` (autoall/report/_models.py).

Seeds: replicate r searched with `train.seed + r` (s0 + r); evaluation seeds are s0 + 1000 + i
(shared by the replicates, so runs pair by seed) and replicate r's selection seeds
s0 + 2000 + 100 r + j, so none of them is a search seed. Every run is an MLflow child of one
report run and is reused when nothing that determines it changed (autoall/report/_store.py);
they are experiment `<name> report`, linked both ways to the studies' experiment `<name>`, and
the report run holds every claim's and variant's figures (autoall/report/_mlflow.py).
The outputs go into the report folder, which may hold anything else: autoall replaces only
the files it wrote there, holds the folder's lock from before the first training to the end,
and renames whole files into place (autoall/report/_out.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna

from autoall._secrets import mask_secrets, sqlite_file
from autoall.config import (
    BASELINE_SUFFIX,
    Kind,
    ReportOptions,
    RunOptions,
    StudyConfig,
    StudyFileError,
    load_study_file,
)
from autoall.report import _aliases as aliases
from autoall.report import _claims as claims
from autoall.report import _decision as decision
from autoall.report import _plots as plots
from autoall.report import _render as render
from autoall.report import _render_csv as render_csv
from autoall.report._arch import ArchRun, ReportError, eval_seeds, selection_seeds
from autoall.report._conclusion import conclusion
from autoall.report._mlflow import run_figures
from autoall.report._models import Publisher, report_tags
from autoall.report._out import check_out, hold, write_outputs
from autoall.report._retune import equal_steps
from autoall.report._store import RunStore
from autoall.report._types import Report
from autoall.study import count_trials, make_storage
from autoall.training import DeviceData, RunPlan, load_data, resolve_device


def resolve_study_file(target: str) -> StudyConfig:
    """A study file, or a study name whose file `studies/<name>.yaml` exists here."""
    path = Path(target)
    if not path.is_file() and "/" not in target and not target.endswith((".yaml", ".yml")):
        path = Path("studies") / f"{target}.yaml"
    if not path.is_file():
        raise ReportError(
            f"No study file {target!r} (nor studies/{Path(target).stem}.yaml): the report takes "
            "its training settings from the study file; pass its path, e.g. "
            "`autoall report studies/digits.yaml`."
        )
    try:
        return load_study_file(path)
    except StudyFileError as exc:
        raise ReportError(str(exc)) from None


def _run_command(cfg: StudyConfig, arch: str | None = None, n_trials: int | None = None) -> str:
    command = f"autoall study run {cfg.path}"
    if arch is not None:
        command += f" --architectures {arch}"
    if cfg.replicates > 1:
        command += f" --replicates {cfg.replicates}"
    if n_trials is not None:
        command += f" --n-trials {n_trials}"
    return command


def check_studies(cfg: StudyConfig, storage: str) -> dict[tuple[str, int], optuna.Study]:
    """Each architecture's ALL study of every replicate; a missing one, or one without
    COMPLETE trials, is a ReportError with the command that runs it. Only reads: a SQLite
    storage file that does not exist is reported, not created.
    """
    fix = f"run `{_run_command(cfg)}` first, or pass the --storage it used"
    db = sqlite_file(storage)
    shown = mask_secrets(storage)
    if db is not None and not db.is_file():
        raise ReportError(f"No Optuna storage at {shown} (no file {db}); {fix}.")
    rdb = make_storage(storage, create=False)
    names = set(optuna.get_all_study_names(storage=rdb))
    studies = {}
    for arch in cfg.architectures:
        for replicate in range(cfg.replicates):
            name = cfg.study_name(arch, Kind.ALL, replicate)
            if name not in names:
                there = ", ".join(sorted(names)) or "none"
                raise ReportError(f"No study {name!r} in {shown} (studies there: {there}); {fix}.")
            study = optuna.load_study(study_name=name, storage=rdb)
            c = count_trials(study.get_trials(deepcopy=False))
            if c.complete == 0:
                raise ReportError(
                    f"Study {name!r} in {shown} has no COMPLETE trial ({c.pruned} pruned, "
                    f"{c.failed} failed, {c.running} running); {fix}."
                )
            studies[(arch, replicate)] = study
    return studies


def baseline_studies(
    cfg: StudyConfig,
    opts: ReportOptions,
    studies: Mapping[tuple[str, int], optuna.Study],
    say: Callable[[str], None],
) -> dict[tuple[str, int], optuna.Study]:
    """Each replicate's tuned-baseline study with at least as many finished trials as its ALL
    study: run (resumed) here, or, with `run_baseline=False`, a ReportError with the command."""
    rdb = make_storage(opts.storage)
    names = set(optuna.get_all_study_names(storage=rdb))
    for arch in cfg.architectures:
        short = []
        for replicate in range(cfg.replicates):
            name = cfg.study_name(arch, Kind.BASELINE, replicate)
            need = count_trials(studies[(arch, replicate)].get_trials(deepcopy=False)).done
            have = 0
            if name in names:
                have = count_trials(optuna.load_study(study_name=name, storage=rdb).trials).done
            if have < need:
                short.append((name, have, need))
        if not short:
            continue
        need = max(n for _, _, n in short)
        command = _run_command(cfg, arch, need)
        lines = ", ".join(f"{name} holds {have} of {n}" for name, have, n in short)
        if not opts.run_baseline:
            raise ReportError(
                f"Tuned-baseline studies with fewer finished trials than their ALL study: "
                f"{lines}; equal budgets are needed: run `{command}` (it runs only the missing "
                "trials) or drop --no-run-baseline."
            )
        say(f"{lines} finished trials; running the rest (equal budget), as `{command}`")
        _run_baseline_studies(cfg, arch, need, opts)
    return {
        (arch, r): optuna.load_study(study_name=cfg.study_name(arch, Kind.BASELINE, r), storage=rdb)
        for arch, r in studies
    }


def _run_baseline_studies(cfg: StudyConfig, arch: str, n_trials: int, opts: ReportOptions) -> None:
    from autoall.study import run_study

    run_study(
        cfg.with_architectures([arch]),
        RunOptions(
            storage=opts.storage,
            n_trials=n_trials,
            device=opts.device,
            tracking_uri=opts.tracking_uri,
            kinds=(Kind.BASELINE,),
        ),
    )


def report_settings(cfg: StudyConfig, opts: ReportOptions) -> tuple[StudyConfig, int]:
    """The study file with the report's replicates, and the re-tuning budget."""
    if opts.replicates is not None:
        cfg = cfg.with_replicates(opts.replicates)
    trials = opts.tuning_trials if opts.tuning_trials is not None else cfg.report.tuning_trials
    return cfg, trials


def check_fractions(cfg: StudyConfig, opts: ReportOptions, data: DeviceData) -> None:
    """Every reduced-data share can match a full-data run's optimizer steps (else one line,
    before anything trains)."""
    for arch in cfg.architectures:
        for fraction in opts.fractions:
            equal_steps(RunPlan(arch, cfg.train_config(arch)), data, fraction)


def run_report(
    cfg: StudyConfig, opts: ReportOptions, *, echo: Callable[[str], None] | None = None
) -> Report:
    """Train (or reuse) every run, test the claims, write the report, log it to MLflow."""
    say = echo or (lambda line: print(line, file=sys.stderr))
    cfg, tuning_trials = report_settings(cfg, opts)
    opts = opts.resolved(cfg.report)  # seeds, selection seeds, top-k: the option, else the file's
    studies = check_studies(cfg, opts.storage)  # before anything is written anywhere
    out = check_out(opts.out or Path("reports") / cfg.name)
    with hold(out):  # one report at a time into `out`, from before anything trains
        return _run_report(cfg, opts, studies, out, say, tuning_trials)


def _run_report(
    cfg: StudyConfig,
    opts: ReportOptions,
    studies: dict[tuple[str, int], optuna.Study],
    out: Path,
    say: Callable[[str], None],
    tuning_trials: int,
) -> Report:
    """`run_report` from its data on, while this process holds the lock of `out`."""
    device = resolve_device(opts.device)
    data = load_data(
        cfg.data.name,
        root=cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed,
        device=device,
        download=cfg.data.download,
    )
    check_fractions(cfg, opts, data)
    m = claims.claims_per_arch(len(opts.fractions)) * len(cfg.architectures)
    reachable = decision.reachable(
        replicates=cfg.replicates, seeds=opts.count("seeds"), claims=m, alpha=opts.alpha
    )
    if reachable is not None:
        say(f"Before training: {reachable}")
    base_studies = baseline_studies(cfg, opts, studies, say)
    store = RunStore(cfg.name, opts.tracking_uri)
    say(
        f"MLflow: report run {store.parent_id} in experiment {store.experiment!r}, the studies "
        f"in {cfg.name!r} ({mask_secrets(store.uri)})"
    )
    publisher = Publisher(store=store, cfg=cfg, data=data)
    try:
        names = [s.study_name for pair in (studies, base_studies) for s in pair.values()]
        store.link_studies(sorted(names), cfg.path)  # both ways, before anything trains
        archs = [
            ArchRun(
                cfg=cfg,
                opts=opts,
                arch=arch,
                data=data,
                store=store,
                publisher=publisher,
                say=say,
                device=str(device),
                tuning_trials=tuning_trials,
            ).report([(studies[(arch, r)], base_studies[(arch, r)]) for r in range(cfg.replicates)])
            for arch in cfg.architectures
        ]
        first = cfg.train_config(cfg.architectures[0]).seed
        report = Report(
            name=cfg.name,
            path=cfg.path,
            data=cfg.data.name,
            test_size=int(data.test_y.numel()),
            archs=archs,
            seeds=eval_seeds(first, opts.count("seeds")),
            selection_seeds=tuple(
                selection_seeds(first, opts.count("selection_seeds"), r)
                for r in range(cfg.replicates)
            ),
            top_k=opts.count("top_k"),
            alpha=opts.alpha,
            tracking_uri=store.uri,
            parent_run_id=store.parent_id,
            replicates=cfg.replicates,
            tuning_trials=tuning_trials,
            reachable=reachable,
        )
        claims.decide(report.claims, alpha=opts.alpha)
        aliases.follow_verdicts(report, publisher.published, store.client, say, store.uri)
        files = write_report(report, out)
        report.out = out
        tags = {"autoall.seeds": str(opts.count("seeds")), "autoall.out": str(out)}
        tags |= {"autoall.replicates": str(cfg.replicates)}
        tags |= report_tags(publisher.published)
        metrics, verdicts = run_figures(report)
        verdicts |= {f"{a.arch}.conclusion": conclusion(report, a.arch) for a in report.archs}
        for line in store.finish(files, tags=tags | verdicts, metrics=metrics):
            say(f"MLflow: {line} (recorded in the report run's tag autoall.lost_logging)")
    except BaseException as exc:
        store.end_parent("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    return report


def write_report(report: Report, out: Path) -> list[Path]:
    """Write every output into `out`, replacing only autoall's own files there (whole files,
    renamed into place); returns the files written."""
    return write_outputs(out, lambda folder: _write_files(report, folder), kind="report")


def _write_files(report: Report, folder: Path) -> None:
    render_csv.write_csv(report, folder)
    for rep in report.archs:
        plots.draw_all(rep, folder, seeds=len(report.seeds) * report.replicates)
    render.write(report, folder)


def write_atomically(out: Path, fill: Callable[[Path], None]) -> Path:
    """`fill(folder)`'s files (the summary across reports) into `out` as `write_report` writes
    a report's: only autoall's own files there are replaced."""
    write_outputs(out, fill, kind="summary")
    return out.resolve()


__all__ = ["BASELINE_SUFFIX", "ReportError", "ReportOptions", "check_out", "run_report"]
