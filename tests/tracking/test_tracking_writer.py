"""The tracking writer process: the same run tree as `Tracker`, answers only where a worker needs
them, and nothing hangs or goes unreported when the store or the child fails."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_tracking import STUDY_PARAMS, _result, _stats

from autoall.tracking._tracker import TrackingError
from autoall.tracking._writer import TrackingWriter, WriterRun


@pytest.fixture
def store(tmp_path: Path, empty_store: Path) -> str:
    path = tmp_path / "mlruns" / "mlflow.db"
    path.parent.mkdir()
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


@pytest.fixture
def writer(store: str) -> Iterator[TrackingWriter]:
    writer = TrackingWriter.connect(store, experiment="digits", retry_wait=0.01)
    yield writer
    writer.close()
    assert writer._proc.returncode == 0


def _start(writer: TrackingWriter, parent: str, number: int = 0) -> WriterRun:
    return writer.start_trial(
        parent_id=parent,
        trial_number=number,
        params={"all": {"hidden_size": 64}},
        tags={"host": "h1"},
        config_yaml="data: digits\n",
    )


def test_a_trial_run_through_the_writer(writer: TrackingWriter, store: str) -> None:
    parent = writer.parent_run(study_name="digits/mlp", arch="mlp", params=STUDY_PARAMS, tags={})
    run = _start(writer, parent)
    history = [_stats(1), _stats(2), _stats(3)]
    for stats in history:
        run.log_epoch(stats)
    run.finish("COMPLETE", result=_result(history))
    assert run.lost == [] and len(run.run_id) == 32  # known once finish has answered
    writer.finish_parent(parent)
    writer.close()  # the PNG and the parent's status come after finish's answer

    client = MlflowClient(store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["optuna.trial_number"] == "0"
    assert logged.data.params["all.hidden_size"] == "64"
    assert [m.step for m in client.get_metric_history(run.run_id, "val_acc")] == [1, 2, 3]
    assert logged.data.metrics["final_val_acc"] == pytest.approx(history[-1].val_acc)
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert artifacts == {"config.yaml", "learning_curve.png"}
    parent_run = client.get_run(logged.data.tags["mlflow.parentRunId"])
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params["sampler"] == "tpe"


def test_lost_logging_comes_back_to_the_trial(writer: TrackingWriter, store: str) -> None:
    parent = writer.parent_run(study_name="digits/mlp", arch="mlp", params=STUDY_PARAMS, tags={})
    run = _start(writer, parent, number=3)
    assert writer.find_trial_run(parent, 3) is not None  # waits until the run exists
    MlflowClient(store).delete_run(run.run_id)  # every later write to it fails: not active
    run.log_epoch(_stats(1))
    run.finish("PRUNED", epoch=1, reason="pruner at epoch 1")
    assert any("log epoch 1 failed" in message for message in run.lost), run.lost


def test_a_store_the_child_cannot_open_is_raised_by_check(tmp_path: Path) -> None:
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not a SQLite database" * 100)
    writer = TrackingWriter.connect(f"sqlite:///{broken}", experiment="digits")
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(TrackingError, match=r"not reachable.*--tracking-uri"):
            while time.monotonic() < deadline:
                writer.check()
                time.sleep(0.1)
        run = _start_after_error(writer)
        assert run is None
    finally:
        writer.close()


def _start_after_error(writer: TrackingWriter) -> WriterRun | None:
    try:
        return _start(writer, "digits/mlp")
    except TrackingError:
        return None


def test_a_writer_that_dies_is_reported_and_never_hangs_the_trial(
    writer: TrackingWriter,
) -> None:
    parent = writer.parent_run(study_name="digits/mlp", arch="mlp", params=STUDY_PARAMS, tags={})
    run = _start(writer, parent)
    assert writer.find_trial_run(parent, 0) is not None
    writer._proc.kill()
    writer._proc.wait()
    run.log_epoch(_stats(1))
    started = time.monotonic()
    run.finish("COMPLETE", result=_result([_stats(1)]))
    assert time.monotonic() - started < 10
    assert any("tracking writer process ended" in message for message in run.lost), run.lost
    writer.close()
    writer._proc.returncode = 0  # killed on purpose; the fixture checks clean exits
