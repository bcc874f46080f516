"""Study-file validation: one specific error, exit code 2, nothing stored, nothing trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_study

from autoall.cli import main
from autoall.config import StudyFileError, load_study_file

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"colour": "blue"}, "colour", "unknown key; expected one of"),
    (
        {"data": {"name": "imagenet"}},
        "data.name",
        "expected one of digits, mnist, fashion-mnist, cifar10",
    ),
    ({"data": {"nmae": "digits"}}, "data.nmae", "unknown key"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "must be in (0, 1)"),
    (
        {"architectures": ["mlp", "transformer"]},
        "architectures[1]",
        "expected one of mlp, cnn, vgg16, resnet18",
    ),
    ({"architectures": []}, "architectures", "non-empty list"),
    ({"train": {"epochs": "ten"}}, "train.epochs", "must be int, but got 'ten'"),
    ({"train": {"learning_rate": 0.1}}, "train.learning_rate", "unknown training setting"),
    ({"train": {"mlp": {"lr": -1}}}, "train", "lr must be a positive number"),
    (
        {"search": {"hidden_size": {"type": "int", "low": 64, "high": 8}}},
        "search.hidden_size",
        "low (64) must not exceed high (8)",
    ),
    (
        {"search": {"all_lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
        "search.all_lr.low",
        "must be > 0 on a log scale",
    ),
    (
        {"search": {"aux_loss": {"type": "categorical", "choices": []}}},
        "search.aux_loss.choices",
        "non-empty list",
    ),
    (
        {"search": {"aux_loss": {"type": "categorical", "choices": ["l1"]}}},
        "search.aux_loss.choices[0]",
        "must be one of reconstruction",
    ),
    (
        {"search": {"hidden_size": {"type": "int", "low": 0, "high": 8}}},
        "search.hidden_size.low",
        "hidden_size must be a positive integer",
    ),
    (
        {"search": {"aux_weight": {"type": "float", "low": -1.0, "high": 1.0}}},
        "search.aux_weight.low",
        "non-negative",
    ),
    ({"search": {"depth": {"type": "int", "low": 1, "high": 3}}}, "search.depth", "unknown key"),
    (
        {"search": {"all_lr": {"type": "float", "low": "a", "high": 0.1}}},
        "search.all_lr.low",
        "must be a number",
    ),
    (
        {"sampler": {"name": "bayes"}},
        "sampler.name",
        "expected one of tpe, random, cmaes, gp, grid, nsgaii",
    ),
    ({"pruner": {"name": "asha"}}, "pruner.name", "expected one of median, hyperband, none"),
    ({"n_trials": 0}, "n_trials", "must be a positive integer"),
    (
        {"objective": {"second": "flops"}},
        "objective.second",
        "must be one of params, epoch_seconds",
    ),
    (
        {"objective": {"second": "params"}, "pruner": {"name": "median"}},
        "pruner.name",
        "cannot prune a multi-objective",
    ),
    ({"sampler": {"name": "grid"}}, "search.hidden_size", "grid sampler needs 'choices'"),
]


@pytest.mark.parametrize(("overrides", "key", "words"), BAD, ids=[k for _, k, _ in BAD])
def test_bad_study_file_exits_2_names_file_and_key_and_writes_nothing(
    workdir: Path, overrides: dict[str, Any], key: str, words: str
) -> None:
    path = write_study(workdir / "bad.yaml", **overrides)
    result = CliRunner().invoke(main, ["study", "run", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: {key}: " in result.output
    assert words in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml"]  # no storage, no mlruns


def test_missing_file_and_invalid_yaml(workdir: Path) -> None:
    with pytest.raises(StudyFileError, match="no such study file"):
        load_study_file(workdir / "nope.yaml")
    (workdir / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(StudyFileError, match="broken.yaml: is not valid YAML"):
        load_study_file(workdir / "broken.yaml")


def test_architectures_option_must_be_in_the_file(study_file: Path) -> None:
    result = CliRunner().invoke(main, ["study", "run", str(study_file), "--architectures", "cnn"])
    assert result.exit_code == 2
    assert "--architectures asks for cnn, but the file lists only mlp" in result.output


def test_defaults_come_from_the_baseline_and_the_file_overrides_them(workdir: Path) -> None:
    path = write_study(
        workdir / "s.yaml",
        architectures=["mlp", "cnn"],
        train={"epochs": 3, "cnn": {"epochs": 2, "lr": 5e-3}},
        search={"aux_loss": "sparsity"},
    )
    cfg = load_study_file(path)
    assert cfg.train_config("mlp").epochs == 3
    assert cfg.train_config("mlp").lr == 1e-3  # the mlp/digits baseline
    assert (cfg.train_config("cnn").epochs, cfg.train_config("cnn").lr) == (2, 5e-3)
    assert cfg.search["aux_loss"].choices == ("sparsity",)  # a plain value fixes a knob
    assert cfg.study_name("cnn") == "t/cnn"


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion-mnist", "cifar10"])
def test_shipped_study_files_are_valid(name: str) -> None:
    cfg = load_study_file(Path(__file__).parent.parent / "studies" / f"{name}.yaml")
    assert cfg.data.name == name
