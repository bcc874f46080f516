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

from autoall.cli import main


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


def _serve_then_interrupt(args: list[str], url: str, workdir: Path) -> tuple[str, set[int]]:
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
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    alive = {pid for pid in children if Path(f"/proc/{pid}").exists()}
    return out, alive


@pytest.mark.slow
def test_ui_serves_the_project_store_prints_run_links_and_stops_with_children(
    study_file: Path, workdir: Path
) -> None:
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--n-trials", "1", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    port = _free_port()
    out, alive = _serve_then_interrupt(
        ["ui", "--port", str(port)], f"http://127.0.0.1:{port}/health", workdir
    )
    assert f"MLflow UI: http://127.0.0.1:{port}" in out
    assert f"  t: http://127.0.0.1:{port}/#/experiments/" in out and "/runs" in out
    assert not alive, f"processes left running: {alive}"


@pytest.mark.slow
def test_dashboard_serves_the_study_storage_and_stops(study_file: Path, workdir: Path) -> None:
    result = CliRunner().invoke(
        main, ["study", "run", str(study_file), "--n-trials", "1", "--no-tracking", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    port = _free_port()
    out, alive = _serve_then_interrupt(
        ["dashboard", "--port", str(port)], f"http://127.0.0.1:{port}/api/studies", workdir
    )
    assert f"optuna-dashboard: http://127.0.0.1:{port}" in out
    assert not alive, f"processes left running: {alive}"
