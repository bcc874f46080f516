"""What the GPU check's experiments share: their sizes, the report, the GPU sampler, the
environment probe, and ``train()`` timed epoch by epoch.

The experiments (one file each, run in this order by ``bench/gpu_check.py``): 2. precision
(bench/gpu_precision.py), 3. paths (bench/gpu_paths.py), 4. trials per hour
(bench/gpu_trials.py), 5. utilisation (bench/gpu_utilisation.py); section 1, the environment,
is here. Imports torch and autoall's training path, never optuna or mlflow: the GPU machine may
have neither (bench/gpu_trials.py imports optuna itself, and says so when it cannot).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import cpu_model  # noqa: E402

from autoall.training._baselines import baseline  # noqa: E402
from autoall.training._data import DeviceData  # noqa: E402
from autoall.training._loop import TrainConfig, seed_everything, train  # noqa: E402
from autoall.training._models import build_model  # noqa: E402

PIXEL_MEAN = 127.5  # uniform uint8 0..255

PIXEL_STD = math.sqrt((256**2 - 1) / 12)  # 73.9: std of the discrete uniform on 0..255


@dataclass(frozen=True)
class Sizes:
    """How much each section runs: the full check, or the CI smoke test."""

    n_train: int  # CIFAR-10-shaped training images (sections 2 and 3)
    n_val: int  # validated every epoch, as train() does
    epochs: int  # per run; the first is a warm-up
    batch_size: int | None  # None: the architecture's CIFAR-10 baseline (cnn 256, resnet18 128)
    archs: tuple[str, ...]  # section 2
    trial_settings: tuple[int, ...]  # trials per GPU (section 4)
    n_trials: int  # per setting
    trial_epochs: int  # digits mlp epochs per trial
    trial_timeout: float  # seconds per `autoall study run`
    budget: float  # seconds for the whole check; section 4 drops settings that would overrun
    threads: int | None  # torch threads (OMP_NUM_THREADS for section 4); None: torch's default


FULL = Sizes(
    n_train=50_000,
    n_val=5_000,
    epochs=4,
    batch_size=None,
    archs=("cnn", "resnet18"),
    trial_settings=(1, 2, 4),
    n_trials=24,
    trial_epochs=20,  # as studies/digits.yaml
    trial_timeout=180.0,
    budget=450.0,  # issue 7: under 8 minutes on one H100, with room to spare
    threads=None,
)


# CI: two cores shared with other jobs; one thread each avoids oversubscription (seen here: a
# 2-thread step 10x slower than a 1-thread one under load 8). resnet18 costs ~10x cnn on a CPU.
QUICK = Sizes(
    n_train=256,
    n_val=64,
    epochs=2,
    batch_size=64,
    archs=("cnn",),
    trial_settings=(1, 2),
    n_trials=2,
    trial_epochs=1,
    trial_timeout=240.0,
    budget=600.0,
    threads=1,
)


# ---------------------------------------------------------------- pure helpers (unit-tested)


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``value op bound``, e.g. ``Target(">=", 3.0)``."""

    op: str  # ">=" or "<="
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}x"


def median_after_warmup(seconds: Sequence[float]) -> float:
    """Median of ``seconds[1:]`` (the first is a warm-up); the only value if there is one."""
    if not seconds:
        raise ValueError("median_after_warmup needs at least one value, but got none.")
    return float(statistics.median(seconds[1:] if len(seconds) > 1 else seconds))


def format_ratio(
    label: str, value: float, *, meaning: str, target: Target | None = None, judged: bool = True
) -> str:
    """One parseable line, ``ratio <label>: <value>x (<meaning>[; target ...])``.

    ``judged=False`` (a CPU run) prints the target without a verdict: the targets are for
    one H100.
    """
    text = f"ratio {label}: {value:.2f}x ({meaning}"
    if target is not None:
        verdict = ("met" if target.met(value) else "MISSED") if judged else "not judged on cpu"
        text += f"; target {target}: {verdict}"
    return text + ")"


def parse_smi_line(line: str) -> tuple[float | None, float, float] | None:
    """``(unix time, utilisation %, memory MiB)`` from a line of ``nvidia-smi
    --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits``, e.g.
    ``"2026/11/27 08:10:41.123, 87, 1234"``; the time is ``None`` when it does not parse.
    ``None`` for anything else ("[N/A]", a blank or a warning line)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3:
        return None
    try:
        util, memory = float(parts[1]), float(parts[2])
    except ValueError:
        return None
    try:
        when: float | None = _dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    except ValueError:
        when = None
    return when, util, memory


def first_visible_gpu(env: dict[str, str]) -> str:
    """The first entry of ``CUDA_VISIBLE_DEVICES`` (an index or a UUID), else ``"0"``."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


# ---------------------------------------------------------------- report and GPU sampling


class Report:
    """Prints each line and keeps it; with ``out_dir``, rewrites the text and JSON files
    (``<stem>.txt``, ``<stem>.json``)."""

    stem = "gpu_check"

    def __init__(self, out_dir: Path | None) -> None:
        self.lines: list[str] = []
        self.figures: dict[str, Any] = {}
        self.out_dir = out_dir

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        self._write()

    def section(self, title: str) -> None:
        self.line()
        self.line(f"== {title} ==")

    def figure(self, key: str, value: Any) -> None:
        """Record ``value`` under the dotted ``key`` (e.g. ``"precision.cnn.fp32"``)."""
        node = self.figures
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
        self._write()

    def _write(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{self.stem}.txt").write_text("\n".join(self.lines) + "\n")
        (self.out_dir / f"{self.stem}.json").write_text(json.dumps(self.figures, indent=2) + "\n")


class GpuSampler:
    """Samples GPU utilisation and memory every 200 ms in the background, and files them under
    the phases (runs) they fall in, by time: ``nvidia-smi -lms 200`` (line-buffered through
    ``stdbuf`` where there is one; each sample carries nvidia-smi's own timestamp, so late
    delivery cannot move a sample into the wrong phase), else ``torch.cuda.utilization()``."""

    def __init__(self, device: torch.device, gpu: str) -> None:
        self.device, self.gpu = device, gpu
        self.raw: list[tuple[float, float, float]] = []  # (unix time, util %, memory MiB)
        self.phases: list[tuple[str, float, float]] = []  # (name, start, end), unix time
        self.source = "none"
        self.error: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        command = ["nvidia-smi", "-i", self.gpu, "--format=csv,noheader,nounits", "-lms", "200"]
        command.insert(1, "--query-gpu=timestamp,utilization.gpu,memory.used")
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self.source, target = "nvidia-smi, every 200 ms", self._read_smi
        else:
            self.source, target = "torch.cuda.utilization(), every 200 ms", self._poll_torch
        self._thread = threading.Thread(target=target, name="gpu-sampler", daemon=True)
        self._thread.start()

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        self._read_lines(self._proc.stdout)
        if not self.raw and not self._stop.is_set():  # nvidia-smi (or stdbuf) gave up at once
            self.source = "torch.cuda.utilization(), every 200 ms (nvidia-smi gave nothing)"
            self._poll_torch()

    def _read_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            sample = parse_smi_line(line)
            if sample is not None:
                when, util, memory = sample
                now = time.time()
                # unparsed, or off by hours (another time zone): the arrival time will do
                if when is None or not now - 600 < when < now + 5:
                    when = now
                self.raw.append((when, util, memory))

    def _poll_torch(self) -> None:
        try:
            while not self._stop.wait(0.2):
                util = float(torch.cuda.utilization(self.device))
                memory = torch.cuda.device_memory_used(self.device) / 2**20
                self.raw.append((time.time(), util, memory))
        except Exception as exc:  # no pynvml: say so in section 5
            self.error = f"torch.cuda.utilization() failed: {exc}"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.phases.append((name, start, time.time()))

    def by_phase(self) -> dict[str, list[tuple[float, float, float]]]:
        return {
            name: [s for s in self.raw if start <= s[0] <= end] for name, start, end in self.phases
        }

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)


class NoSampler:
    """Stands in for :class:`GpuSampler` on the CPU."""

    source = "none"
    error: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def by_phase(self) -> dict[str, list[tuple[float, float, float]]]:
        return {}

    def stop(self) -> None:
        pass


# ---------------------------------------------------------------- data and timing


@dataclass(frozen=True)
class Timing:
    """Seconds of every epoch of one run, and the training images one epoch steps through."""

    label: str
    epoch_seconds: list[float]
    images: int

    @property
    def median(self) -> float:
        return median_after_warmup(self.epoch_seconds)

    @property
    def images_per_second(self) -> float:
        return self.images / self.median

    def row(self) -> str:
        runs = ", ".join(f"{s:.3f}" for s in self.epoch_seconds)
        return (
            f"  {self.label:<34} epoch {self.median:8.3f} s  {self.images_per_second:>10,.0f} img/s"
            f"  (epochs: {runs}; first is warm-up)"
        )


def timing_figure(t: Timing) -> dict[str, Any]:
    return {
        "epoch_s": t.median,
        "images_per_s": t.images_per_second,
        "epochs_s": t.epoch_seconds,
        "images": t.images,
    }


def synthetic_images(
    name: str,
    shape: tuple[int, int, int],
    n_train: int,
    n_val: int,
    device: torch.device,
    *,
    augment: bool,
) -> DeviceData:
    """Random uint8 images ``(N, *shape)`` with random labels of 10 classes, on ``device``,
    normalised as a uniform 0..255 pixel (mean 127.5, std 73.9); seeded, so every run alike."""
    g = torch.Generator(device=device).manual_seed(0)
    n = n_train + n_val
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g, device=device)
    y = torch.randint(0, 10, (n,), generator=g, device=device)
    stat = torch.full((1, shape[0], 1, 1), 1.0, device=device)
    return DeviceData(
        name=name,
        in_shape=shape,
        num_classes=10,
        train_x=x[:n_train],
        train_y=y[:n_train],
        val_x=x[n_train:],
        val_y=y[n_train:],
        test_x=x[:0],
        test_y=y[:0],
        mean=stat * PIXEL_MEAN,
        std=stat * PIXEL_STD,
        augment=augment,
        device=device,
    )


def synthetic_cifar(n_train: int, n_val: int, device: torch.device) -> DeviceData:
    """CIFAR-10-shaped random uint8 images ``(N, 3, 32, 32)`` with random labels, on ``device``."""
    shape = (3, 32, 32)
    return synthetic_images("cifar10-synthetic", shape, n_train, n_val, device, augment=True)


def train_config(arch: str, sizes: Sizes, device: torch.device, *, amp: bool) -> TrainConfig:
    """The architecture's CIFAR-10 baseline (batch, optimizer, lr), ``sizes.epochs`` long."""
    base = baseline(arch, "cifar10").config
    return replace(
        base,
        epochs=sizes.epochs,
        batch_size=sizes.batch_size or base.batch_size,
        warmup_epochs=min(base.warmup_epochs, sizes.epochs),
        device=str(device),
        amp=amp,
        channels_last=amp,
    )


def images_per_epoch(n_train: int, batch_size: int) -> int:
    return (n_train // batch_size) * batch_size if n_train > batch_size else n_train


def time_autoall(
    arch: str, data: DeviceData, cfg: TrainConfig, label: str, *, checkpoint: bool = False
) -> Timing:
    """``train()`` on a fresh model from seed 0, ``cfg.epochs`` epochs. With ``checkpoint``, as
    a trial runs it: the state is saved after every epoch (to a fresh temporary file).

    An epoch's seconds run from the end of the one before (the call, for the first) to the
    ``on_epoch`` callback, so they hold what ``EpochStats.epoch_seconds`` leaves out: the
    checkpoint written after the epoch.
    """
    seed_everything(0)
    model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes)
    ends: list[float] = []
    with tempfile.TemporaryDirectory(prefix="autoall-gpu-check-") as tmp:
        path = Path(tmp) / "trial.pt" if checkpoint else None
        start = time.perf_counter()
        train(
            model, data, cfg, on_epoch=lambda _: ends.append(time.perf_counter()), checkpoint=path
        )
    seconds = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)]
    return Timing(label, seconds, images_per_epoch(data.n_train, cfg.batch_size))


# ---------------------------------------------------------------- section 1: the environment


def section_environment(report: Report, device: torch.device, args: argparse.Namespace) -> None:
    report.section("1. environment")
    report.line(f"command: {os.environ.get('GPU_CHECK_COMMAND') or shlex.join(sys.argv)}")
    report.line(f"python: {sys.executable} ({platform.python_version()})")
    report.line(f"date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    report.line(f"autoall commit: {_git_commit()}")
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report.line(f"torch: {torch.__version__} (CUDA {cuda}, cuDNN {cudnn})")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    report.line(
        f"cpu: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {load}"
    )
    report.line(
        f"optuna: {_version('optuna')}, mlflow: {_version('mlflow')} (section 4 needs optuna)"
    )
    report.figure("environment.torch", torch.__version__)
    report.figure("environment.cpu", f"{cpu_model()} x{os.cpu_count()}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.line(
            f"gpu: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs"
        )
        report.line(f"nvidia-smi: {_nvidia_smi_summary()}")
        report.line(
            "fp32 here means: cuDNN TF32 convolutions "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul precision "
            f"{torch.get_float32_matmul_precision()} (PyTorch defaults)"
        )
        report.figure("environment.gpu", props.name)
    else:
        report.line("gpu: none (cpu run: the targets are for one H100 and are not judged)")
    report.line(f"mode: {'quick' if args.quick else 'full'}, device {device}")


def _nvidia_smi_summary() -> str:
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"n/a ({exc})"
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """``git describe`` of the checkout; ``$AUTOALL_COMMIT`` for a copied tree without .git."""
    if os.environ.get("AUTOALL_COMMIT"):
        return f"{os.environ['AUTOALL_COMMIT']} (from $AUTOALL_COMMIT)"
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout here; set AUTOALL_COMMIT)"
