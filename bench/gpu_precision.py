"""GPU check, section 2 (issue 7): what bf16 autocast + channels_last buy through ``train()``.

Measures epoch seconds and images per second of ``cnn`` and ``resnet18`` through autoall's
``train()`` on CIFAR-10-shaped synthetic data (50,000 x 3 x 32 x 32 uint8 in a ``DeviceData``,
random labels, augmentation on, 5,000 validated every epoch; the architecture's CIFAR-10
baseline batch and optimizer), fp32 versus bf16 autocast + channels_last, 4 epochs each; each
figure is the median over the epochs after the first (a warm-up). Claim (issue 7): resnet18 in
bf16 + channels_last trains a CIFAR-10 epoch in <= 5 s on one H100; the speed-up over fp32 is
reported, not judged. A CPU run trains both in fp32 (autocast and channels_last are CUDA-only)
and judges nothing.

Writes the lines ``ratio bf16+cl vs fp32 <arch>`` and ``target resnet18 bf16+cl epoch`` and the
figures ``precision.<arch>.{fp32,bf16+cl,speedup}`` (``$OUT/gpu_check.json`` with ``$OUT`` set).

    bench/gpu_check.sh                                          # with every section, one GPU
    .venv/bin/python bench/gpu_precision.py --device cpu --quick  # this section alone (+ 1, 5)
"""

from __future__ import annotations

import sys

from _gpu_common import (
    GpuSampler,
    NoSampler,
    Report,
    Sizes,
    format_ratio,
    time_autoall,
    timing_figure,
    train_config,
)

from autoall.training._data import DeviceData


def section_precision(
    report: Report, data: DeviceData, sizes: Sizes, sampler: GpuSampler | NoSampler
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
            cfg = train_config(arch, sizes, device, amp=amp)
            label = f"{arch} {name} (batch {cfg.batch_size})"
            with sampler.phase(f"{arch} {name}"):
                timing = time_autoall(arch, data, cfg, label)
            report.line(timing.row())
            report.figure(f"precision.{arch}.{name}", timing_figure(timing))
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


if __name__ == "__main__":  # sections 1, 2 and 5 (utilisation), then the summary
    from gpu_check import main

    sys.exit(main(sections=("2",)))
