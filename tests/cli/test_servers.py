"""`autoall ui` and `autoall dashboard`: serve on 127.0.0.1, print the link, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoall.cli._main import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def _descendants(pid: int) -> set[int]:
    """Every live process whose ancestry includes pid (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _serve_then_interrupt(
    args: list[str], url: str, workdir: Path, *, stop: signal.Signals = signal.SIGINT
) -> tuple[str, set[int], int]:
    """Start `autoall ARGS`, wait until `url` answers, send `stop` (SIGINT: to the terminal's
    process group, like Ctrl-C; others: to autoall alone, like `kill` or a closed ssh session);
    returns its output, the processes it had started that are still alive, and its exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoall.cli", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so the test can Ctrl-C it like a terminal would
    )
    try:
        assert _wait_http(url, proc) == 200
        children = _descendants(proc.pid)
        assert children, "the server runs in child processes"
        if stop == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(stop)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _descendants(proc.pid) if proc.poll() is None else set():
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    alive = {pid for pid in children if _alive(pid)}
    while alive and time.monotonic() < deadline:  # reaped by init: gone within moments
        time.sleep(0.2)
        alive = {pid for pid in children if _alive(pid)}
    for pid in alive:  # do not leave a server behind, whatever the test says
        os.kill(pid, signal.SIGKILL)
    return out, alive, proc.returncode


def _alive(pid: int) -> bool:
    """A live, non-zombie process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.slow
def test_ui_serves_the_project_store_prints_run_links_and_stops_with_children(
    study_file: Path, workdir: Path
) -> None:
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--n-trials", "1", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    port = _free_port()
    out, alive, code = _serve_then_interrupt(
        ["ui", "--port", str(port)], f"http://127.0.0.1:{port}/", workdir
    )
    assert code == 130, out  # Ctrl-C, as for every command
    assert f"MLflow UI: http://127.0.0.1:{port}" in out
    assert f"  t: http://127.0.0.1:{port}/#/experiments/" in out and "/runs" in out
    assert not alive, f"processes left running: {alive}"
    lines = out.splitlines()  # quiet: the links, each server warning on one line, the end
    assert lines[0].startswith("MLflow UI: ") and lines[-1] == "stopped.", out
    assert f"  t studies: http://127.0.0.1:{port}/#/experiments/" in out  # its study parents
    known = ("  t: ", "  t studies: ", "server warning: ")
    others = [x for x in lines[1:-1] if not x.startswith(known)]
    assert others == [], out
    assert "GET /" not in out


@pytest.mark.slow
def test_ui_verbose_shows_the_server_s_access_log(workdir: Path) -> None:
    port = _free_port()
    out, alive, code = _serve_then_interrupt(
        ["ui", "--port", str(port), "--verbose"], f"http://127.0.0.1:{port}/", workdir
    )
    assert code == 130, out
    assert '"GET / HTTP/1.1" 200' in out
    assert not alive, f"processes left running: {alive}"


def test_quiet_lines_drop_requests_and_notices_and_shorten_warnings() -> None:
    from autoall.cli._servers import quiet_lines

    server = [
        "Registry store URI not provided. Using backend store URI.",
        "[MLflow] Security middleware enabled with default settings (localhost-only). To ...",
        "/x/fastapi_app.py:23: StarletteDeprecationWarning: starlette.middleware.wsgi is old.",
        "  from starlette.middleware.wsgi import WSGIResponder, build_environ",
        '2026/12/07 00:46:15 INFO:     127.0.0.1:35392 - "GET /health HTTP/1.1" 200 OK',
        '127.0.0.1 - - [07/Dec/2026 00:46:15] "POST /api/studies HTTP/1.0" 500 12',
        "ERROR: the store cannot be opened",
        "  and its indented detail",
    ]
    assert list(quiet_lines(server)) == [
        "server warning: StarletteDeprecationWarning: starlette.middleware.wsgi is old.",
        "ERROR: the store cannot be opened",
        "  and its indented detail",
    ]


def test_quiet_lines_show_a_traceback_as_the_lines_of_its_exceptions() -> None:
    from autoall.cli._servers import quiet_lines

    server = [
        "2026/12/07 00:46:15 ERROR mlflow.cli: Error initializing backend store",
        "Traceback (most recent call last):",
        '  File "/x/base.py", line 1977, in _exec_single_context',
        "    self.dialect.do_execute(",
        "    ^^^^^^^^^^^^^^^^^^^^^^^^",
        "sqlite3.DatabaseError: file is not a database",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/x/cli.py", line 3, in <module>',
        "sqlalchemy.exc.DatabaseError: (sqlite3.DatabaseError) file is not a database",
        "[SQL: SELECT name FROM sqlite_master",
        "WHERE type='table']",
        "(Background on this error at: https://sqlalche.me/e/21/4xp6)",
        "ERROR: the next line of the server",
        "  its indented detail",
    ]
    assert list(quiet_lines(server)) == [
        "2026/12/07 00:46:15 ERROR mlflow.cli: Error initializing backend store",
        "server error: sqlite3.DatabaseError: file is not a database",
        "server error: sqlalchemy.exc.DatabaseError: (sqlite3.DatabaseError) file is not a database",
        "ERROR: the next line of the server",
        "  its indented detail",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///autoall.db",
        'postgresql://u:a "quoted" \\ pass\tword\x7f\x01@h:5432/d?application_name=é',
    ],
)
def test_toml_string_keeps_every_character_of_a_url(url: str) -> None:
    import tomllib

    from autoall.cli._servers import toml_string

    assert tomllib.loads(f"storage = {toml_string(url)}") == {"storage": url}


def test_the_dashboard_reads_its_storage_from_a_toml_file_on_its_stdin(tmp_path: Path) -> None:
    """The storage URL goes to optuna-dashboard in the TOML it reads with `--from-config`, never
    on its command line."""
    import optuna
    import tomllib

    from autoall.cli._servers import optuna_dashboard

    url = f"sqlite:///{tmp_path}/o.db"
    optuna.create_study(storage=url)
    server = optuna_dashboard(_free_port(), url)
    assert server.cmd[1:3] == ["--from-config", "/dev/stdin"]
    assert not [arg for arg in server.cmd if "sqlite" in arg or "o.db" in arg]
    assert tomllib.loads(server.stdin or "") == {"optuna_dashboard": {"storage": url}}


def test_an_optuna_dashboard_too_old_to_read_a_config_file_is_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.19.0")
    result = CliRunner().invoke(main, ["dashboard", "--port", str(_free_port())])
    if "optuna-dashboard is not installed" in result.output:
        pytest.skip("optuna-dashboard is not installed")
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: optuna-dashboard 0.19.0 is too old: autoall needs 0.20 or later, which reads the "
        "storage URL from a file instead of its command line (where every user of the host sees "
        "it); pip install -U 'autoall[dashboard]'.\n"
    )
    assert list(workdir.iterdir()) == []


def test_the_mlflow_ui_reads_its_stores_from_its_environment(
    tracked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoall.cli._servers import mlflow_ui

    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)  # mlflow_ui sets it for the server
    server = mlflow_ui(_free_port(), None)
    assert not [arg for arg in server.cmd if "sqlite" in arg or "mlruns" in arg]
    assert server.env == {
        "MLFLOW_BACKEND_STORE_URI": "sqlite:///mlruns/mlflow.db",
        "MLFLOW_REGISTRY_STORE_URI": "sqlite:///mlruns/mlflow.db",
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": (tracked / "mlruns" / "artifacts").resolve().as_uri(),
    }


@pytest.mark.slow
def test_dashboard_serves_the_study_storage_and_stops(study_file: Path, workdir: Path) -> None:
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--n-trials", "1", "--no-tracking", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    port = _free_port()
    out, alive, code = _serve_then_interrupt(
        ["dashboard", "--port", str(port)], f"http://127.0.0.1:{port}/api/studies", workdir
    )
    assert code == 130, out
    assert out.splitlines() == [
        f"optuna-dashboard: http://127.0.0.1:{port}  (sqlite:///autoall.db; Ctrl-C stops it)",
        "stopped.",
    ]  # quiet: no gunicorn start-up or shut-down lines, no access log
    assert not alive, f"processes left running: {alive}"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_to_ui_stop_the_whole_server(
    workdir: Path, stop: signal.Signals
) -> None:
    port = _free_port()
    out, alive, code = _serve_then_interrupt(
        ["ui", "--port", str(port)], f"http://127.0.0.1:{port}/health", workdir, stop=stop
    )
    assert not alive, f"processes left running after {stop.name}: {alive}\n{out}"
    assert code == 128 + stop, out
    assert "stopped." in out
    with socket.socket() as sock:  # nothing listens on the port any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_a_busy_port_is_one_line_and_exit_2_at_once(workdir: Path, command: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, [command, "--port", str(port)])
    if "optuna-dashboard is not installed" in result.output:
        pytest.skip("optuna-dashboard is not installed")
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: port {port} on 127.0.0.1 is in use (another server, or an `autoall ui` still "
        "running); stop it or pass another --port.\n"
    )
    assert list(workdir.iterdir()) == []  # no mlruns/ either


@pytest.mark.parametrize("port", ["0", "99999", "-1", "http"])
@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_an_impossible_port_is_a_usage_error(command: str, port: str) -> None:
    result = CliRunner().invoke(main, [command, "--port", port])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in result.output
    assert "Traceback" not in result.output


def test_ui_links_name_this_folder_s_experiments_after_another_folder_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    """MLflow keeps one store per URI in a process: the default, relative store URI used in one
    folder must not list that folder's experiments for the next one."""
    import shutil

    from mlflow import MlflowClient

    from autoall.cli._servers import _experiment_links

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    links = []
    for folder in ("first", "second"):
        (tmp_path / folder / "mlruns").mkdir(parents=True)
        db = tmp_path / folder / "mlruns" / "mlflow.db"
        shutil.copyfile(empty_store, db)
        MlflowClient(f"sqlite:///{db}").create_experiment(f"exp-{folder}")
        monkeypatch.chdir(tmp_path / folder)
        MlflowClient("sqlite:///mlruns/mlflow.db").search_experiments()  # as a user's notebook
        links.append(_experiment_links("sqlite:///mlruns/mlflow.db", 5000))
    assert [len(found) for found in links] == [1, 1]
    assert "exp-first:" in links[0][0] and "exp-second:" in links[1][0]
