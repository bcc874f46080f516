"""Study-file validation: one specific error, exit code 2, nothing stored, nothing trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_study

from autoall.cli._main import main
from autoall.config._study_file import StudyFileError, load_study_file

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
    # every knob's type and range (issue 12): nothing stored, no FAIL trial, no traceback
    (
        {"search": {"all_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": "abc"}}},
        "search.all_lr.step",
        "must be a positive number for type 'float', but got 'abc'",
    ),
    (
        {"search": {"all_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": -0.1}}},
        "search.all_lr.step",
        "must be a positive number for type 'float', but got -0.1",
    ),
    (
        {"search": {"hidden_size": {"type": "int", "low": 8, "high": 64, "step": 0}}},
        "search.hidden_size.step",
        "must be a positive integer for type 'int', but got 0",
    ),
    (
        {"search": {"hidden_size": {"type": "int", "low": 8, "high": 64, "step": 2.5}}},
        "search.hidden_size.step",
        "must be a positive integer",
    ),
    (
        {"search": {"hidden_size": {"type": "int", "low": 8, "high": 64, "step": 5}}},
        "search.hidden_size.step",
        "must divide high - low (56) into whole steps",
    ),
    (
        {"search": {"aux_weight": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}}},
        "search.aux_weight.step",
        "must divide high - low (1) into whole steps",
    ),
    (
        {"search": {"all_lr": {"type": "int", "low": 1, "high": 3}}},
        "search.all_lr.type",
        "all_lr is a real number: use type 'float'",
    ),
    (
        {"search": {"aux_weight": {"type": "float", "low": 0.0, "high": float("inf")}}},
        "search.aux_weight.high",
        "must be a finite number",
    ),
    (
        {"search": {"hidden_size": {"type": "int", "low": 8, "high": 64, "log": "yes"}}},
        "search.hidden_size.log",
        "must be true or false",
    ),
    (
        {"search": {"positions": {"type": "categorical", "choices": ["head", "tail"]}}},
        "search.positions.choices[1]",
        "must be one of head, blocks",
    ),
    (
        {"baseline_search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 0}}},
        "baseline_search.lr.step",
        "must be a positive number",
    ),
    (
        {"baseline_search": {"weight_decay": {"type": "float", "low": -1.0, "high": 0.1}}},
        "baseline_search.weight_decay.low",
        "weight_decay must be a non-negative number",
    ),
    ({"baseline_search": {"momentum": 0.9}}, "baseline_search.momentum", "unknown key"),
    ({"name": "n" * 101}, "name", "at most 100 characters"),
    ({"name": "my study"}, "name", "letters, digits, '.', '_' and '-'"),
    ({"name": "a/b"}, "name", "but got 'a/b'"),
    ({"name": ".hidden"}, "name", "starting with a letter or digit"),
    ({"name": 7}, "name", "must be a string"),
    ({"sampler": {"seed": -1}}, "sampler.seed", "must be an integer between 0 and 4294967295"),
    ({"sampler": {"n_startup_trials": -2}}, "sampler.n_startup_trials", "must be an integer >= 0"),
    ({"pruner": {"reduction_factor": 1}}, "pruner.reduction_factor", "must be an integer >= 2"),
    ({"data": {"split_seed": 2**40}}, "data.split_seed", "between 0 and 4294967295"),
    ({"replicates": 0}, "replicates", "must be an integer from 1 to 100"),
    ({"replicates": 101}, "replicates", "must be an integer from 1 to 100"),
    ({"replicates": "3"}, "replicates", "but got '3'"),
    ({"replicates": True}, "replicates", "but got True"),
    # train.seed leaves room for the report's seeds, up to train.seed + 11999 (4294955296 + 11999)
    ({"train": {"seed": 2**32 - 1}}, "train.seed", "between 0 and 4294955296 (the report trains"),
    ({"train": {"seed": 4294955297}}, "train.seed", "up to train.seed + 11999; NumPy's and"),
    ({"train": {"seed": -1}}, "train.seed", "must be an integer between 0 and 4294955296"),
    ({"train": {"mlp": {"seed": -1}}}, "train.mlp.seed", "between 0 and 4294955296"),
    ({"sampler": {"seed": 2**32}}, "sampler.seed", "between 0 and 4294967295, but got 4294967296"),
    ({"name": "名" * 68}, "name", "202 bytes in UTF-8 (it names the Optuna studies"),
    ({"name": "Default"}, "name", "cannot be 'Default': MLflow's own experiment is 'Default'"),
    ({"name": "dEfAuLt"}, "name", "cannot be 'dEfAuLt'"),
    ({"report": {"margin": 0}}, "report.margin", "must be a number of accuracy points > 0"),
    ({"report": {"margin": -1}}, "report.margin", "must be a number of accuracy points > 0"),
    ({"report": {"margin": "abc"}}, "report.margin", "but got 'abc'"),
    ({"report": {"margin": 100}}, "report.margin", "and < 100"),
    ({"report": {"margin": True}}, "report.margin", "but got True"),
    ({"report": {"tuning_trials": -1}}, "report.tuning_trials", "from 0 to 1000"),
    ({"report": {"tuning_trials": 1001}}, "report.tuning_trials", "from 0 to 1000"),
    ({"report": {"tuning_trials": 2.5}}, "report.tuning_trials", "but got 2.5"),
    ({"report": {"seed": 3}}, "report.seed", "unknown key; expected one of margin"),
    ({"report": {"seeds": 1}}, "report.seeds", "must be an integer from 2 to 100, but got 1"),
    ({"report": {"seeds": 3000}}, "report.seeds", "from 2 to 100, but got 3000"),
    ({"report": {"selection_seeds": 0}}, "report.selection_seeds", "from 1 to 100"),
    ({"report": {"top_k": 101}}, "report.top_k", "from 1 to 100, but got 101"),
    ({"report": [1]}, "report", "must be a mapping"),
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
    assert result.output.strip().count("\n") == 0, result.output  # one line
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
    cfg = load_study_file(Path(__file__).resolve().parents[2] / "studies" / f"{name}.yaml")
    assert cfg.data.name == name


def _alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': each level is nine aliases of the one below, 9^levels strings."""
    lines = ["anchors:", '  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nname: *l{levels}\n"


HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("alias bomb", _alias_bomb().encode(), "", "expands to more than 10,000 values"),
    ("recursive alias", b"name: &a [*a]\n", "", "recursive alias"),
    (
        "duplicate key",
        b"name: a\nname: b\n",
        "name",
        "duplicate key 'name' (line 2; first at line 1)",
    ),
    (
        "nested duplicate",
        b"name: a\nsearch:\n  all_lr: 0.01\n  all_lr: 0.02\n",
        "all_lr",
        "duplicate key 'all_lr' (line 4; first at line 3)",
    ),
    (
        "not UTF-8",
        b"name: a\ndata: {name: digits\xff}\n",
        "",
        "is not UTF-8 text: byte 0xff at line 2",
    ),
    ("syntax", b"name: [unclosed\nn_trials: 3\n", "", "is not valid YAML: "),
    ("too large", b"name: a\n" + b"# padding\n" * 110_000, "", "is larger than 1024 KiB"),
]


@pytest.mark.parametrize(
    ("content", "key", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_a_hostile_study_file_is_one_line_exit_2_and_creates_nothing(
    workdir: Path, content: bytes, key: str, words: str
) -> None:
    path = workdir / "bad.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["study", "run", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1, result.output  # one line
    assert result.output.startswith(f"Error: {path}: {key + ': ' if key else ''}")
    assert words in result.output
    assert len(result.output) < 400  # whatever the file expands to
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml"]


def test_a_folder_given_as_study_file_is_one_line(workdir: Path) -> None:
    with pytest.raises(StudyFileError, match="is a folder, not a study file"):
        load_study_file(workdir)


def test_merge_keys_still_override_and_are_not_duplicates(workdir: Path) -> None:
    path = workdir / "merge.yaml"
    path.write_text(
        "name: m\narchitectures: [mlp, cnn]\n"
        "train:\n  mlp: &base {epochs: 2, lr: 0.01}\n  cnn: {<<: *base, epochs: 3}\n"
    )
    cfg = load_study_file(path)
    assert (cfg.train_config("mlp").epochs, cfg.train_config("mlp").lr) == (2, 0.01)
    assert (cfg.train_config("cnn").epochs, cfg.train_config("cnn").lr) == (3, 0.01)


def test_study_name_option_is_checked_like_the_file_s_name(study_file: Path) -> None:
    for bad, words in (("a/b", "but got 'a/b'"), ("x" * 101, "at most 100 characters")):
        result = CliRunner().invoke(main, ["study", "run", str(study_file), "--study-name", bad])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: --study-name must") and words in result.output
    assert sorted(p.name for p in study_file.parent.iterdir()) == ["study.yaml"]


def test_an_empty_architectures_option_is_an_error_not_a_met_target(study_file: Path) -> None:
    for option in (",", " , ", ""):
        result = CliRunner().invoke(
            main, ["study", "run", str(study_file), "--architectures", option]
        )
        assert result.exit_code == 2, result.output
        assert "--architectures names no architecture" in result.output
        assert "Target met" not in result.output
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--architectures", "mlp,mlp"]
    )
    assert result.exit_code == 2 and "names one twice: mlp,mlp" in result.output
    assert sorted(p.name for p in study_file.parent.iterdir()) == ["study.yaml"]
