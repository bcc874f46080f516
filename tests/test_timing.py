"""autoall.timing: a benchmark's recorder collects the named spans of a real study run, and
without one nothing is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_study

from autoall import _timing as timing
from autoall.cli._main import main


def test_a_study_run_records_its_named_spans(workdir: Path) -> None:
    study = write_study(workdir / "study.yaml", n_trials=2)  # 3 epochs a trial
    run = ["study", "run", str(study), "--no-tracking", "--no-baseline", "--checkpoint-every", "0"]
    with timing.recording() as spans:
        result = CliRunner().invoke(main, run)
    assert result.exit_code == 0, result.output
    per_trial = ("trial.optimize", "trial.optuna_ask", "trial.suggest", "trial.build_model")
    per_trial += ("trial.train", "trial.optuna_tell", "trial.after_trial")
    per_trial += ("tracking.start_trial", "tracking.finish")
    for name in per_trial:
        assert len(spans[name]) == 2, name
    for name in ("epoch.compute", "epoch.optuna_report", "epoch.should_prune"):
        assert len(spans[name]) == 6, name
    assert len(spans["tracking.log_epoch"]) == 6
    assert spans["epoch.checkpoint"]  # --checkpoint-every 0: a checkpoint after an epoch
    for name in ("setup.create_studies", "setup.data", "tracking.connect", "loop.run_worker"):
        assert len(spans[name]) == 1, name
    assert len(spans["setup.storage"]) >= 2  # the command's, the worker's, the monitor's
    assert spans["monitor.draw"]  # at least the final state
    assert all(s >= 0 for seconds in spans.values() for s in seconds)
    # nested spans: an epoch's compute < its trial's train() < the trial < the worker loop
    assert sum(spans["epoch.compute"]) < sum(spans["trial.train"])
    assert sum(spans["trial.train"]) < sum(spans["trial.optimize"])
    assert sum(spans["trial.optimize"]) < sum(spans["loop.run_worker"])


def test_a_cohort_run_records_each_member_s_ask_and_tell_and_one_batched_training(
    workdir: Path,
) -> None:
    study = write_study(workdir / "study.yaml", n_trials=2)  # 3 epochs a trial
    run = ["study", "run", str(study), "--no-tracking", "--no-baseline", "--cohort", "2"]
    with timing.recording() as spans:
        result = CliRunner().invoke(main, run)
    assert result.exit_code == 0, result.output
    assert len(spans["cohort.train"]) == 1  # both members in one batched job
    for name in ("trial.optuna_ask", "trial.suggest", "trial.optuna_tell", "trial.after_trial"):
        assert len(spans[name]) == 2, name
    for name in ("tracking.start_trial", "tracking.finish"):
        assert len(spans[name]) == 2, name
    for name in ("epoch.optuna_report", "epoch.should_prune", "tracking.log_epoch"):
        assert len(spans[name]) == 6, name
    assert "trial.optimize" not in spans and "trial.train" not in spans  # not one at a time
    assert sum(spans["cohort.train"]) < sum(spans["loop.run_worker"])


def test_without_a_recorder_nothing_is_recorded(workdir: Path) -> None:
    study = write_study(workdir / "study.yaml", n_trials=1)
    result = CliRunner().invoke(
        main, ["study", "run", str(study), "--no-tracking", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    assert timing._recorder is None
    with timing.recording() as spans:
        pass
    assert spans == {}  # the run before left nothing behind


def test_spans_record_only_inside_recording() -> None:
    @timing.span("f")
    def f(x: int) -> int:
        return 2 * x

    outer = timing.span("entered before")
    outer.__enter__()
    assert f(1) == 2  # no recorder: the call runs, nothing is kept
    timing.add("added", 1.0)
    with timing.recording() as spans:
        outer.__exit__(None, None, None)  # entered without a recorder: not timed
        assert f(2) == 4
        with pytest.raises(ValueError), timing.span("raised"):
            raise ValueError("a span is kept when its block raises")
        timing.add("added", 0.5)
        with timing.recording() as inner:
            timing.add("inner", 0.25)
        timing.add("added", 0.25)
    assert set(spans) == {"f", "raised", "added"} and spans["added"] == [0.5, 0.25]
    assert inner == {"inner": [0.25]}
    assert timing._recorder is None
