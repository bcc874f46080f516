"""GPU check, section 4 (issue 7): trials per hour with 1, 2 and 4 trials per GPU.

Runs ``autoall study run --trials-per-gpu N`` (``--n-jobs N`` on the CPU) for N in 1, 2, 4 on a
digits ``mlp`` study (24 trials of 20 epochs per setting, random sampler, no pruner,
``--no-tracking``, SQLite storage), each in its own process group with a time limit, and reads
the trials back from the storage: trials per hour over the whole command (start-up included) and
steady (per worker, first trial's start to last trial's end, summed over the workers). Claim
(issue 7, on one H100): 2 trials per GPU give >= 2.5x the steady trials per hour of 1. A
setting that would overrun the check's time budget is left out and says so. Needs optuna (not
mlflow); without it the section says "skipped" and which wheels to carry (bench/gpu_check.sh).

Writes the lines ``--n-jobs|--trials-per-gpu N: ...`` and ``ratio N vs 1 trials per GPU
(steady|wall)``, and the figures ``trials.x<N>`` and ``trials.ratio_*``.

    bench/gpu_check.sh                                       # with every section, one GPU
    .venv/bin/python bench/gpu_trials.py --device cpu --quick  # this section alone (+ 1, 5)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _gpu_common import (
    ROOT,
    GpuSampler,
    NoSampler,
    Report,
    Sizes,
    Target,
    first_visible_gpu,
    format_ratio,
)

_TRIAL_MODULES = ("optuna", "sqlalchemy", "alembic", "colorlog", "yaml", "sklearn")


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


def section_trials(
    report: Report,
    device: torch.device,
    sizes: Sizes,
    sampler: GpuSampler | NoSampler,
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


if __name__ == "__main__":  # sections 1, 4 and 5 (utilisation), then the summary
    from gpu_check import main

    sys.exit(main(sections=("4",)))
