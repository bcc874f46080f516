"""A study as the MLflow UI shows it: the parent's best-so-far curve, best parameters and trials
table, each trial's best (not last) validation accuracy, MLflow's system metrics, the models of
the best trials, and a terminal without MLflow's INFO lines.

One digits study (mlp, 3 epochs) runs as a user runs it, in a subprocess on a fresh store: 4
trials with `--system-metrics --log-models`, then a rerun to 5 trials without them.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study
from mlflow import MlflowClient

from autoall.config._study_file import load_study_file
from autoall.tracking._tracker import Tracker
from autoall.training._loop import EpochStats


@dataclass
class Ran:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}")

    def study(self) -> optuna.Study:
        return optuna.load_study(
            study_name="t/mlp", storage=f"sqlite:///{self.root / 'autoall.db'}"
        )

    def runs(self) -> dict[str, Any]:
        client = self.client()
        experiment = client.get_experiment_by_name("t").experiment_id
        return {r.info.run_name: r for r in client.search_runs([experiment])}


def _study_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "autoall.cli", "study", "run", "study.yaml", "--no-baseline"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [*command, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    root = tmp_path_factory.mktemp("study-mlflow")
    write_study(root / "study.yaml")
    first = _study_run(root, "--n-trials", "4", "--system-metrics", "--log-models")
    second = _study_run(root, "--n-trials", "5")
    return Ran(root, first, second)


def test_the_terminal_shows_progress_and_no_mlflow_info_lines(ran: Ran) -> None:
    err = ran.first.stderr
    assert "t/mlp " in err and "4/4" in err  # the progress lines
    assert "Creating initial MLflow database tables" not in err
    assert " INFO " not in err and "alembic" not in err.lower(), err[:3000]


def test_the_parent_shows_the_best_so_far_over_finished_trials(ran: Ran) -> None:
    study = ran.study()
    values = [t.values[0] for t in study.trials]  # one worker: they finished in this order
    parent = ran.runs()["t/mlp"]
    history = ran.client().get_metric_history(parent.info.run_id, "best_val_acc")
    by_step = {m.step: m.value for m in history}
    assert sorted(by_step) == [1, 2, 3, 4, 5]
    assert [by_step[k] for k in range(1, 6)] == [max(values[:k]) for k in range(1, 6)]
    ordered = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    assert ordered == sorted(ordered)  # never falls
    assert parent.data.metrics["best_val_acc"] == study.best_value  # what the runs table shows


def test_the_parent_has_the_best_parameters_as_tags_and_the_trials_table(
    ran: Ran, tmp_path: Path
) -> None:
    study = ran.study()
    parent = ran.runs()["t/mlp"]
    tags = parent.data.tags
    assert {k[5:]: v for k, v in tags.items() if k.startswith("best.") and k != "best.trial"} == {
        k: str(v) for k, v in study.best_params.items()
    }
    assert tags["best.trial"] == str(study.best_trial.number)
    path = ran.client().download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]  # rewritten by the second run
    assert [float(r["value"]) for r in rows] == [t.values[0] for t in study.trials]
    assert {r["state"] for r in rows} == {"COMPLETE"}


def test_every_trial_run_shows_its_best_validation_accuracy(ran: Ran) -> None:
    client = ran.client()
    for number in range(5):
        run = ran.runs()[f"t/mlp#{number}"]
        accs = [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert run.data.metrics["best_val_acc"] == max(accs), number


def test_system_metrics_are_logged_when_asked_and_off_on_cpu_by_default(ran: Ran) -> None:
    runs = ran.runs()
    for number in range(4):  # --system-metrics
        metrics = runs[f"t/mlp#{number}"].data.metrics
        assert metrics["system/cpu_utilization_percentage"] >= 0, number
        assert metrics["system/system_memory_usage_megabytes"] > 0, number
    assert not any(k.startswith("system/") for k in runs["t/mlp#4"].data.metrics)


def test_log_models_logs_each_new_best_trial_and_the_model_reproduces_it(ran: Ran) -> None:
    import mlflow.pytorch

    from autoall.training._data import load_data

    study = ran.study()
    values = [t.values[0] for t in study.trials]
    runs = ran.runs()
    new_best = [n for n in range(4) if n == 0 or values[n] > max(values[:n])]
    logged = [n for n in range(5) if "autoall.model_id" in runs[f"t/mlp#{n}"].data.tags]
    assert logged == new_best  # trial 4 ran without --log-models
    number = new_best[-1]
    model_id = runs[f"t/mlp#{number}"].data.tags["autoall.model_id"]
    uri = f"sqlite:///{ran.root / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pytorch.load_model(f"models:/{model_id}")
    cfg = load_study_file(ran.root / "study.yaml").data
    data = load_data("digits", val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    val_acc = (model(data.val_x).argmax(1) == data.val_y).float().mean().item()
    assert abs(val_acc - values[number]) <= 1e-6


@pytest.mark.slow
def test_log_models_with_a_cohort_logs_members_that_reproduce_their_trials(
    tmp_path: Path,
) -> None:
    """A cohort hands out each member as the module it trained: with --cohort 2, every trial
    that became the study's best has a logged model, which scores its trial's accuracy."""
    import mlflow.pytorch

    from autoall.training._data import load_data

    write_study(tmp_path / "study.yaml")
    _study_run(tmp_path, "--n-trials", "4", "--cohort", "2", "--log-models")
    ran = Ran(tmp_path, None, None)  # type: ignore[arg-type]
    values = {t.number: t.values[0] for t in ran.study().trials}
    runs = ran.runs()
    logged = [n for n in sorted(values) if "autoall.model_id" in runs[f"t/mlp#{n}"].data.tags]
    assert logged and max(values[n] for n in logged) == max(values.values())
    cfg = load_study_file(tmp_path / "study.yaml").data
    data = load_data("digits", val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    for number in logged:
        model_id = runs[f"t/mlp#{number}"].data.tags["autoall.model_id"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            model = mlflow.pytorch.load_model(f"models:/{model_id}")
        val_acc = (model(data.val_x).argmax(1) == data.val_y).float().mean().item()
        assert abs(val_acc - values[number]) <= 1e-6, number


def _epoch(epoch: int, val_acc: float) -> EpochStats:
    return EpochStats(epoch, 1.0, 0.0, 0.5, 1.0, val_acc, 0.1, 1e-3, None)


def test_a_pruned_trial_shows_its_best_not_its_last_validation_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns" / "mlflow.db")
    tracker = Tracker.connect(None, experiment="t", retry_wait=0.01)
    parent = tracker.parent_run(study_name="t/mlp", arch="mlp", params={}, tags={})
    run = tracker.start_trial(
        parent_id=parent, trial_number=0, params={}, tags={}, config_yaml="{}"
    )
    for epoch, acc in enumerate((0.5, 0.8, 0.6), start=1):
        run.log_epoch(_epoch(epoch, acc))
    run.finish("PRUNED", epoch=3, reason="pruner at epoch 3")
    found = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(run.run_id)
    assert (found.data.metrics["val_acc"], found.data.metrics["best_val_acc"]) == (0.6, 0.8)
    assert found.info.status == "KILLED"
