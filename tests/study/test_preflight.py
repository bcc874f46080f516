"""A user's mistake in any command: one line `Error: ...`, exit code 2, and nothing stored,
created or trained first (autoall/study/_preflight.py, the device check, read-only storage access)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import free_port, write_study

import autoall.study._preflight
import autoall.training._plan
from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.layer import ALLSpec
from autoall.study._preflight import INPUT_SHAPES, cap_workers, largest_models
from autoall.training._data import load_data
from autoall.training._models import build_model, count_parameters


def _one_error(output: str) -> str:
    """The single `Error:` line of `output` (no traceback, nothing else that says error)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def _listing(folder: Path) -> list[str]:
    """What is in `folder`, less SQLite's transient -wal and -shm files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the input was refused")

    monkeypatch.setattr(autoall.training._plan, "train", refuse)


@pytest.fixture
def read_only(workdir: Path) -> Iterator[Path]:
    """An empty folder nobody can write to: a read-only tmpfs (root ignores permission bits)."""
    folder = workdir / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


UNWRITABLE = [
    (["study", "run", "s.yaml", "--checkpoint-dir", "ro/ck", "--no-tracking"], "--checkpoint-dir"),
    (["study", "run", "s.yaml", "--storage", "sqlite:///ro/x.db"], "the Optuna storage's folder"),
    (
        ["study", "run", "s.yaml", "--tracking-uri", "sqlite:///ro/m.db"],
        "the MLflow store's folder",
    ),
    (["study", "export", "t/mlp", "-o", "ro/t.csv"], "-o's folder"),
    (["report", "s.yaml", "--out", "ro/report"], "the report folder"),
    (["report", "s.yaml", "--tracking-uri", "sqlite:///ro/m.db"], "the MLflow store's folder"),
]


@pytest.mark.parametrize(
    ("args", "what"), UNWRITABLE, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in UNWRITABLE]
)
def test_an_unwritable_output_folder_stops_the_command_before_any_work(
    workdir: Path, read_only: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], what: str
) -> None:
    write_study(workdir / "s.yaml", n_trials=1, train={"epochs": 1})
    ran = CliRunner().invoke(main, ["study", "run", "s.yaml", "--no-tracking", "--no-baseline"])
    assert ran.exit_code == 0, ran.output  # a study to report on and export
    before = _listing(workdir)
    trials = len(optuna.load_study(study_name="t/mlp", storage="sqlite:///autoall.db").trials)
    _no_training(monkeypatch)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    assert f"Error: {what} " in error and "cannot be written" in error
    assert "Read-only file system" in error or "Permission denied" in error
    assert _listing(workdir) == before  # no mlruns/, no reports/
    assert list(read_only.iterdir()) == []
    assert (
        len(optuna.load_study(study_name="t/mlp", storage="sqlite:///autoall.db").trials) == trials
    )


def test_a_model_too_large_for_memory_is_refused_with_its_size(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_study(
        workdir / "big.yaml",
        search={
            "hidden_size": {"type": "int", "low": 8, "high": 10**9, "log": True},
            "positions": {"type": "categorical", "choices": ["head", "blocks"]},
        },
    )
    (size,) = largest_models(load_study_file(path))
    assert (size.hidden_size, size.positions) == (10**9, "blocks")
    _no_training(monkeypatch)
    for command in (["study", "run"], ["report"]):
        result = CliRunner().invoke(main, [*command, str(path)])
        assert result.exit_code == 2, result.output
        error = _one_error(result.output)
        assert f"{path}: search.hidden_size: the largest model this search space allows" in error
        assert (
            f"mlp with hidden_size 1,000,000,000 (positions: blocks), has {size.parameters:,}"
            in error
        )
        assert "more than this machine's memory (cpu)" in error
    assert sorted(p.name for p in workdir.iterdir()) == ["big.yaml"]


def test_train_refuses_a_model_too_large_for_memory(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_training(monkeypatch)
    result = CliRunner().invoke(main, ["train", "--all-hidden", str(10**9)])
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    assert error.startswith("Error: --all-hidden: the model, mlp with an ALL of hidden_size ")
    assert "parameters: ~" in error and "more than this machine's memory (cpu)" in error


def test_the_largest_model_is_counted_as_it_would_be_built() -> None:
    cfg = load_study_file(Path(__file__).resolve().parents[2] / "studies" / "digits.yaml")
    sizes = {s.arch: s for s in largest_models(cfg)}
    data = load_data("digits")
    assert data.in_shape == INPUT_SHAPES["digits"]
    for arch in cfg.architectures:
        spec = ALLSpec(hidden_size=256, aux_loss="reconstruction", positions="blocks")
        model = build_model(
            arch, in_shape=data.in_shape, num_classes=data.num_classes, all_spec=spec
        )
        assert sizes[arch].parameters == count_parameters(model).total
        assert sizes[arch].train_bytes == 16 * sizes[arch].parameters


BAD_DEVICES = ["tpu", "meta", "cuda:x", "cpu:1", "gpu"]


@pytest.mark.parametrize("device", BAD_DEVICES)
@pytest.mark.parametrize("command", [["train"], ["study", "run", "s.yaml"], ["report", "s.yaml"]])
def test_an_unknown_device_is_one_line_in_every_command(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], device: str
) -> None:
    write_study(workdir / "s.yaml")
    _no_training(monkeypatch)
    result = CliRunner().invoke(main, [*command, "--device", device])
    assert result.exit_code == 2, result.output
    assert _one_error(result.output) == (
        f"Error: device must be cpu, cuda, cuda:N or mps (or auto), but got {device!r}."
    )
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]  # no storage: no FAIL trial


def test_a_cuda_device_this_machine_lacks_is_one_line(workdir: Path) -> None:
    write_study(workdir / "s.yaml")
    result = CliRunner().invoke(main, ["study", "run", "s.yaml", "--device", "cuda:7"])
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    if torch.cuda.is_available():
        assert f"this machine has {torch.cuda.device_count()} CUDA device" in error
    else:
        assert "CUDA is not available here" in error
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]


def test_inspecting_commands_never_create_a_sqlite_file(workdir: Path) -> None:
    for args in (["study", "status", "nosuch"], ["study", "list"], ["study", "export", "t/mlp"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert _one_error(result.output) == (
            "Error: No Optuna storage at sqlite:///autoall.db (no file autoall.db); pass "
            "--storage (or set AUTOALL_STORAGE) to the storage the studies were run with."
        )
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["study", "run", "s.yaml"],
        ["study", "create", "s.yaml"],
        ["study", "status", "t"],
        ["study", "list"],
        ["study", "export", "t/mlp"],
        ["report", "s.yaml"],
        ["dashboard"],
    ],
)
def test_an_unreachable_storage_is_one_line_and_creates_nothing(
    workdir: Path, args: list[str]
) -> None:
    write_study(workdir / "s.yaml")
    url = f"postgresql://autoall@127.0.0.1:{free_port()}/autoall?password=Secr3t-Value"
    result = CliRunner().invoke(main, [*args, "--storage", url])
    if args == ["dashboard"] and "optuna-dashboard is not installed" in result.output:
        pytest.skip("optuna-dashboard is not installed")
    assert result.exit_code == 2, result.output
    error = _one_error(result.output)
    assert error.startswith(
        f"Error: Cannot open the Optuna storage {url.replace('Secr3t-Value', '***')}: "
        "OperationalError: connection to server at"
    ), error
    assert "Secr3t-Value" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]  # no mlruns/ either


def test_n_jobs_is_capped_by_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoall.study._preflight, "available_cores", lambda: 2)
    monkeypatch.setattr(autoall.study._preflight, "available_memory", lambda: 64 * 2**30)
    gib = 2**30
    assert cap_workers(2, gpus=0, trials_per_gpu=1, per_worker_bytes=gib) == (2, None)
    n, why = cap_workers(1000, gpus=0, trials_per_gpu=1, per_worker_bytes=gib)
    assert n == 2 and why == (
        "--n-jobs 1000 capped to 2: this machine has 2 CPU cores (more workers than cores only "
        "slow each other down)."
    )
    n, why = cap_workers(1000, gpus=4, trials_per_gpu=2, per_worker_bytes=gib)
    assert n == 8 and why == "--n-jobs 1000 capped to 8: 4 GPU(s) x --trials-per-gpu 2."
    n, why = cap_workers(8, gpus=4, trials_per_gpu=2, per_worker_bytes=20 * gib)
    assert n == 3 and why is not None
    assert "the memory available (68.7 GB) holds 3 workers of ~21.5 GB each" in why


def test_study_run_says_it_capped_n_jobs_and_runs_that_many(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autoall.study._preflight, "available_cores", lambda: 1)
    result = CliRunner().invoke(
        main,
        ["study", "run", str(study_file), "--n-jobs", "1000", "--n-trials", "1", "--no-tracking",
         "--no-baseline"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--n-jobs 1000 capped to 1: this machine has 1 CPU core " in result.output
    (trial,) = optuna.load_study(study_name="t/mlp", storage="sqlite:///autoall.db").trials
    assert trial.user_attrs["worker_pid"] == os.getpid()  # one worker: this process
