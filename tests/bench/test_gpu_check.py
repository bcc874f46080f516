"""bench/gpu_check.sh: the CPU smoke run CI keeps from rotting, and the check's pure helpers."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

from autoall.config._study_file import load_study_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _load(name: str) -> ModuleType:
    """A script of bench/ (no package: its files import each other by name from bench/)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


gc = _load("gpu_check")

SECTIONS = (
    "== 1. environment ==",
    "== 2. trials per hour: digits mlp, 1/2 trials per GPU (--n-jobs) ==",
    "== 3. cohorts: trials per hour, MNIST-sized mlp and cnn, cohorts of 1/2 ==",
    "== summary ==",
)


def _run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [str(SCRIPT), "--device", "cpu", "--quick", *args],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_quick_cpu_run_prints_every_section_and_figure(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _run_script(tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert re.search(r"^command: PYTHON=\S+ bench/gpu_check.sh --device cpu --quick", out, re.M)
    positions = [out.find(header) for header in SECTIONS]
    assert all(p >= 0 for p in positions), f"missing section headers in:\n{out}"
    assert positions == sorted(positions), "sections out of order"

    for n in (1, 2):
        match = re.search(rf"^  --n-jobs {n}: (\d+) trials by (\d+) worker", out, re.M)
        # 2 trials of 1 epoch: on a busy machine the second worker may start after both ran
        assert match and int(match.group(1)) == 2 and 1 <= int(match.group(2)) <= n, out
    match = re.search(
        r"^ratio 2 vs 1 trials per GPU: steady (\d+\.\d+)x, wall (\d+\.\d+)x$", out, re.M
    )
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, out
    assert re.search(r"^target 2 vs 1 trials per GPU \(steady\): [\d.]+x \(>= 2.5x: not judged on cpu\)$", out, re.M)  # fmt: skip
    for arch in ("mlp", "cnn"):
        for k in (1, 2):
            match = re.search(rf"^  {arch} K= ?{k}: wall +[\d.]+ s; +([\d,]+) trials/h", out, re.M)
            assert match and float(match.group(1).replace(",", "")) > 0, (arch, k, out)
    assert "target mlp cohort of 16 vs one at a time: not measured here" in out
    assert re.search(r"^total: [\d.]+ s; sections failed: 0$", out, re.M)
    assert "FAILED" not in out and "target missed" not in out

    report = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert all(header in report for header in SECTIONS)
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert 1 <= figures["trials"]["x2"]["workers"] <= 2  # a late second worker may get none
    assert set(figures["trials"]["ratio_x2"]) == {"steady", "wall"}
    assert set(figures["cohorts"]) == {"mlp", "cnn"}
    assert set(figures["cohorts"]["mlp"]) == {"K1", "K2"}
    assert (tmp_path / "out" / "gpu_check.log").read_text() == out
    print(f"gpu_check --quick took {time.monotonic() - start:.1f} s")


def test_skip_leaves_the_sections_out(tmp_path: Path) -> None:
    proc = _run_script(tmp_path, "--skip", "2,3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== 1. environment ==" in proc.stdout and "== summary ==" in proc.stdout
    assert "== 2." not in proc.stdout and "== 3." not in proc.stdout
    assert "(section 2 skipped by --skip)" in proc.stdout


# ---------------------------------------------------------------- pure helpers


def test_target_line_states_value_bound_and_verdict() -> None:
    assert gc.target_line("a vs b", 3.456, 3.0, judged=True) == "target a vs b: 3.46x (>= 3x: met)"
    assert gc.target_line("x", 2.9, 3.0, judged=True).endswith("(>= 3x: MISSED)")
    assert gc.target_line("x", 0.5, 2.5, judged=False) == (
        "target x: 0.50x (>= 2.5x: not judged on cpu)"
    )


def test_trials_per_hour() -> None:
    assert gc.trials_per_hour(10, 60.0) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="positive"):
        gc.trials_per_hour(1, 0.0)


def test_steady_rate_leaves_out_worker_start_up_and_sums_workers() -> None:
    # one worker: 3 trials of 10 s back to back -> 3 per 30 s
    one = [("a", 0.0, 10.0), ("a", 10.0, 20.0), ("a", 20.0, 30.0)]
    assert gc.steady_trials_per_hour(one) == pytest.approx(360.0)
    # two workers, the second starting 100 s late: each 2 per 20 s, the lag does not count
    two = [("a", 0, 10), ("a", 10, 20), ("b", 100, 110), ("b", 110, 120)]
    assert gc.steady_trials_per_hour(two) == pytest.approx(720.0)
    with pytest.raises(ValueError, match="at least one"):
        gc.steady_trials_per_hour([])


def test_first_visible_gpu() -> None:
    assert gc.first_visible_gpu({}) == "0"
    assert gc.first_visible_gpu({"CUDA_VISIBLE_DEVICES": "3,1"}) == "3"
    assert gc.first_visible_gpu({"CUDA_VISIBLE_DEVICES": " GPU-abc , 1"}) == "GPU-abc"
    assert gc.first_visible_gpu({"CUDA_VISIBLE_DEVICES": ""}) == "0"


def test_report_writes_text_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = gc.Report(tmp_path / "out")
    report.section("1. environment")
    report.line("torch: x")
    report.figure("cohorts.mlp.K16", {"per_hour": 2.5})
    report.figure("cohorts.target", None)
    assert capsys.readouterr().out == "\n== 1. environment ==\ntorch: x\n"
    assert (tmp_path / "out" / "gpu_check.txt").read_text() == "\n== 1. environment ==\ntorch: x\n"
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures == {"cohorts": {"mlp": {"K16": {"per_hour": 2.5}}, "target": None}}


def test_trials_section_skips_with_a_clear_message_without_optuna(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gc, "TRIAL_MODULES", ("optuna", "no_such_module_for_gpu_check"))
    report = gc.Report(None)
    gc.section_trials(report, torch.device("cpu"), gc.QUICK)
    assert report.lines[-1].startswith("skipped: no_such_module_for_gpu_check not importable")
    assert "bench/gpu_check.sh" in report.lines[-1]


def test_drawn_plans_follow_the_search_space_and_the_seed() -> None:
    cfg = load_study_file(ROOT / "studies" / "mnist.yaml")
    plans = gc.draw_plans(cfg, 4, seed=1, arch="mlp")
    assert len(plans) == 4
    assert gc.draw_plans(cfg, 4, seed=1, arch="mlp") == plans
    assert gc.draw_plans(cfg, 4, seed=2, arch="mlp") != plans


def test_one_trial_and_a_cohort_train_on_tiny_data() -> None:
    cfg = load_study_file(ROOT / "studies" / "mnist.yaml")
    data = gc.synthetic_mnist(64, 16, torch.device("cpu"))
    assert data.train_x.shape == (64, 1, 28, 28) and data.val_y.shape == (16,)
    for k in (1, 2):
        small = {"epochs": 2, "batch_size": 32, "warmup_epochs": 0.0}
        plans = [replace(p, train=replace(p.train, **small)) for p in gc.draw_plans(cfg, k, seed=k)]
        wall, results = gc.run_cohort(plans, data)
        assert wall > 0 and len(results) == k
        assert gc.steady_per_hour(results, 20) > 0


def test_a_command_past_its_time_is_stopped_with_its_children(tmp_path: Path) -> None:
    """`autoall study run` spawns workers: on a timeout the whole process group goes."""
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 1 s"):
        gc._run_group(command, cwd=tmp_path, env=dict(os.environ), log=tmp_path / "log", timeout=1)
    assert time.monotonic() - start < 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the spawned child outlived the timeout"


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert gc.main(["--device", "cuda"]) == 2
    assert "--device cuda was asked for, but torch sees no CUDA device" in capsys.readouterr().err


def test_the_script_is_executable_strict_bash() -> None:
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for wheel in ("optuna==", "alembic==", "SQLAlchemy==", "Mako==", "colorlog=="):
        assert wheel in text  # the wheels to carry to the GPU machine are documented
