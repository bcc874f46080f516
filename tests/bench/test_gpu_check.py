"""bench/gpu_check.sh: the CPU smoke run CI keeps from rotting, and the script's pure helpers."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
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

from autoall.training._baselines import baseline

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _load(name: str) -> ModuleType:
    """A script of bench/ (no package: its files import each other by name from bench/)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


gc = _load("gpu_check")  # the driver: every section in one run
common = _load("_gpu_common")
paths = _load("gpu_paths")
trials = _load("gpu_trials")
utilisation = _load("gpu_utilisation")

SECTIONS = (
    "== 1. environment ==",
    "== 2. precision: fp32 vs bf16 + channels_last, through train() ==",
    "== 3. trial path vs plain loop vs DataLoader (cnn, bf16 + channels_last) ==",
    "== 4. trials per hour: digits mlp, 1/2 trials per GPU (--n-jobs) ==",
    "== 5. GPU utilisation during each run (mean / max) ==",
    "== summary ==",
    "== 6. cohorts: trials per hour, MNIST-sized mlp and cnn, cohorts of 1/2 ==",
)
RATIOS = (
    "bf16+cl vs fp32 cnn",
    "autoall vs plain loop",
    "DataLoader vs autoall",
    "2 vs 1 trials per GPU (steady)",
    "2 vs 1 trials per GPU (wall)",
)
ROWS = (  # regular expressions
    r"cnn fp32 \(batch 64\)",
    r"cnn bf16\+cl \(batch 64\)",
    r"autoall trial path",
    r"plain loop",
    r"DataLoader \(workers \d+\)",
)


def _ratio(text: str, label: str) -> float:
    match = re.search(rf"^ratio {re.escape(label)}: (\d+\.\d+)x \(", text, re.MULTILINE)
    assert match, f"no ratio line for {label!r} in:\n{text}"
    return float(match.group(1))


def _epoch_row(text: str, label: str) -> tuple[float, float]:
    """Median epoch seconds and images per second of the row whose label matches ``label``."""
    pattern = rf"^  {label}\s+epoch\s+(\d+\.\d+) s\s+([\d,]+) img/s"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no timing row for {label!r} in:\n{text}"
    return float(match.group(1)), float(match.group(2).replace(",", ""))


@pytest.mark.slow
def test_quick_cpu_run_prints_every_section_and_ratio(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = time.monotonic()
    proc = subprocess.run(
        [str(SCRIPT), "--device", "cpu", "--quick"],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert re.search(r"^command: PYTHON=\S+ bench/gpu_check.sh --device cpu --quick", out, re.M)

    positions = [out.find(header) for header in SECTIONS]
    assert all(p >= 0 for p in positions), f"missing section headers in:\n{out}"
    assert positions == sorted(positions), "sections out of order"
    for label in ROWS:
        seconds, per_second = _epoch_row(out, label)
        assert seconds > 0 and per_second > 0
    for label in RATIOS:
        value = _ratio(out, label)
        assert math.isfinite(value) and value > 0, (label, value)
    assert "not judged on cpu" in out  # targets are for one H100
    for n in (1, 2):
        match = re.search(rf"^  --n-jobs {n}: (\d+) trials by (\d+) worker", out, re.M)
        # 2 trials of 1 epoch: on a busy machine the second worker may start after both ran
        assert match and int(match.group(1)) == 2 and 1 <= int(match.group(2)) <= n, out
    section5 = out[out.find(SECTIONS[4]) :]
    assert "n/a (cpu)" in section5
    assert re.search(r"^total: [\d.]+ s; sections failed: 0$", out, re.M)
    assert "FAILED" not in out and "target missed" not in out

    report = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert all(header in report for header in SECTIONS[:6])  # section 6: gpu_cohort.txt
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["precision"]["cnn"]["speedup"] == pytest.approx(
        _ratio(out, RATIOS[0]), abs=0.006
    )
    assert set(figures["paths"]) >= {"autoall", "plain", "dataloader", "autoall_vs_plain"}
    assert 1 <= figures["trials"]["x2"]["workers"] <= 2  # a late second worker may get none
    assert (tmp_path / "out" / "gpu_check.log").read_text() == out

    section6 = out[out.find(SECTIONS[6]) :]  # bench/gpu_cohort.py: one trial, then a cohort
    for arch in ("mlp", "cnn"):
        for k in (1, 2):
            match = re.search(rf"^  {arch} K= ?{k}: wall +[\d.]+ s; +([\d,]+) trials/h", out, re.M)
            assert match and float(match.group(1).replace(",", "")) > 0, (arch, k, section6)
    assert "target mlp cohort of 16 vs one at a time: not measured here" in section6
    assert re.search(r"^\(section 6: [\d.]+ s; failed: 0\)$", out, re.M)
    cohorts = json.loads((tmp_path / "out" / "gpu_cohort.json").read_text())
    assert set(cohorts) == {"mlp.K1", "mlp.K2", "cnn.K1", "cnn.K2", "target"}
    assert (tmp_path / "out" / "gpu_cohort.txt").read_text().strip() == section6.strip()
    print(f"gpu_check --quick took {time.monotonic() - start:.1f} s")


def test_skip_6_leaves_the_cohort_section_out(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        [str(SCRIPT), "--device", "cpu", "--quick", "--skip", "1,2,3,4,5,6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== summary ==" in proc.stdout and "== 6. cohorts" not in proc.stdout


# ---------------------------------------------------------------- pure helpers


def test_median_after_warmup_drops_the_first_epoch() -> None:
    assert common.median_after_warmup([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert common.median_after_warmup([9.0, 1.0]) == 1.0
    assert common.median_after_warmup([4.0]) == 4.0
    with pytest.raises(ValueError, match="at least one"):
        common.median_after_warmup([])


def test_format_ratio_states_value_meaning_and_verdict() -> None:
    at_least_3 = common.Target(">=", 3.0)
    assert (
        common.format_ratio("DataLoader vs autoall", 3.456, meaning="a / b", target=at_least_3)
        == "ratio DataLoader vs autoall: 3.46x (a / b; target >= 3x: met)"
    )
    assert "target >= 3x: MISSED)" in common.format_ratio("x", 2.9, meaning="m", target=at_least_3)
    at_most = common.Target("<=", 1.10)
    assert "target <= 1.1x: met)" in common.format_ratio("x", 1.05, meaning="m", target=at_most)
    assert "MISSED" in common.format_ratio("x", 1.2, meaning="m", target=at_most)
    unjudged = common.format_ratio("x", 0.5, meaning="m", target=at_least_3, judged=False)
    assert unjudged == "ratio x: 0.50x (m; target >= 3x: not judged on cpu)"
    assert common.format_ratio("x", 1.0, meaning="m") == "ratio x: 1.00x (m)"


def test_trials_per_hour() -> None:
    assert trials.trials_per_hour(10, 60.0) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="positive"):
        trials.trials_per_hour(1, 0.0)


def test_steady_rate_leaves_out_worker_start_up_and_sums_workers() -> None:
    # one worker: 3 trials of 10 s back to back -> 3 per 30 s
    one = [("a", 0.0, 10.0), ("a", 10.0, 20.0), ("a", 20.0, 30.0)]
    assert trials.steady_trials_per_hour(one) == pytest.approx(360.0)
    # two workers, the second starting 100 s late: each 2 per 20 s, the lag does not count
    two = [("a", 0, 10), ("a", 10, 20), ("b", 100, 110), ("b", 110, 120)]
    assert trials.steady_trials_per_hour(two) == pytest.approx(720.0)
    with pytest.raises(ValueError, match="at least one"):
        trials.steady_trials_per_hour([])


def test_parse_smi_line() -> None:
    when, util, memory = common.parse_smi_line("2026/11/27 08:10:41.250, 87, 1234\n")
    assert (util, memory) == (87.0, 1234.0)
    assert when == pytest.approx(dt.datetime(2026, 11, 27, 8, 10, 41, 250_000).timestamp())
    assert common.parse_smi_line("garbage, 87, 1234") == (None, 87.0, 1234.0)
    assert common.parse_smi_line("2026/11/27 08:10:41.250, [N/A], 1234") is None
    assert common.parse_smi_line("87, 1234") is None
    assert common.parse_smi_line("") is None


def test_summarise_util() -> None:
    stats = utilisation.summarise_util([(0.0, 50.0, 100.0), (0.2, 100.0, 300.0), (0.4, 0.0, 200.0)])
    assert stats == utilisation.UtilStats(samples=3, mean=50.0, max=100.0, max_memory_mib=300.0)
    assert utilisation.summarise_util([]) is None


def test_first_visible_gpu() -> None:
    assert common.first_visible_gpu({}) == "0"
    assert common.first_visible_gpu({"CUDA_VISIBLE_DEVICES": "3,1"}) == "3"
    assert common.first_visible_gpu({"CUDA_VISIBLE_DEVICES": " GPU-abc , 1"}) == "GPU-abc"
    assert common.first_visible_gpu({"CUDA_VISIBLE_DEVICES": ""}) == "0"


def test_gpu_sampler_files_samples_under_their_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake nvidia-smi printing 60 % every 50 ms: samples land in the phase they fall in."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "while true; do echo \"$(date '+%Y/%m/%d %H:%M:%S.%3N'), 60, 512\"; sleep 0.05; done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler = common.GpuSampler(torch.device("cpu"), "0")
    sampler.start()
    try:
        time.sleep(0.3)  # outside any phase: not reported
        with sampler.phase("run a"):
            time.sleep(0.6)
        time.sleep(0.3)  # let the last lines arrive
    finally:
        sampler.stop()
    assert sampler.source.startswith("nvidia-smi")
    phases = sampler.by_phase()
    assert list(phases) == ["run a"]
    stats = utilisation.summarise_util(phases["run a"])
    assert stats is not None and stats.samples >= 3
    assert (stats.mean, stats.max_memory_mib) == (60.0, 512.0)
    assert len(sampler.raw) > stats.samples


def test_gpu_sampler_falls_back_when_nvidia_smi_gives_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/usr/bin/env bash\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(common.torch.cuda, "utilization", lambda device: 42)
    monkeypatch.setattr(common.torch.cuda, "device_memory_used", lambda device: 2**30)
    sampler = common.GpuSampler(torch.device("cpu"), "0")
    sampler.start()
    try:
        with sampler.phase("run b"):
            time.sleep(1.0)
    finally:
        sampler.stop()
    assert "nvidia-smi gave nothing" in sampler.source and sampler.error is None
    stats = utilisation.summarise_util(sampler.by_phase()["run b"])
    assert stats is not None and (stats.mean, stats.max_memory_mib) == (42.0, 1024.0)


def test_report_writes_text_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = common.Report(tmp_path / "out")
    report.section("1. environment")
    report.line("torch: x")
    report.figure("precision.cnn.speedup", 2.5)
    report.figure("precision.cnn.fp32", {"epoch_s": 1.0})
    assert capsys.readouterr().out == "\n== 1. environment ==\ntorch: x\n"
    assert (tmp_path / "out" / "gpu_check.txt").read_text() == "\n== 1. environment ==\ntorch: x\n"
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures == {"precision": {"cnn": {"speedup": 2.5, "fp32": {"epoch_s": 1.0}}}}


def test_trials_section_skips_with_a_clear_message_without_optuna(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(trials, "_TRIAL_MODULES", ("optuna", "no_such_module_for_gpu_check"))
    report = common.Report(None)
    trials.section_trials(report, torch.device("cpu"), common.QUICK, common.NoSampler())
    assert report.lines[-1].startswith("skipped: no_such_module_for_gpu_check not importable")
    assert "bench/gpu_check.sh" in report.lines[-1]


def test_crop_flip_is_a_padded_crop_then_a_mirror_per_image() -> None:
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding shows
    out = paths._crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1)
                if flip
                else padded[i, :, dy : dy + 8, dx : dx + 8],
            )
        ]
        assert matches, f"image {i} is no crop of its padded image"
        seen.add(matches[0])
    assert len(seen) > 1  # the offsets are drawn per image


def test_the_three_loops_time_every_epoch_on_tiny_data() -> None:
    data = common.synthetic_cifar(24, 8, torch.device("cpu"))
    assert data.train_x.shape == (24, 3, 32, 32) and data.val_y.shape == (8,)
    assert data.train_x.dtype == torch.uint8 and data.augment
    cfg = replace(baseline("mlp", "cifar10").config, epochs=2, batch_size=8, device="cpu")
    for timing in (
        common.time_autoall("mlp", data, cfg, "a", checkpoint=True),
        paths.time_plain_loop("mlp", data, cfg, "p", cudnn_benchmark=True),
        paths.time_dataloader_loop("mlp", data, cfg, "d", num_workers=0),
    ):
        assert len(timing.epoch_seconds) == 2 and min(timing.epoch_seconds) > 0
        assert timing.images == 24
        assert timing.images_per_second == pytest.approx(24 / timing.epoch_seconds[1])
    assert torch.backends.cudnn.benchmark is False  # restored after the plain loop


def test_a_command_past_its_time_is_stopped_with_its_children(tmp_path: Path) -> None:
    """`autoall study run` spawns workers: on a timeout the whole process group goes."""
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 1 s"):
        trials._run_group(
            command, cwd=tmp_path, env=dict(os.environ), log=tmp_path / "log", timeout=1
        )
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
