"""Tests for `autoall train`'s settings: every study-file setting has an option and reaches the
TrainConfig that trains, the study file's validators name the option, nothing given is ignored
without a word, `--study` trains on the study's split, and `--tracking` logs the run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from autoall.cli._main import main, train_cmd
from autoall.cli._train_command import TRAIN_FIELDS, given_options, resolve
from autoall.config._study_file import _STUDY_TRAIN_KEYS
from autoall.training._data import load_data
from autoall.training._types import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DIGITS_STUDY = ROOT / "studies" / "digits.yaml"


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["train", *args])


def _resolve(*args: str) -> Any:
    """What `autoall train ARGS` would train, parsed by the real command, without training."""
    ctx = train_cmd.make_context("train", list(args))
    return resolve(ctx.params, given_options(ctx, ctx.params))


def _row(stdout: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}\s{{2,}}(.+)$", stdout, flags=re.MULTILINE)
    assert match, f"no row {key!r} in:\n{stdout}"
    return match.group(1)


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[TrainConfig, Any, dict[str, Any]]]:
    """Every `train()` call of the command: its config, its data and the trained weights."""
    import autoall.training

    real = autoall.training.train
    calls: list[tuple[TrainConfig, Any, dict[str, Any]]] = []

    def spy(model: torch.nn.Module, data: Any, cfg: TrainConfig, **kw: Any) -> Any:
        result = real(model, data, cfg, **kw)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        calls.append((cfg, data, weights))
        return result

    monkeypatch.setattr(autoall.training, "train", spy)  # where `autoall train` finds it
    return calls


# One value per TrainConfig field, as given on the command line (with what it needs).
OPTION_VALUES: dict[str, tuple[list[str], Any]] = {
    "epochs": (["--epochs", "7"], 7),
    "batch_size": (["--batch-size", "32"], 32),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "lr": (["--lr", "0.02"], 0.02),
    "all_lr": (["--all-hidden", "8", "--all-lr", "0.05"], 0.05),
    "weight_decay": (["--weight-decay", "0.001"], 0.001),
    "momentum": (["--optimizer", "sgd", "--momentum", "0.8"], 0.8),
    "nesterov": (["--optimizer", "sgd", "--no-nesterov"], False),
    "warmup_epochs": (["--warmup-epochs", "2"], 2.0),
    "min_lr_ratio": (["--min-lr-ratio", "0.1"], 0.1),
    "label_smoothing": (["--label-smoothing", "0.1"], 0.1),
    "seed": (["--seed", "5"], 5),
    "amp": (["--no-amp"], False),
    "channels_last": (["--no-channels-last"], False),
    "compile": (["--compile"], True),
    "eval_batch_size": (["--eval-batch-size", "256"], 256),
    "target_acc": (["--target-acc", "0.9"], 0.9),
    "device": (["--device", "cpu"], "cpu"),
}


def test_every_setting_of_a_study_file_has_an_option() -> None:
    fields = set(TrainConfig.field_names()) - {"evaluate_test"}
    assert set(TRAIN_FIELDS) == fields == set(OPTION_VALUES)
    assert set(TRAIN_FIELDS) >= _STUDY_TRAIN_KEYS  # the study file's `train:` keys
    declared = {flag for p in train_cmd.params for flag in p.opts + p.secondary_opts}
    for option, _ in TRAIN_FIELDS.values():
        assert set(option.split("/")) <= declared, option


@pytest.mark.parametrize("field", sorted(OPTION_VALUES))
def test_each_option_sets_its_field(field: str) -> None:
    args, value = OPTION_VALUES[field]
    config = _resolve("--epochs", "9", *args).config  # --epochs 9 leaves room for warm-up
    assert getattr(config, field) == value
    baseline = _resolve("--epochs", "9").config
    assert getattr(baseline, field) != value  # the option changed it
    assert config.evaluate_test is True


def test_lr_changes_the_trained_weights_and_numbers(
    trained: list[tuple[TrainConfig, Any, dict[str, Any]]],
) -> None:
    runs = [_invoke("--epochs", "1", "--lr", lr) for lr in ("0.01", "0.01")]
    runs.append(_invoke("--epochs", "1", "--lr", "0.002", "--target-acc", "0.05"))
    for run in runs:
        assert run.exit_code == 0, run.output
    assert [cfg.lr for cfg, _, _ in trained] == [0.01, 0.01, 0.002]
    first, same, other = (weights for _, _, weights in trained)
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not torch.equal(first["head.weight"], other["head.weight"])
    figures = ("validation accuracy (final)", "validation accuracy (best)", "test accuracy")
    assert [_row(runs[0].stdout, k) for k in figures] == [_row(runs[1].stdout, k) for k in figures]
    settings = runs[0].stderr.splitlines()[0]
    assert settings.startswith(
        "mlp baseline on digits (cpu); settings: AdamW lr 0.01, batch 64, 1 epoch, 1 warm-up "
        "epoch, cosine to 0 (--epochs 1; --lr 0.01; the rest as the baseline: default, "
    )
    reached = _row(runs[2].stdout, "validation accuracy 0.05")  # --target-acc's row
    assert re.fullmatch(r"epoch 1, \d+\.\d\d s", reached), reached
    assert "validation accuracy 0.05" not in runs[0].stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--lr", "0"], "Error: --lr must be a positive number, but got 0.0."),
        (["--lr", "-1"], "Error: --lr must be a positive number, but got -1.0."),
        (["--lr", "nan"], "Error: --lr must be a positive number, but got nan."),
        (
            ["--optimizer", "adam"],
            "Error: --optimizer must be one of sgd, adamw, but got 'adam'.",
        ),
        (
            ["--weight-decay", "-1"],
            "Error: --weight-decay must be a non-negative number, but got -1.0.",
        ),
        (["--batch-size", "0"], "Error: --batch-size must be a positive integer, but got 0."),
        (
            ["--epochs", "2", "--warmup-epochs", "3"],
            "Error: --warmup-epochs must be between 0 and epochs (2), but got 3.0.",
        ),
        (["--label-smoothing", "1"], "Error: --label-smoothing must be in [0, 1), but got 1.0."),
        (["--target-acc", "2"], "Error: --target-acc must be in (0, 1], but got 2.0."),
        (["--val-fraction", "1"], "Error: --val-fraction must be in (0, 1), but got 1.0."),
        (
            ["--split-seed", "-1"],
            "Error: --split-seed must be an integer between 0 and 4294967295, but got -1.",
        ),
        (
            ["--all-lr", "0.01"],
            "Error: --all-lr needs --all-hidden (the ALL's hidden size); without it the plain "
            "baseline trains.",
        ),
        (
            ["--aux-weight", "0.3"],
            "Error: --aux-weight needs --all-hidden (the ALL's hidden size); without it the "
            "plain baseline trains.",
        ),
        (
            ["--aux-loss", "sparsity"],
            "Error: --aux-loss needs --all-hidden (the ALL's hidden size); without it the plain "
            "baseline trains.",
        ),
        (
            ["--positions", "head"],  # the default value, but given: still refused
            "Error: --positions needs --all-hidden (the ALL's hidden size); without it the "
            "plain baseline trains.",
        ),
        (
            ["--activation", "gelu"],
            "Error: --activation needs --all-hidden (the ALL's hidden size); without it the "
            "plain baseline trains.",
        ),
        (
            ["--momentum", "0.5"],
            "Error: --momentum needs --optimizer sgd; this run trains with adamw, which has no "
            "such setting.",
        ),
        (["--amp"], "Error: --amp works on CUDA only; this run trains on cpu."),
        (
            ["--tracking-uri", "sqlite:///x.db"],
            "Error: --tracking-uri needs --tracking; without it nothing is logged to MLflow.",
        ),
    ],
)
def test_bad_settings_are_one_line_and_nothing_trains(
    args: list[str],
    line: str,
    trained: list[Any],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert _one_line_error(_invoke(*args)) == line
    assert trained == []
    assert list(workdir.iterdir()) == []  # nothing stored (no mlruns/, no x.db)


def test_study_gives_its_split_and_settings(
    trained: list[tuple[TrainConfig, Any, dict[str, Any]]],
) -> None:
    setup = _resolve("--study", str(DIGITS_STUDY))
    assert (setup.arch, setup.dataset, setup.val_fraction, setup.split_seed) == (
        "mlp",
        "digits",
        0.25,
        0,
    )
    assert setup.config.epochs == 20  # the file's train.mlp.epochs, not the baseline's 30
    assert f"({DIGITS_STUDY}: epochs 20; the rest as the baseline: " in setup.settings
    assert setup.experiment == "digits"

    result = _invoke("--study", str(DIGITS_STUDY), "--epochs", "3")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert ", 3 epochs, " in lines[0] and "(--epochs 3; the rest as the baseline: " in lines[0]
    assert lines[1] == f"validation: 360 images ({DIGITS_STUDY}: val_fraction 0.25, split_seed 0)"
    ((cfg, data, _),) = trained
    assert cfg.epochs == 3
    study_split = load_data("digits", val_fraction=0.25, split_seed=0)
    assert torch.equal(data.val_x.cpu(), study_split.val_x)  # the very images the study used
    assert torch.equal(data.train_y.cpu(), study_split.train_y)
    assert _row(result.stdout, "training time").endswith("(3 epochs)")


def test_options_override_the_study_file() -> None:
    setup = _resolve("--study", str(DIGITS_STUDY), "--val-fraction", "0.2", "--seed", "4")
    assert (setup.val_fraction, setup.split_seed, setup.config.seed) == (0.2, 0, 4)
    assert setup.split_source == f"--val-fraction 0.2, {DIGITS_STUDY}: split_seed 0"
    assert _resolve().split_source is None  # without --study: the default, unannounced
    assert _resolve().val_fraction == 0.1


def test_an_architecture_the_study_does_not_train_is_refused() -> None:
    line = _one_line_error(_invoke("--study", str(DIGITS_STUDY), "--arch", "cnn"))
    assert line == (
        f"Error: --arch cnn: {DIGITS_STUDY} trains only mlp; leave --arch out for its first, "
        "or name one of them."
    )


def test_a_study_value_that_conflicts_names_the_file(tmp_path: Path) -> None:
    from conftest import write_study

    study = write_study(tmp_path / "s.yaml", train={"epochs": 4, "warmup_epochs": 3})
    line = _one_line_error(_invoke("--study", str(study), "--epochs", "2"))
    assert line == (
        f"Error: {study}: train.warmup_epochs must be between 0 and epochs (2), but got 3."
    )


def test_tracking_logs_the_run_with_params_and_metrics(tracked: Path) -> None:
    from mlflow import MlflowClient

    result = _invoke("--epochs", "2", "--all-hidden", "8", "--lr", "0.003", "--tracking")
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tracked / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert result.stderr.splitlines()[-1] == (
        f"MLflow: run {run.info.run_id} in experiment 'train' of sqlite:///mlruns/mlflow.db"
    )
    assert run.info.status == "FINISHED"
    assert run.data.tags["autoall.role"] == "train"
    params = run.data.params
    assert (params["train.lr"], params["train.epochs"], params["all.hidden_size"]) == (
        "0.003",
        "2",
        "8",
    )
    assert (params["data.val_fraction"], params["arch"]) == ("0.1", "mlp")
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    metrics = run.data.metrics
    assert f"{metrics['test_acc']:.4f}" == _row(result.stdout, "test accuracy")
    assert f"{metrics['final_val_acc']:.4f}" == _row(result.stdout, "validation accuracy (final)")
    assert metrics["params_all"] == 4616
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["learning_curve.png"]


def test_a_failed_run_is_marked_failed(tracked: Path) -> None:
    from mlflow import MlflowClient

    result = _invoke("--epochs", "2", "--all-hidden", "16", "--all-lr", "1e12", "--tracking")
    assert result.exit_code == 1, result.output
    client = MlflowClient(f"sqlite:///{tracked / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"].startswith("NonFiniteLossError: Training loss became")
