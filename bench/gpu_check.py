"""The GPU check of issue 7: is autoall's trial path close to the hardware?

Driven by ``bench/gpu_check.sh`` (which sets ``PYTHONPATH`` and picks the interpreter); prints
five labelled sections and, when ``$OUT`` is set, writes them to ``$OUT/gpu_check.txt`` and the
figures to ``$OUT/gpu_check.json`` (rewritten after every line, so a run cut short keeps what it
measured):

1. environment: GPU, driver, torch/CUDA/cuDNN, Python, CPU, autoall commit;
2. epoch seconds and images per second of ``cnn`` and ``resnet18`` through ``train()`` on
   CIFAR-10-shaped synthetic data (50,000 x 3 x 32 x 32 uint8 in a ``DeviceData``, random
   labels, augmentation on), fp32 versus bf16 autocast + channels_last;
3. ``cnn`` through ``train()`` versus a hand-written loop over the same device-resident data
   and versus the article's way (a torchvision-style ``Dataset`` with per-item PIL transforms
   through ``DataLoader(num_workers=..., pin_memory=True)``), all bf16 + channels_last;
4. trials per hour of the digits ``mlp`` with 1, 2 and 4 trials per GPU
   (``autoall study run --trials-per-gpu N``; ``--n-jobs N`` on the CPU);
5. GPU utilisation (``nvidia-smi``, every 200 ms) during each run of sections 2 to 4.

An epoch is training plus validation, as ``train()`` times it; each figure is the median over
the epochs after the first (a warm-up: allocator, cuDNN, DataLoader workers). The full run is
sized for issue 7's budget, under 8 minutes on one H100 (section 4 leaves out settings that
would overrun 7.5 minutes); ``--quick`` shrinks everything for CI, about a minute on 2 cores.

    bench/gpu_check.sh                        # one GPU, the full check
    bench/gpu_check.sh --device cpu --quick   # the smoke test CI runs (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import cpu_model  # noqa: E402

from autoall.baselines import baseline  # noqa: E402
from autoall.data import DeviceData  # noqa: E402
from autoall.models import build_model  # noqa: E402
from autoall.train import TrainConfig, seed_everything, train  # noqa: E402

_PIXEL_MEAN = 127.5  # uniform uint8 0..255
_PIXEL_STD = math.sqrt((256**2 - 1) / 12)  # 73.9: std of the discrete uniform on 0..255
_TRIAL_MODULES = ("optuna", "sqlalchemy", "alembic", "colorlog", "yaml", "sklearn")


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


def trials_per_hour(n_trials: int, seconds: float) -> float:
    """``n_trials`` finished in ``seconds``, as trials per hour."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, but got {seconds!r}.")
    return 3600.0 * n_trials / seconds


def steady_trials_per_hour(trials: Sequence[tuple[object, float, float]]) -> float:
    """Trials per hour of workers once running: ``(worker, start, end)`` per finished trial.

    Each worker counts from its first trial's start to its last trial's end, so the start-up
    of the command and of each worker process is left out; the workers' rates are summed.
    """
    if not trials:
        raise ValueError("steady_trials_per_hour needs at least one trial, but got none.")
    spans: dict[object, list[tuple[float, float]]] = {}
    for worker, start, end in trials:
        spans.setdefault(worker, []).append((start, end))
    total = 0.0
    for runs in spans.values():
        seconds = max(end for _, end in runs) - min(start for start, _ in runs)
        total += trials_per_hour(len(runs), max(seconds, 1e-6))
    return total


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


@dataclass(frozen=True)
class UtilStats:
    samples: int
    mean: float  # % of the sampling interval a kernel ran
    max: float
    max_memory_mib: float


def summarise_util(samples: Sequence[tuple[float, float, float]]) -> UtilStats | None:
    """Mean and max utilisation and the peak memory of ``(time, util %, memory MiB)`` samples."""
    if not samples:
        return None
    utils = [u for _, u, _ in samples]
    return UtilStats(
        samples=len(samples),
        mean=statistics.fmean(utils),
        max=max(utils),
        max_memory_mib=max(m for _, _, m in samples),
    )


def first_visible_gpu(env: dict[str, str]) -> str:
    """The first entry of ``CUDA_VISIBLE_DEVICES`` (an index or a UUID), else ``"0"``."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


# ---------------------------------------------------------------- report and GPU sampling


class Report:
    """Prints each line and keeps it; with ``out_dir``, rewrites the text and JSON files."""

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
        (self.out_dir / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")
        (self.out_dir / "gpu_check.json").write_text(json.dumps(self.figures, indent=2) + "\n")


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


class _NoSampler:
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


def synthetic_cifar(n_train: int, n_val: int, device: torch.device) -> DeviceData:
    """CIFAR-10-shaped random uint8 images ``(N, 3, 32, 32)`` with random labels, on ``device``."""
    g = torch.Generator(device=device).manual_seed(0)
    n = n_train + n_val
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g, device=device)
    y = torch.randint(0, 10, (n,), generator=g, device=device)
    stat = torch.full((1, 3, 1, 1), 1.0, device=device)
    return DeviceData(
        name="cifar10-synthetic",
        in_shape=(3, 32, 32),
        num_classes=10,
        train_x=x[:n_train],
        train_y=y[:n_train],
        val_x=x[n_train:],
        val_y=y[n_train:],
        test_x=x[:0],
        test_y=y[:0],
        mean=stat * _PIXEL_MEAN,
        std=stat * _PIXEL_STD,
        augment=True,
        device=device,
    )


def _config(arch: str, sizes: Sizes, device: torch.device, *, amp: bool) -> TrainConfig:
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


def _images_per_epoch(n_train: int, batch_size: int) -> int:
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
    return Timing(label, seconds, _images_per_epoch(data.n_train, cfg.batch_size))


def _optimizer(model: nn.Module, cfg: TrainConfig, on_cuda: bool) -> torch.optim.Optimizer:
    """``cfg``'s optimizer, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    fused, foreach = (True, None) if on_cuda else (None, True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            fused=fused,
            foreach=foreach,
        )
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=fused,
        foreach=foreach,
    )


def _cosine(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
    )


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op elsewhere (as train() does)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Per image: random 32x32 crop of the 4-pixel zero-padded image, then a coin-flip mirror.

    ``x`` is uint8 ``(B, C, H, W)`` on the device; one gather, written here without autoall.
    """
    b, c, h, w = x.shape
    dev = x.device
    dy, dx = torch.randint(0, 9, (2, b, 1), generator=generator, device=dev)
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=dev).bool()
    k = torch.arange(w, device=dev)
    rows = dy + torch.arange(h, device=dev)  # (B, H)
    cols = dx + torch.where(flip, w - 1 - k, k)  # (B, W)
    padded = F.pad(x, (4, 4, 4, 4))
    return padded[
        torch.arange(b, device=dev).view(b, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        rows.view(b, 1, h, 1),
        cols.view(b, 1, 1, w),
    ]


def time_plain_loop(
    arch: str, data: DeviceData, cfg: TrainConfig, label: str, *, cudnn_benchmark: bool
) -> Timing:
    """A hand-written loop of what a careful engineer writes: the same model, data already on
    the device, the same batch size, bf16 autocast + channels_last, a fused optimizer, per-step
    cosine lr, loss and accuracy summed on the device and read once per epoch, validation each
    epoch. No autoall code but the model's definition."""
    device = data.device
    on_cuda = device.type == "cuda"
    cl = torch.channels_last if on_cuda else torch.contiguous_format
    seed_everything(0)
    model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes)
    model = model.to(device).to(memory_format=cl)
    opt = _optimizer(model, cfg, on_cuda)
    bs = cfg.batch_size
    steps = data.n_train // bs if data.n_train > bs else 1
    sched = _cosine(opt, cfg.epochs * steps)
    gen = torch.Generator(device=device).manual_seed(0)
    mean, std = data.mean, data.std
    seconds = []
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        for _ in range(cfg.epochs):
            start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            perm = torch.randperm(data.n_train, device=device, generator=gen)
            for i in range(steps):
                idx = perm[i * bs : (i + 1) * bs]
                x = _crop_flip(data.train_x[idx], gen)
                x = ((x.float() - mean) / std).contiguous(memory_format=cl)
                y = data.train_y[idx]
                with _autocast(device):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach()
                correct += (logits.argmax(dim=1) == y).sum()
            model.eval()
            val_correct = torch.zeros((), device=device, dtype=torch.long)
            with torch.no_grad(), _autocast(device):
                for i in range(0, data.val_y.shape[0], cfg.eval_batch_size):
                    xv = data.val_x[i : i + cfg.eval_batch_size]
                    xv = ((xv.float() - mean) / std).contiguous(memory_format=cl)
                    val_correct += (model(xv).argmax(dim=1) == data.val_y[i : i + len(xv)]).sum()
            _ = (loss_sum.item(), correct.item(), val_correct.item())  # the once-per-epoch read
            seconds.append(time.perf_counter() - start)
    finally:
        torch.backends.cudnn.benchmark = previous
    return Timing(label, seconds, _images_per_epoch(data.n_train, bs))


def time_dataloader_loop(
    arch: str, data: DeviceData, cfg: TrainConfig, label: str, *, num_workers: int
) -> Timing:
    """The article's way: torchvision's CIFAR-10 recipe. The images live on the host as a NumPy
    ``(N, 32, 32, 3)`` uint8 array (as ``torchvision.datasets.CIFAR10`` holds them); each item
    becomes a PIL image and goes through ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize()``; batches come from
    ``DataLoader(shuffle=True, num_workers, pin_memory=True)`` and are copied to the device.
    The training step is the plain loop's (bf16 + channels_last, fused optimizer)."""
    from torchvision import transforms

    device = data.device
    on_cuda = device.type == "cuda"
    cl = torch.channels_last if on_cuda else torch.contiguous_format
    scale = [_PIXEL_MEAN / 255] * 3, [_PIXEL_STD / 255] * 3
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(*scale),
        ]
    )
    val_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*scale)])
    bs = cfg.batch_size
    loader_kw: dict[str, Any] = {"num_workers": num_workers, "pin_memory": on_cuda}
    train_loader = DataLoader(
        _HostImages(data.train_x, data.train_y, train_tf),
        batch_size=bs,
        shuffle=True,
        drop_last=data.n_train > bs,
        **loader_kw,
    )
    val_loader = DataLoader(
        _HostImages(data.val_x, data.val_y, val_tf), batch_size=cfg.eval_batch_size, **loader_kw
    )
    seed_everything(0)
    model = build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes)
    model = model.to(device).to(memory_format=cl)
    opt = _optimizer(model, cfg, on_cuda)
    sched = _cosine(opt, cfg.epochs * len(train_loader))
    seconds = []
    for _ in range(cfg.epochs):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for xb, yb in train_loader:
            x = xb.to(device, non_blocking=True).contiguous(memory_format=cl)
            y = yb.to(device, non_blocking=True)
            with _autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(dim=1) == y).sum()
        model.eval()
        val_correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad(), _autocast(device):
            for xb, yb in val_loader:
                x = xb.to(device, non_blocking=True).contiguous(memory_format=cl)
                y = yb.to(device, non_blocking=True)
                val_correct += (model(x).argmax(dim=1) == y).sum()
        _ = (loss_sum.item(), correct.item(), val_correct.item())
        seconds.append(time.perf_counter() - start)
    return Timing(label, seconds, _images_per_epoch(data.n_train, bs))


class _HostImages(Dataset[tuple[Tensor, int]]):
    """torchvision ``CIFAR10``-style: HWC uint8 images in host memory, a PIL image per item."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Any], Tensor]) -> None:
        self.images = x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        self.labels = y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


# ---------------------------------------------------------------- sections


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


def section_precision(
    report: Report, data: DeviceData, sizes: Sizes, sampler: GpuSampler | _NoSampler
) -> None:
    device = data.device
    report.section("2. precision: fp32 vs bf16 + channels_last, through train()")
    report.line(
        f"data: {data.n_train:,} x 3 x 32 x 32 uint8 synthetic (random labels, augmentation on), "
        f"{data.sizes['val']:,} validation images; {sizes.epochs} epochs per run"
    )
    report.line("img/s: training images per epoch second; an epoch includes validation")
    if device.type != "cuda":
        report.line("cpu: train() runs both in fp32 (autocast, channels_last are CUDA-only)")
    for arch in sizes.archs:
        pair = {}
        for name, amp in (("fp32", False), ("bf16+cl", True)):
            cfg = _config(arch, sizes, device, amp=amp)
            label = f"{arch} {name} (batch {cfg.batch_size})"
            with sampler.phase(f"{arch} {name}"):
                timing = time_autoall(arch, data, cfg, label)
            report.line(timing.row())
            report.figure(f"precision.{arch}.{name}", _timing_figure(timing))
            pair[name] = timing
        speedup = pair["fp32"].median / pair["bf16+cl"].median
        report.figure(f"precision.{arch}.speedup", speedup)
        report.line(
            format_ratio(
                f"bf16+cl vs fp32 {arch}",
                speedup,
                meaning="fp32 epoch / bf16+channels_last epoch; > 1 means faster",
            )
        )
        if arch == "resnet18":
            seconds = pair["bf16+cl"].median
            verdict = ("met" if seconds <= 5.0 else "MISSED") if device.type == "cuda" else "n/a"
            report.line(f"target resnet18 bf16+cl epoch <= 5 s: {seconds:.2f} s, {verdict}")
    if "resnet18" not in sizes.archs:
        report.line("resnet18: not run in --quick (about 10x cnn on a CPU)")


def section_paths(
    report: Report,
    data: DeviceData,
    sizes: Sizes,
    sampler: GpuSampler | _NoSampler,
    *,
    loader_workers: int,
) -> None:
    device = data.device
    judged = device.type == "cuda"
    arch = "cnn"
    cfg = _config(arch, sizes, device, amp=True)
    report.section("3. trial path vs plain loop vs DataLoader (cnn, bf16 + channels_last)")
    report.line(
        f"same model, batch {cfg.batch_size}, {cfg.optimizer} {'fused' if judged else 'foreach'}, "
        f"{sizes.epochs} epochs each; autoall: train() with a checkpoint after every epoch, as a "
        f"trial runs it; DataLoader: per-item PIL transforms, num_workers={loader_workers}, "
        f"pin_memory={judged}"
    )
    runs: list[tuple[str, Callable[[], Timing]]] = [
        ("autoall", lambda: time_autoall(arch, data, cfg, "autoall trial path", checkpoint=True)),
        (
            "plain",
            lambda: time_plain_loop(arch, data, cfg, "plain loop", cudnn_benchmark=False),
        ),
    ]
    if judged:  # cudnn.benchmark only matters with cuDNN
        runs.append(
            (
                "plain_benchmark",
                lambda: time_plain_loop(
                    arch, data, cfg, "plain loop + cudnn.benchmark", cudnn_benchmark=True
                ),
            )
        )
    runs.append(
        (
            "dataloader",
            lambda: time_dataloader_loop(
                arch,
                data,
                cfg,
                f"DataLoader (workers {loader_workers})",
                num_workers=loader_workers,
            ),
        )
    )
    t: dict[str, Timing] = {}
    for key, run in runs:
        with sampler.phase(f"paths {key}"):
            t[key] = run()
        report.line(t[key].row())
        report.figure(f"paths.{key}", _timing_figure(t[key]))
    best_plain = min((t[k] for k in ("plain", "plain_benchmark") if k in t), key=lambda x: x.median)
    overhead = t["autoall"].median / best_plain.median
    report.figure("paths.autoall_vs_plain", overhead)
    report.line(
        format_ratio(
            "autoall vs plain loop",
            overhead,
            meaning=f"autoall epoch / fastest plain-loop epoch ({best_plain.label})",
            target=Target("<=", 1.10),
            judged=judged,
        )
    )
    if "plain_benchmark" in t:
        gain = t["plain"].median / t["plain_benchmark"].median
        report.figure("paths.cudnn_benchmark_gain", gain)
        report.line(
            format_ratio(
                "cudnn.benchmark on vs off",
                gain,
                meaning="plain epoch without / with torch.backends.cudnn.benchmark",
            )
        )
    speedup = t["dataloader"].median / t["autoall"].median
    report.figure("paths.dataloader_vs_autoall", speedup)
    report.line(
        format_ratio(
            "DataLoader vs autoall",
            speedup,
            meaning="DataLoader epoch / autoall epoch; > 1 means autoall is faster",
            target=Target(">=", 3.0),
            judged=judged,
        )
    )


def section_trials(
    report: Report,
    device: torch.device,
    sizes: Sizes,
    sampler: GpuSampler | _NoSampler,
    *,
    deadline: float = math.inf,
) -> None:
    """``deadline`` (``time.monotonic()``): a setting that would likely end after it, judged by
    the previous setting's wall time, is left out and says so."""
    on_cuda = device.type == "cuda"
    flag = "--trials-per-gpu" if on_cuda else "--n-jobs"
    settings = "/".join(str(n) for n in sizes.trial_settings)
    report.section(f"4. trials per hour: digits mlp, {settings} trials per GPU ({flag})")
    missing = [m for m in _TRIAL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        report.line(
            f"skipped: {', '.join(missing)} not importable here; carry the wheels listed at the "
            "top of bench/gpu_check.sh in .whl/ and the script installs them"
        )
        report.figure("trials.skipped", missing)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report.line(
        f"{sizes.n_trials} trials per setting, {sizes.trial_epochs} epoch(s) each, random sampler, "
        "no pruner, --no-tracking, SQLite storage; wall: the whole command, start-up included; "
        "steady: per worker, first trial start to last trial end (from the storage), summed"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if on_cuda:  # trials per GPU: keep every worker on one GPU
        env["CUDA_VISIBLE_DEVICES"] = first_visible_gpu(env)
    if sizes.threads is not None and not on_cuda:
        env["OMP_NUM_THREADS"] = str(sizes.threads)
    rates: dict[int, tuple[float, float]] = {}
    last_wall, limit = 0.0, sizes.trial_timeout
    with tempfile.TemporaryDirectory(prefix="autoall-gpu-check-") as tmp:
        folder = Path(tmp)
        study = _write_trial_study(folder / "study.yaml", sizes)
        for n in sizes.trial_settings:
            url = f"sqlite:///{folder}/trials-{n}.db"
            command = [sys.executable, "-m", "autoall.cli", "study", "run", str(study)]
            command += ["--n-trials", str(sizes.n_trials), "--no-tracking", "--storage", url]
            command += ["--device", device.type, "--checkpoint-dir", str(folder / "ckpt")]
            command += [flag, str(n)]
            log = folder / f"trials-{n}.log"
            left = deadline - time.monotonic()
            if rates and left < 1.2 * last_wall:
                report.line(f"  {flag} {n}: left out, {left:.0f} s of the time budget left")
                continue
            timeout = min(left, limit) if rates else max(min(left, limit), 60.0)
            t0 = time.perf_counter()
            with sampler.phase(f"trials x{n}"):
                code = _run_group(command, cwd=folder, env=env, log=log, timeout=timeout)
            wall = last_wall = time.perf_counter() - t0
            if code != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`{shlex.join(command)}` exited {code}:\n{tail}")
            finished = _finished_trials(optuna, url)
            done = len(finished)
            rates[n] = (trials_per_hour(done, wall), steady_trials_per_hour(finished))
            workers = len({w for w, _, _ in finished})
            trial_s = statistics.median(end - begin for _, begin, end in finished)
            report.line(
                f"  {flag} {n}: {done} trials by {workers} worker process(es), "
                f"median trial {trial_s:5.2f} s; wall {wall:6.1f} s = {rates[n][0]:8,.0f} "
                f"trials/h; steady {rates[n][1]:8,.0f} trials/h"
            )
            report.figure(
                f"trials.x{n}",
                {
                    "trials": done,
                    "workers": workers,
                    "median_trial_s": trial_s,
                    "wall_s": wall,
                    "per_hour_wall": rates[n][0],
                    "per_hour_steady": rates[n][1],
                },
            )
    hi, lo = max(rates), min(rates)
    if hi == lo:
        report.line(f"ratio {hi} vs {lo} trials per GPU: n/a (only one setting ran)")
        return
    for kind, i in (("steady", 1), ("wall", 0)):
        value = rates[hi][i] / rates[lo][i]
        report.figure(f"trials.ratio_{kind}", value)
        report.line(
            format_ratio(
                f"{hi} vs {lo} trials per GPU ({kind})",
                value,
                meaning=f"trials/hour with {hi} / with {lo}",
                target=Target(">=", 2.5) if kind == "steady" else None,
                judged=on_cuda,
            )
        )


def section_utilisation(report: Report, sampler: GpuSampler | _NoSampler, on_cuda: bool) -> None:
    report.section("5. GPU utilisation during each run (mean / max)")
    if not on_cuda:
        report.line("n/a (cpu)")
        return
    report.line(f"source: {sampler.source}")
    if sampler.error:
        report.line(f"n/a ({sampler.error})")
        return
    shown = 0
    for phase, samples in sampler.by_phase().items():
        stats = summarise_util(samples)
        if stats is None:
            report.line(f"  {phase:<24} n/a (no samples)")
            continue
        shown += 1
        report.line(
            f"  {phase:<24} mean {stats.mean:5.1f} %  max {stats.max:5.1f} %  "
            f"peak memory {stats.max_memory_mib:8,.0f} MiB  ({stats.samples} samples)"
        )
        report.figure(f"utilisation.{phase.replace(' ', '_')}", asdict(stats))
    if not shown:
        report.line("n/a (the sampler gave no samples)")


# ---------------------------------------------------------------- glue


def _timing_figure(t: Timing) -> dict[str, Any]:
    return {
        "epoch_s": t.median,
        "images_per_s": t.images_per_second,
        "epochs_s": t.epoch_seconds,
        "images": t.images,
    }


def _write_trial_study(path: Path, sizes: Sizes) -> Path:
    import yaml

    study = {
        "name": "gpucheck",
        "data": {"name": "digits"},
        "architectures": ["mlp"],
        "train": {"mlp": {"epochs": sizes.trial_epochs}},
        "search": {
            "hidden_size": {"type": "int", "low": 8, "high": 256, "log": True},
            "all_lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
            "aux_weight": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True},
            "aux_loss": {"type": "categorical", "choices": ["reconstruction", "none"]},
        },
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": sizes.n_trials,
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _run_group(
    command: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float
) -> int:
    """Run ``command`` in its own process group, output to ``log``; its exit code. Past
    ``timeout`` seconds the whole group (the worker processes it spawned too) is ended and
    TimeoutError raised."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
                    break
            raise TimeoutError(
                f"`{shlex.join(command)}` ran past {timeout:.0f} s and was stopped"
            ) from None


def _finished_trials(optuna: Any, url: str) -> list[tuple[object, float, float]]:
    """``(worker pid, start, end)`` in seconds of every COMPLETE or PRUNED trial of the check."""
    study = optuna.load_study(study_name="gpucheck/mlp", storage=url)
    done = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None:
            worker = t.user_attrs.get("worker_pid", "?")
            done.append((worker, t.datetime_start.timestamp(), t.datetime_complete.timestamp()))
    if not done:
        raise RuntimeError(f"no finished trial in {url}")
    return done


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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="the CI smoke test (about a minute)")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="DataLoader num_workers in section 3 [default: min(4, cores // 2), at least 1]",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip, e.g. 4 (for debugging)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "Error: --device cuda was asked for, but torch sees no CUDA device here "
            f"(torch {torch.__version__}); use --device cpu.",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    if sizes.threads is not None and device.type == "cpu":
        torch.set_num_threads(sizes.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    loader_workers = args.loader_workers or max(1, min(4, (os.cpu_count() or 2) // 2))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    report = Report(out_dir)
    sampler: GpuSampler | _NoSampler = _NoSampler()
    if device.type == "cuda":
        sampler = GpuSampler(device, first_visible_gpu(dict(os.environ)))
        sampler.start()
    start = time.perf_counter()
    failures: list[str] = []

    def run(number: str, fn: Callable[[], object]) -> None:
        if number in skip:
            report.line(f"(section {number} skipped by --skip)")
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # report it and go on: one device run must bring back the rest
            failures.append(f"section {number}: {type(exc).__name__}: {exc}")
            report.line(f"FAILED: {type(exc).__name__}: {exc}")
        report.line(f"(section {number}: {time.perf_counter() - t0:.1f} s)")

    try:
        section_environment(report, device, args)
        data = synthetic_cifar(sizes.n_train, sizes.n_val, device)
        run("2", functools.partial(section_precision, report, data, sizes, sampler))
        run(
            "3",
            functools.partial(
                section_paths, report, data, sizes, sampler, loader_workers=loader_workers
            ),
        )
        del data  # 170 MB of GPU memory the trial workers may want
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the trial workers share this GPU
        deadline = time.monotonic() + sizes.budget - (time.perf_counter() - start)
        run("4", lambda: section_trials(report, device, sizes, sampler, deadline=deadline))
    finally:
        sampler.stop()
    section_utilisation(report, sampler, device.type == "cuda")
    report.section("summary")
    missed = [
        line for line in report.lines if line.startswith(("ratio ", "target ")) and "MISSED" in line
    ]
    report.line(f"total: {time.perf_counter() - start:.1f} s; sections failed: {len(failures)}")
    for line in missed:
        report.line(f"target missed: {line}")
    for failure in failures:
        report.line(f"failed: {failure.splitlines()[0]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
