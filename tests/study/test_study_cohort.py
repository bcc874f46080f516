"""`autoall study run --cohort K`: K trials asked at once, trained together, each told its own
result; exact targets, Ctrl-C, killed workers, lost storage, pruning and MLflow runs behave as
for single trials (tests/study/test_study.py, tests/tracking/test_tracking_study.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _helpers import (
    finished_and_running,
    lose_first_complete,
    make_vmap_unbatchable,
    write_diverging_study,
    write_pruning_study,
)
from _helpers import trial_states as _states
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

import autoall.study._objective
import autoall.study._trials
import autoall.study._worker_loop
import autoall.training.cohort._loop
from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.config._trial_plan import trial_plan
from autoall.study._trials import load_study_data
from autoall.training._plan import fit

STORAGE = "sqlite:///autoall.db"


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread is fastest on a busy machine
    yield
    torch.set_num_threads(threads)


def _trials(name: str = "t/mlp") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=STORAGE).get_trials(deepcopy=False)


def _run(*args: str, tracking: bool = False) -> tuple[int, str]:
    command = ["study", "run", *args, "--no-baseline"]
    result = CliRunner().invoke(main, command + ([] if tracking else ["--no-tracking"]))
    return result.exit_code, result.output


def test_each_member_is_told_the_result_it_has_alone_and_the_target_is_exact(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 trials in cohorts of 3: one cohort of 3, then one of 1 (never 6); each trial's value is
    the final validation accuracy of its knobs trained alone."""
    sizes: list[int] = []
    real = autoall.training.cohort._loop.CohortLoop.__init__

    def counting(self: Any, plans: Any, *args: Any, **kwargs: Any) -> None:
        sizes.append(len(plans))
        real(self, plans, *args, **kwargs)

    monkeypatch.setattr(autoall.training.cohort._loop.CohortLoop, "__init__", counting)
    code, out = _run(str(study_file), "--cohort", "3")
    assert code == 0, out
    assert "4/4 (4 complete, 0 pruned, 0 failed, 0 running)" in out
    trials = _trials()
    assert _states(trials) == {"COMPLETE": 4} and sizes == [3]  # the last one trains alone
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # TPE's own suggestions
    cfg = load_study_file(study_file)
    data = load_study_data(cfg, "cpu")
    for t in trials:
        alone = fit(trial_plan(cfg, "mlp", "all", t.params, device="cpu"), data)
        assert t.values[0] == alone.final_val_acc, t.number
        assert t.user_attrs["epochs"] == 3
        assert t.user_attrs["params_total"] == alone.params.total
        assert t.intermediate_values == {s.epoch: s.val_acc for s in alone.history}
    code, out = _run(str(study_file), "--cohort", "3")
    assert code == 0 and "Target met" in out


def test_what_vmap_cannot_batch_falls_back_to_single_trials_with_one_line(
    study_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_vmap_unbatchable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="autoall.cohort"):
        code, out = _run(str(study_file), "--cohort", "3")
    assert code == 0, out
    assert _states(_trials()) == {"COMPLETE": 4}
    assert [r.getMessage() for r in caplog.records if r.name == "autoall.cohort"] == [
        "mlp runs cannot train as one cohort (torch.vmap: RuntimeError: Batching rule not "
        "implemented for aten::something); training them one by one."
    ]


def test_diverging_and_pruned_members_end_alone_and_count(workdir: Path) -> None:
    path = write_diverging_study(workdir, n_trials=3)
    code, out = _run(str(path), "--cohort", "3")
    assert code == 0, out
    trials = _trials()
    assert _states(trials) == {"PRUNED": 3}
    for t in trials:
        assert "non-finite" in t.user_attrs["pruned_reason"] and t.user_attrs["pruned_epoch"] >= 1

    pruned = write_pruning_study(workdir, name="p")
    code, out = _run(str(pruned), "--cohort", "4")
    assert code == 0, out
    states = _states(_trials("p/mlp"))
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 8
    assert set(states) <= {"COMPLETE", "PRUNED"}


def test_a_bad_cohort_is_one_line_and_exit_code_2(study_file: Path) -> None:
    result = CliRunner().invoke(main, ["study", "run", str(study_file), "--cohort", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--cohort': 0 is not in the range x>=1." in result.output
    assert not Path("autoall.db").exists()  # nothing stored


def test_a_member_whose_end_was_not_stored_is_retried_from_its_checkpoint(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is lost when the first member is told: the worker waits it out, both
    members (one told nothing, one never told) go stale and are retried, resuming every epoch."""
    path = write_study(workdir / "s.yaml", train={"epochs": 3}, n_trials=2)
    lose_first_complete(monkeypatch)
    code, out = _run(str(path), "--cohort", "2", "--checkpoint-every", "0")
    assert code == 0, out
    assert "Optuna storage error (StorageInternalError: connection lost); retrying" in caplog.text
    trials = _trials()
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2  # stale
    retries = trials[2:]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1]
    for retry in retries:
        stale = trials[retry.user_attrs["retry_of"]]
        assert retry.state == TrialState.COMPLETE and retry.params == stale.params
        assert retry.user_attrs["resumed_from_epoch"] == 3  # nothing trained again
        assert retry.values == [stale.intermediate_values[3]]
    assert not list((workdir / ".autoall" / "checkpoints").rglob("*.pt"))


def test_a_member_failed_as_stale_meanwhile_is_not_told_and_keeps_its_checkpoint(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker failed member 0 as stale (its heartbeat late through a database blip)
    while it trained: its end is not told over that, the cohort goes on, the checkpoint its
    retry would resume from stays."""
    path = write_study(workdir / "s.yaml", train={"epochs": 3}, n_trials=2)
    real = autoall.study._objective.TrialRun.on_epoch

    def failed_elsewhere(self: Any, stats: Any) -> None:
        real(self, stats)
        if self.trial.number == 0 and stats.epoch == 3:
            self.trial.study._storage.set_trial_state_values(self.trial._trial_id, TrialState.FAIL)

    monkeypatch.setattr(autoall.study._objective.TrialRun, "on_epoch", failed_elsewhere)
    checkpoints = workdir / ".autoall" / "checkpoints"
    sweep = autoall.study._worker_loop._sweep
    seen: list[list[str]] = []  # the checkpoints there when the target was met

    def seeing(ctx: Any, study: optuna.Study) -> None:
        seen.append([p.name for p in checkpoints.rglob("*.pt")])
        sweep(ctx, study)

    monkeypatch.setattr(autoall.study._worker_loop, "_sweep", seeing)
    code, out = _run(str(path), "--cohort", "2", "--checkpoint-every", "0")
    assert code == 0, out
    assert "trial 0 was failed as stale before its end was told" in caplog.text
    trials = _trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert seen[0] == ["trial-0.pt"]  # kept for its retry while the cohort went on
    # the target met, with no retry of trial 0 queued here (the test failed it without one):
    # nothing can resume from its checkpoint any more, and the sweep deleted it
    assert not list(checkpoints.rglob("*.pt"))


def test_member_runs_mirror_their_trials_in_mlflow(
    workdir: Path, tracked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[int, int] = {}

    def prune_trial_1_at_epoch_2(self: optuna.Trial) -> bool:
        asked[self.number] = asked.get(self.number, 0) + 1
        return self.number == 1 and asked[self.number] == 2

    monkeypatch.setattr(optuna.Trial, "should_prune", prune_trial_1_at_epoch_2)
    path = write_study(workdir / "s.yaml", n_trials=3)
    code, out = _run(str(path), "--cohort", "3", tracking=True)
    assert code == 0, out
    trials = _trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    client = MlflowClient(f"sqlite:///{(workdir / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    parents = client.search_runs(
        [experiment.experiment_id], "tags.\"autoall.role\" = 'study'", max_results=10
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    summary = parents[0].data.metrics
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (2, 1, 0)
    children = {
        r.info.run_id: r
        for r in client.search_runs(
            [experiment.experiment_id],
            f"tags.\"mlflow.parentRunId\" = '{parents[0].info.run_id}'",
            max_results=100,
        )
    }
    assert len(children) == 3
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}
    for t in trials:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.info.status == status[t.state.name]
        assert run.data.tags["optuna.state"] == t.state.name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == sorted(t.intermediate_values)
        assert run.data.params["all.hidden_size"] == str(t.params["hidden_size"])
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["final_val_acc"] == pytest.approx(t.values[0])


def _wait_for(done: int, running: int, epochs: int = 1, timeout: float = 180) -> None:
    """Until `done` trials are finished and `running` run, each with `epochs` reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, live = finished_and_running(_trials(), epochs)
            if len(finished) >= done and len(live) >= running:
                return
        except (KeyError, optuna.exceptions.StorageInternalError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {done} finished and {running} running trials in {timeout} s")


def _start(path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "autoall.cli", "study", "run", str(path), "--no-tracking"]
    command += ["--no-baseline", "--checkpoint-every", "0", "--cohort", "3", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ctrl_c_marks_every_member_failed_and_prints_the_resume_command(workdir: Path) -> None:
    path = write_study(workdir / "s.yaml", train={"epochs": 8}, n_trials=6)
    proc = _start(path)
    _wait_for(3, 3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Resume with:" in out and "--cohort 3" in out
    trials = _trials()
    assert _states(trials) == {"COMPLETE": 3, "FAIL": 3}
    for t in trials[3:]:
        assert t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert not list((workdir / ".autoall" / "checkpoints").rglob("*.pt"))  # removed

    code, out = _run(str(path), "--cohort", "3")
    assert code == 0, out
    states = _states(_trials())
    assert states.get("COMPLETE", 0) == 6 and "RUNNING" not in states


@pytest.mark.slow
def test_a_killed_worker_s_members_are_failed_by_the_heartbeat_and_retried(
    workdir: Path,
) -> None:
    path = write_study(workdir / "s.yaml", train={"epochs": 8}, n_trials=6)
    proc = _start(path)
    _wait_for(3, 3, epochs=2)
    proc.kill()
    proc.wait(timeout=30)
    killed = [t for t in _trials() if t.state == TrialState.RUNNING]
    assert len(killed) == 3

    code, out = _run(str(path), "--cohort", "3")
    assert code == 0, out
    trials = _trials()
    states = _states(trials)
    assert states.get("COMPLETE", 0) == 6 and states["FAIL"] == 3
    for stale in killed:
        assert trials[stale.number].state == TrialState.FAIL
        retry = next(t for t in trials if t.system_attrs.get("failed_trial") == stale.number)
        assert retry.params == stale.params and retry.user_attrs["retry_of"] == stale.number
        resumed = retry.user_attrs["resumed_from_epoch"]
        assert resumed >= len(stale.intermediate_values) >= 2  # from its own checkpoint
        assert set(range(1, 9)) - set(retry.intermediate_values) <= {resumed}
    assert not list((workdir / ".autoall" / "checkpoints").rglob("*.pt"))


@pytest.mark.slow
def test_two_workers_with_cohorts_meet_the_target_exactly(study_file: Path) -> None:
    code, out = _run(str(study_file), "--n-jobs", "2", "--n-trials", "7", "--cohort", "3")
    assert code == 0, out
    trials = _trials()
    assert _states(trials) == {"COMPLETE": 7}  # no surplus trial, none missing
    assert len({t.number for t in trials}) == 7
    workers = {t.user_attrs.get("worker_pid") for t in trials}
    assert len(workers) == 2 and os.getpid() not in workers
