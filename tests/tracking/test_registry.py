"""The report's winners in the MLflow Model Registry, loaded back in one call, and the study seen
in the MLflow UI in a real browser.

One tiny digits study (mlp, 3 epochs, 3 trials per study) and three reports over it, built once:

1. a report whose Model Registry cannot be opened (MLFLOW_REGISTRY_URI names a SQLite file under
   a path that is a file, not a folder): it must complete, say why nothing was registered, and
   record it;
2. the same report with the registry back: every run is reused, and the models that the first
   report logged into its runs are registered now, one version per run;
3. once more: nothing new is registered.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _helpers import browse, start_ui
from click.testing import CliRunner
from conftest import free_port, write_study
from mlflow import MlflowClient

import autoall
from autoall.cli._main import main
from autoall.tracking._model_registry import registered_name

NAMES = ("t-mlp-all", "t-mlp-baseline")
VARIANT = {"t-mlp-all": "all", "t-mlp-baseline": "tuned-baseline"}


@dataclass
class Store:
    root: Path
    refused: Any  # the report with no registry
    registered: Any  # the rerun that registers
    again: Any  # the rerun after that
    refused_tags: dict[str, str]  # the report run's tags after the report with no registry
    report_md_refused: str
    rows: list[dict[str, str]]  # results.csv

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def report_run(self) -> Any:
        client = self.client()
        experiment = client.get_experiment_by_name("t report")
        (run,) = client.search_runs([experiment.experiment_id], "tags.\"autoall.role\" = 'report'")
        return run

    def run_of(self, variant: str, seed: int = 1000) -> str:
        (row,) = [r for r in self.rows if r["variant"] == variant and r["seed"] == str(seed)]
        return row["mlflow_run_id"]

    def test_acc(self, variant: str, seed: int = 1000) -> float:
        (row,) = [r for r in self.rows if r["variant"] == variant and r["seed"] == str(seed)]
        return float(row["test_acc"])


def _report() -> Any:
    options = ["--seeds", "2", "--top-k", "1", "--selection-seeds", "1"]
    return CliRunner().invoke(main, ["report", "study.yaml", *options])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy machine
    root = tmp_path_factory.mktemp("registry")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
            write_study(
                root / "study.yaml", train={"epochs": 3}, n_trials=3, report={"tuning_trials": 1}
            )
            ran = CliRunner().invoke(main, ["study", "run", "study.yaml"])
            assert ran.exit_code == 0, ran.output
            mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{root / 'study.yaml' / 'registry.db'}")
            refused = _report()
            assert refused.exit_code == 0, refused.output
            client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
            experiment = client.get_experiment_by_name("t report")
            (parent,) = client.search_runs(
                [experiment.experiment_id], "tags.\"autoall.role\" = 'report'"
            )
            report_md = (root / "reports" / "t" / "report.md").read_text()
            mp.delenv("MLFLOW_REGISTRY_URI")
            registered = _report()
            again = _report()
        with (root / "reports" / "t" / "results.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["role"] == "evaluation"]
    finally:
        torch.set_num_threads(threads)
    return Store(
        root=root,
        refused=refused,
        registered=registered,
        again=again,
        refused_tags=dict(parent.data.tags),
        report_md_refused=report_md,
        rows=rows,
    )


def test_a_registry_that_cannot_be_opened_leaves_the_report_complete_and_says_why(
    store: Store,
) -> None:
    out = store.refused.output
    for name in NAMES:
        line = next(x for x in out.splitlines() if f"was not registered as {name}:" in x)
        assert "registering it failed: FileExistsError" in line and "study.yaml" in line, line
        said = line.split(": ", 1)[1]  # after the "mlp: " of the terminal
        assert f"was not registered as {name}: registering it failed: FileExistsError" in (
            store.report_md_refused
        )  # the report says it too
        assert said in store.refused_tags["autoall.lost_logging"]  # and the report run
    assert "Report: reports/t/report.html" in out
    assert "registered.t-mlp-all" not in store.refused_tags


def test_the_registry_holds_one_version_per_report_run_across_reruns(store: Store) -> None:
    assert store.registered.exit_code == 0 and store.again.exit_code == 0
    assert "registering it failed" not in store.registered.output + store.again.output
    assert store.registered.output.count("(reused)") == len(store.rows)  # nothing retrained
    client = store.client()
    for name in NAMES:
        versions = client.search_model_versions(f"name = '{name}'")
        assert [(str(v.version), v.run_id) for v in versions] == [
            ("1", store.run_of(VARIANT[name]))
        ], name
        for result in (store.registered, store.again):
            assert f"Registered model {name} version 1: " in result.output
    tags = store.report_run().data.tags
    assert (tags["registered.t-mlp-all"], tags["registered.t-mlp-baseline"]) == ("1", "1")
    assert tags["autoall.lost_logging"] == "none"  # the rerun lost nothing


def test_each_version_is_tagged_with_its_trial_params_figures_and_report_run(
    store: Store,
) -> None:
    client = store.client()
    storage = f"sqlite:///{store.root / 'autoall.db'}"
    report_run = store.report_run().info.run_id
    for name, study_name in (("t-mlp-all", "t/mlp"), ("t-mlp-baseline", "t/mlp/tuned-baseline")):
        (version,) = client.search_model_versions(f"name = '{name}'")
        tags = version.tags
        winner = re.search(rf"{name} version 1: trial #(\d+)", store.registered.output)
        assert winner is not None
        trial = optuna.load_study(study_name=study_name, storage=storage).trials[
            int(winner.group(1))
        ]
        assert tags["autoall.trial"] == str(trial.number)
        assert tags["autoall.study"] == study_name
        assert {k[6:]: v for k, v in tags.items() if k.startswith("param.")} == {
            k: str(v) for k, v in trial.params.items()
        }
        assert float(tags["search_val_acc"]) == pytest.approx(trial.values[0])
        run = client.get_run(version.run_id)
        for key in ("test_acc", "test_loss", "final_val_acc", "best_val_acc"):
            assert float(tags[key]) == run.data.metrics[key], key
        assert float(tags["test_acc"]) == store.test_acc(VARIANT[name])
        assert tags["autoall.report_run"] == report_run
        assert tags["data.name"] == "digits" and tags["data.split_seed"] == "0"
        assert run.data.tags["autoall.registered_version"] == "1"
        (output,) = run.outputs.model_outputs  # MLflow 3's logged model, an output of the run
        assert version.source == f"models:/{output.model_id}"
        assert run.data.tags["autoall.model_id"] == output.model_id


def test_the_report_run_holds_the_headline_figures_and_report_html(store: Store) -> None:
    run = store.report_run()
    metrics = run.data.metrics
    for variant in ("all", "tuned-baseline"):
        accs = [float(r["test_acc"]) for r in store.rows if r["variant"] == variant]
        assert metrics[f"mlp.{variant}.test_acc_mean"] == pytest.approx(sum(accs) / len(accs))
    with (store.root / "reports" / "t" / "claims.csv").open() as f:
        (accuracy,) = [c for c in csv.DictReader(f) if c["claim"] == "accuracy"]
    assert metrics["mlp.accuracy.effect"] == pytest.approx(float(accuracy["effect"]))
    if accuracy["adjusted_p"]:  # Holm's p, for a claim the data could test
        assert metrics["mlp.accuracy.holm_p"] == pytest.approx(float(accuracy["adjusted_p"]))
    else:
        assert "mlp.accuracy.holm_p" not in metrics
    artifacts = {a.path for a in store.client().list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "results.csv"} <= artifacts


_FRESH = """
import json, sys
import mlflow.pytorch
import autoall
from autoall.training._data import load_data

name = sys.argv[1]
model = mlflow.pytorch.load_model(f"models:/{name}/latest")
data = load_data("digits", val_fraction=0.1, split_seed=0)
plain = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
best = autoall.load_best(name)
print(json.dumps({"plain": plain, "best": best.accuracy(), "version": best.version,
                  "test_acc": best.tags["test_acc"], "numbers": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("name", NAMES)
def test_a_fresh_process_loads_the_registered_model_and_reproduces_its_test_accuracy(
    store: Store, name: str
) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    env.pop("MLFLOW_REGISTRY_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, name],
        cwd=store.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    reported = store.test_acc(VARIANT[name])
    assert abs(found["plain"] - reported) <= 1e-6, (found, reported)
    assert abs(found["best"] - reported) <= 1e-6, (found, reported)
    assert found["version"] == "1" and float(found["test_acc"]) == reported


def test_load_best_of_an_unknown_name_names_what_is_registered(store: Store) -> None:
    with pytest.raises(
        ValueError, match=r"No registered model 't-mlp-al' .*t-mlp, t-mlp-all, t-mlp-baseline"
    ):
        autoall.load_best("t-mlp-al", tracking_uri=store.uri)
    with pytest.raises(ValueError, match=r"'t-mlp-all' has no version '7'; it has 1"):
        autoall.load_best("t-mlp-all", tracking_uri=store.uri, version="7")


def test_a_model_is_logged_into_this_folder_s_store_after_another_folder_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    """MLflow keeps one store per tracking URI in a process: the default, relative
    sqlite:///mlruns/mlflow.db used first in one folder must not send a later folder's model to
    the first folder's database (a second report in one process failed with "Run not found")."""
    import numpy as np
    from torch import nn

    from autoall.tracking._model_registry import ServingModel, log_model

    relative = "sqlite:///mlruns/mlflow.db"
    for folder in ("first", "second"):
        (tmp_path / folder / "mlruns").mkdir(parents=True)
        shutil.copyfile(empty_store, tmp_path / folder / "mlruns" / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path / "first")
    MlflowClient(relative).search_experiments()  # MLflow now holds a store for that URI
    monkeypatch.chdir(tmp_path / "second")
    client = MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlruns' / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("second"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model = ServingModel(net, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    example = np.zeros((2, 1, 2, 2), dtype=np.uint8)

    logged = log_model(relative, run.info.run_id, model, example=example, num_classes=3)

    assert client.get_logged_model(logged.model_id).source_run_id == run.info.run_id


def test_registered_names_follow_the_study_file_name() -> None:
    assert registered_name("digits", "mlp", "all") == "digits-mlp-all"
    assert (
        registered_name("digits", "pkg.mod:factory", "baseline")
        == "digits-pkg.mod-factory-baseline"
    )
    with pytest.raises(ValueError, match="kind must be one of all, baseline, but got 'x'"):
        registered_name("digits", "mlp", "x")


def test_importing_autoall_loads_neither_torch_nor_mlflow() -> None:
    code = "import sys, autoall; autoall.load_best; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


# -- the MLflow UI in a real browser ---------------------------------------------------------


def _artifacts_folder() -> Path:
    """Where CI keeps screenshots: $AUTOALL_TEST_ARTIFACTS, else ./test-artifacts."""
    folder = Path(os.environ.get("AUTOALL_TEST_ARTIFACTS") or Path.cwd() / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_parent_runs_and_the_registered_model_in_chromium(
    store: Store, tmp_path: Path
) -> None:
    keep = _artifacts_folder()
    port = free_port()
    proc = start_ui(store.root, port)
    base = f"http://127.0.0.1:{port}"
    try:
        experiment = store.client().get_experiment_by_name("t").experiment_id
        runs = browse(
            f"{base}/#/experiments/{experiment}/runs",
            tmp_path / "profile",
            screenshot=tmp_path / "mlflow-runs.png",
        )
        model = browse(
            f"{base}/#/models/t-mlp-all",
            tmp_path / "profile",
            screenshot=tmp_path / "mlflow-model.png",
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: autoall ui stops the server and its children
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    for png in ("mlflow-runs.png", "mlflow-model.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png  # a rendered page, not a blank one
        shutil.copy(tmp_path / png, keep / png)
    # the experiment's parent runs: one per study (the report's are experiment "t report")
    for name in ("t/mlp", "t/mlp/tuned-baseline"):
        assert f">{name}<" in runs, f"{name} not in the runs table"
    assert "Training runs" in runs
    # the registered model's page, with its one version
    assert "t-mlp-all" in model and "Version 1" in model, model[:2000]
    assert "t-mlp-all/versions/1" in model
    assert "Creating initial MLflow database tables" not in out
