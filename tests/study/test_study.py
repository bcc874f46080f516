"""`autoall study run`: exact targets, resume, interruption, divergence, workers, no test split."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from _helpers import (
    finished_and_running,
    lose_first_complete,
    write_diverging_study,
    write_pruning_study,
)
from _helpers import trial_states as _states
from click.testing import CliRunner
from conftest import write_study
from optuna.trial import FrozenTrial, TrialState

import autoall.study._trials
import autoall.training._loop
import autoall.training._plan
from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.training._loop import NonFiniteLossError, TrainingOOMError

STORAGE = "sqlite:///autoall.db"


def _trials(name: str = "t/mlp", storage: str = STORAGE) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _run(*args: str) -> tuple[int, str]:
    """The ALL study alone (the tuned baseline has its own test), no tracking."""
    result = CliRunner().invoke(main, ["study", "run", *args, "--no-tracking", "--no-baseline"])
    return result.exit_code, result.output


def test_study_meets_its_target_and_a_rerun_trains_nothing(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _run(str(study_file))
    assert code == 0, out
    assert "Optuna storage: sqlite:///autoall.db" in out
    assert "4/4 (4 complete, 0 pruned, 0 failed, 0 running)" in out
    trials = _trials()
    assert _states(trials) == {"COMPLETE": 4}
    assert all(0 < t.values[0] <= 1 for t in trials)
    assert all(t.user_attrs["epochs"] == 3 for t in trials)
    knobs = {"hidden_size", "all_lr", "aux_weight", "aux_loss", "positions"}
    assert set(trials[0].params) == knobs | {"lr", "weight_decay"}  # the base network's too

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the target was met")

    monkeypatch.setattr(autoall.training._plan, "train", no_training)
    code, out = _run(str(study_file))
    assert code == 0, out
    assert "Target met" in out
    assert len(_trials()) == 4


def test_study_run_also_runs_the_tuned_baseline_with_the_same_budget(study_file: Path) -> None:
    result = CliRunner().invoke(main, ["study", "run", str(study_file), "--no-tracking"])
    assert result.exit_code == 0, result.output
    assert "t/mlp: 4 complete, 0 pruned, 0 failed" in result.output
    assert "t/mlp/tuned-baseline: 4 complete, 0 pruned, 0 failed" in result.output
    ours, theirs = _trials("t/mlp"), _trials("t/mlp/tuned-baseline")
    assert _states(ours) == _states(theirs) == {"COMPLETE": 4}
    lr = load_study_file(study_file).train_config("mlp").lr
    for t in theirs:  # the plain network's own knobs, nothing of the ALL
        assert set(t.params) == {"lr", "weight_decay"}
        assert lr / 10 <= t.params["lr"] <= lr * 10 and 1e-6 <= t.params["weight_decay"] <= 1e-2
        assert t.user_attrs["params_all"] == 0 and t.user_attrs["epochs"] == 3
    assert all(t.user_attrs["params_all"] > 0 and t.user_attrs["epochs"] == 3 for t in ours)
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(STORAGE)}
    assert (
        studies["t/mlp"].user_attrs["budget"]
        == studies["t/mlp/tuned-baseline"].user_attrs["budget"]
    )
    assert studies["t/mlp/tuned-baseline"].user_attrs["kind"] == "baseline"
    status = CliRunner().invoke(main, ["study", "status", "t"])
    assert status.exit_code == 0, status.output
    assert "t/mlp\n" in status.output and "t/mlp/tuned-baseline\n" in status.output
    again = CliRunner().invoke(main, ["study", "run", str(study_file), "--no-tracking"])
    assert again.exit_code == 0 and "Target met" in again.output


def test_status_of_a_file_shows_every_study_it_defines_the_unstarted_ones_too(
    workdir: Path,
) -> None:
    path = write_study(workdir / "two.yaml", architectures=["mlp", "cnn"])
    study = optuna.create_study(study_name="t/mlp", storage=STORAGE, direction="maximize")
    trial = study.ask()
    study.tell(trial, 0.5)
    result = CliRunner().invoke(main, ["study", "status", str(path)])
    assert result.exit_code == 0, result.output
    heads = [line for line in result.output.splitlines() if not line.startswith(" ")]
    assert heads == ["t/mlp", "t/mlp/tuned-baseline", "t/cnn", "t/cnn/tuned-baseline"]
    assert "t/mlp\n  trials     1 done: 1 complete" in result.output
    for name in heads[1:]:
        assert f"{name}\n  not started (no study in the storage yet)\n" in result.output
    by_name = CliRunner().invoke(main, ["study", "status", "t"])  # a name: what is stored
    assert [x for x in by_name.output.splitlines() if not x.startswith(" ")] == ["t/mlp"]


def test_raising_n_trials_runs_only_the_remainder(study_file: Path) -> None:
    """(--no-baseline: the ALL study alone, and no tuned-baseline study is created.)"""
    assert _run(str(study_file), "--n-trials", "2")[0] == 0
    assert _run(str(study_file), "--n-trials", "3")[0] == 0
    assert [t.number for t in _trials()] == [0, 1, 2]
    assert optuna.get_all_study_names(STORAGE) == ["t/mlp"]


def test_the_test_split_is_never_evaluated(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoall.training._data import DeviceData

    splits: list[str] = []
    test_sizes: list[int] = []
    real_split = DeviceData.split
    real_train = autoall.training._plan.train

    def recording_split(self: DeviceData, which: str):  # type: ignore[no-untyped-def]
        splits.append(which)
        return real_split(self, which)

    def recording_train(model, data, cfg, on_epoch=None, **kw):  # type: ignore[no-untyped-def]
        test_sizes.append(data.test_y.shape[0])
        assert not cfg.evaluate_test
        return real_train(model, data, cfg, on_epoch=on_epoch, **kw)

    monkeypatch.setattr(DeviceData, "split", recording_split)
    monkeypatch.setattr(autoall.training._plan, "train", recording_train)
    assert _run(str(study_file), "--n-trials", "2")[0] == 0
    assert splits and set(splits) == {"val"}
    assert test_sizes == [0, 0]  # the study's data does not even hold the test split


def test_a_diverging_study_records_pruned_trials_with_the_reason(workdir: Path) -> None:
    path = write_diverging_study(workdir, n_trials=3)
    code, out = _run(str(path))
    assert code == 0, out
    trials = _trials()
    assert _states(trials) == {"PRUNED": 3}
    for t in trials:
        assert "non-finite" in t.user_attrs["pruned_reason"]
        assert t.user_attrs["pruned_epoch"] >= 1


def test_median_pruner_prunes_and_pruned_trials_count_toward_the_target(workdir: Path) -> None:
    path = write_pruning_study(workdir)
    assert _run(str(path))[0] == 0
    states = _states(_trials())
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 8
    assert "RUNNING" not in states


def test_export_writes_every_trial_as_csv_and_as_json(study_file: Path) -> None:
    code, out = _run(str(study_file))
    assert code == 0, out
    runner = CliRunner()
    written = runner.invoke(main, ["study", "export", "t", "-o", "trials.csv"])
    assert written.exit_code == 0, written.output
    assert "Wrote 4 trials to trials.csv" in written.output
    with open("trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    exported = runner.invoke(main, ["study", "export", "t/mlp", "--format", "json"])
    assert exported.exit_code == 0, exported.output
    records = json.loads(exported.output)

    trials = _trials()
    assert [r["study"] for r in rows] == [r["study"] for r in records] == ["t/mlp"] * 4
    assert [int(r["number"]) for r in rows] == [r["number"] for r in records] == [0, 1, 2, 3]
    assert [r["state"] for r in rows] == [r["state"] for r in records] == ["COMPLETE"] * 4
    assert [float(r["value"]) for r in rows] == [t.values[0] for t in trials]  # every digit
    assert [r["value"] for r in records] == [t.values[0] for t in trials]
    assert {f"params_{k}" for k in trials[0].params} <= set(rows[0]) & set(records[0])
    for exported in (rows[0], records[0]):  # ISO 8601, as stored (tests/study/test_export.py)
        assert datetime.fromisoformat(exported["datetime_start"]) == trials[0].datetime_start
        assert exported["duration"].startswith("PT")


def test_checkpoints_no_trial_can_resume_from_are_swept_when_the_target_is_met(
    study_file: Path,
) -> None:
    code, out = _run(str(study_file), "--n-trials", "2")
    assert code == 0, out
    folder = Path(".autoall") / "checkpoints" / "t__mlp"
    folder.mkdir(parents=True, exist_ok=True)
    left = folder / "trial-0.pt"  # as a worker killed between Optuna's tell and the deletion
    left.write_bytes(b"")
    code, out = _run(str(study_file), "--n-trials", "3")
    assert code == 0, out
    assert _states(_trials()) == {"COMPLETE": 3}
    assert not list(folder.glob("*.pt"))


def test_sweep_keeps_what_a_running_or_waiting_retry_resumes_from(tmp_path: Path) -> None:
    def trial(number: int, state: TrialState, retry_of: int | None = None) -> FrozenTrial:
        attrs = {} if retry_of is None else {"failed_trial": retry_of}
        frozen = optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None, system_attrs=attrs
        )
        frozen.number = number
        return frozen

    trials = [
        trial(0, TrialState.COMPLETE),
        trial(1, TrialState.FAIL),  # stale; its retry (4) runs from trial-1.pt
        trial(2, TrialState.PRUNED),
        trial(3, TrialState.FAIL),  # stale; its retry (5) waits
        trial(4, TrialState.RUNNING, retry_of=1),
        trial(5, TrialState.WAITING, retry_of=3),
        trial(6, TrialState.RUNNING),
    ]
    names = ["trial-0.pt", "trial-1.pt", "trial-2.pt", "trial-3.pt", "trial-6.pt", "notes.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    swept = autoall.study._trials.sweep_checkpoints(tmp_path, trials)
    assert [p.name for p in swept] == ["trial-0.pt", "trial-2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.pt", "trial-1.pt", "trial-3.pt", "trial-6.pt"
    ]  # fmt: skip


def test_a_trial_out_of_memory_fails_and_its_knobs_are_queued_again(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = autoall.training._plan.train
    calls: list[int] = []

    def out_of_memory_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TrainingOOMError(batch_size=128, device="cuda:0")
        return real(*args, **kwargs)

    monkeypatch.setattr(autoall.training._plan, "train", out_of_memory_once)
    code, out = _run(str(study_file), "--n-trials", "2")
    assert code == 0, out  # not the knobs' fault: not counted against the worker
    first, retry, *_ = trials = _trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "ran out of memory with batch_size 128" in first.user_attrs["fail_reason"]
    assert retry.params == first.params
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["oom_retries"] == 1
    assert retry.user_attrs["sampler_phase"] == first.user_attrs["sampler_phase"] == "startup"


def test_a_worker_whose_trials_fail_three_times_in_a_row_stops_and_says_why(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(autoall.training._plan, "train", broken)
    code, out = _run(str(study_file))
    assert code == 1, out
    assert "3 trials in a row failed; stopping this worker" in out
    assert "Last reason: RuntimeError('boom')" in out
    assert _states(_trials()) == {"FAIL": 3}


@pytest.mark.parametrize("multi", [False, True])
def test_the_failure_table_maps_each_exception_to_its_end(multi: bool) -> None:
    from autoall.study._objective import _ending, _SurplusTrial

    pruned = _ending(optuna.TrialPruned("p"), last_epoch=4, multi=multi)
    assert (pruned.state, pruned.epoch, pruned.raises) == ("PRUNED", 4, None)
    assert pruned.attrs == {"pruned_epoch": 4}

    diverged = _ending(NonFiniteLossError(2, 7, float("nan")), last_epoch=2, multi=multi)
    assert (diverged.state, diverged.epoch, diverged.requeue) == ("PRUNED", 2, False)
    assert diverged.attrs["pruned_epoch"] == 2 and "non-finite" in diverged.attrs["pruned_reason"]
    if multi:  # Optuna cannot prune a multi-objective trial: it fails, with the reason
        assert diverged.raises is None and "fail_reason" in diverged.attrs
    else:
        assert (
            isinstance(diverged.raises, optuna.TrialPruned) and "fail_reason" not in diverged.attrs
        )

    oom = _ending(TrainingOOMError(64, "cuda:0"), last_epoch=1, multi=multi)
    assert (oom.state, oom.requeue, oom.raises) == ("FAIL", True, None)

    for exc, reason in [
        (KeyboardInterrupt(), "interrupted (Ctrl-C)"),
        (_SurplusTrial("surplus: a retried trial took its place"), "surplus: a retried"),
        (ValueError("postgresql://u:secret@db/x"), "ValueError('postgresql://u:***@db/x')"),
    ]:
        end = _ending(exc, last_epoch=1, multi=multi)
        assert (end.state, end.requeue, end.raises) == ("FAIL", False, None)
        assert end.attrs["fail_reason"].startswith(reason), end.attrs


def _wait_for_done(
    n: int, proc: subprocess.Popen[str], *, running_epochs: int = 0, stall: float = 300
) -> None:
    """Until n trials are finished and one runs, with at least `running_epochs` reported.

    Waits on states, not on the clock: as long as the worker lives and the study moves (a trial
    or an epoch more), however slowly a busy machine runs it; fails when the worker exits or
    nothing moves for `stall` seconds.
    """
    last_change, seen = time.monotonic(), -1
    while time.monotonic() - last_change < stall:
        assert proc.poll() is None, f"the worker exited ({proc.returncode}) before {n} trials"
        try:
            trials = _trials()
            done, running = finished_and_running(trials, running_epochs)
            if len(done) >= n and running:
                return
            progress = sum(len(t.intermediate_values) for t in trials) + len(trials)
            if progress != seen:
                last_change, seen = time.monotonic(), progress
        except (KeyError, optuna.exceptions.StorageInternalError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the study stalled for {stall} s before {n} finished trials")


def _kill_mid_trial(proc: subprocess.Popen[str], n: int, *, epochs: int) -> None:
    """SIGKILL the worker once n trials are finished and a RUNNING one has `epochs` reported,
    checked while the worker is stopped (SIGSTOP): that trial cannot end between check and kill."""
    while True:
        _wait_for_done(n, proc, running_epochs=epochs)
        proc.send_signal(signal.SIGSTOP)
        try:
            done, running = finished_and_running(_trials(), epochs)
        except (KeyError, optuna.exceptions.StorageInternalError):
            done, running = [], []
        if len(done) >= n and running:
            proc.kill()
            proc.wait(timeout=30)
            return
        proc.send_signal(signal.SIGCONT)


def _start(study_file: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "autoall.cli", "study", "run", str(study_file), "--no-tracking"]
    cmd += ["--no-baseline"]
    cmd += ["--checkpoint-every", "0"]  # a checkpoint after every epoch: a kill can resume
    return subprocess.Popen(
        [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "done", "running"),
    [([], 3, {1}), (["--cohort", "2"], 2, {2}), (["--n-jobs", "2"], 3, {1, 2})],
    ids=["alone", "cohort", "workers"],
)
def test_ctrl_c_fails_the_running_trials_quietly_and_prints_the_resume_command(
    workdir: Path, args: list[str], done: int, running: set[int]
) -> None:
    path = write_study(workdir / "s.yaml", train={"epochs": 12}, n_trials=6)
    command = [sys.executable, "-m", "autoall.cli", "study", "run", str(path), "--no-tracking",
               "--no-baseline", *args]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _wait_for_done(done, proc)  # `done` finished and one RUNNING, read from the storage
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        out, err = proc.communicate(timeout=600)  # a busy machine may take long; a hang fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [x for x in err.splitlines() if not x.startswith(("t/mlp ", "Optuna storage: "))]
    resume = " ".join(["autoall", "study", "run", str(path), *command[6:]])
    assert said == ["", "Interrupted; the running trials are marked FAIL. Resume with:",
                    f"  {resume}"], err  # fmt: skip
    assert out == ""
    states = _states(_trials())
    assert "RUNNING" not in states
    assert states["FAIL"] in running
    interrupted = [t for t in _trials() if t.state == TrialState.FAIL]
    assert {t.user_attrs["fail_reason"] for t in interrupted} == {"interrupted (Ctrl-C)"}

    code, out = _run(str(path))
    assert code == 0, out
    states = _states(_trials())
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 6
    assert "RUNNING" not in states


def test_a_worker_stops_at_once_after_a_ctrl_c_during_its_start_and_once_after_one_later(
    study_file: Path,
) -> None:
    """A worker starts with Ctrl-C ignored (no traceback from its imports); the parent's
    `stop` tells it one came meanwhile, and a later SIGINT interrupts it once, not twice."""
    import multiprocessing as mp

    from autoall.config._options import RunOptions
    from autoall.study._workers import _interrupt_once, _worker_process

    previous = signal.getsignal(signal.SIGINT)
    try:
        stop = mp.get_context("spawn").Event()
        stop.set()
        opts = RunOptions(storage=STORAGE, n_trials=4, n_jobs=2, tracking=False)
        with pytest.raises(SystemExit) as exited:
            _worker_process(load_study_file(study_file), opts, 0, stop)
        assert exited.value.code == 130
        assert sorted(p.name for p in study_file.parent.iterdir()) == ["study.yaml"]  # no run
        assert signal.getsignal(signal.SIGINT) is _interrupt_once
        with pytest.raises(KeyboardInterrupt):
            _interrupt_once(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the parent's repeat
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_by_the_heartbeat_and_retried(workdir: Path) -> None:
    path = write_study(workdir / "s.yaml", train={"epochs": 12}, n_trials=6)
    proc = _start(path)
    _kill_mid_trial(proc, 3, epochs=2)
    killed = [t for t in _trials() if t.state == TrialState.RUNNING]
    assert len(killed) == 1

    code, out = _run(str(path))
    assert code == 0, out
    trials = _trials()
    states = _states(trials)
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 6
    assert "RUNNING" not in states and "WAITING" not in states
    stale = trials[killed[0].number]
    assert stale.state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == stale.number)
    assert retry.params == stale.params
    assert retry.user_attrs["retry_of"] == stale.number
    # it resumed from the checkpoint of its last finished epoch, not from scratch
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= len(stale.intermediate_values) >= 2
    # inherited epochs, then the resumed ones; the epoch of the checkpoint itself is missing
    # when the kill fell between saving it and reporting it (README, "Checkpoints")
    assert set(range(1, 13)) - set(retry.intermediate_values) <= {resumed}
    assert set(retry.intermediate_values) <= set(range(1, 13))
    assert not list((workdir / ".autoall" / "checkpoints").rglob("*.pt"))  # cleaned up


def test_a_trial_whose_end_was_not_stored_keeps_its_checkpoint_for_the_retry(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is lost at Optuna's `tell` (as for a worker killed just before it): the
    trial stays RUNNING, and its checkpoint stays until the heartbeat's retry resumes it."""
    path = write_study(workdir / "s.yaml", train={"epochs": 3}, n_trials=1)
    lost = lose_first_complete(monkeypatch)
    code, out = _run(str(path), "--checkpoint-every", "0")
    assert code == 0, out
    assert len(lost) == 1
    assert "Optuna storage error (StorageInternalError: connection lost); retrying" in caplog.text
    stale, retry = _trials()
    assert stale.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resumed_from_epoch"] == 3  # every epoch kept: none trained again
    assert retry.values == [stale.intermediate_values[3]]
    assert not list((workdir / ".autoall" / "checkpoints").rglob("*.pt"))  # cleaned up


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study_exactly(study_file: Path) -> None:
    code, out = _run(str(study_file), "--n-jobs", "2", "--n-trials", "6")
    assert code == 0, out
    trials = _trials()
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    assert _states(trials) == {"COMPLETE": 6}
    workers = {t.user_attrs.get("worker_pid") for t in trials}
    assert len(workers) == 2 and os.getpid() not in workers


def _outage(seconds: float) -> BaseException:
    import sqlalchemy.exc

    refused = ConnectionRefusedError("connection to server failed: Connection refused")
    return sqlalchemy.exc.OperationalError(f"(down {seconds} s)", {}, refused)


def test_a_database_outage_shorter_than_the_grace_period_fails_no_trial(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every `trial.report` fails for 1 s from the second epoch of trial 0 on (shorter than
    grace - interval, 2 s here): the trial waits and completes, nothing is failed or rerun, and
    Optuna's "exceeding max length" is never shown."""
    down = 1.0
    path = write_study(workdir / "s.yaml", train={"epochs": 4}, n_trials=2)
    real = optuna.storages.RDBStorage._set_trial_intermediate_value_without_commit
    since: list[float] = []

    def flaky(self: object, session: object, trial_id: int, step: int, value: float) -> None:
        if step == 2 and not since:
            since.append(time.monotonic())
        if since and time.monotonic() - since[0] < down:
            raise _outage(down)
        real(self, session, trial_id, step, value)  # type: ignore[arg-type]

    monkeypatch.setattr(
        optuna.storages.RDBStorage, "_set_trial_intermediate_value_without_commit", flaky
    )
    code, out = _run(str(path), "--checkpoint-every", "0")
    assert code == 0, out
    assert "Optuna storage unreachable during set_trial_intermediate_value" in caplog.text
    assert "exceeding max length" not in caplog.text + out
    trials = _trials()
    assert _states(trials) == {"COMPLETE": 2}
    assert not any("failed_trial" in t.system_attrs for t in trials)


@pytest.mark.parametrize("command", [["study", "run"], ["report"]])
def test_device_help_names_every_form_the_option_takes(command: list[str]) -> None:
    group: Any = main
    for name in command:
        group = group.commands[name]
    (device,) = [p for p in group.params if p.name == "device"]
    assert device.help == "cpu, cuda, cuda:N, mps [default: cuda, then mps, then cpu]."
