"""`autoall study export`: ISO 8601 times and durations, floats that read back exactly, and an
`-o` that never destroys what it should not."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from conftest import write_study
from optuna.trial import FrozenTrial, TrialState

from autoall.cli._main import main

STORAGE = "sqlite:///autoall.db"
VALUES = [0.9611111111111111, 1 / 3, 0.1 + 0.2]  # 10 digits would change each of them
DURATION = re.compile(r"^PT(\d+)\.(\d{6})S$")


@pytest.fixture
def stored(workdir: Path) -> dict[str, list[FrozenTrial]]:
    """t/mlp with three complete trials and a failed one, t/mlp/tuned-baseline with one
    complete trial and none of the ALL's knobs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = {}
    for name, values in (("t/mlp", VALUES), ("t/mlp/tuned-baseline", [0.7])):
        study = optuna.create_study(study_name=name, storage=STORAGE, direction="maximize")
        for value in [*values, None]:
            trial = study.ask()
            if name == "t/mlp":
                trial.suggest_int("hidden_size", 8, 64)
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.set_user_attr("epochs", 3)
            if value is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
        trials[name] = study.get_trials()
    return trials


def _export(*args: str) -> Result:
    return CliRunner().invoke(main, ["study", "export", "t", *args])


def _duration(text: str) -> timedelta:
    match = DURATION.match(text)
    assert match, text
    return timedelta(seconds=int(match.group(1)), microseconds=int(match.group(2)))


def test_csv_and_json_hold_iso_8601_times_and_durations_and_every_digit(
    stored: dict[str, list[FrozenTrial]],
) -> None:
    written = _export("-o", "trials.csv")
    assert written.exit_code == 0, written.output
    assert written.output == "Wrote 6 trials to trials.csv\n"
    rows = list(csv.DictReader(io.StringIO(Path("trials.csv").read_text())))
    as_json = _export("--format", "json")
    assert as_json.exit_code == 0, as_json.output
    records = json.loads(as_json.stdout)
    trials = [t for name in ("t/mlp", "t/mlp/tuned-baseline") for t in stored[name]]
    assert len(rows) == len(records) == len(trials) == 6
    optuna_columns = optuna.load_study(study_name="t/mlp", storage=STORAGE).trials_dataframe()
    assert list(rows[0]) == list(records[0]) == ["study", *optuna_columns.columns]
    for row, record, trial in zip(rows, records, trials, strict=True):
        for exported in (row, record):
            assert datetime.fromisoformat(exported["datetime_start"]) == trial.datetime_start
            assert datetime.fromisoformat(exported["datetime_complete"]) == (
                trial.datetime_complete
            )
            assert re.match(r"^P.*T[0-9.]+S$", exported["duration"])
            assert _duration(exported["duration"]) == trial.duration
            assert exported["state"] == trial.state.name
            assert float(exported["params_lr"]) == trial.params["lr"]  # float equality
        if trial.state == TrialState.COMPLETE:
            assert float(row["value"]) == record["value"] == trial.value
        else:
            assert (row["value"], record["value"]) == ("", None)
        if "hidden_size" in trial.params:  # an int, not 12.0
            assert row["params_hidden_size"] == str(trial.params["hidden_size"])
            assert record["params_hidden_size"] == trial.params["hidden_size"]
        else:
            assert (row["params_hidden_size"], record["params_hidden_size"]) == ("", None)
        assert (row["user_attrs_epochs"], record["user_attrs_epochs"]) == ("3", 3)
    assert [r["value"] for r in records[:3]] == VALUES


def test_missing_folders_of_o_are_made(stored: dict[str, list[FrozenTrial]]) -> None:
    result = _export("-o", "out/csv/trials.csv")
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(Path("out/csv/trials.csv").read_text())))) == 6


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_failed_write_is_one_line_naming_the_file(stored: dict[str, list[FrozenTrial]]) -> None:
    result = _export("-o", "/dev/full")
    assert result.exit_code == 1, result.output
    assert result.output == "Error: cannot write -o /dev/full: No space left on device.\n"


def test_o_never_names_the_storage_the_mlflow_database_or_a_study_file(
    stored: dict[str, list[FrozenTrial]], workdir: Path
) -> None:
    write_study(workdir / "study.yaml")
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "mlflow.db").write_bytes(b"SQLite format 3\x00")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    refused = {
        "autoall.db": "is the Optuna storage this export reads; writing there would destroy it",
        str(workdir / "autoall.db"): "is the Optuna storage this export reads",
        "./mlruns/../autoall.db": "is the Optuna storage this export reads",
        "mlruns/mlflow.db": "is the MLflow database; writing there would destroy it",
        "study.yaml": "is a YAML file (a study file); pass another file.",
    }
    for output, said in refused.items():
        for force in ([], ["--force"]):
            result = _export("-o", output, *force)
            assert result.exit_code == 2, result.output
            assert result.output.startswith(f"Error: -o {output} {said}")
            assert result.output.count("\n") == 1
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    kept = optuna.load_study(study_name="t/mlp", storage=STORAGE).get_trials()
    assert [t.values for t in kept] == [t.values for t in stored["t/mlp"]]  # every trial there


def test_an_existing_file_is_overwritten_only_with_force(
    stored: dict[str, list[FrozenTrial]],
) -> None:
    Path("trials.json").write_text("mine\n")
    refused = _export("--format", "json", "-o", "trials.json")
    assert refused.exit_code == 2
    assert refused.output == (
        "Error: -o trials.json exists; pass --force to overwrite it, or another file.\n"
    )
    assert Path("trials.json").read_text() == "mine\n"
    forced = _export("--format", "json", "-o", "trials.json", "--force")
    assert forced.exit_code == 0, forced.output
    assert [r["value"] for r in json.loads(Path("trials.json").read_text())][:3] == VALUES


def test_several_objectives_are_values_columns_as_optuna_names_them(workdir: Path) -> None:
    study = optuna.create_study(
        study_name="m/mlp", storage=STORAGE, directions=["maximize", "minimize"]
    )
    trial = study.ask()
    study.tell(trial, [VALUES[0], 12.345678901234567])
    expected = list(study.trials_dataframe().columns)  # Optuna's own names
    result = CliRunner().invoke(main, ["study", "export", "m", "--format", "json"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert list(record) == ["study", *expected]
    assert (record["values_0"], record["values_1"]) == (VALUES[0], 12.345678901234567)
