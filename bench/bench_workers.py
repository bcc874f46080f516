"""Several independent `autoall study run` processes on one host: trials per minute with 1, 2 and
4 of them, before and after issue 12 (torch threads per worker from the cores and the workers on
the host; one thread for small models).

Each measurement starts K processes of the same command on a fresh SQLite study (digits, mlp,
`--no-tracking --no-baseline`, torch's default threads: nothing set), all released at the same
moment once imported, and waits until the study holds its target. Trials per minute: the
study's finished trials over the span from the first trial's start to the last trial's end (from
Optuna's own timestamps; start-up excluded), and over the whole wall time. Before: a git worktree
of `--before` (default 2c2e548, the commit issue 12 started from), run with this venv and
`PYTHONPATH` pointing at it. Writes the section `bench_workers` of bench/RESULTS.md.

    .venv/bin/python bench/bench_workers.py [--trials 24] [--epochs 20] [--runs 3]
        [--workers 1,2,4] [--before 2c2e548]

Target: with 2 or 4 workers, total trials per minute never below one worker's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkout, machine_header, markdown_table, median, publish, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Imports, says so, waits for the go file: K processes reach the study at the same moment.
_AT_ONCE = """
import pathlib, sys, time
import optuna, torch
import autoall.cli._main
go = pathlib.Path(sys.argv[1])
pathlib.Path(f"{go}.{sys.argv[2]}").touch()
while not go.exists():
    time.sleep(0.002)
sys.argv = ["autoall", *sys.argv[3:]]
autoall.cli._main.main()
"""

_STUDY = """name: bench
data: {{name: digits}}
architectures: [mlp]
train: {{epochs: {epochs}, warmup_epochs: 0}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
n_trials: {trials}
"""


@dataclass
class Measurement:
    label: str
    workers: int
    trials: int
    span_seconds: float  # first trial start to last trial end
    wall_seconds: float  # first process start to last process exit

    @property
    def per_minute(self) -> float:
        return 60 * self.trials / self.span_seconds

    @property
    def per_minute_wall(self) -> float:
        return 60 * self.trials / self.wall_seconds


def measure(label: str, code: Path, *, workers: int, trials: int, epochs: int, folder: Path,
            cache: Path) -> Measurement:  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code), "AUTOALL_CACHE": str(cache)}
    for name in ("MLFLOW_TRACKING_URI", "AUTOALL_STORAGE", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    (folder / "study.yaml").write_text(_STUDY.format(epochs=epochs, trials=trials))
    go = folder / "go"
    command = ["study", "run", "study.yaml", "--no-tracking", "--no-baseline"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_ONCE, str(go), str(i), *command],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(workers)
    ]
    while not all(Path(f"{go}.{i}").exists() for i in range(workers)):
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    bad = [
        (p.returncode, out[-2000:]) for p, out in zip(procs, outputs, strict=True) if p.returncode
    ]
    if bad:
        raise SystemExit(f"{label}, {workers} workers: a study run failed: {bad}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench/mlp", storage=f"sqlite:///{folder / 'autoall.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    first = min(t.datetime_start for t in finished if t.datetime_start)
    last = max(t.datetime_complete for t in finished if t.datetime_complete)
    return Measurement(label, workers, len(finished), (last - first).total_seconds(), wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="target of the study (all workers)")
    parser.add_argument("--epochs", type=int, default=20, help="per trial")
    parser.add_argument("--runs", type=int, default=3, help="measurements per code and count")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--before", default="2c2e548")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    counts = [int(k) for k in args.workers.split(",")]
    header = machine_header()
    results: dict[tuple[str, int], list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        base = Path(tmp)
        with checkout(args.before, base / "before") as old:
            for run in range(args.runs):  # interleaved, so drifts in load hit every cell alike
                for workers in counts:
                    for label, code in (("before", old), ("after", ROOT)):
                        folder = base / f"{label}-{workers}-{run}"
                        folder.mkdir()
                        m = measure(label, code, workers=workers, trials=args.trials,
                                    epochs=args.epochs, folder=folder, cache=base / f"cache-{label}")  # fmt: skip
                        results.setdefault((label, workers), []).append(m)
                        print(
                            f"run {run}: {label:6} {workers} workers: {m.trials} trials, "
                            f"{m.per_minute:.1f}/min over {m.span_seconds:.1f} s "
                            f"({m.per_minute_wall:.1f}/min over {m.wall_seconds:.1f} s wall)",
                            flush=True,
                        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, verdicts = [], []
    for label in ("before", "after"):
        one = median([m.per_minute for m in results[(label, counts[0])]])
        for workers in counts:
            ms = results[(label, workers)]
            rate = median([m.per_minute for m in ms])
            rows.append([
                label, str(workers),
                spread([m.per_minute for m in ms], unit="/min", digits=1),
                spread([m.per_minute_wall for m in ms], unit="/min", digits=1),
                f"{rate / one:.2f}x",
            ])  # fmt: skip
            if workers != counts[0]:
                verdicts.append(f"{label}, {workers} workers: {rate / one:.2f}x one worker's")
    after_ok = all(
        median([m.per_minute for m in results[("after", k)]])
        >= median([m.per_minute for m in results[("after", counts[0])]])
        for k in counts
    )
    body = f"""## Independent workers on one host (`bench/bench_workers.py`)

{header}
- Method: K `autoall study run` processes of one digits study (mlp, {args.epochs} epochs, random
  sampler, no pruner, `--no-tracking --no-baseline`, target {args.trials} trials for all K
  together) on a fresh SQLite file, released at the same moment once imported; torch threads
  as each code chooses them (nothing set). Trials per minute over the study's span (first trial
  start to last trial end, Optuna's timestamps) and over the wall time (start-up included).
  {args.runs} runs per cell, interleaved; before = commit {args.before} in a git worktree, after =
  this checkout. Load average at the end (1, 5, 15 min): {load}.

{markdown_table(["code", "workers", "trials/min (span)", "trials/min (wall)", "vs 1 worker (span)"], rows)}

Target (after): total trials per minute with 2 and 4 workers not below one worker's:
**{"met" if after_ok else "NOT met"}** ({"; ".join(verdicts)}).
"""
    return publish("bench_workers", body, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
