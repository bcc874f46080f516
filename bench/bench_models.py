"""What issue 13's MLflow extras cost: system metrics per trial, `--log-models`, the report's
model publishing, and `autoall.load_best` in a fresh process.

1. `autoall study run studies/digits.yaml --architectures mlp --no-baseline --n-trials N` as a
   user types it, each run a fresh process in a fresh folder (the MLflow store copied from an
   empty template), in rounds of three: plain, `--system-metrics`, `--log-models` (the order
   rotates per round, so background load hits all alike). Overhead = (wall - plain wall) /
   plain wall, per round. Target: system metrics (on by default on CUDA) cost <= 2 % of a study.
2. In one process: a digits mlp and cnn trained once (digits.yaml settings), then the report's
   publishing of one model, timed per call: the float32 CPU copy and its test accuracy,
   `mlflow.pytorch.log_model` (torch.export; the first call also imports torch._dynamo, shown
   apart) and the registration. Target: <= 10 s per model after the first on 2 cores.
3. `python -c "import autoall; autoall.load_best(NAME).accuracy()"` in a fresh process
   (imports included), the cold cost a user pays.

    .venv/bin/python bench/bench_models.py                            # 3 rounds, 12 trials
    .venv/bin/python bench/bench_models.py --rounds 1 --n-trials 2 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # this checkout's autoall, also in-process
from _common import machine_header, markdown_table, median, publish, spread  # noqa: E402

SECTION = "bench_models"
STUDY = ROOT / "studies" / "digits.yaml"
MODES = {"plain": [], "system metrics": ["--system-metrics"], "log models": ["--log-models"]}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def make_template(folder: Path) -> Path:
    """An empty MLflow SQLite store (its migrations take seconds: not what is measured)."""
    path = folder / "mlflow.db"
    code = "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True, env=_env())
    return path


def study_wall(extra: list[str], *, n_trials: int, template: Path, threads: int) -> float:
    """Wall seconds of one `autoall study run` in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        (work / "mlruns").mkdir()
        shutil.copyfile(template, work / "mlruns" / "mlflow.db")
        cmd = [sys.executable, "-m", "autoall.cli", "study", "run", str(STUDY)]
        cmd += ["--architectures", "mlp", "--no-baseline", "--n-trials", str(n_trials), *extra]
        env = _env() | {"OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"study run {extra} failed:\n{done.stderr[-3000:]}")
        return wall


def publish_costs(repeats: int) -> tuple[list[list[str]], str]:
    """Per architecture: seconds of the copy + accuracy, log_model and register (repeats)."""
    import torch
    from mlflow import MlflowClient

    from autoall.config._study_file import load_study_file
    from autoall.tracking._model_registry import (
        LoggedModel,
        accuracy,
        log_model,
        register,
        serving_copy,
    )
    from autoall.training._data import load_data
    from autoall.training._plan import RunPlan, fit

    cfg = load_study_file(STUDY)
    data = load_data("digits", val_fraction=cfg.data.val_fraction, split_seed=0)
    rows, first = [], ""
    with tempfile.TemporaryDirectory(prefix="bench-models-publish-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        experiment = client.create_experiment("bench", artifact_location=Path(tmp).as_uri())
        for arch in ("mlp", "cnn"):
            trained: list[torch.nn.Module] = []
            fit(RunPlan(arch, cfg.train_config(arch)), data, on_trained=trained.append)
            copies, logs, regs = [], [], []
            for i in range(repeats + (1 if arch == "mlp" else 0)):
                run_id = client.create_run(experiment).info.run_id
                t0 = time.perf_counter()
                model = serving_copy(trained[0], data)
                accuracy(model, data.test_x, data.test_y)
                t1 = time.perf_counter()
                logged: LoggedModel = log_model(
                    uri, run_id, model, example=data.train_x[:2].numpy(), num_classes=10
                )
                t2 = time.perf_counter()
                register(uri, client, name=f"bench-{arch}", logged=logged, run_id=run_id, tags={})
                t3 = time.perf_counter()
                if arch == "mlp" and i == 0:  # the process's first export imports torch._dynamo
                    first = f"{t2 - t1:.1f} s"
                    continue
                copies.append(t1 - t0)
                logs.append(t2 - t1)
                regs.append(t3 - t2)
            rows.append([arch, spread(copies), spread(logs), spread(regs), str(len(logs))])
    return rows, first


def load_best_cold(repeats: int) -> list[float]:
    """Seconds of a fresh `load_best(...).accuracy()` process, imports included."""
    with tempfile.TemporaryDirectory(prefix="bench-models-load-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        setup = (
            "import sys, torch; from mlflow import MlflowClient\n"
            "from autoall.config._study_file import load_study_file\n"
            "from autoall.training._data import load_data\n"
            "from autoall.training._plan import RunPlan, fit\n"
            "from autoall.tracking._model_registry import log_model, register, serving_copy, version_tags\n"
            "uri = sys.argv[1]; cfg = load_study_file(sys.argv[2])\n"
            "data = load_data('digits', val_fraction=cfg.data.val_fraction, split_seed=0)\n"
            "kept = []; fit(RunPlan('mlp', cfg.train_config('mlp')), data, on_trained=kept.append)\n"
            "c = MlflowClient(uri); run = c.create_run(c.create_experiment('b')).info.run_id\n"
            "m = log_model(uri, run, serving_copy(kept[0], data), example=data.train_x[:2].numpy(), num_classes=10)\n"
            "tags = version_tags(data={'name': 'digits', 'val_fraction': cfg.data.val_fraction, "
            "'split_seed': 0}, params={}, metrics={}, extra={})\n"
            "register(uri, c, name='bench-mlp', logged=m, run_id=run, tags=tags)\n"
        )
        env = _env() | {"MLFLOW_TRACKING_URI": uri}
        subprocess.run([sys.executable, "-c", setup, uri, str(STUDY)], check=True, env=env, cwd=tmp)
        code = "import autoall; print(autoall.load_best('bench-mlp').accuracy())"
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp,
                           capture_output=True)  # fmt: skip
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per study process")
    parser.add_argument("--repeats", type=int, default=3, help="publishing / load_best calls")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args(argv)
    from autoall.tracking._store import quiet_mlflow

    quiet_mlflow()  # as the CLI: no MLflow INFO lines among the figures
    header = machine_header(threads=args.threads)
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-models-template-") as tmp:
        template = make_template(Path(tmp))
        names = list(MODES)
        for r in range(args.rounds):
            for mode in names[r % 3 :] + names[: r % 3]:
                walls[mode].append(
                    study_wall(
                        MODES[mode], n_trials=args.n_trials, template=template, threads=args.threads
                    )
                )
                print(f"round {r + 1} {mode}: {walls[mode][-1]:.1f} s", flush=True)
    study_rows = []
    for mode, values in walls.items():
        overhead = [(w - p) / p for w, p in zip(values, walls["plain"], strict=True)]
        pct = (
            "-"
            if mode == "plain"
            else f"{100 * median(overhead):+.1f} % ({100 * min(overhead):+.1f} to {100 * max(overhead):+.1f})"
        )
        study_rows.append([mode, spread(values, digits=1), pct])
    publish_rows, first = publish_costs(args.repeats)
    cold = load_best_cold(args.repeats)

    body = "\n\n".join(
        [
            "## MLflow extras: system metrics, --log-models, registered models (issue 13)",
            "`" + " ".join(["bench/bench_models.py", *(argv or sys.argv[1:])]) + "`",
            header,
            f"Study: digits mlp, {args.n_trials} trials, --no-baseline, {args.rounds} rounds "
            "(fresh process and folder per run; order rotated per round). Target: system metrics "
            "<= 2 % of the study's wall time.",
            markdown_table(["mode", "wall, median (min-max)", "overhead vs plain"], study_rows),
            f"Publishing one model (the report's winners), {args.repeats} calls after a first "
            f"export (which imports torch._dynamo: {first}). Target: <= 10 s per model.",
            markdown_table(
                ["arch", "copy + test accuracy", "log_model (pt2)", "register", "calls"],
                publish_rows,
            ),
            f"`autoall.load_best(name).accuracy()` in a fresh process, imports included: "
            f"{spread(cold, digits=1)} over {len(cold)} runs.",
        ]
    )
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
