"""GPU trials per hour by cohort size: how many trials one GPU finishes per hour when several
share it, as separate worker processes or as one batched cohort.

Evidence: none yet. This check has not run on a GPU, so bench/RESULTS.md holds no GPU figure;
its CPU smoke run (CI) proves only that it runs. Targets, on one H100 or H200:

- trials: ``autoall study run --trials-per-gpu N`` (``--n-jobs N`` on the CPU), N = 1, 2, 4, on
  a digits ``mlp`` study (24 trials of 20 epochs per setting, random sampler, no pruner,
  ``--no-tracking --no-baseline``, SQLite), each in its own process group with a time limit.
  Trials per hour over the whole command (start-up included) and steady (per worker, first
  trial's start to last trial's end from the storage, summed over the workers). Target: 2 trials
  per GPU >= 2.5x the steady trials per hour of 1.
- cohorts: K = 1, 4, 16, 64 ALL trial plans with knobs drawn from studies/mnist.yaml's search
  space (seeded; hidden sizes padded to the widest) at the architecture's MNIST baseline (batch
  128, AdamW, bf16 autocast on CUDA) on synthetic MNIST-shaped data (uint8 1 x 28 x 28, random
  labels; mlp 60,000 training images, cnn 12,000, 10,000 validated every epoch), 3 epochs. K = 1
  is ``fit()``, one trial at a time; K > 1 is ``fit_cohort()``. Steady trials per hour =
  3600 / (median epoch after the first, each member's share, x the study's epochs: mlp 20, cnn
  10); also wall seconds and peak GPU memory. Target: the mlp cohort of 16 >= 8x K = 1.

Side by side within one run; a setting that would overrun its budget (trials 300 s, cohorts
150 s) is left out and says so. Run through ``bench/gpu_check.sh`` (it sets ``PYTHONPATH``, picks
the interpreter and installs carried wheels); with ``$OUT`` set the report goes to
``$OUT/gpu_check.txt`` and the figures to ``$OUT/gpu_check.json``, rewritten after every line.
Exit status: 0 when every section ran (a missed target is reported, not a failure), 1 when a
section failed, 2 without the CUDA asked for.

    bench/gpu_check.sh                        # one GPU, about 8 minutes
    bench/gpu_check.sh --device cpu --quick   # the CPU smoke run (tests/bench/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import machine_header  # noqa: E402

from autoall.config._study_file import StudyConfig, load_study_file  # noqa: E402
from autoall.config._trial_plan import trial_plan  # noqa: E402
from autoall.training._data import DeviceData  # noqa: E402
from autoall.training._loop import RunResult  # noqa: E402
from autoall.training._plan import RunPlan, fit  # noqa: E402
from autoall.training.cohort._cohort import fit_cohort  # noqa: E402

TRIAL_MODULES = ("optuna", "sqlalchemy", "alembic", "colorlog", "yaml", "sklearn")
TRIALS_TARGET = 2.5  # steady trials/h with 2 trials per GPU over 1
COHORT_TARGET = ("mlp", 16, 8.0)  # architecture, cohort size, speed-up over one at a time


@dataclass(frozen=True)
class Sizes:
    """How much each section runs: the full check, or the CPU smoke run."""

    trial_settings: tuple[int, ...]  # trials per GPU
    n_trials: int  # per setting
    trial_epochs: int  # digits mlp epochs per trial
    trial_timeout: float  # seconds per `autoall study run`
    trials_budget: float  # seconds for the trials section
    cohort_train: dict[str, int]  # training images per architecture
    cohort_val: int
    cohort_epochs: int  # per run; the first is a warm-up
    cohorts: tuple[int, ...]
    cohort_budget: float  # seconds for the cohorts section
    threads: int | None  # torch threads on the CPU (OMP_NUM_THREADS for the trial workers)


FULL = Sizes((1, 2, 4), 24, 20, 180.0, 300.0, {"mlp": 60_000, "cnn": 12_000}, 10_000, 3,
             (1, 4, 16, 64), 150.0, None)  # fmt: skip
# CI: 2 cores shared with other jobs; one thread each avoids oversubscription
QUICK = Sizes((1, 2), 2, 1, 240.0, 600.0, {"mlp": 512, "cnn": 256}, 128, 2, (1, 2), 300.0, 1)


def target_line(label: str, value: float, bound: float, *, judged: bool) -> str:
    """``target <label>: <value>x (>= <bound>x: met|MISSED|not judged on cpu)``."""
    verdict = ("met" if value >= bound else "MISSED") if judged else "not judged on cpu"
    return f"target {label}: {value:.2f}x (>= {bound:g}x: {verdict})"


def first_visible_gpu(env: dict[str, str]) -> str:
    """The first entry of ``CUDA_VISIBLE_DEVICES`` (an index or a UUID), else ``"0"``."""
    return env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"


class Report:
    """Prints each line and keeps it; with ``out_dir``, rewrites ``gpu_check.txt`` and
    ``gpu_check.json`` (figures under dotted keys) after every line, so a run cut short keeps
    what it measured."""

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
        node = self.figures
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
        self._write()

    def _write(self) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")
            (self.out_dir / "gpu_check.json").write_text(json.dumps(self.figures, indent=2) + "\n")


# ---------------------------------------------------------------- 1. environment


def section_environment(report: Report, device: torch.device, quick: bool) -> None:
    report.section("1. environment")
    report.line(f"command: {os.environ.get('GPU_CHECK_COMMAND') or shlex.join(sys.argv)}")
    commit = os.environ.get("AUTOALL_COMMIT")
    if not commit:
        git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"]
        with contextlib.suppress(OSError):
            commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
        commit = commit or "unknown (no git checkout here; set AUTOALL_COMMIT)"
    report.line(f"autoall commit: {commit}")
    for line in machine_header().splitlines():
        report.line(line.removeprefix("- "))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report.line(f"CUDA {torch.version.cuda or 'none'}, cuDNN {cudnn}; "
                f"optuna {_version('optuna')} (the trials section needs it)")  # fmt: skip
    report.figure("environment.torch", torch.__version__)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.line(f"gpu: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                    f"{props.major}.{props.minor}, {props.multi_processor_count} SMs")  # fmt: skip
        report.figure("environment.gpu", props.name)
    else:
        report.line("gpu: none (cpu run: the targets are for one H100 and are not judged)")
    report.line(f"mode: {'quick' if quick else 'full'}, device {device}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------- 2. trials per GPU


def trials_per_hour(n_trials: int, seconds: float) -> float:
    """``n_trials`` finished in ``seconds``, as trials per hour."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, but got {seconds!r}.")
    return 3600.0 * n_trials / seconds


def steady_trials_per_hour(trials: Sequence[tuple[object, float, float]]) -> float:
    """Trials per hour of workers once running: ``(worker, start, end)`` per finished trial.
    Each worker counts from its first trial's start to its last trial's end (the start-up of
    the command and of each worker left out); the workers' rates are summed."""
    if not trials:
        raise ValueError("steady_trials_per_hour needs at least one trial, but got none.")
    spans: dict[object, list[tuple[float, float]]] = {}
    for worker, start, end in trials:
        spans.setdefault(worker, []).append((start, end))
    return sum(
        trials_per_hour(len(runs), max(max(e for _, e in runs) - min(s for s, _ in runs), 1e-6))
        for runs in spans.values()
    )


def section_trials(report: Report, device: torch.device, sizes: Sizes) -> None:
    on_cuda = device.type == "cuda"
    flag = "--trials-per-gpu" if on_cuda else "--n-jobs"
    settings = "/".join(str(n) for n in sizes.trial_settings)
    report.section(f"2. trials per hour: digits mlp, {settings} trials per GPU ({flag})")
    missing = [m for m in TRIAL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        report.line(f"skipped: {', '.join(missing)} not importable here; carry the wheels listed "
                    "at the top of bench/gpu_check.sh in .whl/ and the script installs them")  # fmt: skip
        report.figure("trials.skipped", missing)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report.line(f"{sizes.n_trials} trials per setting, {sizes.trial_epochs} epoch(s) each, random "
                "sampler, no pruner, --no-tracking --no-baseline, SQLite; wall: the whole command; "
                "steady: per worker, first trial start to last trial end, summed")  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if on_cuda:  # trials per GPU: keep every worker on one GPU
        env["CUDA_VISIBLE_DEVICES"] = first_visible_gpu(env)
    elif sizes.threads is not None:
        env["OMP_NUM_THREADS"] = str(sizes.threads)
    deadline = time.monotonic() + sizes.trials_budget
    rates: dict[int, tuple[float, float]] = {}
    last_wall = 0.0
    with tempfile.TemporaryDirectory(prefix="autoall-gpu-check-") as tmp:
        folder = Path(tmp)
        study = _write_trial_study(folder / "study.yaml", sizes)
        for n in sizes.trial_settings:
            url = f"sqlite:///{folder}/trials-{n}.db"
            command = [sys.executable, "-m", "autoall.cli", "study", "run", str(study), "--n-trials",
                       str(sizes.n_trials), "--no-tracking", "--no-baseline", "--storage", url,
                       "--device", device.type, "--checkpoint-dir", str(folder / "ckpt"),
                       flag, str(n)]  # fmt: skip
            left = deadline - time.monotonic()
            if rates and left < 1.2 * last_wall:
                report.line(f"  {flag} {n}: left out, {left:.0f} s of the budget left")
                continue
            timeout = min(left, sizes.trial_timeout) if rates else sizes.trial_timeout
            log = folder / f"trials-{n}.log"
            t0 = time.perf_counter()
            code = _run_group(command, cwd=folder, env=env, log=log, timeout=timeout)
            wall = last_wall = time.perf_counter() - t0
            if code != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`{shlex.join(command)}` exited {code}:\n{tail}")
            finished = _finished_trials(optuna, url)
            rates[n] = (trials_per_hour(len(finished), wall), steady_trials_per_hour(finished))
            workers = len({w for w, _, _ in finished})
            trial_s = statistics.median(end - begin for _, begin, end in finished)
            report.line(f"  {flag} {n}: {len(finished)} trials by {workers} worker process(es), "
                        f"median trial {trial_s:5.2f} s; wall {wall:6.1f} s = {rates[n][0]:8,.0f} "
                        f"trials/h; steady {rates[n][1]:8,.0f} trials/h")  # fmt: skip
            report.figure(f"trials.x{n}", {"trials": len(finished), "workers": workers,
                                           "median_trial_s": trial_s, "wall_s": wall,
                                           "per_hour_wall": rates[n][0],
                                           "per_hour_steady": rates[n][1]})  # fmt: skip
    lo = min(rates)
    for hi in sorted(rates)[1:]:
        steady, wall = (rates[hi][i] / rates[lo][i] for i in (1, 0))
        report.line(f"ratio {hi} vs {lo} trials per GPU: steady {steady:.2f}x, wall {wall:.2f}x")
        report.figure(f"trials.ratio_x{hi}", {"steady": steady, "wall": wall})
    if 2 in rates and 1 in rates:
        ratio = rates[2][1] / rates[1][1]
        report.line(target_line("2 vs 1 trials per GPU (steady)", ratio, TRIALS_TARGET,
                                judged=on_cuda))  # fmt: skip


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
    ``timeout`` seconds the whole group (the workers it spawned too) is ended and TimeoutError
    raised."""
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
    """``(worker pid, start, end)`` in seconds of every COMPLETE or PRUNED trial."""
    study = optuna.load_study(study_name="gpucheck/mlp", storage=url)
    done = [
        (t.user_attrs.get("worker_pid", "?"), t.datetime_start.timestamp(),
         t.datetime_complete.timestamp())
        for t in study.get_trials(deepcopy=False)
        if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None
    ]  # fmt: skip
    if not done:
        raise RuntimeError(f"no finished trial in {url}")
    return done


# ---------------------------------------------------------------- 3. cohorts


def draw_plans(
    cfg: StudyConfig, k: int, *, seed: int, arch: str = "mlp", device: str = "cpu"
) -> list[RunPlan]:
    """K ALL trial plans of ``arch`` with knobs drawn uniformly (log scale where the file says
    so) from the study file's search space, as a random sampler would."""
    rng = random.Random(seed)
    plans = []
    for _ in range(k):
        params: dict[str, object] = {}
        for name, spec in cfg.search.items():
            if spec.type == "categorical":
                params[name] = rng.choice(list(spec.choices))
                continue
            assert spec.low is not None and spec.high is not None
            low, high = float(spec.low), float(spec.high)
            if spec.log:
                value = 10 ** rng.uniform(math.log10(low), math.log10(high))
            else:
                value = rng.uniform(low, high)
            params[name] = round(value) if spec.type == "int" else value
        plans.append(trial_plan(cfg, arch, "all", params, device=device))
    return plans


def synthetic_mnist(n_train: int, n_val: int, device: torch.device) -> DeviceData:
    """MNIST-shaped random uint8 images ``(N, 1, 28, 28)`` with random labels of 10 classes,
    normalised as a uniform 0..255 pixel; seeded, so every run alike."""
    g = torch.Generator(device=device).manual_seed(0)
    n = n_train + n_val
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g, device=device)
    y = torch.randint(0, 10, (n,), generator=g, device=device)
    stat = torch.ones((1, 1, 1, 1), device=device)
    return DeviceData(
        name="mnist-synthetic", in_shape=(1, 28, 28), num_classes=10,
        train_x=x[:n_train], train_y=y[:n_train], val_x=x[n_train:], val_y=y[n_train:],
        test_x=x[:0], test_y=y[:0], mean=stat * 127.5, std=stat * math.sqrt((256**2 - 1) / 12),
        augment=False, device=device,
    )  # fmt: skip


def steady_per_hour(results: Sequence[RunResult], trial_epochs: int) -> float:
    """Trials per hour from the median epoch after the first (each member's share)."""
    epochs = [s.epoch_seconds for r in results for s in r.history[1:]] or [
        s.epoch_seconds for r in results for s in r.history
    ]
    return 3600.0 / (statistics.median(epochs) * trial_epochs)


def run_cohort(plans: list[RunPlan], data: DeviceData) -> tuple[float, list[RunResult]]:
    """Wall seconds and results of ``fit()`` (one plan) or ``fit_cohort()`` (several)."""
    start = time.perf_counter()
    outcomes = [fit(plans[0], data)] if len(plans) == 1 else fit_cohort(plans, data)
    bad = [o for o in outcomes if not isinstance(o, RunResult)]
    if bad:
        raise RuntimeError(f"a member ended with {bad[0]!r}")
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, [o for o in outcomes if isinstance(o, RunResult)]


def section_cohorts(report: Report, device: torch.device, sizes: Sizes) -> int:
    """The cohorts section; the number of runs that failed."""
    report.section("3. cohorts: trials per hour, MNIST-sized mlp and cnn, cohorts of "
                   f"{'/'.join(map(str, sizes.cohorts))}")  # fmt: skip
    report.line(f"{sizes.cohort_epochs} epochs per run (the first a warm-up); K = 1: fit(), one "
                "trial at a time; K > 1: fit_cohort(); studies/mnist.yaml knobs, baseline "
                f"settings; budget {sizes.cohort_budget:.0f} s")  # fmt: skip
    cfg = load_study_file(ROOT / "studies" / "mnist.yaml")
    deadline = time.monotonic() + sizes.cohort_budget
    failures = 0
    rates: dict[tuple[str, int], float] = {}
    for arch in ("mlp", "cnn"):
        data = synthetic_mnist(sizes.cohort_train[arch], sizes.cohort_val, device)
        trial_epochs = cfg.train_config(arch).epochs
        last: tuple[int, float] | None = None
        for k in sizes.cohorts:
            left = deadline - time.monotonic()
            if last is not None and left < last[1] * k / last[0]:
                report.line(f"  {arch} K={k:>2}: left out, {left:.0f} s of the budget left")
                continue
            plans = [
                replace(p, train=replace(p.train, epochs=sizes.cohort_epochs, warmup_epochs=0.0))
                for p in draw_plans(cfg, k, seed=k, arch=arch, device=str(device))
            ]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                wall, results = run_cohort(plans, data)
            except Exception as exc:  # report it and go on: one device run brings back the rest
                failures += 1
                report.line(f"  {arch} K={k}: FAILED: {type(exc).__name__}: {exc}")
                continue
            last = (k, wall)
            rate = rates[(arch, k)] = steady_per_hour(results, trial_epochs)
            memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            versus = rate / rates[(arch, 1)] if (arch, 1) in rates else float("nan")
            report.line(f"  {arch} K={k:>2}: wall {wall:7.1f} s; {rate:10,.0f} trials/h steady "
                        f"({trial_epochs} epochs each); {versus:5.2f}x K=1; peak {memory:5.1f} GiB")  # fmt: skip
            report.figure(f"cohorts.{arch}.K{k}", {"wall_s": wall, "per_hour": rate,
                                                   "vs_k1": versus, "peak_gib": memory})  # fmt: skip
        del data
    arch, k, bound = COHORT_TARGET
    label = f"{arch} cohort of {k} vs one at a time"
    if (arch, k) in rates and (arch, 1) in rates:
        ratio = rates[(arch, k)] / rates[(arch, 1)]
        report.line(target_line(label, ratio, bound, judged=device.type == "cuda"))
        report.figure("cohorts.target", {"ratio": ratio, "bound": bound, "met": ratio >= bound})
    else:
        report.line(f"target {label}: not measured here")
    return failures


# ---------------------------------------------------------------- the check


def main(argv: Sequence[str] | None = None) -> int:
    """Section 1, then 2 and 3 unless ``--skip``-ped, then the summary; 0 when every section
    ran, 1 when one failed, 2 without the CUDA asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="the CPU smoke run (minutes)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: 2, 3")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("Error: --device cuda was asked for, but torch sees no CUDA device here "
              f"(torch {torch.__version__}); use --device cpu.", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    if sizes.threads is not None and device.type == "cpu":
        torch.set_num_threads(sizes.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report = Report(Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    start = time.perf_counter()
    section_environment(report, device, args.quick)
    failures: list[str] = []
    for number, run in (("2", section_trials), ("3", section_cohorts)):
        if number in skip:
            report.line(f"(section {number} skipped by --skip)")
            continue
        t0 = time.perf_counter()
        try:
            failed = run(report, device, sizes)
            if failed:
                failures.append(f"section {number}: {failed} run(s) failed")
        except Exception as exc:  # report it and go on: one device run must bring back the rest
            failures.append(f"section {number}: {type(exc).__name__}: {exc}")
            report.line(f"FAILED: {type(exc).__name__}: {exc}")
        report.line(f"(section {number}: {time.perf_counter() - t0:.1f} s)")
    report.section("summary")
    report.line(f"total: {time.perf_counter() - start:.1f} s; sections failed: {len(failures)}")
    for line in [x for x in report.lines if x.startswith("target ") and "MISSED" in x]:
        report.line(f"target missed: {line.removeprefix('target ')}")
    for failure in failures:
        report.line(f"failed: {failure.splitlines()[0]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
