"""The report's outputs, hardened: `--out` replaces only autoall's own files (a manifest), never
a foreign one or a sibling; one report at a time per folder (a real second process is refused);
a full or read-only MLflow artifact folder is lost logging, never a traceback; a full `--out` is
one line, exit 1, nothing half-written; Ctrl-C during the final write exits 130.

The fast tests drive autoall/report/_out.py and the CLI's checks, which run before anything
trains, on real folders, a real tmpfs and real read-only mounts. The slow ones share one tiny
digits report built once for the module (its reruns reuse every run) and break its MLflow
artifact folder or its output folder for real.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient

import autoall.report._render
from autoall.cli._main import main
from autoall.errors import exit_code, message
from autoall.report._out import (
    LOCK,
    MANIFEST,
    OutFolderError,
    OutWriteError,
    check_out,
    hold,
    write_outputs,
)
from autoall.report._report import write_atomically

AUTOALL = str(Path(sys.executable).with_name("autoall"))
REPORT = ["--seeds", "2", "--top-k", "1", "--selection-seeds", "1"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(files: dict[str, bytes]) -> Any:
    def fill(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).write_bytes(data)

    return fill


def _leftovers(folder: Path) -> list[str]:
    """Temporary files, staging folders or a lock left in `folder`."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith((".autoall-staging-", f"{MANIFEST}.")) or p.name == LOCK
    )


def _manifest(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / MANIFEST).read_text())["files"])


def _foreign(folder: Path, names: str) -> str:
    return (
        f"{folder} holds {names}, with the name of a report output, that autoall did not write "
        f"there (or that changed since; its own files are listed in {MANIFEST}); autoall "
        "replaces only its own files: move them away or pass another --out."
    )


@contextlib.contextmanager
def _mounted(target: Path, *how: str) -> Iterator[None]:
    """`mount *how target` (a tmpfs, or a read-only bind of `target` onto itself), undone after;
    the test is skipped, with the reason, where this process may not mount."""
    binds = how == ("ro-bind",)
    first = ["mount", "--bind", str(target), str(target)] if binds else ["mount", *how, str(target)]
    done = subprocess.run(first, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root and mount(8)")
    try:
        if binds:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


# --- 1: --out writes into its folder, replaces only autoall's own files --------------------


def test_out_replaces_only_its_own_files_never_a_foreign_one_or_a_sibling(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.md").write_text("my thesis")  # the user's, next to autoall's outputs
    (notes / "plot.png").write_bytes(b"my plot")
    (tmp_path / ".notes.old").mkdir()
    (tmp_path / ".notes.old" / "keep.txt").write_text("a sibling")

    write_atomically(notes, _fill({"summary.md": b"# one", "summary.html": b"<p>one</p>"}))
    assert (notes / "thesis.md").read_text() == "my thesis"
    assert (notes / "plot.png").read_bytes() == b"my plot"
    assert (tmp_path / ".notes.old" / "keep.txt").read_text() == "a sibling"
    assert sorted(p.name for p in notes.iterdir()) == sorted(
        [MANIFEST, "plot.png", "summary.html", "summary.md", "thesis.md"]
    )
    assert _manifest(notes) == {
        name: {"sha256": [_sha(notes / name)], "kind": "summary"}
        for name in ("summary.html", "summary.md")
    }

    # a second write: its file replaced, the one it no longer writes removed (it was autoall's)
    written = write_outputs(notes, _fill({"summary.md": b"# two"}), kind="summary")
    assert written == [notes / "summary.md"] and (notes / "summary.md").read_text() == "# two"
    assert sorted(p.name for p in notes.iterdir()) == [
        MANIFEST,
        "plot.png",
        "summary.md",
        "thesis.md",
    ]
    assert _manifest(notes) == {
        "summary.md": {"sha256": [_sha(notes / "summary.md")], "kind": "summary"}
    }
    assert (notes / "thesis.md").read_text() == "my thesis"
    assert _leftovers(notes) == [] and _leftovers(tmp_path) == []

    # a file autoall wrote and the user edited since is the user's now
    (notes / "summary.md").write_text("# edited by hand")
    with pytest.raises(OutFolderError) as caught:
        write_outputs(notes, _fill({"summary.md": b"# three"}), kind="summary")
    assert str(caught.value) == _foreign(notes, "summary.md")
    assert exit_code(caught.value) == 2
    assert (notes / "summary.md").read_text() == "# edited by hand"
    assert _leftovers(notes) == []


def test_a_planted_symlink_or_a_foreign_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("not yours")
    (out / "results.csv").symlink_to(target)
    (out / "test_acc_mlp.png").write_bytes(b"a figure of mine")
    with pytest.raises(OutFolderError) as caught:
        check_out(out)
    assert str(caught.value) == _foreign(out, "results.csv, test_acc_mlp.png")
    # planted after the check (while training): refused at the write, nothing touched
    with pytest.raises(OutFolderError):
        write_outputs(out, _fill({"results.csv": b"a,b\n", "report.md": b"# r"}), kind="report")
    assert (out / "results.csv").is_symlink() and target.read_text() == "not yours"
    assert not (out / "report.md").exists() and not (out / MANIFEST).exists()
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "test_acc_mlp.png"]

    (out / "results.csv").unlink()
    (out / "test_acc_mlp.png").unlink()
    (out / MANIFEST).write_text('{"files": {"../../etc/passwd": {"sha256": [], "kind": "x"}}}')
    with pytest.raises(OutFolderError) as caught:
        check_out(out)
    assert str(caught.value) == (
        f"{out / MANIFEST} is not the list of files autoall wrote (unexpected contents); autoall "
        "keeps that list there to replace only its own files: move it away or pass another --out."
    )
    (out / MANIFEST).unlink()
    (out / MANIFEST).symlink_to(target)  # never read through a link
    with pytest.raises(OutFolderError, match="is not the list of files autoall wrote"):
        check_out(out)
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(OutFolderError) as caught:
        check_out(file_out)
    assert (
        str(caught.value)
        == f"--out {file_out} is a file, not a folder; pass a folder for the report."
    )


def _synthetic_study(folder: Path) -> None:
    """study.yaml and its ALL study with COMPLETE trials (made directly: nothing trains)."""
    write_study(folder / "study.yaml", train={"epochs": 3}, n_trials=2)
    study = optuna.create_study(
        study_name="t/mlp", storage=f"sqlite:///{folder / 'autoall.db'}", direction="maximize"
    )
    for value in (0.9, 0.91):
        study.add_trial(
            optuna.trial.create_trial(value=value, state=optuna.trial.TrialState.COMPLETE)
        )


def test_the_cli_refuses_a_foreign_output_in_one_line_before_anything(workdir: Path) -> None:
    _synthetic_study(workdir)
    (workdir / "notes").mkdir()
    (workdir / "notes" / "report.md").write_text("my notes")
    (workdir / "notes" / "thesis.md").write_text("my thesis")
    result = CliRunner().invoke(main, ["report", "study.yaml", "--out", "notes", *REPORT])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert errors == [f"Error: {_foreign(workdir / 'notes', 'report.md')}"]
    assert (workdir / "notes" / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in (workdir / "notes").iterdir()) == ["report.md", "thesis.md"]
    assert not (workdir / "mlruns").exists()  # nothing stored, created or trained
    assert optuna.get_all_study_names(storage="sqlite:///autoall.db") == ["t/mlp"]


# --- 3: one report at a time per folder ----------------------------------------------------


def _wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_holder(path: Path) -> Any:
    try:
        return (path / LOCK).read_text()
    except OSError:
        return None


@pytest.mark.slow  # a second process's start-up: seconds
def test_a_second_process_is_refused_while_the_first_holds_the_folder(workdir: Path) -> None:
    """A real process holds the lock as a report does; `autoall report` into the same folder
    (a second real process) is one line, exit 2, and stores nothing; once the first is done the
    lock file, and the folder made for it, are gone."""
    _synthetic_study(workdir)
    notes = workdir / "notes"
    code = "import sys\nfrom autoall.report._out import hold\nwith hold(sys.argv[1]):\n    sys.stdin.read()"
    first = subprocess.Popen([sys.executable, "-c", code, str(notes)], stdin=subprocess.PIPE)
    try:
        _wait_for(lambda: _lock_holder(notes) == f"{first.pid}\n", "the first process's lock")
        second = subprocess.run(
            [AUTOALL, "report", "study.yaml", "--out", "notes", *REPORT],
            capture_output=True, text=True, timeout=300, cwd=workdir,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert [line for line in second.stderr.splitlines() if line.strip()] == [
            f"Error: Another report (process {first.pid}) is writing to {notes}; wait for it or "
            "pass another --out."
        ]
        assert not (workdir / "mlruns").exists()  # refused before anything was stored
        assert optuna.get_all_study_names(storage="sqlite:///autoall.db") == ["t/mlp"]
    finally:
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(timeout=60) == 0
    assert not notes.exists()  # the lock file and the folder made for it are removed
    with hold(notes):  # free again
        assert _lock_holder(notes) == f"{os.getpid()}\n"
        with hold(notes):  # re-entrant in one process
            pass
        assert (notes / LOCK).exists()
    assert not notes.exists()


# --- 11: a full or read-only --out ---------------------------------------------------------


def test_a_full_out_is_one_line_exit_1_and_nothing_half_written(tmp_path: Path) -> None:
    out = tmp_path / "full"
    out.mkdir()
    with _mounted(out, "-t", "tmpfs", "-o", "size=64k", "tmpfs"):
        write_outputs(out, _fill({"report.md": b"# earlier", "claims.csv": b"c\n"}), kind="report")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        big = {"report.md": b"# later", "report.html": os.urandom(200_000)}
        with pytest.raises(OutWriteError) as caught:
            write_outputs(out, _fill(big), kind="report")
        assert str(caught.value) == (
            f"Cannot write the report's files into {out}: No space left on device; nothing there "
            "was changed, and no temporary file is left. Free space or make the folder writable, "
            "then rerun the same command (its finished runs are reused)."
        )
        assert exit_code(caught.value) == 1 and "\n" not in message(caught.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # whole earlier files

        # made read-only while the report ran (its lock already held)
        with hold(out):
            subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
            with pytest.raises(OutWriteError, match="Read-only file system; nothing there was"):
                write_outputs(out, _fill({"report.md": b"# later"}), kind="report")
            subprocess.run(["mount", "-o", "remount,rw", str(out)], check=True)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        # read-only before the report starts: refused before anything trains
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        with pytest.raises(OutFolderError) as refused, hold(out):
            pass
        assert str(refused.value) == (
            f"Cannot lock the report folder {out} ({out / LOCK}: Read-only file system); pass a "
            "writable --out."
        )


# --- 17: Ctrl-C during the final write ------------------------------------------------------


class _DroppedInterrupt:
    """Ctrl-C that lands while Python runs a finaliser: the KeyboardInterrupt raised there is
    printed as "Exception ignored" and dropped, as it is when the garbage collector runs during
    the report's rendering."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the handler runs here, inside the finaliser
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_dropped_while_rendering_is_not_swallowed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_atomically(out, _fill({"summary.md": b"# earlier"}))

    def fill(folder: Path) -> None:
        (folder / "summary.md").write_bytes(b"# half")
        dropped = _DroppedInterrupt()
        del dropped
        (folder / "summary.html").write_bytes(b"<p>later</p>")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(out, fill)
    assert (out / "summary.md").read_text() == "# earlier"  # nothing written
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "summary.md"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_renames_lands_after_every_file_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write_outputs(out, _fill({"report.md": b"# earlier", "claims.csv": b"old\n"}), kind="report")
    real_replace, renamed = os.replace, []

    def interrupted_replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "report.md":  # Ctrl-C between two renames of the outputs
            signal.raise_signal(signal.SIGINT)
        real_replace(src, dst)
        renamed.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    new = {"claims.csv": b"new\n", "report.md": b"# later", "results.csv": b"r\n"}
    with pytest.raises(KeyboardInterrupt):
        write_outputs(out, _fill(new), kind="report")
    monkeypatch.undo()
    assert renamed == [MANIFEST, "claims.csv", "report.md", "results.csv", MANIFEST]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST} == new
    assert _manifest(out) == {n: {"sha256": [_sha(out / n)], "kind": "report"} for n in new}
    assert _leftovers(out) == []


# --- the whole report, built once (slow) ----------------------------------------------------


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["report", "study.yaml", *REPORT, *args])


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with a study run and its finished report (reports/t)."""
    root = tmp_path_factory.mktemp("hardened-report")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.delenv("AUTOALL_STORAGE", raising=False)
            write_study(
                root / "study.yaml", train={"epochs": 3}, n_trials=2, report={"tuning_trials": 1}
            )
            ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--no-tracking"])
            assert ran.exit_code == 0, ran.output
            result = _invoke()
            assert result.exit_code == 0, result.output
            yield root
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def at(reported: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(reported)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AUTOALL_STORAGE", raising=False)
    return reported


def _parent(root: Path) -> Any:
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t report")
    (run,) = client.search_runs([experiment.experiment_id], "tags.\"autoall.role\" = 'report'")
    return client, run


def _artifacts(root: Path) -> Path:
    _, run = _parent(root)
    uri = run.info.artifact_uri
    path = Path(uri.removeprefix("file://"))
    assert path.is_dir(), uri
    return path


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["read-only", "full"])
def test_a_broken_artifact_folder_is_lost_logging_and_the_report_completes(
    at: Path, broken: str
) -> None:
    artifacts = _artifacts(at)
    full = ("-t", "tmpfs", "-o", "size=4k,nr_inodes=1", "tmpfs")  # not one more file fits
    how = ("ro-bind",) if broken == "read-only" else full
    reason = "Read-only file system" if broken == "read-only" else "No space left on device"
    with _mounted(artifacts, *how):
        result = _invoke("--out", f"out-{broken}")
    assert result.exit_code == 0, result.output
    assert result.exception is None
    said = [line for line in result.output.splitlines() if "not logged" in line]
    assert len(said) == 1 and said[0].startswith("MLflow: report files ")
    assert reason in said[0] and said[0].endswith(
        "(recorded in the report run's tag autoall.lost_logging)"
    )
    outputs = sorted(p.name for p in (at / f"out-{broken}").iterdir() if p.name != MANIFEST)
    assert said[0].startswith(f"MLflow: report files {', '.join(outputs)} not logged (")
    _, run = _parent(at)
    assert run.info.status == "FINISHED"
    lost = run.data.tags["autoall.lost_logging"]
    assert lost.startswith(f"report files {', '.join(outputs)} not logged (") and reason in lost

    result = _invoke("--out", f"out-{broken}")  # the store mended: logged, and said so
    assert result.exit_code == 0 and "not logged" not in result.output
    client, run = _parent(at)
    assert run.data.tags["autoall.lost_logging"] == "none"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(outputs)


@pytest.mark.slow
def test_a_full_out_after_training_is_one_line_exit_1(at: Path) -> None:
    out = at / "full-out"
    out.mkdir()
    with _mounted(out, "-t", "tmpfs", "-o", "size=64k", "tmpfs"):
        (out / "thesis.md").write_text("mine")
        result = _invoke("--out", "full-out")
        assert result.exit_code == 1, result.output
        assert result.output.splitlines()[-1] == (
            f"Error: Cannot write the report's files into {out}: No space left on device; nothing "
            "there was changed, and no temporary file is left. Free space or make the folder "
            "writable, then rerun the same command (its finished runs are reused)."
        )
        assert [p.name for p in out.iterdir()] == ["thesis.md"]  # nothing half-written
    _, run = _parent(at)
    assert run.info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_in_the_report_s_final_write_exits_130(
    at: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = at / "reports" / "t"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = autoall.report._render.write

    def write(report: Any, folder: Path) -> None:
        dropped = _DroppedInterrupt()  # Ctrl-C while the report's page is written
        del dropped
        real_write(report, folder)

    monkeypatch.setattr(autoall.report._render, "write", write)
    result = _invoke()
    assert result.exit_code == 130, result.output
    assert result.output.splitlines()[-1] == (
        "Interrupted; finished runs are kept. Rerun the same command to continue."
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial file
    _, run = _parent(at)
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_predictions_that_cannot_be_logged_are_lost_logging_not_a_crash(at: Path) -> None:
    """A third seed trains new runs while the report's experiment folder is read-only."""
    experiment = _artifacts(at).parent.parent
    with _mounted(experiment, "ro-bind"):
        result = _invoke("--seeds", "3", "--out", "three")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "not logged" in line]
    assert any("test_predictions.npy not logged (" in line for line in lines), lines
    _, run = _parent(at)
    assert run.info.status == "FINISHED"
    assert "test_predictions.npy not logged (" in run.data.tags["autoall.lost_logging"]
    assert "Read-only file system" in run.data.tags["autoall.lost_logging"]


@pytest.mark.slow
def test_two_real_reports_into_one_folder_the_second_is_refused(at: Path) -> None:
    """The first report trains into a fresh MLflow store (minutes of work); the second, started
    once the first holds the folder, is refused in one line; Ctrl-C ends the first (130) and
    its lock goes with it."""
    out = at / "shared"
    store = f"sqlite:///{at / 'other' / 'mlflow.db'}"
    command = [AUTOALL, "report", "study.yaml", *REPORT, "--out", "shared"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    first = subprocess.Popen(
        [*command, "--tracking-uri", store], cwd=at, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _lock_holder(out) == f"{first.pid}\n", "the first report's lock")
        second = subprocess.run(
            command, capture_output=True, text=True, timeout=300, cwd=at, env=env
        )
        assert first.poll() is None, "the first report ended before the second was refused"
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert second.returncode == 2
    assert [line for line in second.stderr.splitlines() if line.strip()] == [
        f"Error: Another report (process {first.pid}) is writing to {out}; wait for it or pass "
        "another --out."
    ]
    assert first.returncode == 130, err[-2000:]
    assert err.rstrip().endswith(
        "Interrupted; finished runs are kept. Rerun the same command to continue."
    )
    assert not out.exists()  # made by the first for its lock; removed with it, nothing written
    shutil.rmtree(at / "other")
