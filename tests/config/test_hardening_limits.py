"""Limits and odd input (issue 23, cases 12-16): names that fit on disk in bytes, study files
that are regular plain-text files, the memory check counting cohorts, seeds whose derived seeds
stay 32-bit, and values a range check let through (NaN, negative seeds, the MLflow database as
the Optuna storage, the name `Default`). Each: one line, exit code 2, nothing created first."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study

import autoall.study._preflight
import autoall.training._plan
from autoall.cli._main import main
from autoall.config._options import MAX_REPLICATES, REPORT_COUNTS
from autoall.config._study_file import (
    MAX_TRAIN_SEED,
    NAME_MAX_BYTES,
    SEED_SPAN,
    StudyFileError,
    check_name,
    load_study_file,
)
from autoall.config._yaml import YamlProblem, read_text
from autoall.report._arch import eval_seeds, selection_seeds
from autoall.study._preflight import Cohort, check_model_size, largest_models, report_cohort
from autoall.study._trials import WorkerContext, make_sampler
from autoall.training._data import load_data, train_subset
from autoall.training._models import ARCHITECTURES


def _one_error(output: str) -> str:
    """The single `Error:` line of `output`: no traceback, no second error line."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the input was refused")

    monkeypatch.setattr(autoall.training._plan, "train", refuse)


# --- 12: a name's bytes on disk ------------------------------------------------------------


def _name_of_bytes(n: int) -> str:
    """A valid name of exactly `n` UTF-8 bytes, mostly 3-byte CJK characters."""
    cjk, rest = divmod(n, 3)
    return "a" * rest + "名" * cjk


def test_a_name_at_the_byte_limit_fits_every_file_it_names_and_one_byte_more_is_refused(
    tmp_path: Path,
) -> None:
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("this file system's names are not limited to 255 bytes")
    longest = max(ARCHITECTURES, key=len)
    name = _name_of_bytes(NAME_MAX_BYTES)
    assert check_name(name) == name and len(name) < 100  # the character limit is not what holds
    cfg = load_study_file(write_study(tmp_path / "s.yaml", name=name, architectures=[longest]))
    study = cfg.study_name(longest, "baseline", MAX_REPLICATES - 1)
    ctx = WorkerContext(cfg, longest, "baseline", None, None, None, None, 1,  # type: ignore[arg-type]
                        checkpoint_dir=tmp_path / "ck", replicate=MAX_REPLICATES - 1)  # fmt: skip
    assert ctx.checkpoint_folder is not None
    ctx.checkpoint_folder.mkdir(parents=True)  # <name>__resnet18__tuned-baseline__r99
    (ctx.checkpoint_folder / "trial-0.pt").write_bytes(b"x")
    reports = tmp_path / "reports"
    (reports / name).mkdir(parents=True)
    figure = f"optimisation_history_{study.replace('/', '_')}.png"  # as autoall/report/_plots.py names it
    assert len(figure.encode()) == 255
    (reports / name / figure).write_bytes(b"png")
    tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=reports)  # the report's temporary

    over = _name_of_bytes(NAME_MAX_BYTES + 1)
    with pytest.raises(OSError) as caught:  # the file system agrees: one byte more does not fit
        (reports / name / figure.replace(name, over)).write_bytes(b"png")
    assert caught.value.errno == errno.ENAMETOOLONG
    with pytest.raises(ValueError, match=rf"202 bytes in UTF-8 .*but got {NAME_MAX_BYTES + 1}"):
        check_name(over)


def test_a_hundred_cjk_characters_are_refused_before_anything_is_stored(
    workdir: Path, no_training: None
) -> None:
    path = write_study(workdir / "s.yaml", name="名" * 100)
    for args in (["study", "run", "s.yaml"], ["report", "s.yaml"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        error = _one_error(result.output)
        assert error.startswith(f"Error: {path.name}: name: the study name must have letters")
        assert error.endswith("at most 100 characters and 202 bytes in UTF-8 (it names the "
                              "Optuna studies, the MLflow experiment, the report folder and its "
                              "files), but got 300 bytes.")  # fmt: skip
    write_study(workdir / "ok.yaml")
    result = CliRunner().invoke(main, ["study", "run", "ok.yaml", "--study-name", "名" * 68])
    assert result.exit_code == 2 and "but got 204 bytes." in _one_error(result.output)
    assert _listing(workdir) == ["ok.yaml", "s.yaml"]


# --- 13: a study file is a regular file of plain text ----------------------------------------


@pytest.mark.slow  # a fresh interpreter: ~5-10 s on two busy cores
def test_a_fifo_as_study_file_is_one_line_and_never_waits_for_a_writer(workdir: Path) -> None:
    os.mkfifo(workdir / "fifo.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "autoall.cli", "study", "run", "fifo.yaml"],
        capture_output=True,
        text=True,
        timeout=120,  # the old code blocked here forever
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "Error: fifo.yaml: is a named pipe (FIFO), not a study file; give the path of a YAML "
        "file.\n"
    )
    assert _listing(workdir) == ["fifo.yaml"]


def test_read_text_refuses_devices_and_follows_a_symlink_to_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.yaml").symlink_to("fifo")  # a planted symlink to the pipe
    outcome: list[BaseException | str] = []
    reader = threading.Thread(target=lambda: _capture(outcome, tmp_path / "link.yaml"), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], YamlProblem) and "named pipe (FIFO)" in str(outcome[0])
    with pytest.raises(YamlProblem, match=r"^is a character device, not a study file"):
        read_text(Path("/dev/null"))
    with pytest.raises(YamlProblem, match=r"^is a folder, not a study file\.$"):
        read_text(tmp_path)
    (tmp_path / "real.yaml").write_text("name: ok\n")
    (tmp_path / "good.yaml").symlink_to(tmp_path / "real.yaml")
    assert read_text(tmp_path / "good.yaml") == "name: ok\n"


def _capture(outcome: list[BaseException | str], path: Path) -> None:
    try:
        outcome.append(read_text(path))
    except BaseException as exc:
        outcome.append(exc)


CONTROL = [
    ("SOH", b"name: a\x01b\n", 1, 8, "control character U+0001"),
    ("NUL", b"name: ok\nn_trials: 3\x00\n", 2, 12, "control character U+0000"),
    ("DEL", b"name: ok\n# \x7f\n", 2, 3, "control character U+007F"),
    ("C1", "name: ok\n  # \u0080\n".encode(), 2, 5, "control character U+0080"),
    ("U+FFFE", "name: ok\n#\ufffe\n".encode(), 2, 2, "character U+FFFE"),
]


@pytest.mark.parametrize(
    ("content", "line", "column", "what"), [c[1:] for c in CONTROL], ids=[c[0] for c in CONTROL]
)
def test_a_control_byte_is_one_line_naming_file_line_and_column(
    workdir: Path, content: bytes, line: int, column: int, what: str
) -> None:
    (workdir / "bad.yaml").write_bytes(content)
    result = CliRunner().invoke(main, ["study", "run", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert _one_error(result.output) == (
        f"Error: bad.yaml: holds the {what} at line {line}, column {column}, which YAML does not "
        "allow; a study file is plain text (tabs and line breaks only): remove it."
    )
    assert _listing(workdir) == ["bad.yaml"]


def test_tabs_and_line_breaks_are_still_plain_text(tmp_path: Path) -> None:
    path = write_study(tmp_path / "s.yaml")
    path.write_bytes(b"# a\tcomment\r\n" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_study_file(path).name == "t"


# --- 14: the memory check counts the runs that train at once -------------------------------


def test_the_memory_check_multiplies_by_the_cohort(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, no_training: None
) -> None:
    path = write_study(workdir / "s.yaml")
    cfg = load_study_file(path)
    (size,) = largest_models(cfg)
    one = size.train_bytes
    monkeypatch.setattr(autoall.study._preflight, "physical_memory", lambda: int(3.5 * one))
    cpu = torch.device("cpu")
    assert (
        check_model_size(cfg, cpu, Cohort(3, "--cohort 3", "lower --cohort"))[0].train_bytes
        == 3 * one
    )

    result = CliRunner().invoke(main, ["study", "run", "s.yaml", "--cohort", "4"])
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    assert error.startswith("Error: --cohort 4: 4 runs train at once, and the largest model this "
                            f"search space allows, mlp with hidden_size 32 (positions: {size.positions}), has "
                            f"{size.parameters:,} parameters")  # fmt: skip
    assert "more than this machine's memory (cpu)" in error
    assert error.endswith("; lower --cohort (at most 3 fit), or lower search.hidden_size's high.")

    # the report: its largest cohort, the option given or else the file's key
    for args, source in (
        ([], "Error: s.yaml: report.tuning_trials 8: 8 runs train at once"),
        (["--tuning-trials", "0", "--seeds", "4"], "Error: --seeds 4: 4 runs train at once"),
        (["--tuning-trials", "2", "--selection-seeds", "5"], "Error: --selection-seeds 5: "),
    ):
        result = CliRunner().invoke(main, ["report", "s.yaml", *args])
        assert result.exit_code == 2, result.output
        error = _one_error(result.output)
        assert error.startswith(source), error
        assert "or pass --no-cohorts (at most 3 fit)" in error
    assert report_cohort(cfg, seeds=None, selection_seeds=None, cohorts=False).size == 1
    # one at a time fits: the report gets past the memory check (to the missing studies)
    result = CliRunner().invoke(main, ["report", "s.yaml", "--no-cohorts"])
    assert result.exit_code == 2 and "runs train at once" not in result.output
    assert _listing(workdir) == ["s.yaml"]


# --- 15: every seed derived from train.seed stays 32-bit -----------------------------------


def test_every_seed_derived_from_the_largest_train_seed_is_a_valid_seed() -> None:
    top = 2**32 - 1
    most = {k: high for k, (_, high) in REPORT_COUNTS.items()}
    s0 = MAX_TRAIN_SEED
    derived = [
        s0 + MAX_REPLICATES - 1,  # the last replicate's search seed
        *eval_seeds(s0, most["seeds"]),
        *(
            s
            for r in range(MAX_REPLICATES)
            for s in selection_seeds(s0, most["selection_seeds"], r)
        ),
    ]
    assert max(derived) == top == s0 + SEED_SPAN  # the bound is tight
    assert max(selection_seeds(s0 + 1, most["selection_seeds"], MAX_REPLICATES - 1)) == top + 1
    data = load_data("digits")
    train_subset(data, 0.5, seed=max(derived))  # scikit-learn takes the largest
    with pytest.raises(ValueError, match="random_state"):
        train_subset(data, 0.5, seed=top + 1)  # and refuses one more, as the report would hit


def test_the_documented_maximum_seed_is_refused_before_the_report_trains(
    workdir: Path, no_training: None
) -> None:
    write_study(workdir / "s.yaml", train={"epochs": 1, "seed": 2**32 - 1})
    for args in (["study", "run", "s.yaml"], ["report", "s.yaml"], ["train", "--study", "s.yaml"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert _one_error(result.output) == (
            "Error: s.yaml: train.seed: must be an integer between 0 and 4294955296 (the report "
            "trains with seeds up to train.seed + 11999; NumPy's and scikit-learn's end at "
            "4294967295), but got 4294967295."
        )
    assert _listing(workdir) == ["s.yaml"]


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "nsgaii"])
def test_the_largest_sampler_and_split_seeds_work(tmp_path: Path, name: str) -> None:
    path = write_study(tmp_path / "s.yaml", sampler={"name": name, "seed": 2**32 - 1},
                       data={"name": "digits", "split_seed": 2**32 - 1},
                       train={"seed": MAX_TRAIN_SEED})  # fmt: skip
    cfg = load_study_file(path)
    study = optuna.create_study(sampler=make_sampler(cfg), direction="maximize")
    trial = study.ask()
    assert 1e-3 <= trial.suggest_float("all_lr", 1e-3, 1e-2, log=True) <= 1e-2
    if name == "tpe":
        assert load_data("digits", split_seed=cfg.data.split_seed).sizes["val"] > 0


# --- 16: values a range check let through ----------------------------------------------------


NAN = [
    (["report", "s.yaml", "--target-acc", "nan"], "Invalid value for '--target-acc': nan is not "
     "a number in the range 0<x<=1."),
    (["report", "s.yaml", "--margin", "nan"], "Invalid value for '--margin': nan is not a number "
     "in the range 0<x<100."),
    (["study", "run", "s.yaml", "--checkpoint-every", "nan"], "Invalid value for "
     "'--checkpoint-every': nan is not a number in the range x>=0."),
    (["train", "--target-acc", "nan"], "Error: --target-acc must be in (0, 1], but got nan."),
    (["train", "--seed", "-1"], "Error: --seed must be an integer between 0 and 4294967295, but "
     "got -1."),
    (["train", "--seed", str(2**32)], "Error: --seed must be an integer between 0 and "
     "4294967295, but got 4294967296."),
    (["demo", "--n-trials", "-1"], "Invalid value for '--n-trials': -1 is not in the range x>=1."),
    (["study", "run", "s.yaml", "--n-trials", "0"], "Invalid value for '--n-trials': 0 is not in "
     "the range x>=1."),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), NAN, ids=[" ".join(a[:1] + a[-2:]) for a, _ in NAN])
def test_a_value_no_range_holds_is_refused_before_anything_is_stored(
    workdir: Path, no_training: None, args: list[str], words: str
) -> None:
    write_study(workdir / "s.yaml")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert words in _one_error(result.output)
    assert _listing(workdir) == ["s.yaml"]


STORAGE = [
    (["study", "run", "s.yaml", "--storage", "sqlite:///mlruns/mlflow.db"], {}),
    (["study", "run", "s.yaml", "--no-tracking", "--storage", "sqlite:///./mlruns/../mlruns/"
      "mlflow.db?timeout=5"], {}),
    (["study", "create", "s.yaml", "--storage", "sqlite:///mlruns/mlflow.db"], {}),
    (["report", "s.yaml", "--storage", "sqlite:///mlruns/mlflow.db"], {}),
    (["study", "run", "s.yaml"], {"MLFLOW_TRACKING_URI": "sqlite:///autoall.db"}),
    (["study", "run", "s.yaml", "--storage", "sqlite:///link.db"], {}),  # a symlink to it
]  # fmt: skip


@pytest.mark.parametrize(("args", "env"), STORAGE, ids=[str(i) for i in range(len(STORAGE))])
def test_the_mlflow_database_is_refused_as_the_optuna_storage(
    workdir: Path, no_training: None, args: list[str], env: dict[str, str]
) -> None:
    write_study(workdir / "s.yaml")
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "mlflow.db").write_bytes(b"")  # the tracking store, not yet made
    (workdir / "link.db").symlink_to("mlruns/mlflow.db")
    before = _listing(workdir)
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    assert error.startswith("Error: --storage sqlite:///") and " is the MLflow tracking database "
    assert error.endswith("and Optuna's tables cannot share MLflow's: point --storage (or "
                          "$AUTOALL_STORAGE) or the tracking URI (--tracking-uri, "
                          "$MLFLOW_TRACKING_URI) at another database.")  # fmt: skip
    assert _listing(workdir) == before
    assert (workdir / "mlruns" / "mlflow.db").read_bytes() == b""  # no Optuna table in it


@pytest.mark.slow  # trains one trial
def test_a_storage_apart_from_the_mlflow_database_still_runs(workdir: Path) -> None:
    write_study(workdir / "s.yaml", n_trials=1, train={"epochs": 1})
    (workdir / "mlruns").mkdir()
    result = CliRunner().invoke(main, ["study", "run", "s.yaml", "--no-tracking", "--no-baseline",
                                       "--storage", "sqlite:///mlruns/optuna.db"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="t/mlp", storage="sqlite:///mlruns/optuna.db").trials)


@pytest.mark.parametrize("name", ["Default", "default", "DEFAULT"])
def test_the_name_default_is_refused(workdir: Path, no_training: None, name: str) -> None:
    write_study(workdir / "s.yaml", name=name)
    for args in (["study", "run", "s.yaml"], ["report", "s.yaml"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert _one_error(result.output) == (
            f"Error: s.yaml: name: the study name cannot be {name!r}: MLflow's own experiment is "
            "'Default', and the runs of a study named so would land among whatever else is "
            "logged there; choose another."
        )
    with pytest.raises(StudyFileError):
        load_study_file(workdir / "s.yaml")
    write_study(workdir / "ok.yaml")
    result = CliRunner().invoke(main, ["study", "run", "ok.yaml", "--study-name", "default"])
    assert result.exit_code == 2
    assert "Error: --study-name cannot be 'default'" in _one_error(result.output)
    assert _listing(workdir) == ["ok.yaml", "s.yaml"]
