"""Workers, the Optuna storage and the tracking writer when the environment fails: a full disk
(a real tmpfs), Ctrl-C on it, a worker paused past the heartbeat's grace period, a storage file
with damaged pages, an in-memory storage URL, a killed worker's tracking writer, a retry whose
killed trial never got its MLflow run, a moved project folder, and a study whose every trial
runs out of memory."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from _helpers import trial_states
from click.testing import CliRunner
from conftest import write_study
from optuna.trial import TrialState

import autoall.training._loop
from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.study._storage import fail_stale_trials, make_storage
from autoall.study._trials import suggest
from autoall.tracking._tracker import TrackingError
from autoall.tracking._writer import check_artifact_location

STORAGE = "sqlite:///autoall.db"
FULL = (
    "Error: The Optuna storage autoall.db cannot be written: its disk is full "
    "(OperationalError: database or disk is full). Free space there (or pass --storage a file "
    "on another disk), then run the same command again to resume."
)


# -- a real full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: the project folder on a disk that the test can fill."""
    disk = workdir / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("a real full disk needs a tmpfs: run as root where `mount -t tmpfs` works")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    """Write a file on `disk` until the disk is full, to the last byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC


def _read(db: Path, query: str) -> list[tuple[object, ...]]:
    """`query` on the SQLite file `db`, read-only (a full disk refuses any write)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return c.execute(query).fetchall()
    except sqlite3.Error:  # the schema is still being made
        return []


def _wait_for_an_epoch(db: Path, proc: subprocess.Popen[str]) -> None:
    """Until trial 0 is RUNNING with an epoch reported (waits on states, up to 5 minutes)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        running = _read(db, "SELECT number FROM trials WHERE state = 'RUNNING'")
        reported = _read(db, "SELECT count(*) FROM trial_intermediate_values")
        if running == [(0,)] and reported and reported[0][0] >= 1:
            return
        time.sleep(0.05)
    pytest.fail("trial 0 reported no epoch within 5 minutes")


def _study_run(folder: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "autoall.cli", "study", "run", "s.yaml", "--no-baseline"]
    return subprocess.Popen(
        [*command, *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_full_storage_disk_stops_the_worker_at_once_in_one_line(
    small_disk: Path, empty_store: Path
) -> None:
    """The project (storage and MLflow store) on a disk that fills mid-trial: the worker stops
    within seconds (it used to retry for 300 s), one line names the file and what to do, no
    traceback (MLflow's included), and the trial it leaves RUNNING is said to be RUNNING."""
    write_study(small_disk / "s.yaml", n_trials=2, train={"epochs": 40, "batch_size": 32})
    (small_disk / "mlruns").mkdir()
    shutil.copyfile(empty_store, small_disk / "mlruns" / "mlflow.db")
    proc = _study_run(small_disk)
    try:
        _wait_for_an_epoch(small_disk / "autoall.db", proc)
        _fill(small_disk)
        filled = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - filled < 30, err  # ~8 s on 2 busy cores; 300 s before
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert said == [
        f"{FULL} Left RUNNING, as its end could not be stored: trial 0 of t/mlp; the heartbeat "
        "fails it and queues its retry when the study resumes."
    ], err
    assert "marked FAIL" not in err
    assert _read(small_disk / "autoall.db", "SELECT number, state FROM trials") == [(0, "RUNNING")]


@pytest.mark.slow
def test_ctrl_c_on_a_full_storage_disk_stops_at_once_and_says_what_stays_running(
    small_disk: Path,
) -> None:
    """Ctrl-C when the trial's FAIL cannot be stored: exit 130 within seconds, and the message
    says the trial stays RUNNING until the heartbeat fails it, never that it is FAIL."""
    write_study(small_disk / "s.yaml", n_trials=2, train={"epochs": 40, "batch_size": 32})
    proc = _study_run(small_disk, "--no-tracking")
    try:
        _wait_for_an_epoch(small_disk / "autoall.db", proc)
        proc.send_signal(signal.SIGSTOP)  # no epoch ends between the fill and the Ctrl-C
        _fill(small_disk)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        interrupted = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - interrupted < 10, err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert (
        "Interrupted; trial 0 of t/mlp stayed RUNNING: the heartbeat fails it and queues its "
        "retry when the study resumes. Resume with:"
    ) in err.splitlines(), err
    assert "marked FAIL" not in err
    assert _read(small_disk / "autoall.db", "SELECT number, state FROM trials") == [(0, "RUNNING")]


# -- a worker paused past the grace period -----------------------------------------------------


@pytest.mark.slow
def test_a_worker_paused_past_the_grace_period_drops_its_trial_and_goes_on(workdir: Path) -> None:
    """SIGSTOP a worker mid-trial until the heartbeat (another worker's check, here the test's)
    has failed its trial as stale and queued the retry; on SIGCONT it drops the trial in one
    line and goes on: it runs the retry, exit 0, no traceback."""
    path = write_study(workdir / "s.yaml", n_trials=1, train={"epochs": 30, "batch_size": 32})
    proc = _study_run(workdir, "--no-tracking", "--checkpoint-every", "0")
    try:
        _wait_for_an_epoch(workdir / "autoall.db", proc)
        proc.send_signal(signal.SIGSTOP)
        study = optuna.load_study(
            study_name="t/mlp", storage=make_storage(STORAGE, load_study_file(path))
        )
        deadline = time.monotonic() + 60
        while study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING:
            assert time.monotonic() < deadline, "the paused worker's trial never turned stale"
            fail_stale_trials(study, {})  # what any other worker does before its next trial
            time.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Cannot tell" not in err, err
    dropped = (
        "t/mlp: trial 0 was failed as stale while this worker was paused; its retry runs elsewhere"
    )
    assert err.splitlines().count(dropped) == 1, err
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0


# -- a damaged storage file, an in-memory URL -------------------------------------------------


def test_a_storage_file_with_damaged_pages_is_one_line_in_every_command(study_file: Path) -> None:
    """A SQLite file whose header is valid but whose `trials` table page is garbage: status,
    list, export and run each say in one line which file is damaged and what to do, exit 2,
    and write nothing to it."""
    runner = CliRunner()
    created = runner.invoke(main, ["study", "create", str(study_file)])
    assert created.exit_code == 0, created.output
    study = optuna.load_study(study_name="t/mlp", storage=STORAGE)
    for value in (0.5, 0.7):  # rows in the page to damage
        study.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    with contextlib.closing(sqlite3.connect("autoall.db")) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'trials'").fetchone()
        page = c.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(Path("autoall.db").read_bytes())
    data[(root - 1) * page : root * page] = b"\xab" * page  # the header (page 1) is intact
    Path("autoall.db").write_bytes(bytes(data))
    expected = (
        "Error: The Optuna storage autoall.db is damaged (DatabaseError: database disk image is "
        "malformed): restore it from a backup (or try `sqlite3 autoall.db .recover`), or pass "
        "--storage (or set AUTOALL_STORAGE) to another file."
    )
    for command in (
        ["study", "status", str(study_file)],
        ["study", "list"],
        ["study", "export", "t/mlp", "--format", "csv"],
        ["study", "run", str(study_file), "--no-tracking", "--no-baseline"],
    ):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert errors == [expected], (command, result.output)
        assert Path("autoall.db").read_bytes() == bytes(data), command


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_storage_is_refused_before_anything_is_made(
    study_file: Path, workdir: Path, url: str
) -> None:
    message = (
        f"Error: The Optuna storage {url} is an in-memory database: each worker, the progress "
        "monitor and every later command would open its own empty one. Pass --storage (or set "
        "AUTOALL_STORAGE) to a file, e.g. sqlite:///autoall.db."
    )
    runner = CliRunner()
    for command in (
        ["study", "run", str(study_file), "--storage", url, "--no-baseline"],
        ["study", "list", "--storage", url],
    ):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, result.output
        assert result.output.splitlines()[-1] == message, result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["study.yaml"]


# -- the tracking writer of a killed worker, the run of a trial killed early --------------------

_KILLED_WORKER = """
import os, signal, sys
from autoall.tracking._writer import TrackingWriter
writer = TrackingWriter.connect(sys.argv[1], experiment="e")
key = writer.parent_run(study_name="e/mlp", arch="mlp", params={}, tags={})
writer.start_trial(parent_id=key, trial_number=0, params={"lr": 0.1}, tags={}, config_yaml="")
os.kill(os.getpid(), signal.SIGKILL)  # before the writer has even connected
"""


def test_a_killed_worker_s_tracking_writer_ends_silently_and_still_makes_the_run(
    tmp_path: Path, empty_store: Path
) -> None:
    """The worker is SIGKILLed while its writer is still connecting: the writer carries out the
    calls it got (the trial's run exists, for the retry to mark FAILED), answers nobody, prints
    nothing and exits."""
    from mlflow import MlflowClient

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # stderr is inherited by the writer: communicate() returns once the writer has exited too
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, uri], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stderr == ""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`optuna.trial_number` = '0'")
    assert len(runs) == 1
    assert runs[0].data.params == {"lr": "0.1"}


@pytest.mark.slow
def test_a_retry_makes_the_run_of_a_trial_killed_before_its_run_existed(
    tracked: Path, study_file: Path
) -> None:
    """Trial 0 failed as stale with no MLflow run (its worker and writer were killed while
    connecting): its retry, trial 1, makes trial 0's run, FAILED with the reason, so that every
    trial has its run."""
    from mlflow import MlflowClient

    path = write_study(study_file, n_trials=1)
    runner = CliRunner()
    assert runner.invoke(main, ["study", "create", str(path)]).exit_code == 0
    cfg = load_study_file(path)
    storage = make_storage(STORAGE, cfg)
    study = optuna.load_study(study_name="t/mlp", storage=storage)
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with optimize"
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    suggest(trial, cfg.space("mlp", "all"))
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # as the heartbeat does
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial._trial_id))

    result = runner.invoke(main, ["study", "run", str(path), "--no-baseline"])
    assert result.exit_code == 0, result.output
    assert trial_states(study.get_trials()) == {"FAIL": 1, "COMPLETE": 1}
    client = MlflowClient(
        f"sqlite:///{tracked / 'mlruns' / 'mlflow.db'}"
    )  # absolute: MLflow keeps one store per URI in a process
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    runs = {
        r.data.tags["optuna.trial_number"]: r
        for r in client.search_runs([experiment.experiment_id])
        if "optuna.trial_number" in r.data.tags  # not the parent run
    }
    assert sorted(runs) == ["0", "1"]
    lost, retry = runs["0"], runs["1"]
    assert lost.info.status == "FAILED"
    assert lost.data.tags["fail_reason"] == "worker lost (heartbeat stale); retried as trial 1"
    assert lost.data.tags["mlflow.parentRunId"] == retry.data.tags["mlflow.parentRunId"]
    assert lost.data.params["all.hidden_size"] == retry.data.params["all.hidden_size"]
    assert retry.info.status == "FINISHED"
    assert retry.data.tags["retry_of"] == "0"


# -- a moved project folder ---------------------------------------------------------------------


def test_a_moved_project_folder_is_one_line_before_anything_is_stored(
    workdir: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment's artifacts are kept at an absolute path; after the project folder moved,
    `study run` refuses in one line (MLflow would make the old folder again and write there)
    before it stores anything, and the old folder is not made again."""
    from mlflow import MlflowClient

    old, new = workdir / "old", workdir / "new"
    (old / "mlruns" / "artifacts").mkdir(parents=True)
    shutil.copyfile(empty_store, old / "mlruns" / "mlflow.db")
    write_study(old / "s.yaml")
    client = MlflowClient(f"sqlite:///{old / 'mlruns' / 'mlflow.db'}")
    client.create_experiment("t", artifact_location=(old / "mlruns" / "artifacts").as_uri())
    check_artifact_location(f"sqlite:///{old / 'mlruns' / 'mlflow.db'}", "t")  # in place: fine
    old.rename(new)
    monkeypatch.chdir(new)

    result = CliRunner().invoke(main, ["study", "run", "s.yaml", "--no-baseline"])
    assert result.exit_code == 2, result.output
    art = old / "mlruns" / "artifacts"
    assert result.output.splitlines()[-1] == (
        f"Error: MLflow experiment 't' in mlruns/mlflow.db keeps its artifacts in {art}, which is "
        "gone (was the project folder moved?); MLflow would make that folder again and write "
        f"there. Move the project back, or link the old place to the new one (mkdir -p "
        f"{art.parent} && ln -s {new / 'mlruns' / 'artifacts'} {art}), then run the command again."
    ), result.output
    assert not old.exists()
    assert not (new / "autoall.db").exists()
    with pytest.raises(TrackingError):
        check_artifact_location("sqlite:///mlruns/mlflow.db", "t")
    check_artifact_location("sqlite:///mlruns/mlflow.db", "another")  # no such experiment


# -- a study whose every trial runs out of memory ---------------------------------------------


def test_a_study_whose_every_trial_runs_out_of_memory_stops_its_worker(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trial's knobs are queued again twice; the third failure of the same knobs counts
    toward the stop after repeated failures, so the worker stops after three such knobs (nine
    trials) with the "repeated failures" message, exit 1, nothing RUNNING or WAITING."""
    calls = 0

    def out_of_memory(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 30:  # the worker that never stops: end the test instead of hanging
            raise KeyboardInterrupt
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(autoall.training._loop, "evaluate", out_of_memory)
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--no-tracking", "--no-baseline"]
    )
    assert result.exit_code == 1, result.output
    assert (
        "Error: t/mlp: 3 trials in a row failed; stopping this worker. Last reason: cpu ran out "
        "of memory with batch_size 128; lower batch_size or run fewer trials per GPU."
    ) in result.output.splitlines(), result.output
    trials = optuna.load_study(study_name="t/mlp", storage=STORAGE).get_trials()
    assert trial_states(trials) == {"FAIL": 9}
    spent = [t.number for t in trials if t.user_attrs.get("oom_retries_spent")]
    assert spent == [2, 5, 8]
    assert calls == 9


# -- a worker process's error -------------------------------------------------------------------


def test_a_worker_process_s_error_is_one_line_not_a_traceback(
    study_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spawned worker that fails (a full disk, repeated failures) says so in one line with the
    command's exit code; only a bug (no exit code of its own) prints its traceback."""
    import multiprocessing
    import threading

    import autoall.study._workers
    from autoall.config._options import RunOptions
    from autoall.study._storage import StorageFullError

    def full(*args: object, **kwargs: object) -> None:
        raise StorageFullError("The Optuna storage autoall.db cannot be written: its disk is full.")

    monkeypatch.setattr(autoall.study._workers, "_work", full)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the test runner's stay
    opts = RunOptions(storage=STORAGE, n_trials=1, tracking=False)
    with pytest.raises(SystemExit) as ended:
        autoall.study._workers._worker_process(
            load_study_file(study_file), opts, 0, threading.Event()
        )
    assert ended.value.code == 1
    name = multiprocessing.current_process().name
    assert capsys.readouterr().err == (
        f"{name}: Error: The Optuna storage autoall.db cannot be written: its disk is full.\n"
    )
