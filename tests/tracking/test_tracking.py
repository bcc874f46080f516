"""MLflow tracking: run tree, batching, run states, artifacts, retries, start-up errors.

Stores are real: SQLite under tmp_path, and one `mlflow server` on a free loopback port.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import MlflowServer, free_port
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from autoall.tracking._run import NullTracker
from autoall.tracking._store import DEFAULT_TRACKING_URI, resolve_tracking_uri
from autoall.tracking._tracker import Tracker, TrackingError, mask_secrets
from autoall.training._loop import EpochStats, RunResult
from autoall.training._models import ParamCount

SECRET_URL = "postgresql+psycopg2://alice:s3cret@db.example:5432/optuna"
STUDY_PARAMS = {"sampler": "tpe", "search_space": {"hidden_size": "int 8..256 log"}}


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI from the outside; Tracker.connect's HTTP defaults restored afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15"),
    ):
        monkeypatch.setenv(name, value)


@pytest.fixture
def tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> Tracker:
    """A tracker on the default store, ./mlruns/mlflow.db, in a fresh tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns" / "mlflow.db")
    return Tracker.connect(None, experiment="digits", retry_wait=0.01)


def _stats(epoch: int) -> EpochStats:
    return EpochStats(
        epoch=epoch,
        train_loss=1.0 / epoch,
        aux_loss=0.01 * epoch,
        train_acc=0.5 + 0.1 * epoch,
        val_loss=1.2 / epoch,
        val_acc=0.45 + 0.1 * epoch,
        epoch_seconds=0.2,
        lr=1e-3 * epoch,
        all_lr=2e-3 * epoch,
    )


def _result(history: list[EpochStats]) -> RunResult:
    return RunResult(
        history=history,
        best_val_acc=max(s.val_acc for s in history),
        best_epoch=len(history),
        final_val_acc=history[-1].val_acc,
        wall_seconds=1.5,
        compile_seconds=0.0,
        params=ParamCount(total=1000, all=120),
        device="cpu",
        stopped_early=False,
    )


def _parent(tracker: Tracker, study: str = "digits/mlp") -> str:
    return tracker.parent_run(study_name=study, arch="mlp", params=STUDY_PARAMS, tags={"k": "v"})


def _trial(tracker: Tracker, parent: str, number: int = 0) -> Any:
    return tracker.start_trial(
        parent_id=parent,
        trial_number=number,
        params={"data": {"name": "digits"}, "all": {"hidden_size": 64}, "storage": SECRET_URL},
        tags={"worker.host": "h1"},
        config_yaml=f"data: digits\nstorage: {SECRET_URL}\n",
    )


def _client() -> MlflowClient:
    """A client on ./mlruns/mlflow.db by its absolute path: MLflow caches stores by URI, and a
    relative URI would keep reading an earlier test's database."""
    return MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")


def _active_parents(experiment: str, study: str) -> list[str]:
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.\"autoall.study\" = '{study}'"
    )
    return [r.info.run_id for r in runs]


def test_mask_secrets() -> None:
    assert mask_secrets(SECRET_URL) == "postgresql+psycopg2://alice:***@db.example:5432/optuna"
    assert mask_secrets("http://u:p@h:5000 and https://v:q@k/x") == (
        "http://u:***@h:5000 and https://v:***@k/x"
    )
    text = "could not connect to mysql://root:hunter2@10.0.0.1/db: refused"
    assert "hunter2" not in mask_secrets(text) and "root:***@10.0.0.1" in mask_secrets(text)
    assert mask_secrets("postgresql://a:p@ss@h/db") == "postgresql://a:***@h/db"  # '@' in pw
    for plain in ("sqlite:///mlruns/mlflow.db", "http://127.0.0.1:5000", "user:pw without scheme"):
        assert mask_secrets(plain) == plain


def test_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == DEFAULT_TRACKING_URI
    assert (tmp_path / "mlruns").is_dir()
    env_uri = f"sqlite:///{tmp_path}/env/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert resolve_tracking_uri() == env_uri and (tmp_path / "env").is_dir()
    assert resolve_tracking_uri("http://127.0.0.1:1") == "http://127.0.0.1:1"


def test_default_store_and_artifacts_under_mlruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.connect(None, experiment="digits")
    assert tracker.uri == DEFAULT_TRACKING_URI
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    exp = _client().get_experiment(tracker.experiment_id)
    assert exp.name == "digits"
    assert exp.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    run = _trial(tracker, _parent(tracker))
    artifact_dir = tmp_path / "mlruns" / "artifacts" / run.run_id / "artifacts"
    assert (artifact_dir / "config.yaml").is_file()
    # a second connection (a resumed study) attaches to the same experiment
    assert Tracker.connect(None, experiment="digits").experiment_id == tracker.experiment_id


def test_parent_run_is_found_again_and_reopened(tracker: Tracker) -> None:
    parent = _parent(tracker)
    assert tracker.parent_run(study_name="digits/mlp", arch="mlp", params={"x": 1}, tags={}) == (
        parent
    )
    assert _parent(tracker, "digits/cnn") != parent
    client = _client()
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.info.run_name == "digits/mlp"
    assert run.data.params == {"sampler": "tpe", "search_space.hidden_size": "int 8..256 log"}
    assert run.data.tags["autoall.role"] == "study" and run.data.tags["autoall.arch"] == "mlp"
    tracker.update_parent(parent, best_value=0.9, n_complete=1, n_pruned=0, n_failed=0, step=1)
    tracker.update_parent(parent, best_value=0.95, n_complete=2, n_pruned=1, n_failed=0, step=2)
    assert [m.value for m in client.get_metric_history(parent, "best_value")] == [0.9, 0.95]
    assert client.get_run(parent).data.metrics["n_pruned"] == 1
    tracker.finish_parent(parent)
    assert client.get_run(parent).info.status == "FINISHED"
    assert _parent(tracker) == parent  # a resume attaches to it and marks it running again
    assert client.get_run(parent).info.status == "RUNNING"
    assert tracker.lost == []


def test_concurrent_parent_run_threads_leave_one_parent(tracker: Tracker) -> None:
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def work() -> None:
        own = Tracker.connect(None, experiment="digits")
        barrier.wait(timeout=30)
        ids.append(_parent(own))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(ids) == 4 and len(set(ids)) == 1
    assert _active_parents("digits", "digits/mlp") == ids[:1]


_WORKER = """
import pathlib, sys, time
from autoall.tracking._tracker import Tracker
tracker = Tracker.connect(None, experiment="fresh")  # races on creating the db and experiment
pathlib.Path(f"ready-{sys.argv[1]}").touch()
while not pathlib.Path("go").exists():
    time.sleep(0.005)
print(tracker.parent_run(study_name="digits/mlp", arch="mlp", params={}, tags={}))
"""


@pytest.mark.slow
def test_concurrent_parent_run_processes_leave_one_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three worker processes on a store that does not exist yet, released at one moment."""
    monkeypatch.chdir(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        assert all(proc.poll() is None for proc in procs), "a worker failed to connect"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert len(set(outputs)) == 1
    assert _active_parents("fresh", "digits/mlp") == outputs[:1]


def test_trial_run_logs_one_batch_per_epoch(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    original = MlflowClient.log_batch

    def counting(self: MlflowClient, run_id: str, *args: Any, **kwargs: Any) -> Any:
        calls[run_id] += 1
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    parent = _parent(tracker)
    run = _trial(tracker, parent, number=7)
    before = calls[run.run_id]
    for epoch in (1, 2, 3):
        run.log_epoch(_stats(epoch))
        assert calls[run.run_id] == before + epoch  # exactly one write per epoch
    client = _client()
    for key, value in _stats(3).metrics().items():
        history = client.get_metric_history(run.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
        assert history[-1].value == pytest.approx(value)
        assert len({m.timestamp for m in history}) <= 3
    data = client.get_run(run.run_id).data
    assert data.tags["mlflow.parentRunId"] == parent
    assert data.tags["optuna.trial_number"] == "7" and data.tags["worker.host"] == "h1"
    assert data.params["data.name"] == "digits" and data.params["all.hidden_size"] == "64"
    assert data.params["storage"] == mask_secrets(SECRET_URL)
    config = Path(client.download_artifacts(run.run_id, "config.yaml")).read_text()
    assert "s3cret" not in config and "alice:***@" in config
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert tracker.find_trial_run(parent, 7) == run.run_id
    assert tracker.find_trial_run(parent, 8) is None
    assert run.lost == []


@pytest.mark.parametrize(
    ("state", "status"), [("COMPLETE", "FINISHED"), ("PRUNED", "KILLED"), ("FAIL", "FAILED")]
)
def test_finish_maps_trial_state_to_run_status(tracker: Tracker, state: str, status: str) -> None:
    run = _trial(tracker, _parent(tracker))
    history = [_stats(e) for e in (1, 2)]
    for stats in history:
        run.log_epoch(stats)
    if state == "COMPLETE":
        run.finish(state, result=_result(history))
    elif state == "PRUNED":
        run.finish(state, epoch=2, reason="median pruner")
    else:
        run.finish(state, reason=f"OperationalError: cannot reach {SECRET_URL}")
    client = _client()
    info, data = client.get_run(run.run_id).info, client.get_run(run.run_id).data
    assert info.status == status and data.tags["optuna.state"] == state
    if state == "COMPLETE":
        assert data.metrics["final_val_acc"] == pytest.approx(history[-1].val_acc)
        assert data.metrics["params_total"] == 1000 and data.metrics["params_all"] == 120
        for key in ("best_val_acc", "wall_seconds", "compile_seconds", "median_epoch_seconds"):
            assert key in data.metrics
    elif state == "PRUNED":
        assert data.tags["state"] == "PRUNED" and data.tags["pruned_epoch"] == "2"
        assert data.tags["pruned_reason"] == "median pruner"
    else:
        assert data.tags["fail_reason"].startswith("OperationalError: cannot reach")
        assert "s3cret" not in data.tags["fail_reason"]
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert names == {"config.yaml", "learning_curve.png"}
    png = Path(client.download_artifacts(run.run_id, "learning_curve.png")).read_bytes()
    assert png.startswith(b"\x89PNG")
    run.finish("COMPLETE")  # a second finish changes nothing
    assert client.get_run(run.run_id).info.status == status
    assert run.lost == []


def _failing_log_batch(
    monkeypatch: pytest.MonkeyPatch, *, failures: int, code: int = TEMPORARILY_UNAVAILABLE
) -> list[int]:
    """Make MlflowClient.log_batch raise `failures` times, then work; returns the call log."""
    calls: list[int] = []
    original = MlflowClient.log_batch

    def flaky(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise MlflowException("database is busy", error_code=code)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    return calls


def test_transient_failure_is_retried_and_logged_once(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _trial(tracker, _parent(tracker))
    calls = _failing_log_batch(monkeypatch, failures=2)
    run.log_epoch(_stats(1))
    assert len(calls) == 3 and run.lost == []
    history = _client().get_metric_history(run.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(_stats(1).val_acc))]


def test_persistent_failure_ends_in_lost_not_in_an_exception(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = _trial(tracker, _parent(tracker))
    calls = _failing_log_batch(monkeypatch, failures=100)
    with caplog.at_level(logging.WARNING, logger="autoall.tracking"):
        run.log_epoch(_stats(1))
    assert len(calls) == tracker.retries + 1
    assert len(run.lost) == 1 and "log epoch 1" in run.lost[0] and "database is busy" in run.lost[0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == run.lost
    calls = _failing_log_batch(monkeypatch, failures=100, code=INVALID_PARAMETER_VALUE)
    run.log_epoch(_stats(2))
    assert len(calls) == 1 and len(run.lost) == 2  # not transient: no retries
    assert _client().get_metric_history(run.run_id, "val_acc") == []


def test_down_server_fails_fast_with_masked_url() -> None:
    url = f"http://tracker:hunter2pw@127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        Tracker.connect(url, experiment="digits")
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "hunter2pw" not in message
    assert "tracker:***@127.0.0.1" in message and "is not reachable" in message
    assert "--tracking-uri" in message


def test_null_tracker_logs_nothing() -> None:
    tracker = NullTracker()
    run = tracker.start_trial(
        parent_id=tracker.parent_run(study_name="s", arch="mlp", params={}, tags={}),
        trial_number=0,
        params={},
        tags={},
        config_yaml="",
    )
    run.log_epoch(_stats(1))
    run.finish("COMPLETE")
    assert (run.run_id, run.lost, tracker.find_trial_run("", 0)) == ("", [], None)


@pytest.mark.slow
def test_tracking_over_http(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert len(mlflow_server.group_pids()) > 1  # the server runs child processes to stop too
    tracker = Tracker.connect(mlflow_server.url, experiment="http-study")
    parent = _parent(tracker)
    assert _parent(tracker) == parent
    run = _trial(tracker, parent, number=3)
    history = [_stats(e) for e in (1, 2)]
    for stats in history:
        run.log_epoch(stats)
    run.finish("COMPLETE", result=_result(history))
    tracker.update_parent(parent, best_value=0.65, n_complete=1, n_pruned=0, n_failed=0, step=1)
    assert run.lost == [] and tracker.lost == []
    child = mlflow_server.rest("runs/get", run_id=run.run_id)["run"]
    assert child["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == parent and tags["optuna.trial_number"] == "3"
    assert {p["key"]: p["value"] for p in child["data"]["params"]}["data.name"] == "digits"
    points = mlflow_server.rest("metrics/get-history", run_id=run.run_id, metric_key="val_acc")
    assert [m["step"] for m in points["metrics"]] == [1, 2]
    files = mlflow_server.rest("artifacts/list", run_id=run.run_id)["files"]
    assert {f["path"] for f in files} == {"config.yaml", "learning_curve.png"}
    parent_run = mlflow_server.rest("runs/get", run_id=parent)["run"]
    assert parent_run["info"]["status"] == "RUNNING"
    metrics = {m["key"]: m["value"] for m in parent_run["data"]["metrics"]}
    assert metrics["best_value"] == pytest.approx(0.65)
