"""GPU check, section 3 (issue 7): autoall's trial path vs a hand-written loop vs a DataLoader.

Measures epoch seconds of ``cnn`` (bf16 + channels_last, CIFAR-10-shaped synthetic data, 4
epochs, median after the first) three ways: ``train()`` with a checkpoint after every epoch, as
a trial runs it; a hand-written loop over the same device-resident data (what a careful engineer
writes: fused optimizer, per-step cosine lr, one read per epoch; with and without
``cudnn.benchmark`` on CUDA); and the article's way, torchvision's CIFAR-10 recipe (per-item PIL
transforms through ``DataLoader(num_workers, pin_memory=True)``). Claims (issue 7, on one H100):
autoall's epoch <= 1.10x the fastest hand-written one, and the DataLoader's >= 3x autoall's. A
CPU run prints the ratios without a verdict.

Writes the lines ``ratio autoall vs plain loop``, ``ratio cudnn.benchmark on vs off`` (CUDA)
and ``ratio DataLoader vs autoall``, and the figures ``paths.*``.

    bench/gpu_check.sh                                      # with every section, one GPU
    .venv/bin/python bench/gpu_paths.py --device cpu --quick  # this section alone (+ 1, 5)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _gpu_common import (
    PIXEL_MEAN,
    PIXEL_STD,
    GpuSampler,
    NoSampler,
    Report,
    Sizes,
    Target,
    Timing,
    format_ratio,
    images_per_epoch,
    time_autoall,
    timing_figure,
    train_config,
)
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from autoall.training._data import DeviceData
from autoall.training._loop import TrainConfig, seed_everything
from autoall.training._models import build_model


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


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    x: Tensor,
    y: Tensor,
    sums: tuple[Tensor, Tensor],
) -> None:
    """One training step of both hand-written loops: bf16 autocast forward, backward, optimizer
    and per-step lr; the loss and the correct predictions summed into ``sums`` on the device
    (no host sync)."""
    loss_sum, correct = sums
    with _autocast(x.device):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    loss_sum += loss.detach()
    correct += (logits.argmax(dim=1) == y).sum()


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
                _step(model, opt, sched, x, data.train_y[idx], (loss_sum, correct))
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
    return Timing(label, seconds, images_per_epoch(data.n_train, bs))


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
    scale = [PIXEL_MEAN / 255] * 3, [PIXEL_STD / 255] * 3
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
            _step(model, opt, sched, x, yb.to(device, non_blocking=True), (loss_sum, correct))
        model.eval()
        val_correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad(), _autocast(device):
            for xb, yb in val_loader:
                x = xb.to(device, non_blocking=True).contiguous(memory_format=cl)
                y = yb.to(device, non_blocking=True)
                val_correct += (model(x).argmax(dim=1) == y).sum()
        _ = (loss_sum.item(), correct.item(), val_correct.item())
        seconds.append(time.perf_counter() - start)
    return Timing(label, seconds, images_per_epoch(data.n_train, bs))


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


def section_paths(
    report: Report,
    data: DeviceData,
    sizes: Sizes,
    sampler: GpuSampler | NoSampler,
    *,
    loader_workers: int,
) -> None:
    device = data.device
    judged = device.type == "cuda"
    arch = "cnn"
    cfg = train_config(arch, sizes, device, amp=True)
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
        report.figure(f"paths.{key}", timing_figure(t[key]))
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


if __name__ == "__main__":  # sections 1, 3 and 5 (utilisation), then the summary
    from gpu_check import main

    sys.exit(main(sections=("3",)))
