"""`make demo`'s study and report, before and after the verdict work (issue 11), side by side.

Before: a git worktree of `--before` (default 210237a, the last commit before it), run with this
venv and `PYTHONPATH` pointing at the worktree: `study run` of the ALL study (8 trials) and
`report --seeds 3` (3 variants: hand-set baseline, best ALL, aux_weight=0 ablation).
After: this checkout, as `make demo` runs it: `study run` of the ALL study and its tuned
baseline (8 trials each) and `report --seeds 10` (top-3 selection of both studies on 3 seeds,
~12 variants x 10 seeds). Each run starts in a fresh folder (new SQLite stores, no reuse); the
two alternate in `--pairs` pairs. Writes the section `bench_report` of bench/RESULTS.md.

    .venv/bin/python bench/bench_report.py [--pairs 2] [--before 210237a]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkout, machine_header, markdown_table, median, publish, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Demo:
    label: str
    study_seconds: float
    report_seconds: float
    evaluation_runs: int
    selection_runs: int

    @property
    def total(self) -> float:
        return self.study_seconds + self.report_seconds


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def demo(label: str, code: Path, *, seeds: int, folder: Path, cache: Path) -> Demo:
    env = {**os.environ, "PYTHONPATH": str(code), "AUTOALL_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AUTOALL_STORAGE", None)
    found = subprocess.run(
        [sys.executable, "-c", "import autoall; print(autoall.__file__)"],
        cwd=folder, env=env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert found.startswith(str(code)), (found, code)
    cli = [sys.executable, "-m", "autoall.cli"]
    study = str(code / "studies" / "digits.yaml")
    study_s, _ = _run(
        [*cli, "study", "run", study, "--n-trials", "8", "--architectures", "mlp"],
        cwd=folder,
        env=env,
    )
    report_s, out = _run(
        [*cli, "report", study, "--seeds", str(seeds), "--architectures", "mlp"],
        cwd=folder,
        env=env,
    )
    evaluation = len(re.findall(r"seed \d+: test_acc", out))
    selection = len(re.findall(r"winner trial", out))
    return Demo(label, study_s, report_s, evaluation, _selection_runs(folder) if selection else 0)


def _selection_runs(folder: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.\"autoall.role\" = 'selection-run'")
    return len(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--before", default="210237a")
    args = parser.parse_args()
    header = machine_header()
    runs: dict[str, list[Demo]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        base = Path(tmp)
        with checkout(args.before, base / "before") as old:
            for i in range(args.pairs):
                for label, code, seeds in (("before", old, 3), ("after", ROOT, 10)):
                    folder = base / f"{label}-{i}"
                    folder.mkdir()
                    result = demo(label, code, seeds=seeds, folder=folder, cache=base / "cache")
                    runs[label].append(result)
                    print(
                        f"{label} {i}: study {result.study_seconds:.1f} s, report "
                        f"{result.report_seconds:.1f} s ({result.evaluation_runs} evaluation + "
                        f"{result.selection_runs} selection runs)",
                        flush=True,
                    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    before, after = runs["before"], runs["after"]
    ratio = [a.total / b.total for a, b in zip(after, before, strict=True)]
    rows = [
        [
            label,
            spread([d.study_seconds for d in demos], digits=1),
            spread([d.report_seconds for d in demos], digits=1),
            spread([d.total for d in demos], digits=1),
            f"{demos[0].evaluation_runs} + {demos[0].selection_runs}",
        ]
        for label, demos in runs.items()
    ]
    body = f"""## The demo report, before and after issue 11 (`bench/bench_report.py`)

{header}
- Method: `make demo`'s two steps in a fresh folder per run, {args.pairs} alternating pairs;
  before = commit {args.before} in a git worktree (`study run` of the ALL study, 8 trials;
  `report --seeds 3`), after = this checkout (`study run` of the ALL study and its tuned
  baseline, 8 trials each; `report --seeds 10`). Wall seconds of each command, start-up
  included; torch's default threads. Load average at the end (1, 5, 15 min): {load}.

{markdown_table(["code", "study run", "report", "total", "report runs trained (evaluation + selection)"], rows)}

After / before, total wall time: **{median(ratio):.2f}x** (pairs: {", ".join(f"{r:.2f}" for r in ratio)}).
Why it grows: the tuned baseline doubles the study (8 more trials), and the report trains
{after[0].evaluation_runs} evaluation runs ({after[0].evaluation_runs // 10} variants: tuned and hand-set
baselines, the ALL, the controls, four reduced-data runs, x 10 seeds, the fewest that let ten
claims be decided) and {after[0].selection_runs} selection runs (top-3 trials of both studies on 3
seeds, ties at the cut included), against {before[0].evaluation_runs} before.
"""
    return publish("bench_report", body)


if __name__ == "__main__":
    sys.exit(main())
