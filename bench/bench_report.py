"""The report's wall time: `autoall demo`, what replicates and cohorts cost and save in its
report, and the shipped digits study and report, side by side within one run.

Evidence (bench/RESULTS.md, section bench_report): AMD EPYC, 2 cores, Python 3.11.7, torch
2.14.1, 2026-12-07, one run each (so no spread yet), by this script's earlier version (which also
ran an older commit; those rows are dropped):

- `autoall demo`: 265.8 s, 66 evaluation runs trained;
- the demo's report again on its finished studies: 247.8 s as the demo; 1 replicate 138.7 s
  (0.56x); `--no-cohorts` 305.2 s (1.23x);
- studies/digits.yaml, mlp: `study run` 549.1 s + `report` 860.3 s = 1409.3 s (23.5 minutes).

Each run starts in a fresh folder (new SQLite stores, no reuse); wall seconds of each command,
start-up included; one worker, torch's default threads:

- `demo`: `autoall demo` (studies/demo.yaml: its studies, their summary and the report);
- `costs`: on a copy of the demo's finished studies, `autoall report studies/demo.yaml` into a
  fresh MLflow store, as the demo runs it, with `--replicates 1` and with `--no-cohorts`;
- `digits`: `autoall study run studies/digits.yaml --architectures mlp`, then `autoall report`
  of the same, every default of the file and the commands.

Writes the section `bench_report` of bench/RESULTS.md (not with `--quick`).

    .venv/bin/python bench/bench_report.py [--runs 1] [--skip-digits]   # about 40 min on 2 cores
    .venv/bin/python bench/bench_report.py --quick   # smoke: a tiny demo and its costs, prints only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, markdown_table, median, publish, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "autoall.cli"]
QUICK = ["--seeds", "2", "--tuning-trials", "0"]  # with `demo --n-trials 2`
COSTS = {  # the demo's report, then one change each
    "2 replicates, cohorts (as the demo)": [],
    "1 replicate": ["--replicates", "1"],
    "2 replicates, --no-cohorts": ["--no-cohorts"],
}


def _run(cmd: list[str], *, cwd: Path, cache: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTOALL_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AUTOALL_STORAGE", None)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def demo(folder: Path, cache: Path, extra: list[str]) -> tuple[float, int]:
    """Wall seconds of `autoall demo` and the evaluation runs its report trained (not reused)."""
    seconds, out = _run([*CLI, "demo", *extra], cwd=folder, cache=cache)
    found = re.findall(r"seed \d+: test_acc [\d.]+(.*)", out)
    return seconds, len([x for x in found if "reused" not in x])


def again(folder: Path, target: Path, cache: Path, extra: list[str]) -> float:
    """The demo's report once more on a copy of its studies, into a fresh MLflow store."""
    target.mkdir()
    with (
        sqlite3.connect(folder / "autoall.db") as src,
        sqlite3.connect(target / "autoall.db") as dst,
    ):
        src.backup(dst)
    cmd = [*CLI, "report", str(ROOT / "studies" / "demo.yaml"), *extra]
    seconds, _ = _run(cmd, cwd=target, cache=cache)
    shutil.rmtree(target)
    return seconds


def digits(folder: Path, cache: Path) -> tuple[float, float]:
    study = [str(ROOT / "studies" / "digits.yaml"), "--architectures", "mlp"]
    study_s, _ = _run([*CLI, "study", "run", *study], cwd=folder, cache=cache)
    report_s, _ = _run([*CLI, "report", *study], cwd=folder, cache=cache)
    return study_s, report_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--skip-digits", action="store_true", help="only the demo and the costs")
    parser.add_argument("--quick", action="store_true", help="demo --n-trials 2, prints only")
    args = parser.parse_args()
    header = machine_header()
    demo_extra = ["--n-trials", "2", *QUICK] if args.quick else []
    demos: list[tuple[float, int]] = []
    costs: dict[str, list[float]] = {label: [] for label in COSTS}
    full: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        base, cache = Path(tmp), Path(tmp) / "cache"
        for i in range(args.runs):
            folder = base / f"demo-{i}"
            folder.mkdir()
            demos.append(demo(folder, cache, demo_extra))
            print(f"demo {i}: {demos[-1][0]:.1f} s, {demos[-1][1]} runs trained", flush=True)
            for label, options in COSTS.items():
                extra = [*options, *(QUICK if args.quick else [])]
                costs[label].append(again(folder, base / f"cost-{i}", cache, extra))
                print(f"report {label}: {costs[label][-1]:.1f} s", flush=True)
            if not (args.skip_digits or args.quick):
                folder = base / f"digits-{i}"
                folder.mkdir()
                full.append(digits(folder, cache))
                print(f"digits {i}: study run, report {full[-1]}", flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    first = costs[next(iter(COSTS))]
    cost_rows = [
        [label, spread(runs, digits=1),
         f"**{median([a / b for a, b in zip(runs, first, strict=True)]):.2f}x**"]
        for label, runs in costs.items()
    ]  # fmt: skip
    body = f"""## The report's wall time (`bench/bench_report.py`)

{header}
- Method: fresh folder per run, {args.runs} run(s); wall seconds of each command, start-up
  included; one worker, torch's default threads. Load average at the end (1, 5, 15 min): {load}.

{markdown_table(["command", "wall seconds", "evaluation runs trained"],
                [["`autoall demo`", spread([d[0] for d in demos], digits=1), str(demos[0][1])]])}

What replicates and cohorts cost and save: the demo's report rerun on a copy of its finished
studies into a fresh MLflow store, one change at a time; ratios paired per run:

{markdown_table(["report", "wall seconds", "vs as the demo"], cost_rows)}
"""  # fmt: skip
    if full:
        row = [spread([s for s, _ in full], digits=1), spread([r for _, r in full], digits=1),
               spread([s + r for s, r in full], digits=1)]  # fmt: skip
        body += f"""
studies/digits.yaml as shipped, mlp (`study run FILE --architectures mlp`, then `report FILE
--architectures mlp`, every default of the file and the commands):

{markdown_table(["study run", "report", "total"], [row])}
"""
    return publish("bench_report", body, write=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
