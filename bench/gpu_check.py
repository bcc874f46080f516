"""The GPU check of issue 7: is autoall's trial path close to the hardware?

Driven by ``bench/gpu_check.sh`` (which sets ``PYTHONPATH`` and picks the interpreter); prints
five labelled sections and, when ``$OUT`` is set, writes them to ``$OUT/gpu_check.txt`` and the
figures to ``$OUT/gpu_check.json`` (rewritten after every line, so a run cut short keeps what it
measured):

1. environment: GPU, driver, torch/CUDA/cuDNN, Python, CPU, autoall commit
   (bench/_gpu_common.py);
2. precision (bench/gpu_precision.py): epoch seconds and images per second of ``cnn`` and
   ``resnet18`` through ``train()`` on CIFAR-10-shaped synthetic data (50,000 x 3 x 32 x 32
   uint8 in a ``DeviceData``, random labels, augmentation on), fp32 versus bf16 autocast +
   channels_last;
3. paths (bench/gpu_paths.py): ``cnn`` through ``train()`` versus a hand-written loop over the
   same device-resident data and versus the article's way (a torchvision-style ``Dataset`` with
   per-item PIL transforms through ``DataLoader(num_workers=..., pin_memory=True)``), all bf16 +
   channels_last;
4. trials (bench/gpu_trials.py): trials per hour of the digits ``mlp`` with 1, 2 and 4 trials
   per GPU (``autoall study run --trials-per-gpu N``; ``--n-jobs N`` on the CPU);
5. utilisation (bench/gpu_utilisation.py): GPU utilisation (``nvidia-smi``, every 200 ms)
   during each run of sections 2 to 4.

An epoch is training plus validation, as ``train()`` times it; each figure is the median over
the epochs after the first (a warm-up: allocator, cuDNN, DataLoader workers). The full run is
sized for issue 7's budget, under 8 minutes on one H100 (section 4 leaves out settings that
would overrun 7.5 minutes); ``--quick`` shrinks everything for CI, about a minute on 2 cores.

This file runs them in one process (one report, one GPU sampler, one time budget); each
experiment's file opens with what it measures and the claim it serves, and runs alone with
sections 1 and 5 (``.venv/bin/python bench/gpu_paths.py --device cpu --quick``).

    bench/gpu_check.sh                        # one GPU, the full check
    bench/gpu_check.sh --device cpu --quick   # the smoke test CI runs (tests/bench/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_common import (  # noqa: E402
    FULL,
    QUICK,
    GpuSampler,
    NoSampler,
    Report,
    first_visible_gpu,
    section_environment,
    synthetic_cifar,
)
from gpu_paths import section_paths  # noqa: E402
from gpu_precision import section_precision  # noqa: E402
from gpu_trials import section_trials  # noqa: E402
from gpu_utilisation import section_utilisation  # noqa: E402


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


def main(argv: Sequence[str] | None = None, *, sections: Sequence[str] = ("2", "3", "4")) -> int:
    """Sections 1, then those of ``sections`` (2 to 4) not left out by ``--skip``, then 5 and
    the summary; 0 when every section ran, 1 when one failed, 2 without the CUDA asked for."""
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
    sampler: GpuSampler | NoSampler = NoSampler()
    if device.type == "cuda":
        sampler = GpuSampler(device, first_visible_gpu(dict(os.environ)))
        sampler.start()
    start = time.perf_counter()
    failures: list[str] = []

    def run(number: str, fn: Callable[[], object]) -> None:
        if number not in sections:
            return
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
