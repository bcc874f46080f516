"""The GPU cohort check of issue 14: trials per hour of MNIST-sized trials in cohorts of K.

Run by ``bench/gpu_check.sh`` after ``bench/gpu_check.py`` (same ``--device`` and ``--quick``;
``--skip 6`` leaves it out); prints one labelled section and, with ``$OUT`` set, writes it to
``$OUT/gpu_cohort.txt`` and the figures to ``$OUT/gpu_cohort.json`` (rewritten after every line).

For the ``mlp`` and the ``cnn`` and each cohort size K in 1, 4, 16, 64: K ALL trial plans whose
knobs are drawn from studies/mnist.yaml's search space (seeded; hidden sizes 16..512 padded to
the widest), at the architecture's MNIST baseline settings (autoall/training/_baselines.py: batch 128,
AdamW, bf16 autocast on CUDA), on synthetic MNIST-shaped data (uint8 1 x 28 x 28, random labels;
mlp 60,000 training images, cnn 12,000, and 10,000 validated every epoch), for ``epochs``
epochs. K = 1 is ``fit()``, the path of one trial at a time; K > 1 is ``fit_cohort()``. Per run:
the wall seconds (building, every epoch, validation), the peak GPU memory, and the steady
trials per hour, ``3600 / (epoch seconds per trial x the study's epochs)`` (mlp 20, cnn 10) from
the median epoch after the first (each member's share of a cohort's epoch). Target: the mlp
cohort of 16 at least 8x the trials per hour of one trial at a time. A size whose run would
likely overrun ``--budget`` seconds (the previous size's wall time x K / previous K) is left out
and says so.

    bench/gpu_check.sh                            # with the GPU check, on one GPU
    .venv/bin/python bench/gpu_cohort.py --device cpu --quick   # the CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _cohort_plans import draw_plans  # noqa: E402
from _gpu_common import Report as CheckReport  # noqa: E402
from _gpu_common import synthetic_images  # noqa: E402

from autoall.config._study_file import load_study_file  # noqa: E402
from autoall.training._data import DeviceData  # noqa: E402
from autoall.training._loop import RunResult  # noqa: E402
from autoall.training._plan import RunPlan, fit  # noqa: E402
from autoall.training.cohort._cohort import fit_cohort  # noqa: E402

TARGET = ("mlp", 16, 8.0)  # architecture, cohort size, speed-up over one trial at a time


@dataclass(frozen=True)
class Sizes:
    n_train: dict[str, int]  # training images per architecture
    n_val: int
    epochs: int  # per run; the first is a warm-up
    cohorts: tuple[int, ...]
    budget: float  # seconds for the whole section


FULL = Sizes({"mlp": 60_000, "cnn": 12_000}, 10_000, 3, (1, 4, 16, 64), 150.0)
QUICK = Sizes({"mlp": 512, "cnn": 256}, 128, 2, (1, 2), 300.0)


class Report(CheckReport):
    """The check's report, written to ``gpu_cohort.txt`` and ``.json``, figures under flat keys
    (``"mlp.K16"``)."""

    stem = "gpu_cohort"

    def figure(self, key: str, value: Any) -> None:
        self.figures[key] = value
        self._write()


def synthetic_mnist(n_train: int, n_val: int, device: torch.device) -> DeviceData:
    """MNIST-shaped random uint8 images ``(N, 1, 28, 28)`` with random labels, on ``device``."""
    shape = (1, 28, 28)
    return synthetic_images("mnist-synthetic", shape, n_train, n_val, device, augment=False)


def steady_per_hour(results: Sequence[RunResult], trial_epochs: int) -> float:
    """Trials per hour from the median epoch after the first (each member's share)."""
    epochs = [s.epoch_seconds for r in results for s in r.history[1:]] or [
        s.epoch_seconds for r in results for s in r.history
    ]
    per_member_epoch = statistics.median(epochs)
    return 3600.0 / (per_member_epoch * trial_epochs)


def run_size(plans: list[RunPlan], data: DeviceData) -> tuple[float, list[RunResult]]:
    if len(plans) == 1:
        start = time.perf_counter()
        results = [fit(plans[0], data)]
    else:
        start = time.perf_counter()
        outcomes = fit_cohort(plans, data)
        bad = [o for o in outcomes if not isinstance(o, RunResult)]
        if bad:
            raise RuntimeError(f"a member ended with {bad[0]!r}")
        results = [o for o in outcomes if isinstance(o, RunResult)]
    if torch.cuda.is_available() and plans[0].train.device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU smoke run")
    parser.add_argument("--budget", type=float, default=None, help="seconds [150; quick 300]")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("Error: --device cuda was asked for, but torch sees no CUDA device here.",
              file=sys.stderr)  # fmt: skip
        return 2
    sizes = QUICK if args.quick else FULL
    if args.device == "cpu" and args.quick:
        torch.set_num_threads(1)
    budget = args.budget or sizes.budget
    device = torch.device(args.device)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    report = Report(out)
    cfg = load_study_file(ROOT / "studies" / "mnist.yaml")
    start = time.monotonic()
    deadline = start + budget
    report.line()
    report.line("== 6. cohorts: trials per hour, MNIST-sized mlp and cnn, cohorts of "
                f"{'/'.join(map(str, sizes.cohorts))} ==")  # fmt: skip
    report.line(f"{sizes.epochs} epochs per run (the first a warm-up); K = 1: fit(), one trial "
                "at a time; K > 1: fit_cohort(); studies/mnist.yaml knobs, baseline settings; "
                f"budget {budget:.0f} s")  # fmt: skip
    failures = 0
    rates: dict[tuple[str, int], float] = {}
    for arch in ("mlp", "cnn"):
        data = synthetic_mnist(sizes.n_train[arch], sizes.n_val, device)
        trial_epochs = cfg.train_config(arch).epochs
        last: tuple[int, float] | None = None
        for k in sizes.cohorts:
            left = deadline - time.monotonic()
            if last is not None and left < last[1] * k / last[0]:
                report.line(f"  {arch} K={k:>2}: left out, {left:.0f} s of the budget left")
                continue
            plans = [
                replace(p, train=replace(p.train, epochs=sizes.epochs, warmup_epochs=0.0))
                for p in draw_plans(cfg, k, seed=k, arch=arch, device=str(device))
            ]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                wall, results = run_size(plans, data)
            except Exception as exc:  # report it and go on: one device run brings back the rest
                failures += 1
                report.line(f"  {arch} K={k}: FAILED: {type(exc).__name__}: {exc}")
                continue
            last = (k, wall)
            rate = rates[(arch, k)] = steady_per_hour(results, trial_epochs)
            memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            versus = rate / rates[(arch, 1)] if (arch, 1) in rates else float("nan")
            report.line(
                f"  {arch} K={k:>2}: wall {wall:7.1f} s; {rate:10,.0f} trials/h steady "
                f"({trial_epochs} epochs each); {versus:5.2f}x K=1; peak {memory:5.1f} GiB"
            )
            report.figure(f"{arch}.K{k}", {"wall_s": wall, "per_hour": rate,
                                           "vs_k1": versus, "peak_gib": memory})  # fmt: skip
        del data
    arch, k, bound = TARGET
    if (arch, k) in rates and (arch, 1) in rates:
        ratio = rates[(arch, k)] / rates[(arch, 1)]
        judged = device.type == "cuda"
        verdict = ("met" if ratio >= bound else "MISSED") if judged else "not judged on the cpu"
        report.line(f"target {arch} cohort of {k} vs one at a time: {ratio:.2f}x "
                    f"(>= {bound:g}x: {verdict})")  # fmt: skip
        report.figure("target", {"ratio": ratio, "bound": bound, "met": ratio >= bound})
    else:
        report.line(f"target {arch} cohort of {k} vs one at a time: not measured here")
        report.figure("target", None)
    report.line(f"(section 6: {time.monotonic() - start:.1f} s; failed: {failures})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
