"""The demo and the default digits report, before and after the fair verdict (equal arms,
replicates, re-tuned controls), side by side; and what replicates and cohorts cost and save.

Before: a git worktree of `--before` (default 4352308, the last commit before that work), run
with this venv and `PYTHONPATH` pointing at it. After: this checkout. Each run starts in a fresh
folder (new SQLite stores, no reuse), one worker, torch's default threads.

- `demo`: `autoall demo` (its studies, their summary and the report), before and after.
- `digits`: the shipped studies/digits.yaml as it is (`study run` with its defaults, then
  `report` with its defaults), mlp only (`--architectures mlp`), before and after.
- `cost` (after only): on the demo's finished studies, the report again into a fresh MLflow store
  with `--replicates 1` (half the replicates) and with `--no-cohorts`.

Writes the section `bench_report` of bench/RESULTS.md.

    .venv/bin/python bench/bench_report.py [--pairs 1] [--before 4352308] [--skip-digits]
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
from _common import checkout, machine_header, markdown_table, median, publish, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_SEEDS = 3  # `autoall demo`'s evaluation seeds (autoall/cli/_main.py)


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def _env(code: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(code), "AUTOALL_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AUTOALL_STORAGE", None)
    return env


def _trained(out: str) -> int:
    """Evaluation runs the report trained (not reused)."""
    return len([x for x in re.findall(r"seed \d+: test_acc [\d.]+(.*)", out) if "reused" not in x])


def demo(code: Path, folder: Path, cache: Path) -> tuple[float, int]:
    seconds, out = _run([sys.executable, "-m", "autoall.cli", "demo"], cwd=folder,
                        env=_env(code, cache))  # fmt: skip
    return seconds, _trained(out)


def digits(code: Path, folder: Path, cache: Path) -> tuple[float, float]:
    cli, study = [sys.executable, "-m", "autoall.cli"], str(code / "studies" / "digits.yaml")
    env = _env(code, cache)
    study_s, _ = _run([*cli, "study", "run", study, "--architectures", "mlp"], cwd=folder, env=env)
    report_s, _ = _run([*cli, "report", study, "--architectures", "mlp"], cwd=folder, env=env)
    return study_s, report_s


def again(folder: Path, target: Path, cache: Path, extra: list[str]) -> float:
    """The demo's report once more on a copy of its studies, into a fresh MLflow store."""
    target.mkdir()
    with (
        sqlite3.connect(folder / "autoall.db") as src,
        sqlite3.connect(target / "autoall.db") as dst,
    ):
        src.backup(dst)
    study = str(ROOT / "studies" / "digits.yaml")
    cmd = [sys.executable, "-m", "autoall.cli", "report", study, "--architectures", "mlp",
           "--seeds", str(DEMO_SEEDS), *extra]  # fmt: skip
    seconds, _ = _run(cmd, cwd=target, env=_env(ROOT, cache))
    shutil.rmtree(target)
    return seconds


COSTS = {  # the demo's report (2 replicates, cohorts), then one change each
    "2 replicates, cohorts (as the demo)": ["--replicates", "2"],
    "1 replicate": ["--replicates", "1"],
    "2 replicates, --no-cohorts": ["--replicates", "2", "--no-cohorts"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--before", default="4352308")
    parser.add_argument("--skip-digits", action="store_true", help="only the demo and the costs")
    args = parser.parse_args()
    header = machine_header()
    demos: dict[str, list[tuple[float, int]]] = {"before": [], "after": []}
    full: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    costs: dict[str, list[float]] = {label: [] for label in COSTS}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        base = Path(tmp)
        cache = base / "cache"
        with checkout(args.before, base / "before") as old:
            for i in range(args.pairs):
                for label, code in (("before", old), ("after", ROOT)):
                    folder = base / f"demo-{label}-{i}"
                    folder.mkdir()
                    demos[label].append(demo(code, folder, cache))
                    print(f"demo {label} {i}: {demos[label][-1]}", flush=True)
                    if label == "after":
                        for extra, options in COSTS.items():
                            costs[extra].append(again(folder, base / f"cost-{i}", cache, options))
                            print(f"report {extra}: {costs[extra][-1]:.1f} s", flush=True)
                    if not args.skip_digits:
                        folder = base / f"digits-{label}-{i}"
                        folder.mkdir()
                        full[label].append(digits(code, folder, cache))
                        print(f"digits {label} {i}: {full[label][-1]}", flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    demo_ratio = median([a[0] / b[0] for a, b in zip(demos["after"], demos["before"], strict=True)])
    rows = [
        [label, spread([d[0] for d in runs], digits=1), str(runs[0][1])]
        for label, runs in demos.items()
    ]
    body = f"""## The demo and the digits report, before and after the fair verdict (`bench/bench_report.py`)

{header}
- Method: fresh folder per run, {args.pairs} pair(s), before = commit {args.before} in a git
  worktree, after = this checkout; wall seconds of each command, start-up included; one
  worker, torch's default threads. Load average at the end (1, 5, 15 min): {load}.

`autoall demo` (before: 8 trials per study, 1 search, report on 10 seeds; after: 2 replicates,
its own trials and seeds, re-tuned controls):

{markdown_table(["code", "demo wall seconds", "evaluation runs trained"], rows)}

After / before: **{demo_ratio:.2f}x**.

What replicates and cohorts cost and save (after; the demo's report rerun on a copy of its
finished studies into a fresh MLflow store, one change at a time):

{markdown_table(["report", "wall seconds"], [[k, spread(v, digits=1)] for k, v in costs.items()])}
"""
    if full["after"]:
        rows = [
            [label, spread([s for s, _ in runs], digits=1), spread([r for _, r in runs], digits=1),
             spread([s + r for s, r in runs], digits=1)]
            for label, runs in full.items()
        ]  # fmt: skip
        ratio = median([(a[0] + a[1]) / (b[0] + b[1])
                        for a, b in zip(full["after"], full["before"], strict=True)])  # fmt: skip
        body += f"""
studies/digits.yaml as shipped, mlp (`study run FILE --architectures mlp`, then `report FILE
--architectures mlp`, every default of each version's file and command):

{markdown_table(["code", "study run", "report", "total"], rows)}

After / before, total: **{ratio:.2f}x**.
"""
    return publish("bench_report", body)


if __name__ == "__main__":
    sys.exit(main())
