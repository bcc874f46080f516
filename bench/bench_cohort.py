"""Cohorts on the CPU (issue 14): K trials trained as one batched job vs one after another.

1. Same process, digits mlp at studies/digits.yaml's settings (20 epochs): K trial plans whose
   knobs are drawn from the file's search space (seeded; hidden sizes differ, so the cohort pads
   them to the widest), trained one after another with `fit()` and as one cohort with
   `fit_cohort()`, alternating in `--pairs` pairs. Targets: K = 5 at least 1.3x, K = 16 at least
   2x faster (wall). Also checked: every member's final validation accuracy equals its run alone.
2. The command: `autoall study run studies/digits.yaml --architectures mlp --n-trials 32
   --no-baseline` with `--cohort 8` vs `--cohort 1`, each in a fresh folder (new SQLite and
   MLflow stores), alternating in `--study-pairs` pairs: wall ratio, and both finish 32 trials.

Writes the section `bench_cohort` of bench/RESULTS.md (`--quick`: tiny sizes, prints only).

    .venv/bin/python bench/bench_cohort.py [--pairs 3] [--study-pairs 2] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's autoall, first
sys.path.insert(1, str(ROOT / "bench"))
from _cohort_plans import draw_plans, seed_plans  # noqa: E402
from _common import machine_header, markdown_table, median, publish, spread  # noqa: E402

from autoall.config._study_file import StudyConfig, load_study_file  # noqa: E402
from autoall.study._trials import load_study_data  # noqa: E402
from autoall.training._plan import fit  # noqa: E402
from autoall.training.cohort._cohort import fit_cohort  # noqa: E402

STUDY = ROOT / "studies" / "digits.yaml"
TARGETS = {5: 1.3, 16: 2.0}  # cohort size -> speed-up it must reach (issue 14)


def same_process(cfg: StudyConfig, sizes: tuple[int, ...], pairs: int) -> list[list[str]]:
    data = load_study_data(cfg, "cpu")
    rows = []
    for kind, k in [(kind, k) for kind in ("seeds", "trials") for k in sizes]:
        plans = seed_plans(cfg, k) if kind == "seeds" else draw_plans(cfg, k, seed=k)
        fit(plans[0], data)  # warm-up: first-call costs of torch and the data
        ratios, alone_s, cohort_s, worst = [], [], [], 0.0
        for i in range(pairs):
            order = ("alone", "cohort") if i % 2 == 0 else ("cohort", "alone")
            seconds: dict[str, float] = {}
            results: dict[str, list[float]] = {}
            for mode in order:
                start = time.perf_counter()
                if mode == "alone":
                    outcomes: list[object] = [fit(p, data) for p in plans]
                else:
                    outcomes = list(fit_cohort(plans, data))
                seconds[mode] = time.perf_counter() - start
                results[mode] = [getattr(o, "final_val_acc", float("nan")) for o in outcomes]
            worst = max(
                worst,
                *(abs(a - c) for a, c in zip(results["alone"], results["cohort"], strict=True)),
            )
            alone_s.append(seconds["alone"])
            cohort_s.append(seconds["cohort"])
            ratios.append(seconds["alone"] / seconds["cohort"])
            print(f"{kind} K={k} pair {i}: alone {seconds['alone']:.1f} s, cohort "
                  f"{seconds['cohort']:.1f} s, {ratios[-1]:.2f}x", flush=True)  # fmt: skip
        target = TARGETS.get(k)
        verdict = "-" if target is None else ("met" if median(ratios) >= target else "MISSED")
        rows.append(
            [
                kind,
                str(k),
                spread(alone_s, digits=1),
                spread(cohort_s, digits=1),
                f"**{median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})",
                f">= {target:g}x: {verdict}" if target is not None else "-",
                f"{worst:.4f}",
            ]
        )
    return rows


def study_runs(study: Path, n_trials: int, cohort: int, pairs: int) -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AUTOALL_STORAGE", None)
    results: dict[int, list[tuple[float, int, float]]] = {1: [], cohort: []}
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        for i in range(pairs):
            for k in (1, cohort) if i % 2 == 0 else (cohort, 1):
                folder = Path(tmp) / f"k{k}-{i}"
                folder.mkdir()
                cmd = [sys.executable, "-m", "autoall.cli", "study", "run", str(study)]
                cmd += ["--architectures", "mlp", "--n-trials", str(n_trials), "--no-baseline"]
                cmd += ["--cohort", str(k)]
                start = time.perf_counter()
                done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                trials = optuna.load_study(
                    study_name="digits/mlp", storage=f"sqlite:///{folder / 'autoall.db'}"
                ).trials
                finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
                best = max((t.value for t in trials if t.state.name == "COMPLETE"), default=0)
                results[k].append((seconds, len(finished), float(best or 0)))
                print(f"--cohort {k} pair {i}: {seconds:.1f} s, {len(finished)} finished, "
                      f"best {best:.4f}", flush=True)  # fmt: skip
    base = [s for s, _, _ in results[1]]
    rows = []
    for k, runs in results.items():
        ratio = [b / s for b, (s, _, _) in zip(base, runs, strict=True)]
        rows.append(
            [
                f"--cohort {k}",
                spread([s for s, _, _ in runs], digits=1),
                ", ".join(str(n) for _, n, _ in runs),
                ", ".join(f"{b:.4f}" for _, _, b in runs),
                f"{median(ratio):.2f}x" if k != 1 else "1x",
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--study-pairs", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in part 1 [2; --quick: 1]"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes; nothing written")
    args = parser.parse_args()
    threads = args.threads or (1 if args.quick else 2)  # 1: a busy machine, 2 threads crawl
    torch.set_num_threads(threads)
    header = machine_header(threads=threads)
    cfg = load_study_file(STUDY)
    study, n_trials, cohort, sizes = STUDY, 32, 8, (5, 16)
    pairs, study_pairs = args.pairs, args.study_pairs
    tmp = None
    if args.quick:
        raw = yaml.safe_load(STUDY.read_text())
        raw["train"]["mlp"]["epochs"] = 1
        tmp = tempfile.TemporaryDirectory(prefix="bench-cohort-quick-")
        study = Path(tmp.name) / "digits.yaml"
        study.write_text(yaml.safe_dump(raw))
        cfg = load_study_file(study)
        n_trials, cohort, sizes, pairs, study_pairs = 4, 2, (2, 3), 1, 1
    epochs = cfg.train_config("mlp").epochs
    start = time.perf_counter()
    rows = same_process(cfg, sizes, pairs)
    study_rows = study_runs(study, n_trials, cohort, study_pairs)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    body = f"""## Cohorts: K trials as one batched job vs one after another (`bench/bench_cohort.py`)

{header}
- Method 1: digits mlp, {epochs} epochs, batch {cfg.train_config("mlp").batch_size} (studies/digits.yaml); "seeds": one ALL
  variant (hidden 64, reconstruction, head) on K seeds, as the report trains a variant;
  "trials": K trial plans with knobs drawn from the file's search space (hidden sizes padded
  to the widest, head and blocks mixed). Trained in one process one after another with `fit()`
  and as one cohort with `fit_cohort()`, {pairs} alternating pairs after a warm-up run; wall
  seconds; median (min-max). Last column: the largest difference in a member's final
  validation accuracy, cohort vs alone.
- Method 2: `autoall study run {study.relative_to(ROOT) if study.is_relative_to(ROOT) else study.name} --architectures mlp --n-trials {n_trials} --no-baseline
  --cohort {cohort}` vs `--cohort 1` (tracking on, torch's default threads), each in a fresh
  folder, {study_pairs} alternating pair(s); wall seconds of the command. Load average at the end
  (1, 5, 15 min): {load}. Total {time.perf_counter() - start:.0f} s.

{markdown_table(["plans", "K", "one after another", "cohort", "speed-up", "target", "max |d val acc|"], rows)}

{markdown_table(["command", "wall", "finished trials", "best value", "speed-up"], study_rows)}
"""
    if tmp is not None:
        tmp.cleanup()
    return publish("bench_cohort", body, write=tmp is None)


if __name__ == "__main__":
    sys.exit(main())
