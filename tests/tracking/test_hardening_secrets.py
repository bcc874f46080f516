"""Secrets and trust (issue 23, cases 6, 7, 8, and the `ui`/`dashboard` parts of 17 and 18):
no URL on a server's command line, passwords with blanks masked everywhere, a split cache that
is verified before it is believed, a garbage MLflow store refused in one line, and servers that
die with the autoall that started them."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PostgresCluster, write_study
from test_servers import _alive, _descendants, _free_port

from autoall.cli._main import main

# ---------------------------------------------------------------- servers (6, 17, 18)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autoall.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _get(url: str, proc: subprocess.Popen[str], timeout: float = 180) -> str:
    """The body of `url` once the server answers it with 200 (autoall must keep running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"autoall exited with {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return str(response.read().decode())
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def _proc_file(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _kill_all(proc: subprocess.Popen[str], pids: set[int]) -> None:
    """Leave nothing behind, whatever the test found."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def server_store(
    request: pytest.FixtureRequest, tmp_path: Path, workdir: Path, empty_store: Path
) -> Iterator[tuple[list[str], str, str, str]]:
    """(autoall's arguments, a URL answered only by the store it was given, what the answer
    holds, a marker in the store's URL) for `ui` or `dashboard` on a SQLite store in a folder
    whose name is the marker."""
    import optuna
    from mlflow import MlflowClient

    marker = f"pw-{secrets.token_hex(6)}"
    folder = tmp_path / marker
    folder.mkdir()
    port = _free_port()
    if request.param == "ui":
        shutil.copyfile(empty_store, folder / "mlflow.db")
        url = f"sqlite:///{folder}/mlflow.db"
        MlflowClient(url).create_experiment("exp-from-the-environment")
        probe = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50"
        yield (
            ["ui", "--port", str(port), "--tracking-uri", url],
            probe,
            "exp-from-the-environment",
            marker,
        )
    else:
        url = f"sqlite:///{folder}/optuna.db"
        optuna.create_study(storage=url, study_name="study-from-stdin")
        probe = f"http://127.0.0.1:{port}/api/studies"
        yield (
            ["dashboard", "--port", str(port), "--storage", url],
            probe,
            "study-from-stdin",
            marker,
        )


@pytest.mark.slow
@pytest.mark.parametrize("server_store", ["ui", "dashboard"], indirect=True)
def test_a_server_gets_its_url_off_the_command_line_and_dies_with_autoall(
    server_store: tuple[list[str], str, str, str], workdir: Path
) -> None:
    """Case 6: no child's argv (what `ps` shows every user) holds the store's URL, yet the
    server serves that store. Case 18: SIGKILL of autoall stops the server; the port is free."""
    args, probe, served, marker = server_store
    port = int(args[2])
    proc = _start(args, workdir)
    children: set[int] = set()
    try:
        assert served in _get(probe, proc)  # the URL reached it (environment or stdin)
        children = _descendants(proc.pid)
        argvs = {pid: _proc_file(pid, "cmdline") for pid in children}
        assert len([a for a in argvs.values() if a]) >= 2, argvs  # the server and a watchdog
        leaks = {pid: a.replace(b"\0", b" ") for pid, a in argvs.items() if marker.encode() in a}
        assert leaks == {}

        os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the watchdog is left to act
        proc.wait()
        assert _wait_for(lambda: _port_free(port), 30), f"port {port} still busy"
        assert _wait_for(lambda: not [p for p in children if _alive(p)], 30), [
            (p, _proc_file(p, "cmdline")) for p in children if _alive(p)
        ]
    finally:
        _kill_all(proc, children)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_a_database_password_reaches_no_child_s_command_line(
    command: str, workdir: Path, postgres: PostgresCluster, postgres_db: str
) -> None:
    """Case 6 with a real password: `ps` shows it for no process autoall starts; the server
    has it (MLflow's from its environment, readable by the user alone)."""
    import optuna

    port = _free_port()
    if command == "ui":
        args = ["ui", "--port", str(port), "--tracking-uri", postgres_db]
        probe = f"http://127.0.0.1:{port}/health"
    else:
        optuna.create_study(storage=postgres_db, study_name="t")
        args = ["dashboard", "--port", str(port), "--storage", postgres_db]
        probe = f"http://127.0.0.1:{port}/api/studies"
    proc = _start(args, workdir)
    children: set[int] = set()
    try:
        _get(probe, proc)
        children = _descendants(proc.pid)
        secret = postgres.password.encode()
        assert [p for p in children if secret in _proc_file(p, "cmdline")] == []
        if command == "ui":
            assert [p for p in children if secret in _proc_file(p, "environ")]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert postgres.password not in out
    finally:
        _kill_all(proc, children)


def _random_bytes(db: Path, store: Path) -> None:
    db.write_bytes(bytes((i * 37 + 11) % 256 for i in range(8192)))


def _corrupt_pages(db: Path, store: Path) -> None:
    """A valid SQLite header and first page, every later page garbage."""
    data = bytearray(store.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = bytes((i * 7) % 256 for i in range(len(data) - page))
    db.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (_random_bytes, "file is not a database"),
        (_corrupt_pages, "database disk image is malformed"),
    ],
    ids=["random bytes", "corrupt pages"],
)
def test_ui_on_a_garbage_mlflow_db_is_one_line_and_exit_2(
    workdir: Path, empty_store: Path, garbage: Callable[[Path, Path], None], reason: str
) -> None:
    """Case 17: one line naming the store and what to do; the file untouched, no server."""
    db = workdir / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    garbage(db, empty_store)
    before = db.read_bytes()
    port = _free_port()
    started = time.monotonic()
    result = CliRunner().invoke(main, ["ui", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: the MLflow store sqlite:///mlruns/mlflow.db cannot be opened (DatabaseError: "
        f"{reason}); move mlruns/mlflow.db aside, or pass --tracking-uri (or set "
        "MLFLOW_TRACKING_URI) to a working store.\n"
    )
    assert db.read_bytes() == before
    assert sorted(p.name for p in workdir.rglob("*")) == ["mlflow.db", "mlruns"]
    assert time.monotonic() - started < 60  # no server was started and waited for


# ---------------------------------------------------------------- passwords with blanks (7)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_password_with_a_space_and_a_tab_appears_nowhere(
    workdir: Path, postgres: PostgresCluster
) -> None:
    """Case 7 end to end: a role whose password holds a space and a tab runs a study; no word
    of the password is printed or stored (MLflow's store, its `storage` params, artifacts)."""
    import psycopg2
    from mlflow import MlflowClient

    words = [secrets.token_hex(5) for _ in range(3)]
    password = f"{words[0]} {words[1]}\t{words[2]}"
    role = database = f"spaced_{secrets.token_hex(4)}"
    conn = psycopg2.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.user,
        password=postgres.password, dbname="postgres",
    )  # fmt: skip
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
            cursor.execute(f"CREATE DATABASE {database} OWNER {role}")
    finally:
        conn.close()
    url = f"postgresql://{role}:{password}@127.0.0.1:{postgres.port}/{database}"
    path = write_study(workdir / "s.yaml", n_trials=1, train={"epochs": 2})
    result = CliRunner().invoke(
        main, ["study", "run", str(path), "--storage", url, "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    shown = f"postgresql://{role}:***@127.0.0.1:{postgres.port}/{database}"
    assert f"Optuna storage: {shown}" in result.output
    assert [w for w in words if w in result.output] == []
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = [
        run
        for e in client.search_experiments()
        for run in client.search_runs([e.experiment_id], max_results=100)
    ]
    assert {run.data.params["storage"] for run in runs if "storage" in run.data.params} == {shown}
    stored = [
        str(p)
        for p in workdir.rglob("*")
        for w in words
        if p.is_file() and w.encode() in p.read_bytes()
    ]
    assert stored == []


# ---------------------------------------------------------------- the split cache (8)


@pytest.fixture
def splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The split cache folder of a cache of the test's own."""
    monkeypatch.setenv("AUTOALL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "splits"


def _test_split_file(splits: Path) -> Path:
    """The cached split of digits into its fixed test set (held) and the rest (keep)."""
    found = []
    for path in splits.glob("*.npz"):
        with np.load(path) as cached:
            if len(cached["keep"]) + len(cached["held"]) == 1797:
                found.append(path)
    assert len(found) == 1, found
    return found[0]


def _same(a: object, b: object) -> bool:
    from autoall.training._data import SPLITS

    return all(
        torch.equal(a.split(s)[0], b.split(s)[0]) and torch.equal(a.split(s)[1], b.split(s)[1])  # type: ignore[attr-defined]
        for s in SPLITS
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "autoall.data"]


def _swap(keep: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One training image and one test image change places: a valid split, the wrong one."""
    return np.sort(np.r_[keep[1:], held[0]]), np.sort(np.r_[held[1:], keep[0]])


def _test_images_in_training(keep: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The issue's tampering: 40 test images in place of 40 training images, sizes kept."""
    return np.sort(np.r_[keep[40:], held[:40]]), held


@pytest.mark.parametrize("tamper", [_test_images_in_training, _swap], ids=["test in train", "swap"])
def test_a_tampered_split_cache_is_rebuilt_and_test_images_stay_out_of_training(
    splits: Path,
    caplog: pytest.LogCaptureFixture,
    tamper: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    from autoall.training._data import _digits_tensors, _stratified_split, load_data

    fresh = load_data("digits")
    path = _test_split_file(splits)
    with np.load(path) as cached:
        keep, held = cached["keep"], cached["held"]
        kept = {k: cached[k] for k in cached.files if k not in ("keep", "held")}  # its digest
    np.savez(path, **dict(zip(("keep", "held"), tamper(keep, held), strict=True)), **kept)

    with caplog.at_level(logging.WARNING, logger="autoall.data"):
        data = load_data("digits")
    assert _same(data, fresh)
    rest, test = _stratified_split(_digits_tensors()[1].numpy(), fraction=0.2, seed=0)
    assert np.array_equal(rest.numpy(), keep) and np.array_equal(test.numpy(), held)
    assert not set(rest.tolist()) & set(test.tolist())  # no test image in training
    assert _warnings(caplog) == [
        f"split cache {path} does not match the labels it was made from; rebuilt."
    ]


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _not_an_npz(path: Path) -> None:
    path.write_bytes(b"\x80\x04K\x01.")  # a pickle: never loaded as one


def _without_digest(path: Path) -> None:  # as autoall wrote it before the digest
    with np.load(path) as cached:
        keep, held = cached["keep"], cached["held"]
    np.savez(path, keep=keep, held=held)


@pytest.mark.parametrize(
    "damage", [_truncated, _not_an_npz, _without_digest], ids=["truncated", "pickle", "no digest"]
)
def test_an_unverifiable_split_cache_is_rebuilt_with_one_warning(
    splits: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    from autoall.training._data import load_data

    fresh = load_data("digits")
    path = _test_split_file(splits)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="autoall.data"):
        assert _same(load_data("digits"), fresh)
        assert _same(load_data("digits"), fresh)  # rebuilt once: the second load believes it
    assert _warnings(caplog) == [f"split cache {path} is unreadable or unverifiable; rebuilt."]


def test_a_verified_split_cache_is_used_without_scikit_learn(
    splits: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoall.training._data import load_data

    fresh = load_data("digits", split_seed=7)
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)  # importing it fails
    with caplog.at_level(logging.WARNING, logger="autoall.data"):
        assert _same(load_data("digits", split_seed=7), fresh)
    assert _warnings(caplog) == []


def test_a_link_planted_at_the_cache_file_is_replaced_not_written_through(
    splits: Path, tmp_path: Path
) -> None:
    from autoall.training._data import load_data

    fresh = load_data("digits")
    path = _test_split_file(splits)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    path.unlink()
    path.symlink_to(victim)
    assert _same(load_data("digits"), fresh)
    assert victim.read_text() == "the user's file"
    assert path.is_file() and not path.is_symlink()
    assert [p.name for p in splits.iterdir() if p.suffix != ".npz"] == []  # no temp file left
