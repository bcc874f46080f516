"""Workers on one host share its cores: a per-host registry of live workers (a held flock
each), and torch threads = the worker's share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

import autoall.study._workers
from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.study._host import HostWorkers, available_cores, threads_per_worker, workers_folder
from autoall.study._preflight import SMALL_STEP_FLOPS, step_flops

# A worker stand-in: registers, says so, and lives until killed.
_HOLDER = """
import sys, time
from pathlib import Path
from autoall.study._host import HostWorkers
registry = HostWorkers(Path(sys.argv[1]))
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
    ours = HostWorkers(folder)
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
    assert threads_per_worker(1, cores=8, small=True) == 1  # a small model: one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's limit wins when lower
    assert threads_per_worker(1, cores=8) == 3
    assert threads_per_worker(4, cores=8) == 2


def test_small_models_are_the_digits_ones() -> None:
    """One training step under 2 GFLOP (the largest model of the space) trains on one thread."""
    studies = Path(__file__).resolve().parents[2] / "studies"
    flops = {
        (name, arch): step_flops(cfg, arch)
        for name in ("digits", "mnist", "cifar10")
        for cfg in [load_study_file(studies / f"{name}.yaml")]
        for arch in cfg.architectures
    }
    digits = load_study_file(studies / "digits.yaml")  # mlp; cnn is one line away in the file
    flops["digits", "cnn"] = step_flops(replace(digits, architectures=("mlp", "cnn")), "cnn")
    small = {key for key, value in flops.items() if value < SMALL_STEP_FLOPS}
    assert {("digits", "mlp"), ("digits", "cnn"), ("mnist", "mlp")} == small, flops
    assert 1e8 < flops["digits", "mlp"] < 2e8  # 85k-parameter MLP + ALL(256), batch 128
    assert flops["cifar10", "resnet18"] > 1e11


def _torch_threads(study_file: Path, n: int) -> list[int]:
    args = ["study", "run", str(study_file), "--n-trials", str(n), "--no-tracking"]
    result = CliRunner().invoke(main, [*args, "--no-baseline"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="t/mlp", storage="sqlite:///autoall.db").trials
    return [t.user_attrs["torch_threads"] for t in trials[n - 2 :]]


def test_a_study_run_trains_with_its_share_of_the_host_s_cores(
    study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, a worker takes every core; next to another autoall worker, half of them; a small
    model (this digits MLP) one thread whatever the host."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    assert _torch_threads(study_file, 2) == [1, 1]  # small
    monkeypatch.setattr(autoall.study._workers, "SMALL_STEP_FLOPS", 0.0)  # as if it were large
    assert _torch_threads(study_file, 4) == [cores, cores]
    other = _holder(workers_folder())  # another worker on this host, e.g. a second study run
    try:
        assert _torch_threads(study_file, 6) == [max(1, cores // 2)] * 2
    finally:
        other.kill()
        other.wait()
    assert _torch_threads(study_file, 8) == [cores, cores]  # the killed one is forgotten
    assert os.environ.get("AUTOALL_CACHE")  # the registry lived in the test's cache folder
