"""`autoall report`: the tuned ALL against an equal-budget tuned baseline, paired, over seeds.

Per architecture (DESIGN section 6):

1. The ALL study `<name>/<arch>` and its tuned baseline `<name>/<arch>/tuned-baseline` (the
   plain network's lr and weight_decay, searched with the same sampler, pruner, trial count and
   epochs) are read; the baseline study is run first when it is missing or has fewer finished
   trials than the ALL study. Both are judged on their first `budget` finished trials.
2. Each study's winner is picked on validation only (autoall/selection.py).
3. Every variant (the winners, the hand-set baseline, the controls, the reduced-data runs;
   autoall/report_variants.py) trains on the train split with each evaluation seed and is
   evaluated once on the test split.
   Seed s gives every variant the same initialisation of the shared parts and the same batch
   order (autoall/plan.py), so the runs are paired.
4. The article's claims are tested on the paired runs, Holm-corrected over the whole report
   (autoall/claims.py, autoall/stats.py), and written as report.md, report.html, results.csv
   and figures.

The first evaluation seed's runs of the two winners also log their models and register them
as `<name>-<arch>-all` and `<name>-<arch>-baseline` (autoall/report_models.py).

Seeds: the search used the study file's `train.seed` (s0); evaluation seeds are s0 + 1000 + i
and selection seeds s0 + 2000 + j, so none of them is the search seed. Every run is an MLflow
child of one report run and is reused when nothing that determines it changed
(autoall/report_store.py). Outputs are written to a temporary folder and moved into place.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from autoall import claims, plots, render
from autoall.config import BASELINE_SUFFIX, StudyConfig, StudyFileError, load_study_file
from autoall.data import DeviceData, load_data
from autoall.errors import UserError
from autoall.options import ReportOptions, RunOptions
from autoall.report_models import PUBLISHED, Publisher, report_tags
from autoall.report_store import RunStore, headline
from autoall.report_types import ArchReport, Report, RunRecord, Selection
from autoall.report_variants import arch_variants
from autoall.selection import finished_trials, select
from autoall.stats import time_to_target
from autoall.storage import make_storage
from autoall.study import count_trials
from autoall.train import resolve_device
from autoall.urls import mask_secrets, sqlite_file

EVAL_SEED_OFFSET = 1000  # evaluation seed i is search seed + 1000 + i
SELECTION_SEED_OFFSET = 2000  # selection seed j is search seed + 2000 + j
TARGET_FRACTION = 0.99  # efficiency target: 99 % of the weaker winner's mean selection val acc
_OUTPUTS = frozenset({".md", ".html", ".csv", ".png"})  # what a report folder holds


class ReportError(UserError, RuntimeError):
    """A report cannot start: a missing study file or study, or one without COMPLETE trials."""


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


def check_studies(cfg: StudyConfig, storage: str) -> dict[str, optuna.Study]:
    """Each architecture's ALL study; a missing one, or one without COMPLETE trials, is a
    ReportError. Only reads: a SQLite storage file that does not exist is reported, not created.
    """
    fix = f"run `autoall study run {cfg.path}` first, or pass the --storage it used"
    db = sqlite_file(storage)
    shown = mask_secrets(storage)
    if db is not None and not db.is_file():
        raise ReportError(f"No Optuna storage at {shown} (no file {db}); {fix}.")
    rdb = make_storage(storage, create=False)
    names = set(optuna.get_all_study_names(storage=rdb))
    studies = {}
    for arch in cfg.architectures:
        name = cfg.study_name(arch)
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
        studies[arch] = study
    return studies


def baseline_studies(
    cfg: StudyConfig,
    opts: ReportOptions,
    studies: dict[str, optuna.Study],
    say: Callable[[str], None],
) -> dict[str, optuna.Study]:
    """Each architecture's tuned-baseline study with at least as many finished trials as its ALL
    study: run (resumed) here, or, with `run_baseline=False`, a ReportError with the command."""
    rdb = make_storage(opts.storage)
    names = set(optuna.get_all_study_names(storage=rdb))
    out = {}
    for arch, study in studies.items():
        name = cfg.study_name(arch, "baseline")
        need = count_trials(study.get_trials(deepcopy=False)).done
        have = 0
        if name in names:
            have = count_trials(optuna.load_study(study_name=name, storage=rdb).trials).done
        if have < need:
            command = f"autoall study run {cfg.path} --architectures {arch} --n-trials {need}"
            if not opts.run_baseline:
                raise ReportError(
                    f"The tuned-baseline study {name!r} holds {have} finished trials, the ALL "
                    f"study {need}; equal budgets are needed: run `{command}` (it runs only the "
                    "missing baseline trials) or drop --no-run-baseline."
                )
            say(f"{name}: {have} of {need} trials; running the rest (equal budget), as `{command}`")
            _run_baseline_study(cfg, arch, need, opts)
        out[arch] = optuna.load_study(study_name=name, storage=rdb)
    return out


def _run_baseline_study(cfg: StudyConfig, arch: str, n_trials: int, opts: ReportOptions) -> None:
    from autoall.workers import run_study

    run_study(
        cfg.with_architectures([arch]),
        RunOptions(
            storage=opts.storage,
            n_trials=n_trials,
            device=opts.device,
            tracking_uri=opts.tracking_uri,
            kinds=("baseline",),
        ),
    )


def run_report(
    cfg: StudyConfig, opts: ReportOptions, *, echo: Callable[[str], None] | None = None
) -> Report:
    """Train (or reuse) every run, test the claims, write the report, log it to MLflow."""
    say = echo or (lambda line: print(line, file=sys.stderr))
    studies = check_studies(cfg, opts.storage)  # before anything is written anywhere
    out = check_out(opts.out or Path("reports") / cfg.name)
    device = resolve_device(opts.device)
    data = load_data(
        cfg.data.name,
        root=cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed,
        device=device,
        download=cfg.data.download,
    )
    base_studies = baseline_studies(cfg, opts, studies, say)
    store = RunStore(cfg.name, opts.tracking_uri)
    say(
        f"MLflow: experiment {cfg.name!r}, report run {store.parent_id} ({mask_secrets(store.uri)})"
    )
    publisher = Publisher(store=store, cfg=cfg, data=data)
    try:
        archs = [
            _report_arch(
                cfg, opts, arch, studies[arch], base_studies[arch], data, store, say, publisher
            )
            for arch in cfg.architectures
        ]
        first = cfg.train_config(cfg.architectures[0]).seed
        report = Report(
            name=cfg.name,
            path=cfg.path,
            data=cfg.data.name,
            test_size=int(data.test_y.numel()),
            archs=archs,
            seeds=eval_seeds(first, opts.seeds),
            selection_seeds=selection_seeds(first, opts.selection_seeds),
            top_k=opts.top_k,
            alpha=opts.alpha,
            tracking_uri=store.uri,
            parent_run_id=store.parent_id,
        )
        claims.decide(report.claims, alpha=opts.alpha)
        write_report(report, out)
        report.out = out
        tags = {"autoall.seeds": str(opts.seeds), "autoall.out": str(out)}
        tags |= report_tags(publisher.published)
        store.finish(out, tags=tags, metrics=headline(report))
    except BaseException as exc:
        store.end_parent("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    return report


def eval_seeds(search_seed: int, k: int) -> tuple[int, ...]:
    return tuple(search_seed + EVAL_SEED_OFFSET + i for i in range(k))


def selection_seeds(search_seed: int, k: int) -> tuple[int, ...]:
    return tuple(search_seed + SELECTION_SEED_OFFSET + j for j in range(k))


def _report_arch(
    cfg: StudyConfig,
    opts: ReportOptions,
    arch: str,
    study: optuna.Study,
    base_study: optuna.Study,
    data: DeviceData,
    store: RunStore,
    say: Callable[[str], None],
    publisher: Publisher,
) -> ArchReport:
    device = str(resolve_device(opts.device))
    split = {k: getattr(cfg.data, k) for k in ("name", "val_fraction", "split_seed")}
    budget = min(len(finished_trials(study)), len(finished_trials(base_study)))
    search_seed = cfg.train_config(arch).seed
    no_test = replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])
    picked: dict[str, Selection] = {}
    selection_runs: list[RunRecord] = []

    def pick(
        key: str,
        kind: str,
        source: optuna.Study,
        *,
        accept: Callable[[Mapping[str, Any]], bool] | None = None,
        label: str = "",
    ) -> Selection | None:
        found = select(
            cfg,
            arch,
            kind,
            source,
            budget=budget,
            k=opts.top_k,
            seeds=selection_seeds(search_seed, opts.selection_seeds),
            data=no_test,
            store=store,
            split=split,
            device=device,
            accept=accept,
            label=label,
            cohort=opts.cohorts,
        )
        if found is not None:
            picked[key], runs = found
            selection_runs.extend(runs)
            w = picked[key].winner
            say(
                f"{arch}: {key} winner trial #{w.trial} (val acc {w.mean_val_acc:.4f} over "
                f"{len(w.val_acc)} selection seeds, {len(picked[key].ranked)} candidates)"
            )
            return picked[key]
        return None

    chosen_all = pick("all", "all", study)
    chosen_base = pick("baseline", "baseline", base_study)
    if chosen_all is None or chosen_base is None:
        raise ReportError(f"{arch}: a study has no COMPLETE trial within its first {budget}.")
    custom: Selection | None = chosen_all
    if chosen_all.winner.params.get("aux_loss") == "none":
        custom = pick(
            "custom",
            "all",
            study,
            accept=lambda p: p.get("aux_loss") != "none",
            label="custom-loss",
        )
    variants, notes = arch_variants(
        cfg, arch, picked, device=device, data=data, fractions=opts.fractions
    )
    rep = ArchReport(
        arch=arch,
        all_study=study,
        baseline_study=base_study,
        selections=picked,
        variants=variants,
        selection_runs=selection_runs,
        notes=notes,
    )
    if budget < count_trials(study.get_trials(deepcopy=False)).done:
        rep.notes.append(
            f"{study.study_name} holds more finished trials than its tuned baseline; both are "
            f"judged on their first {budget}."
        )
    if custom is None:
        rep.notes.append(
            "No trial of the ALL study used a custom loss (aux_loss other than none): "
            "the custom-loss claim cannot be tested."
        )
    rep.notes += [n for s in picked.values() for n in s.notes]
    rep.notes += claims.budget_notes(study, base_study)
    seeds = eval_seeds(search_seed, opts.seeds)
    for variant in variants:
        plans = [variant.plan.with_seed(seed) for seed in seeds]
        # the first seed's run of each winner carries its model into the Model Registry; it
        # trains alone (a cohort's members are not modules), the other seeds as one cohort
        chosen = picked[PUBLISHED[variant.name]] if variant.name in PUBLISHED else None
        first = []
        if chosen is not None:
            hook = publisher.hook(arch, variant.name, chosen)
            first = [
                store.get_or_train(
                    variant.name, plans[0], data, split=split, evaluate_test=True, on_trained=hook
                )
            ]
        runs = first + store.get_or_train_seeds(
            variant.name, plans[len(first) :], data, split=split, evaluate_test=True,
            cohort=opts.cohorts,
        )  # fmt: skip
        for seed, run in zip(seeds, runs, strict=True):
            reused = " (reused)" if run.reused else ""
            say(
                f"{arch} {variant.name} seed {seed}: test_acc {run.metrics['test_acc']:.4f}{reused}"
            )
            rep.runs.append(run)
            if chosen is not None and seed == seeds[0]:  # the run that carries the model
                published = publisher.settle(arch, variant.name, chosen, run)
                say(f"{arch}: {published.line()}")
                rep.notes.append(published.line())
    _set_target(rep, opts.target_acc)
    rep.tuning = claims.tuning_cost(study, base_study, budget)
    rep.claims = claims.arch_claims(rep, test_y=data.test_y.cpu().numpy())
    return rep


def _set_target(rep: ArchReport, target: float | None) -> None:
    """The efficiency target (validation, never test), then each run's epochs and seconds to it."""
    if target is None:
        weaker = min(rep.selections["all"].winner, rep.selections["baseline"].winner,
                     key=lambda c: c.mean_val_acc)  # fmt: skip
        target = TARGET_FRACTION * weaker.mean_val_acc
        rep.target_source = (
            f"{100 * TARGET_FRACTION:g} % of the weaker winner's mean final validation accuracy "
            "on the selection seeds"
        )
    else:
        rep.target_source = "--target-acc"
    rep.target_acc = target
    for run in rep.runs:
        run.target_epoch, run.target_seconds = time_to_target(
            run.val_acc, run.epoch_seconds, target
        )


def check_out(out: Path) -> Path:
    """`out`, absolute; it is replaced as a whole, so an existing one must hold only a report."""
    out = out.resolve()
    if out.exists() and (
        not out.is_dir() or any(p.is_dir() or p.suffix not in _OUTPUTS for p in out.iterdir())
    ):
        raise ReportError(
            f"{out} exists and is not a report folder (it holds more than "
            f"{', '.join(sorted(_OUTPUTS))} files), and the report replaces its folder as a "
            "whole; pass another --out."
        )
    return out


def write_report(report: Report, out: Path) -> Path:
    """Write every output into a temporary folder next to `out`, then move it into place."""
    return write_atomically(out, lambda tmp: _write_files(report, tmp))


def _write_files(report: Report, folder: Path) -> None:
    render.write_csv(report, folder)
    for rep in report.archs:
        plots.draw_all(rep, folder, seeds=len(report.seeds))
    render.write(report, folder)


def write_atomically(out: Path, fill: Callable[[Path], None]) -> Path:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the report is meant to be read
    try:
        fill(tmp)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["BASELINE_SUFFIX", "ReportError", "ReportOptions", "run_report"]
