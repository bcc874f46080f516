"""Workers on one host share its cores: a per-host registry of live workers (a held flock
each), and torch threads = the worker's share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from autoall.cli import main
from autoall.host import WorkerRegistry, available_cores, registry_folder, threads_per_worker

# A worker stand-in: registers, says so, and lives until killed.
_HOLDER = """
import sys, time
from pathlib import Path
from autoall.host import WorkerRegistry
registry = WorkerRegistry(Path(sys.argv[1]))
assert registry.register()
print("registered", flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "registered\n"
    return proc


def test_the_registry_counts_live_workers_and_forgets_killed_ones(tmp_path: Path) -> None:
    folder = tmp_path / "workers"
    ours = WorkerRegistry(folder)
    assert ours.live() == 0
    assert ours.register()
    holders = [_holder(folder), _holder(folder)]
    try:
        assert ours.live() == 3
        holders[0].send_signal(signal.SIGKILL)  # no chance to unregister
        holders[0].wait()
        assert ours.live() == 2
        assert len(list(folder.glob("*.worker"))) == 2  # the dead worker's file is gone
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    assert ours.live() == 1
    ours.unregister()
    assert ours.live() == 0 and list(folder.iterdir()) == []


def test_threads_are_the_worker_s_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(2, cores=8) == 4
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's limit wins when lower
    assert threads_per_worker(1, cores=8) == 3
    assert threads_per_worker(4, cores=8) == 2


def test_a_study_run_trains_with_its_share_of_the_host_s_cores(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, a worker takes every core; next to another autoall worker, half of them."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()

    def run(n: int) -> list[int]:
        args = ["study", "run", str(study_file), "--n-trials", str(n), "--no-tracking"]
        result = CliRunner().invoke(main, [*args, "--no-baseline"])
        assert result.exit_code == 0, result.output
        trials = optuna.load_study(study_name="t/mlp", storage="sqlite:///autoall.db").trials
        return [t.user_attrs["torch_threads"] for t in trials]

    assert run(2) == [cores, cores]
    other = _holder(registry_folder())  # another worker on this host, e.g. a second study run
    try:
        assert run(4)[2:] == [max(1, cores // 2)] * 2
    finally:
        other.kill()
        other.wait()
    assert run(5)[4:] == [cores]
    assert os.environ.get("AUTOALL_CACHE")  # the registry lived in the test's cache folder
