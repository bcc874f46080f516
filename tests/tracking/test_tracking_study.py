"""`autoall study run` with MLflow tracking on: the run tree a user sees in the MLflow UI.

End to end through the CLI (click's CliRunner, in the test's working directory): one parent run
per (study, architecture), one child per Optuna trial whose status mirrors the trial's state,
per-epoch metrics, params, artifacts and the links both ways; workers and resumes attach to the
same parent; a real `mlflow server` over HTTP; a tracking server that is down.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from _helpers import write_diverging_study
from click.testing import CliRunner
from conftest import MlflowServer, free_port, write_study
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import FrozenTrial, TrialState

import autoall.study._trials
import autoall.training._plan
from autoall.cli._main import main
from autoall.training._loop import TrainConfig

STORAGE = "sqlite:///autoall.db"
EPOCH_METRICS = (
    "train_loss",
    "aux_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epoch_seconds",
    "lr",
    "all_lr",  # the learning rate of the ALL's parameter group
)
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracker.connect's MLflow HTTP defaults undone afterwards; no worker process left over.

    In-process trials train with one torch thread: as fast for these tiny models, and on a
    shared 2-core machine two threads make an epoch many times slower (bench/RESULTS.md).
    """
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15"),
    ):
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert multiprocessing.active_children() == [], "--n-jobs workers outlived the study run"


def _run(*args: str) -> tuple[int, str]:
    """`autoall study run ARGS --no-baseline` in this process, tracking on unless ARGS turn it
    off (the tuned-baseline study's runs have their own test)."""
    result = CliRunner().invoke(main, ["study", "run", *args, "--no-baseline"])
    return result.exit_code, result.output


def _client() -> MlflowClient:
    """A client on ./mlruns/mlflow.db by its absolute path (MLflow caches stores by URI text)."""
    return MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")


def _trials(name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=STORAGE).get_trials(deepcopy=False)


def _parents(client: MlflowClient, experiment: str) -> dict[str, list[Run]]:
    """The active parent runs of `experiment`, by study name (`t/mlp`)."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.\"autoall.role\" = 'study'", max_results=1000
    )
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.data.tags["autoall.study"], []).append(run)
    return out


def _children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.\"mlflow.parentRunId\" = '{parent.info.run_id}'",
        max_results=1000,
    )


def _check_mirror(client: MlflowClient, name: str, parent: Run) -> dict[int, Run]:
    """Every trial of study `name` has exactly one child run of `parent` that mirrors it.

    Links both ways (user attr `mlflow_run_id`, tag `optuna.trial_number`), the status
    (COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED) and the tag `optuna.state`.
    Returns the child runs by trial number.
    """
    trials = _trials(name)
    children = {run.info.run_id: run for run in _children(client, parent)}
    by_number: dict[int, Run] = {}
    for trial in trials:
        assert trial.state.name in RUN_STATUS, f"trial {trial.number} is {trial.state.name}"
        run_id = trial.user_attrs.get("mlflow_run_id")
        assert run_id in children, f"trial {trial.number}: run {run_id!r} is not a child"
        run = children[run_id]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.info.status == RUN_STATUS[trial.state.name], trial.number
        assert run.data.tags["optuna.state"] == trial.state.name
        assert "tracking_lost" not in trial.user_attrs, trial.user_attrs["tracking_lost"]
        by_number[trial.number] = run
    assert len(children) == len(trials), "child runs without a trial, or a trial's run twice"
    return by_number


def _only_parent(client: MlflowClient, experiment: str, name: str) -> Run:
    parents = _parents(client, experiment)
    assert len(parents.get(name, [])) == 1, {k: len(v) for k, v in parents.items()}
    return parents[name][0]


def test_study_run_tree_mirrors_the_optuna_trials(tracked: Path) -> None:
    epochs = {"mlp": 2, "cnn": 1}
    path = write_study(
        tracked / "s.yaml",
        architectures=["mlp", "cnn"],
        train={"epochs": epochs["mlp"], "cnn": {"epochs": epochs["cnn"], "batch_size": 512}},
    )
    code, out = _run(str(path), "--n-trials", "2")
    assert code == 0, out
    client = _client()
    assert set(_parents(client, "t")) == {"t/mlp", "t/cnn"}
    exp = client.get_experiment_by_name("t")
    assert exp is not None
    assert exp.artifact_location == (tracked / "mlruns" / "artifacts").as_uri()
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == 2 + 2 * 2

    for arch, n_epochs in epochs.items():
        name = f"t/{arch}"
        parent = _only_parent(client, "t", name)
        assert parent.info.status == "FINISHED"  # the target is met
        assert parent.data.tags["autoall.arch"] == arch
        assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "none"
        assert parent.data.params["search.hidden_size"] == "int[8, 32] log"
        trials = _trials(name)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        summary = parent.data.metrics
        assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (2, 0, 0)
        assert summary["best_value"] == pytest.approx(max(t.values[0] for t in trials))

        runs = _check_mirror(client, name, parent)
        for trial in trials:
            run = runs[trial.number]
            for key in EPOCH_METRICS:
                history = client.get_metric_history(run.info.run_id, key)
                assert [m.step for m in history] == list(range(1, n_epochs + 1)), (arch, key)
            metrics = run.data.metrics
            assert metrics["final_val_acc"] == pytest.approx(trial.values[0])
            assert metrics["epochs_run"] == n_epochs
            assert metrics["val_acc"] == pytest.approx(trial.values[0])

            params = run.data.params
            for knob in ("hidden_size", "all_lr", "aux_weight", "aux_loss"):
                assert params[f"all.{knob}"] == str(trial.params[knob]), knob
            assert {f"train.{f}" for f in TrainConfig.field_names()} <= set(params)
            assert params["train.epochs"] == str(n_epochs)
            assert params["train.all_lr"] == str(trial.params["all_lr"])
            assert params["data.name"] == "digits" and params["architecture"] == arch
            assert {"seed", "device", "all.activation", "data.split_seed"} <= set(params)

            tags = run.data.tags
            assert tags["autoall.study"] == name and tags["pid"] == str(os.getpid())
            for key in ("host", "device_name", "torch_version", "autoall_version"):
                assert tags[key], key

            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert artifacts == {"config.yaml", "learning_curve.png"}
            folder = tracked / "mlruns" / "artifacts" / run.info.run_id / "artifacts"
            config = yaml.safe_load((folder / "config.yaml").read_text())
            assert config["all"]["hidden_size"] == trial.params["hidden_size"]
            assert config["train"]["epochs"] == n_epochs
            assert (folder / "learning_curve.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("failing", ["train", "build_model"])
def test_pruned_and_failed_trials_end_their_runs_killed_and_failed(
    tracked: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Trial 1 is pruned at epoch 2 by the pruner, trial 2 raises inside training (or while
    its model is built: the run exists already and ends FAILED too)."""
    real = getattr(autoall.training._plan, failing)
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    asked: dict[int, int] = {}

    def prune_trial_1_at_epoch_2(self: optuna.Trial) -> bool:
        asked[self.number] = asked.get(self.number, 0) + 1
        return self.number == 1 and asked[self.number] == 2

    monkeypatch.setattr(autoall.training._plan, failing, failing_once)
    monkeypatch.setattr(optuna.Trial, "should_prune", prune_trial_1_at_epoch_2)
    path = write_study(tracked / "s.yaml", n_trials=3)
    code, out = _run(str(path))
    assert code == 0, out
    trials = _trials("t/mlp")
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]  # a failed trial is not counted

    client = _client()
    parent = _only_parent(client, "t", "t/mlp")
    runs = _check_mirror(client, "t/mlp", parent)
    pruned, failed = runs[1], runs[2]
    assert pruned.data.tags["state"] == "PRUNED"
    assert pruned.data.tags["pruned_epoch"] == "2" == str(trials[1].user_attrs["pruned_epoch"])
    val_acc = client.get_metric_history(pruned.info.run_id, "val_acc")
    assert [m.step for m in val_acc] == [1, 2]
    assert failed.data.tags["fail_reason"] == "RuntimeError('boom')"
    assert trials[2].user_attrs["fail_reason"] == "RuntimeError('boom')"
    for run in (pruned, failed):
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml"}
    summary = parent.data.metrics
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (2, 1, 1)
    assert parent.info.status == "FINISHED"


def test_a_diverging_trial_s_run_is_killed_with_the_reason(tracked: Path) -> None:
    path = write_diverging_study(tracked, n_trials=2)
    code, out = _run(str(path))
    assert code == 0, out
    trials = _trials("t/mlp")
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    client = _client()
    parent = _only_parent(client, "t", "t/mlp")
    runs = _check_mirror(client, "t/mlp", parent)
    for trial in trials:
        tags = runs[trial.number].data.tags
        assert tags["state"] == "PRUNED"
        assert tags["pruned_epoch"] == str(trial.user_attrs["pruned_epoch"])
        assert "non-finite" in tags["pruned_reason"]
        assert tags["pruned_reason"] == trial.user_attrs["pruned_reason"]
    assert parent.data.metrics["n_pruned"] == 2 and "best_value" not in parent.data.metrics


@pytest.mark.slow
def test_two_workers_and_a_resume_share_one_parent_per_architecture(tracked: Path) -> None:
    path = write_study(tracked / "s.yaml", architectures=["mlp", "cnn"], train={"epochs": 1})
    code, out = _run(str(path), "--n-jobs", "2", "--n-trials", "2")
    assert code == 0, out
    code, out = _run(str(path), "--n-trials", "3")  # the resume runs one more trial each
    assert code == 0, out
    client = _client()
    assert set(_parents(client, "t")) == {"t/mlp", "t/cnn"}
    for arch in ("mlp", "cnn"):
        parent = _only_parent(client, "t", f"t/{arch}")
        runs = _check_mirror(client, f"t/{arch}", parent)
        assert sorted(runs) == [0, 1, 2]
        worker_pids = {runs[n].data.tags["pid"] for n in (0, 1)}
        assert str(os.getpid()) not in worker_pids  # trials 0 and 1 ran in worker processes
        assert runs[2].data.tags["pid"] == str(os.getpid())
        assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == 3
        # the live summary's step counts finished trials, so the latest point is the newest
        history = client.get_metric_history(parent.info.run_id, "n_complete")
        newest = max(history, key=lambda m: m.step)
        assert (newest.step, newest.value) == (3, 3)

    code, out = _run(str(path), "--n-trials", "3")  # target met: trains nothing, reopens nothing
    assert code == 0 and "Target met" in out, out
    for arch in ("mlp", "cnn"):
        assert _only_parent(client, "t", f"t/{arch}").info.status == "FINISHED"


@pytest.mark.slow
def test_two_commands_started_at_once_attach_to_one_parent(tracked: Path) -> None:
    """Two `autoall study run` processes (as on two hosts) race for the parent and the trials."""
    path = write_study(tracked / "s.yaml", train={"epochs": 2}, n_trials=4)
    cmd = [sys.executable, "-m", "autoall.cli", "study", "run", str(path), "--no-baseline"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    client = _client()
    parent = _only_parent(client, "t", "t/mlp")
    runs = _check_mirror(client, "t/mlp", parent)
    assert len(runs) == 4
    assert {run.data.tags["pid"] for run in runs.values()} <= {str(p.pid) for p in procs}


def _rest(url: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (or, with a body, POST) one call of MLflow's REST API."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


@pytest.mark.slow
def test_a_two_trial_study_against_a_real_mlflow_server(
    mlflow_server: MlflowServer, workdir: Path
) -> None:
    path = write_study(workdir / "s.yaml", name="http-e2e", train={"epochs": 2}, n_trials=2)
    code, out = _run(str(path), "--tracking-uri", mlflow_server.url)
    assert code == 0, out
    assert not (workdir / "mlruns").exists()  # nothing went to the default store
    exp = mlflow_server.rest("experiments/get-by-name", experiment_name="http-e2e")["experiment"]
    runs = _rest(mlflow_server.url, "runs/search", {"experiment_ids": [exp["experiment_id"]]})
    tags = {
        r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs["runs"]
    }
    parents = [i for i, t in tags.items() if t.get("autoall.role") == "study"]
    assert len(parents) == 1 and len(runs["runs"]) == 3
    trials = _trials("http-e2e/mlp")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        run = mlflow_server.rest("runs/get", run_id=trial.user_attrs["mlflow_run_id"])["run"]
        run_tags = tags[run["info"]["run_id"]]
        assert run["info"]["status"] == "FINISHED"
        assert run_tags["mlflow.parentRunId"] == parents[0]
        assert run_tags["optuna.trial_number"] == str(trial.number)
        points = mlflow_server.rest(
            "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_acc"
        )
        assert [m["step"] for m in points["metrics"]] == [1, 2]
    parent = mlflow_server.rest("runs/get", run_id=parents[0])["run"]
    assert parent["info"]["status"] == "FINISHED"


def test_a_down_tracking_server_stops_the_study_before_any_trial(workdir: Path) -> None:
    path = write_study(workdir / "s.yaml")
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    code, out = _run(str(path), "--tracking-uri", url)
    assert time.monotonic() - start < 20
    assert code == 2, out  # a wrong or unreachable URL is the user's to fix
    assert f"MLflow tracking server at {url} is not reachable" in out
    assert "--tracking-uri" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]  # checked before creating


def test_the_tuned_baseline_study_has_its_own_parent_and_trial_runs(tracked: Path) -> None:
    path = write_study(tracked / "s.yaml", n_trials=2)
    result = CliRunner().invoke(main, ["study", "run", str(path)])  # both studies
    assert result.exit_code == 0, result.output
    client = _client()
    parents = _parents(client, "t")
    assert set(parents) == {"t/mlp", "t/mlp/tuned-baseline"}
    parent = parents["t/mlp/tuned-baseline"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["autoall.kind"] == "baseline"
    assert parent.data.params["kind"] == "baseline"
    assert parent.data.params["search.lr"].startswith("float[")
    trials = {t.number: t for t in _trials("t/mlp/tuned-baseline")}
    for number, run in _check_mirror(client, "t/mlp/tuned-baseline", parent).items():
        params = run.data.params
        assert params["train.lr"] == str(trials[number].params["lr"])
        assert params["train.weight_decay"] == str(trials[number].params["weight_decay"])
        assert params["all"] == "None" and params["kind"] == "baseline"
        assert run.data.tags["autoall.kind"] == "baseline"
        assert run.data.metrics["params_all"] == 0


def test_artifacts_that_cannot_be_stored_are_in_tracking_lost(tracked: Path) -> None:
    """The artifact store is unwritable (here: under /proc): config.yaml and the learning-curve
    PNG are lost, and each trial says so in `tracking_lost` (the PNG too: it used to be drawn
    after the trial's end was acknowledged, and was only printed)."""
    client = _client()
    client.create_experiment("t", artifact_location="file:///proc/autoall-no-artifacts")
    code, out = _run(str(write_study(tracked / "s.yaml", train={"epochs": 1})), "--n-trials", "2")
    assert code == 0, out
    trials = _trials("t/mlp")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        lost = trial.user_attrs["tracking_lost"]
        assert "log config.yaml failed" in lost, lost
        assert "log learning_curve.png failed" in lost, lost
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]
    assert {r.info.status for r in runs} == {"FINISHED"}  # metrics and status still logged
    assert all("final_val_acc" in r.data.metrics for r in runs)
