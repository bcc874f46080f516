"""Tests for `autoall train`: the result table, one-line errors with exit code 2, the help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from autoall.cli._main import main, train_cmd


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["train", *args])


def _row(stdout: str, key: str) -> str:
    """The value column of the result-table row `key`."""
    match = re.search(rf"^{re.escape(key)}\s{{2,}}(.+)$", stdout, flags=re.MULTILINE)
    assert match, f"no row {key!r} in:\n{stdout}"
    return match.group(1)


def _assert_one_line_error(result: Result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""  # no result table, no partial output
    return lines[0]


def test_train_prints_the_result_table() -> None:
    result = _invoke("--arch", "mlp", "--dataset", "digits", "--epochs", "2")
    assert result.exit_code == 0, result.output
    settings = result.stderr.splitlines()[0]
    assert settings == (
        "mlp baseline on digits (cpu); settings: AdamW lr 0.001, batch 64, 2 epochs, 1 warm-up "
        "epoch, cosine to 0 (--epochs 2; the rest as the baseline: default, Adam's usual lr "
        "1e-3; batch 64 gives ~20 steps per epoch on ~1,300 training images)"
    )  # the epochs it trains, not the baseline's 30
    assert "validation:" not in result.stderr  # the default split is not announced
    out = result.stdout
    assert _row(out, "model") == "mlp baseline"
    for key in ("validation accuracy (final)", "test accuracy"):
        assert 0.5 < float(_row(out, key)) <= 1.0
    best = _row(out, "validation accuracy (best)")
    assert re.fullmatch(r"0\.\d{4} \(epoch [12]\)", best), best
    assert re.fullmatch(r"\d+\.\d\d s \(2 epochs\)", _row(out, "training time"))
    assert _row(out, "parameters") == "85,002 (ALL: 0)"
    assert _row(out, "device") == "cpu"


def test_train_with_all_hidden_shows_all_parameters() -> None:
    result = _invoke("--epochs", "1", "--all-hidden", "16", "--all-lr", "0.01")
    assert result.exit_code == 0, result.output
    label = "mlp + ALL(h=16, reconstruction, w=0.1, head, all_lr=0.01)"
    assert _row(result.stdout, "model") == label
    assert _row(result.stdout, "ALL in front of") == "head (256 features)"
    assert _row(result.stdout, "parameters") == "93,722 (ALL: 8,720)"
    blocks = _invoke("--epochs", "1", "--all-hidden", "16", "--positions", "blocks")
    assert blocks.exit_code == 0, blocks.output
    assert _row(blocks.stdout, "parameters") == "102,442 (ALL: 17,440)"  # a second 256-wide ALL
    assert _row(blocks.stdout, "ALL in front of") == "head (256 features), and after 1 block"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--arch", "foo"], ["'foo'", "mlp, cnn, vgg16, resnet18"]),
        (["--dataset", "foo"], ["'foo'", "digits, mnist, fashion-mnist, cifar10"]),
        (["--all-hidden", "0"], ["Error: --all-hidden must be a positive integer, but got 0."]),
        (["--all-hidden", "-3"], ["--all-hidden must be a positive integer", "got -3"]),
        (
            ["--all-hidden", "16", "--aux-weight", "-1"],
            ["Error: --aux-weight must be a non-negative number, but got -1.0."],
        ),
        (
            ["--all-hidden", "16", "--aux-loss", "foo"],
            [
                "--aux-loss must be one of reconstruction, sparsity, orthogonality, none, but got 'foo'"
            ],
        ),
        (["--all-hidden", "16", "--all-lr", "-1"], ["Error: --all-lr must be a positive number"]),
        (["--epochs", "-1"], ["Error: --epochs must be a positive integer, but got -1."]),
        (["--all-hidden", "16", "--positions", "x"], ["--positions must be one of head, blocks"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], words: list[str]) -> None:
    _assert_one_line_error(_invoke(*args), *words)


def test_missing_data_root_names_the_expected_files(tmp_path: Path) -> None:
    line = _assert_one_line_error(
        _invoke("--dataset", "mnist", "--data-root", str(tmp_path)),
        "'mnist' not found",
        str(tmp_path),
        "--download",
    )
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert f"MNIST/raw/{name}" in line


def test_unavailable_device_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    _assert_one_line_error(_invoke("--device", "cuda"), "CUDA is not available")


def test_exit_code_2_from_the_installed_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoall.cli", "train", "--arch", "foo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "Error: Unknown architecture 'foo'; expected one of mlp, cnn, vgg16, resnet18."
    ]


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    options = [p for p in train_cmd.params if isinstance(p, click.Option)]
    assert {o.name for o in options} >= {
        "arch",
        "dataset",
        "all_hidden",
        "all_lr",
        "aux_weight",
        "aux_loss",
        "positions",
        "activation",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "seed",
        "study",
        "val_fraction",
        "split_seed",
        "data_root",
        "download",
        "device",
        "tracking",
        "tracking_uri",
    }
    for option in options:
        assert option.help, f"{option.opts} has no help text"
        for flag in option.opts:
            assert flag in result.stdout, flag
    assert "mlp, cnn, vgg16 or resnet18" in result.stdout


# Once known bugs of `autoall train`, kept so they stay fixed.


@pytest.mark.parametrize("args", [["--aux-loss", "foo"], ["--aux-weight", "-1"]])
def test_all_options_are_checked_without_all_hidden(args: list[str]) -> None:
    _assert_one_line_error(_invoke("--epochs", "1", *args))


def test_epochs_zero_is_an_error() -> None:
    _assert_one_line_error(_invoke("--epochs", "0"), "epochs must be a positive integer")


def test_divergence_is_one_line_not_a_traceback() -> None:
    result = _invoke("--epochs", "2", "--all-hidden", "16", "--all-lr", "1e12")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "at epoch 1, step" in lines[0]
