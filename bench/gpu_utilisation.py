"""GPU check, section 5 (issue 7): GPU utilisation during each run of sections 2 to 4.

The check's ``GpuSampler`` (bench/_gpu_common.py) samples ``nvidia-smi`` every 200 ms (else
``torch.cuda.utilization()``) while the other sections run, each run a named phase; this section
gives each phase's mean and max utilisation and its peak memory. Claim it serves (issue 7): the
trial path keeps the GPU busy; a low mean next to a fast epoch points at the host (data, Python)
rather than the kernels. On the CPU it prints "n/a (cpu)".

Writes one line per phase and the figures ``utilisation.<phase>`` (samples, mean, max,
max_memory_mib).

    bench/gpu_check.sh                      # after sections 2 to 4, one GPU
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from _gpu_common import (
    GpuSampler,
    NoSampler,
    Report,
)


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


def section_utilisation(report: Report, sampler: GpuSampler | NoSampler, on_cuda: bool) -> None:
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
