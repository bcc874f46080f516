"""`autoall report`: the study's best ALL against hand-tuned baselines, over seeds (DESIGN 6).

Per architecture and seed s = 0..K-1 (`seed_everything(s)` before the model is built; s also
orders the batches) each variant trains on the train split and is evaluated once on test:

    baseline        the hand-tuned settings (autoall/baselines.py), no ALL
    all             the study's best COMPLETE trial (highest first objective)
    ablation        that ALL with aux_weight = 0 (the adapter without its custom loss)
    tuned-baseline  (--tuned-baseline) the baseline with lr and weight_decay tuned by Optuna in
                    `<name>/<arch>/tuned-baseline`, as many trials as the ALL study holds

Every run is an MLflow child of one report parent run (tag `autoall.report` = name). A FINISHED
child with the same arch, variant, seed and `config_hash` is read back instead of retrained, so
a rerun costs nothing and an interrupted report continues where it stopped. The outputs are
written to a temporary folder next to the out dir and moved into place at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoall import plots, render
from autoall.config import StudyConfig, StudyFileError, load_study_file
from autoall.data import DeviceData, load_data
from autoall.layer import ALLSpec
from autoall.models import build_model
from autoall.stats import mean_std, time_to_target
from autoall.study import DEFAULT_STORAGE, count_trials, make_pruner, make_sampler, make_storage
from autoall.summary import best_trial
from autoall.tracking import Tracker, client_uri, final_metrics, flatten
from autoall.train import (
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    resolve_device,
    seed_everything,
    train,
)

VARIANTS: tuple[str, ...] = ("baseline", "all", "ablation", "tuned-baseline")
LABELS: dict[str, str] = {
    "baseline": "baseline",
    "all": "ALL",
    "ablation": "ablation (aux_weight=0)",
    "tuned-baseline": "tuned baseline",
}
TARGET_MARGIN = 0.005  # default target: the baseline's mean test accuracy minus half a point
FINAL_METRICS: tuple[str, ...] = (
    "test_acc", "final_val_acc", "train_eval_acc", "wall_seconds", "median_epoch_seconds",
    "params_total", "params_all",
)  # fmt: skip
CSV_COLUMNS: tuple[str, ...] = (
    "arch", "variant", "seed", "test_acc", "final_val_acc", "train_eval_acc", "gap",
    "median_epoch_seconds", "wall_seconds", "target_epoch", "target_seconds",
    "params_total", "params_all", "mlflow_run_id",
)  # fmt: skip
_BATCH = 1000  # mlflow.utils.validation.MAX_ENTITIES_PER_BATCH
_OUTPUTS = frozenset({".md", ".html", ".csv", ".png"})  # what a report folder holds


class ReportError(RuntimeError):
    """A report cannot start: a missing study file or study, or one without COMPLETE trials."""


@dataclass(frozen=True)
class ReportOptions:
    seeds: int = 5  # K: runs per variant, seeds 0..K-1
    tuned_baseline: bool = False
    target_acc: float | None = None  # None: the baseline's mean test accuracy - TARGET_MARGIN
    out: Path | None = None  # None: reports/<name>
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    device: str | None = None  # None: cuda, then mps, then cpu


@dataclass(frozen=True)
class Variant:
    name: str  # one of VARIANTS
    train: TrainConfig  # each run replaces seed and sets evaluate_test
    spec: ALLSpec | None
    note: str  # where the settings come from, for the report

    @property
    def label(self) -> str:
        return LABELS[self.name]


@dataclass
class RunRecord:
    """One (arch, variant, seed) run as the report uses it, trained now or read from MLflow."""

    arch: str
    variant: str
    seed: int
    run_id: str
    metrics: dict[str, float]  # FINAL_METRICS
    val_acc: list[float]  # per epoch
    epoch_seconds: list[float]  # per epoch
    reused: bool
    target_epoch: int | None = None  # post hoc, once the target is known
    target_seconds: float | None = None

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "arch": self.arch,
            "variant": self.variant,
            "seed": self.seed,
            **{k: int(m[k]) if k.startswith("params_") else m[k] for k in FINAL_METRICS},
            "gap": m["train_eval_acc"] - m["test_acc"],
            "target_epoch": self.target_epoch,
            "target_seconds": self.target_seconds,
            "mlflow_run_id": self.run_id,
        }


@dataclass
class ArchReport:
    """Everything the report says about one architecture."""

    arch: str
    study: optuna.Study
    best: FrozenTrial
    variants: list[Variant]
    runs: list[RunRecord] = field(default_factory=list)
    target_acc: float = 0.0
    target_source: str = ""
    tuned_study: optuna.Study | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    notes: list[str] = field(default_factory=list)  # e.g. a plot that was skipped, and why

    def runs_of(self, variant: str) -> list[RunRecord]:
        return sorted((r for r in self.runs if r.variant == variant), key=lambda r: r.seed)


@dataclass
class Report:
    cfg: StudyConfig
    opts: ReportOptions
    archs: list[ArchReport]
    tracking_uri: str
    parent_run_id: str


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
    """Each architecture's study; a missing one, or one without COMPLETE trials, is a ReportError.

    Only reads: a SQLite storage file that does not exist is reported, not created.
    """
    fix = f"run `autoall study run {cfg.path}` first, or pass the --storage it used"
    db = storage.removeprefix("sqlite:///")
    if storage.startswith("sqlite:///") and db != ":memory:" and not Path(db).is_file():
        raise ReportError(f"No Optuna storage at {storage} (no file {db}); {fix}.")
    rdb = make_storage(storage)
    names = set(optuna.get_all_study_names(storage=rdb))
    studies = {}
    for arch in cfg.architectures:
        name = cfg.study_name(arch)
        if name not in names:
            there = ", ".join(sorted(names)) or "none"
            raise ReportError(f"No study {name!r} in {storage} (studies there: {there}); {fix}.")
        study = optuna.load_study(study_name=name, storage=rdb)
        c = count_trials(study.get_trials(deepcopy=False))
        if c.complete == 0:
            raise ReportError(
                f"Study {name!r} in {storage} has no COMPLETE trial ({c.pruned} pruned, "
                f"{c.failed} failed, {c.running} running); {fix}."
            )
        studies[arch] = study
    return studies


def run_report(
    cfg: StudyConfig, opts: ReportOptions, *, echo: Callable[[str], None] | None = None
) -> Path:
    """Train (or reuse) every run, write the report, log it to MLflow; return its folder."""
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
    store = _RunStore(cfg.name, opts.tracking_uri)
    say(f"MLflow: experiment {cfg.name!r}, report run {store.parent_id} ({store.uri})")
    try:
        archs = [
            _report_arch(cfg, opts, a, studies[a], data, store, say) for a in cfg.architectures
        ]
        report = Report(cfg, opts, archs, tracking_uri=store.uri, parent_run_id=store.parent_id)
        write_report(report, out)
        store.finish(out, seeds=opts.seeds)
    except BaseException as exc:
        store.end_parent("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    return out


def _report_arch(
    cfg: StudyConfig,
    opts: ReportOptions,
    arch: str,
    study: optuna.Study,
    data: DeviceData,
    store: _RunStore,
    say: Callable[[str], None],
) -> ArchReport:
    best = best_trial(study.get_trials(deepcopy=False))
    assert best is not None  # check_studies saw a COMPLETE trial
    device = resolve_device(opts.device)
    base = replace(cfg.train_config(arch), device=str(device))
    p = best.params
    spec = ALLSpec(
        hidden_size=p["hidden_size"],
        aux_loss=p["aux_loss"],
        aux_weight=p["aux_weight"],
        activation=cfg.activation,
    )
    knobs = ", ".join(f"{k}={_fmt(v)}" for k, v in p.items())
    with_all = replace(base, all_lr=p["all_lr"])
    variants = [
        Variant("baseline", base, None, "hand-tuned settings, no ALL"),
        Variant("all", with_all, spec, f"best trial #{best.number} ({knobs})"),
        Variant("ablation", with_all, replace(spec, aux_weight=0.0), "the same ALL, aux_weight=0"),
    ]
    rep = ArchReport(arch=arch, study=study, best=best, variants=variants)
    if opts.tuned_baseline:
        budget = count_trials(study.get_trials(deepcopy=False)).done
        say(f"{arch}: tuning the baseline's lr and weight_decay ({budget} trials, equal budget)")
        no_test = replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])
        rep.tuned_study = tune_baseline(
            cfg, arch, base, budget=budget, data=no_test, storage=opts.storage
        )
        tuned = best_trial(rep.tuned_study.get_trials(deepcopy=False))
        if tuned is None:
            raise ReportError(f"{rep.tuned_study.study_name}: every trial was pruned or failed.")
        lr, wd = tuned.params["lr"], tuned.params["weight_decay"]
        note = f"best of {budget} trials: lr={_fmt(lr)}, weight_decay={_fmt(wd)}, no ALL"
        variants.append(
            Variant("tuned-baseline", replace(base, lr=lr, weight_decay=wd), None, note)
        )
    for variant in variants:
        for seed in range(opts.seeds):
            run = store.get_or_train(arch, variant, seed, _settings(cfg, arch, variant, seed), data)
            reused = " (reused)" if run.reused else ""
            say(
                f"{arch} {variant.name} seed {seed}: test_acc {run.metrics['test_acc']:.4f}{reused}"
            )
            rep.runs.append(run)
    _set_target(rep, opts.target_acc)
    return rep


def tune_baseline(
    cfg: StudyConfig, arch: str, base: TrainConfig, *, budget: int, data: DeviceData, storage: str
) -> optuna.Study:
    """Search the baseline's lr (log, lr/10..10 lr) and weight_decay (log, 1e-6..1e-2).

    The study file's sampler (random in place of grid, whose grid is the ALL knobs) and pruner;
    final validation accuracy is maximised; resumes until COMPLETE + PRUNED reaches `budget`.
    """
    rdb = make_storage(storage)
    name = f"{cfg.study_name(arch)}/tuned-baseline"
    study = optuna.create_study(
        study_name=name, storage=rdb, direction="maximize", load_if_exists=True
    )
    remaining = budget - count_trials(study.get_trials(deepcopy=False)).done
    if remaining <= 0:
        return study
    sampler = (
        optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
        if cfg.sampler.name == "grid"
        else make_sampler(cfg, seed_offset=len(study.trials))
    )
    study = optuna.load_study(
        study_name=name, storage=rdb, sampler=sampler, pruner=make_pruner(cfg)
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", base.lr / 10, base.lr * 10, log=True)
        wd = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        seed_everything(base.seed)
        model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes)

        def on_epoch(stats: Any) -> None:
            trial.report(stats.val_acc, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")

        try:
            result = train(model, data, replace(base, lr=lr, weight_decay=wd), on_epoch=on_epoch)
        except NonFiniteLossError as exc:
            raise optuna.TrialPruned(str(exc)) from None
        return result.final_val_acc

    study.optimize(objective, n_trials=remaining, gc_after_trial=False)
    return study


def _settings(cfg: StudyConfig, arch: str, variant: Variant, seed: int) -> dict[str, Any]:
    """Everything that determines one run: its MLflow params, and its hash decides reuse."""
    device = resolve_device(variant.train.device).type  # cuda:0 and cuda:1 give the same runs
    train_cfg = replace(variant.train, seed=seed, evaluate_test=True, device=device)
    data = asdict(cfg.data)
    return {
        "arch": arch,
        "variant": variant.name,
        "seed": seed,
        "data": {k: data[k] for k in ("name", "val_fraction", "split_seed")},
        "all": asdict(variant.spec) if variant.spec else None,
        "train": asdict(train_cfg),
    }


def config_hash(settings: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _RunStore:
    """The report's parent run and its children: find a finished run, or train and log one."""

    def __init__(self, name: str, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        # Tracker.connect checks that the store answers and gets or creates the experiment
        tracker = Tracker.connect(tracking_uri, experiment=name)
        self.uri, self.name, self.experiment_id = tracker.uri, name, tracker.experiment_id
        self.client = MlflowClient(client_uri(tracker.uri))
        report = f"tags.\"autoall.report\" = '{name}' and tags.\"autoall.role\" = 'report'"
        parents = self._search(report)
        if parents:
            self.parent_id = min(
                parents, key=lambda r: (r.info.start_time, r.info.run_id)
            ).info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            tags = {"autoall.report": name, "autoall.role": "report"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{name} report")
            self.parent_id = run.info.run_id
        self.children: dict[tuple[str, str, str, str], list[Any]] = {}
        for run in self._search(f"tags.\"mlflow.parentRunId\" = '{self.parent_id}'"):
            t = run.data.tags
            key = (
                t.get("arch", ""),
                t.get("variant", ""),
                t.get("seed", ""),
                t.get("config_hash", ""),
            )
            self.children.setdefault(key, []).append(run)

    def _search(self, filter_string: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def get_or_train(
        self, arch: str, variant: Variant, seed: int, settings: dict[str, Any], data: DeviceData
    ) -> RunRecord:
        chash = config_hash(settings)
        earlier = self.children.get((arch, variant.name, str(seed), chash), [])
        for run in earlier:
            if run.info.status == "FINISHED" and set(FINAL_METRICS) <= set(run.data.metrics):
                return self._read(arch, variant.name, seed, run)
        for run in earlier:  # left RUNNING by a report that was killed
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        tags = {"mlflow.parentRunId": self.parent_id, "autoall.report": self.name}
        tags |= {"autoall.role": "report-run", "arch": arch, "variant": variant.name}
        tags |= {"seed": str(seed), "config_hash": chash}
        run_id = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"{arch}/{variant.name}/seed{seed}"
        ).info.run_id
        try:
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in flatten(settings).items()]
            self.client.log_batch(run_id, params=params[:100], synchronous=True)
            seed_everything(seed)
            model = build_model(
                arch, in_shape=data.in_shape, num_classes=data.num_classes, all_spec=variant.spec
            )
            tcfg = replace(variant.train, seed=seed, evaluate_test=True)
            result = train(model, data, tcfg)
            self._log_result(run_id, result)
            self.client.set_terminated(run_id, "FINISHED")
        except BaseException as exc:
            self.client.set_terminated(
                run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            )
            raise
        return RunRecord(
            arch=arch,
            variant=variant.name,
            seed=seed,
            run_id=run_id,
            metrics={k: float(v) for k, v in final_metrics(result).items() if k in FINAL_METRICS},
            val_acc=[s.val_acc for s in result.history],
            epoch_seconds=[s.epoch_seconds for s in result.history],
            reused=False,
        )

    def _log_result(self, run_id: str, result: RunResult) -> None:
        """Per-epoch metrics (step = epoch) and the final ones, in batches of 1000."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, v, now, s.epoch) for s in result.history for k, v in s.metrics().items()
        ]
        final = final_metrics(result)
        metrics += [Metric(k, float(v), now, result.epochs_run) for k, v in final.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH], synchronous=True)

    def _read(self, arch: str, variant: str, seed: int, run: Any) -> RunRecord:
        """A finished run read back: its final metrics and per-epoch history, nothing retrained."""
        run_id = run.info.run_id

        def history(key: str) -> list[float]:
            points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
            return [m.value for m in points]

        return RunRecord(
            arch=arch,
            variant=variant,
            seed=seed,
            run_id=run_id,
            metrics={k: float(run.data.metrics[k]) for k in FINAL_METRICS},
            val_acc=history("val_acc"),
            epoch_seconds=history("epoch_seconds"),
            reused=True,
        )

    def finish(self, out: Path, *, seeds: int) -> None:
        """Every output file becomes an artifact of the parent run, which ends FINISHED."""
        self.client.set_tag(self.parent_id, "autoall.seeds", str(seeds))
        self.client.set_tag(self.parent_id, "autoall.out", str(out))
        self.client.log_artifacts(self.parent_id, str(out))
        self.end_parent("FINISHED")

    def end_parent(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status)


def _set_target(rep: ArchReport, target: float | None) -> None:
    """The target accuracy, then each run's epochs and seconds to it, post hoc from its history."""
    if target is None:
        base_mean, _ = mean_std([r.metrics["test_acc"] for r in rep.runs_of("baseline")])
        target = base_mean - TARGET_MARGIN
        rep.target_source = "the baseline's mean test accuracy minus 0.5 point"
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
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the report is meant to be read
    try:
        write_csv(report, tmp / "results.csv")
        for rep in report.archs:
            plots.draw_all(rep, tmp, seeds=report.opts.seeds)
        render.write(report, tmp)
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


def write_csv(report: Report, path: Path) -> None:
    """results.csv: one row per run; floats at full precision, so they equal the MLflow metrics."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for rep in report.archs:
            for variant in rep.variants:
                for run in rep.runs_of(variant.name):
                    writer.writerow(run.row())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
