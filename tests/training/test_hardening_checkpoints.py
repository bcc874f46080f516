"""Checkpoints on hostile or failing file systems (issue 23, cases 4 and 9).

A symbolic link planted at a temp or checkpoint name is never followed; a full disk (a real
tmpfs), a folder made read-only mid-run (a read-only remount) and a directory at the checkpoint
path are one warning each and the trial goes on; a damaged or tampered checkpoint is ignored and
the run starts from epoch 1; temp files are removed on every failure path, and those of writers
that were killed are swept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

import autoall.training._checkpoint_file
import autoall.training._loop
from autoall.cli._main import main
from autoall.layer import ALLSpec
from autoall.study._trials import sweep_checkpoints
from autoall.training._baselines import baseline
from autoall.training._checkpoint_file import sweep_temp_files, temp_name
from autoall.training._data import DeviceData, load_data
from autoall.training._loop import RunResult
from autoall.training._plan import RunPlan, fit
from autoall.training.cohort._cohort import fit_cohort

STORAGE = "sqlite:///autoall.db"
EVERY_EPOCH = ("--checkpoint-every", "0")
FULL = "No space left on device; the run goes on without it (free space there, or choose another "
FULL += "--checkpoint-dir)"


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    return load_data("digits", val_fraction=0.25)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast for these models, and steadier on a shared machine
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `folder` (skips where mounting is not allowed)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a real full disk")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def plan(**overrides: Any) -> RunPlan:
    cfg = replace(baseline("mlp", "digits").config, device="cpu", epochs=3, **overrides)
    return RunPlan("mlp", cfg)


def same_run(a: RunResult, b: RunResult) -> None:
    """`b` trained every epoch as `a` did (one process, one thread: bit for bit)."""
    assert [s.epoch for s in b.history] == [s.epoch for s in a.history] == [1, 2, 3]
    assert [(s.val_acc, s.train_loss) for s in b.history] == [
        (s.val_acc, s.train_loss) for s in a.history
    ]
    assert "resumed_from_epoch" not in b.extra


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "autoall.checkpoint" and r.levelno == logging.WARNING
    ]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def stopped_at(epoch: int) -> Callable[[Any], bool]:
    return lambda stats: stats.epoch == epoch


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path: Path, seconds: float) -> Path:
    """Set `path`'s modification time `seconds` into the past (without following a link)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


# ------------------------------------------------------------------ case 4: symbolic links


def test_a_symlink_planted_at_the_temp_or_checkpoint_name_is_never_followed(
    digits: DeviceData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Links at the old predictable temp name and at the checkpoint path itself: the run
    ignores the linked file, writes its own, and neither link's target changes."""
    folder = tmp_path / "shared"
    folder.mkdir()
    victims = {name: tmp_path / name for name in ("thesis.tex", "notes.txt")}
    for victim in victims.values():
        victim.write_bytes(b"precious")
    temp_link = folder / f".trial-0.pt.{os.getpid()}.tmp"
    temp_link.symlink_to(victims["thesis.tex"])
    checkpoint = folder / "trial-0.pt"
    checkpoint.symlink_to(victims["notes.txt"])

    fresh = fit(plan(), digits)
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        run = fit(plan(), digits, checkpoint=checkpoint)
    same_run(fresh, run)
    assert warnings_of(caplog) == [
        f"checkpoint {checkpoint} ignored (it is a symbolic link); training starts from epoch 1."
    ]
    assert {v.read_bytes() for v in victims.values()} == {b"precious"}
    assert temp_link.is_symlink() and os.readlink(temp_link) == str(victims["thesis.tex"])
    assert not checkpoint.is_symlink() and checkpoint.is_file()  # the link itself was replaced
    assert temp_files(folder) == [temp_link.name]  # no temp file of the run's stayed
    resumed = fit(plan(), digits, checkpoint=checkpoint)
    assert resumed.extra["resumed_from_epoch"] == 3  # and the file written is a checkpoint


def test_temp_names_are_unguessable_and_created_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    names = {temp_name("trial-0.pt") for _ in range(3)}
    assert len(names) == 3
    prefix = f".trial-0.pt~{socket.gethostname()}~{os.getpid()}~"
    for name in names:
        assert name.startswith(prefix) and name.endswith(".tmp")
        assert len(name) == len(prefix) + 16 + 4  # 64 random bits, in hex
    # were a name guessed (here: made known) and a link planted there, it is not followed
    monkeypatch.setattr(autoall.training._checkpoint_file.secrets, "token_hex", lambda n: "ab" * n)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = tmp_path / temp_name("trial-0.pt")
    planted.symlink_to(victim)
    path = tmp_path / "trial-0.pt"
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        assert autoall.training._checkpoint_file.write(path, {"epoch": 1}) is False
    assert warnings_of(caplog) == [
        f"checkpoint {path} not written: File exists; the run goes on without it "
        "(something else is in its place: move it away)."
    ]
    assert victim.read_bytes() == b"precious" and planted.is_symlink() and not path.exists()


# ------------------------------------------------------------- case 9: failing file systems


def test_a_full_disk_is_one_warning_and_the_run_goes_on_without_checkpoints(
    digits: DeviceData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 16 KiB tmpfs: every save fails; one warning, no partial temp file stays, and a
    killed writer's stale temp file (what filled the disk) is swept at the first failure."""
    fresh = fit(plan(), digits)
    with tmpfs(tmp_path / "full", "16k") as folder:
        stale = folder / f".trial-7.pt~{socket.gethostname()}~{dead_pid()}~{'0' * 16}.tmp"
        stale.write_bytes(b"x" * 4096)
        age(stale, 120)
        checkpoint = folder / "trial-0.pt"
        with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
            run = fit(plan(), digits, checkpoint=checkpoint, checkpoint_every=0)
        same_run(fresh, run)
        assert warnings_of(caplog) == [f"checkpoint {checkpoint} not written: {FULL}."]
        assert os.listdir(folder) == []  # no partial temp file, the stale one swept


def test_a_failed_or_interrupted_save_leaves_no_temp_file(
    digits: DeviceData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """torch.save writes part of the file, then fails (RuntimeError) or Ctrl-C lands."""
    checkpoint = tmp_path / "trial-0.pt"

    def partial(error: BaseException) -> Callable[..., None]:
        def fake(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(f, (str, Path)):  # as the path it was given before
                Path(f).write_bytes(b"half a checkpoint")
            else:
                f.write(b"half a checkpoint")
            raise error

        return fake

    monkeypatch.setattr(torch, "save", partial(RuntimeError("boom")))
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        run = fit(plan(), digits, checkpoint=checkpoint)
    assert run.epochs_run == 3 and os.listdir(tmp_path) == []
    assert warnings_of(caplog) == [
        f"checkpoint {checkpoint} not written: RuntimeError: boom; the run goes on without it."
    ]

    monkeypatch.setattr(torch, "save", partial(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        fit(plan(), digits, checkpoint=checkpoint)
    assert os.listdir(tmp_path) == []


def test_a_directory_at_the_checkpoint_path_is_ignored_and_kept(
    digits: DeviceData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "trial-0.pt"
    checkpoint.mkdir()
    (checkpoint / "mine.txt").write_text("mine")
    fresh = fit(plan(), digits)
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        run = fit(plan(), digits, checkpoint=checkpoint)
    same_run(fresh, run)
    assert warnings_of(caplog) == [
        f"checkpoint {checkpoint} ignored (it is a directory); training starts from epoch 1.",
        f"checkpoint {checkpoint} not written: Is a directory; the run goes on without it "
        "(something else is in its place: move it away).",
    ]
    finished = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5)
    assert sweep_checkpoints(tmp_path, [finished]) == []  # trial 0's "checkpoint" is kept
    assert (checkpoint / "mine.txt").read_text() == "mine"
    assert temp_files(tmp_path) == []

    fifo = tmp_path / "trial-1.pt"  # a FIFO is not waited on
    os.mkfifo(fifo)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        assert (
            autoall.training._checkpoint_file.read(fifo, map_location=torch.device("cpu")) is None
        )
    assert warnings_of(caplog) == [
        f"checkpoint {fifo} ignored (it is not a regular file); training starts from epoch 1."
    ]


def _tampered(state: dict[str, Any]) -> dict[str, Callable[[dict[str, Any]], str]]:
    """Ways to damage a real checkpoint after epoch 2 of 3, each with the reason it is
    refused."""
    weight = next(k for k, v in state["model"].items() if v.dim() == 2)
    rows, cols = state["model"][weight].shape
    steps = state["scheduler"]["last_epoch"]

    def epoch_1e9(s: dict[str, Any]) -> str:
        s["epoch"] = 1e9
        return "epoch must be an integer from 0 to 3, but it is 1000000000.0"

    def epoch_99(s: dict[str, Any]) -> str:
        s["epoch"] = 99
        return "epoch must be an integer from 0 to 3, but it is 99"

    def short_history(s: dict[str, Any]) -> str:
        s["history"] = s["history"][:1]
        return "its history must hold 2 epochs, but it holds 1"

    def model_shape(s: dict[str, Any]) -> str:
        s["model"][weight] = torch.zeros(rows + 1, cols)
        return f"model tensor {weight} has shape ({rows + 1}, {cols}), not ({rows}, {cols})"

    def moment_shape(s: dict[str, Any]) -> str:
        entry = next(iter(s["optimizer"]["state"].values()))
        entry["exp_avg"] = torch.zeros(3)
        return "its optimizer's exp_avg has shape (3,), not"

    def schedule(s: dict[str, Any]) -> str:
        s["scheduler"]["last_epoch"] = steps + 1
        return f"its schedule is at step {steps + 1}, not {steps}"

    def accuracy(s: dict[str, Any]) -> str:
        s["history"][0]["val_acc"] = 7.0
        return "history entry 1 holds an accuracy outside [0, 1]"

    def tensor_for_a_number(s: dict[str, Any]) -> str:
        s["history"][1]["val_loss"] = torch.ones(3)
        return "history entry 2 holds a value that is not a number"

    def tensor_schedule(s: dict[str, Any]) -> str:
        s["scheduler"]["last_epoch"] = torch.ones(3, dtype=torch.long)
        return "its schedule is at step tensor([1, 1, 1]), not"

    return {
        f.__name__: f
        for f in (
            epoch_1e9,
            epoch_99,
            short_history,
            model_shape,
            moment_shape,
            schedule,
            accuracy,
            tensor_for_a_number,
            tensor_schedule,
        )
    }


def test_a_damaged_or_tampered_checkpoint_is_ignored_and_the_run_starts_from_epoch_1(
    digits: DeviceData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = fit(plan(), digits)
    good = tmp_path / "good.pt"
    fit(plan(), digits, on_epoch=stopped_at(2), checkpoint=good)
    state = torch.load(good, weights_only=True)
    control = tmp_path / "control.pt"
    control.write_bytes(good.read_bytes())
    assert fit(plan(), digits, checkpoint=control).extra["resumed_from_epoch"] == 2

    cases: dict[str, tuple[Callable[[Path], None], str]] = {
        "garbage": (
            lambda p: p.write_bytes(os.urandom(256)),
            "not a checkpoint: torch.load refused it (UnpicklingError)",
        ),
        "a list": (lambda p: torch.save([1, 2], p), "not a checkpoint: it holds a list"),
    }
    for name, tamper in _tampered(state).items():

        def write(p: Path, tamper: Callable[[dict[str, Any]], str] = tamper) -> None:
            copy = torch.load(good, weights_only=True)
            tamper(copy)
            torch.save(copy, p)

        cases[name] = (write, tamper(torch.load(good, weights_only=True)))
    for name, (make, reason) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.pt"
        make(path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
            run = fit(plan(), digits, checkpoint=path)
        same_run(fresh, run)
        lines = warnings_of(caplog)
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"checkpoint {path} ignored ({reason}"), (name, lines)
        assert lines[0].endswith("); training starts from epoch 1."), (name, lines)
        assert fit(plan(), digits, checkpoint=path).extra["resumed_from_epoch"] == 3  # rewritten


def test_a_cohort_member_s_garbage_checkpoint_is_ignored_and_the_other_resumes(
    digits: DeviceData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plans = [
        replace(plan(seed=s, all_lr=3e-3), spec=ALLSpec(8, "reconstruction", 0.1)) for s in (0, 1)
    ]
    garbage, good = tmp_path / "a.pt", tmp_path / "b.pt"
    garbage.write_bytes(b"PK\x03\x04 not a zip at all")
    fit(plans[1], digits, on_epoch=stopped_at(2), checkpoint=good)
    with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
        first, second = fit_cohort(plans, digits, checkpoints=[garbage, good])
    assert isinstance(first, RunResult) and isinstance(second, RunResult)
    assert first.epochs_run == 3 and "resumed_from_epoch" not in first.extra
    assert second.epochs_run == 3 and second.extra["resumed_from_epoch"] == 2
    lines = warnings_of(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {garbage} ignored (not a ")


# ------------------------------------------------------------------ stale temp files swept


def _kill_mid_write(path: Path, sig: signal.Signals) -> int:
    """A process that dies by `sig` in the middle of writing `path`'s checkpoint; its pid."""
    code = f"""
import os, signal, torch
from pathlib import Path
import autoall.training._checkpoint_file as c
def dying(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint"); f.flush()
    os.kill(os.getpid(), signal.{sig.name})
torch.save = dying
c.write(Path({str(path)!r}), {{"epoch": 1}})
"""
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert child.returncode == -sig, child.stderr.decode()[-2000:]
    (left,) = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}~")]
    return int(left.name.split("~")[2])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_writer_killed_mid_write_leaves_a_temp_file_the_sweep_removes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Swept once over a minute old (its process is gone from this host), not before."""
    _kill_mid_write(tmp_path / "trial-0.pt", sig)
    (left,) = tmp_path.iterdir()
    assert left.read_bytes() == b"half a checkpoint"
    assert sweep_temp_files(tmp_path) == []  # just written: within a minute's grace
    age(left, 120)
    finished = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5)
    assert sweep_checkpoints(tmp_path, [finished]) == []  # the study's sweep sweeps it
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_removes_only_temp_files_of_writers_that_are_gone(tmp_path: Path) -> None:
    """Temp files of a process gone from this host (over a minute old) or of any host
    untouched for an hour go; a live writer's, a recent one of another host, and files that
    are not autoall's stay."""
    host, me = socket.gethostname(), os.getpid()
    kept = {  # name -> seconds since it was last written
        f".trial-5.pt~{host}~{me}~{'1' * 16}.tmp": 120,  # a live writer: this process
        f".trial-6.pt~elsewhere~{dead_pid()}~{'2' * 16}.tmp": 1800,  # another host, recent
        ".trial-7.pt.123.tmp": 1800,  # the name written before, recent
        "notes.tmp": 7200,  # not autoall's
        ".trial-8.pt~x.tmp": 7200,  # not autoall's either
    }
    old = {
        f".trial-10.pt~elsewhere~{dead_pid()}~{'4' * 16}.tmp": 7200,  # any host, an hour
        ".trial-11.pt.123.tmp": 7200,
    }
    for name, seconds in {**kept, **old}.items():
        (tmp_path / name).write_text("mine")
        age(tmp_path / name, seconds)
    gone = tmp_path / f".trial-12.pt~{host}~{dead_pid()}~{'5' * 16}.tmp"  # killed on this host
    gone.write_text("")
    age(gone, 120)
    directory = tmp_path / f".trial-9.pt~{host}~{dead_pid()}~{'3' * 16}.tmp"
    directory.mkdir()
    age(directory, 7200)

    swept = sweep_temp_files(tmp_path)
    assert sorted(p.name for p in swept) == sorted([gone.name, *old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, directory.name])


# --------------------------------------------------------------- the study, end to end


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["study", "run", *args, "--no-baseline"])
    return result.exit_code, result.output


def _trials() -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="t/mlp", storage=STORAGE).get_trials(deepcopy=False)


def test_a_study_on_a_full_checkpoint_disk_completes_and_sweeps_stale_temp_files(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_study(workdir / "s.yaml", n_trials=2)
    with tmpfs(workdir / "ckpt", "16k") as disk:
        folder = disk / "t__mlp"
        folder.mkdir()
        stale = [
            folder / f".trial-0.pt~{socket.gethostname()}~{dead_pid()}~{'0' * 16}.tmp",
            folder / ".trial-1.pt.4242.tmp",  # the name a killed worker left before
        ]
        stale[0].write_bytes(b"x" * 4096)
        stale[1].write_bytes(b"x" * 4096)
        age(stale[0], 120)
        age(stale[1], 7200)
        with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
            code, out = _run(
                str(path), "--no-tracking", "--checkpoint-dir", str(disk), *EVERY_EPOCH
            )
        assert code == 0, out
        assert "Traceback" not in out
        assert {t.state for t in _trials()} == {TrialState.COMPLETE}
        assert len(_trials()) == 2
        assert warnings_of(caplog) == [
            f"checkpoint {folder / f'trial-{n}.pt'} not written: {FULL}." for n in (0, 1)
        ]
        assert os.listdir(folder) == []  # partial and stale temp files alike


@pytest.mark.slow  # MLflow tracking on: the parent run's status is part of the check
def test_a_checkpoint_folder_made_read_only_mid_run_is_a_warning_not_a_crash(
    tracked: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder turns read-only (a real read-only remount) after the first checkpoint: the
    trials complete, the worker ends normally, the MLflow parent run is FINISHED."""
    path = write_study(tracked / "s.yaml", n_trials=2)
    save = autoall.training._checkpoint_file.save_run
    with tmpfs(tracked / "ckpt", "8m") as disk:

        def then_read_only(*args: Any) -> None:
            save(*args)
            remount(disk, "ro")

        monkeypatch.setattr(autoall.training._checkpoint_file, "save_run", then_read_only)
        try:
            with caplog.at_level(logging.WARNING, logger="autoall.checkpoint"):
                code, out = _run(
                    str(path), "--checkpoint-dir", str(disk), "--checkpoint-every", "0"
                )
        finally:
            remount(disk, "rw")
        assert code == 0, out
        assert "Traceback" not in out
        trials = _trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        first = disk / "t__mlp" / "trial-0.pt"
        assert torch.load(first, weights_only=True)["epoch"] == 1  # written before the remount
        lines = warnings_of(caplog)
        read_only = "Read-only file system"
        hint = "(make the folder writable, or choose another --checkpoint-dir)."
        assert (
            f"checkpoint {first} not written: {read_only}; the run goes on without it {hint}"
            in lines
        )
        assert f"checkpoint {first} not removed: {read_only} {hint}" in lines
        assert temp_files(disk) == []
    client = MlflowClient(f"sqlite:///{(tracked / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.\"autoall.role\" = 'study'"
    )
    assert [p.info.status for p in parents] == ["FINISHED"]
