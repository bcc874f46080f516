"""The measured process of bench/bench_study.py: one study run, timed by autoall's own spans.
Its figures and the command that gives them open bench/bench_study.py.

Each run of the benchmark is a fresh ``python bench/_study_child.py`` process in a fresh
temporary directory; it writes its figures as JSON for the benchmark to read:

    _study_child.py autoall OUT PROFILE|- THREADS|- -- <autoall study run arguments>
    _study_child.py hand OUT THREADS|- N_TRIALS

``autoall``: `autoall study run ...` exactly as the CLI runs it, with a recorder of
autoall/_timing.py installed around the CLI's ``main`` (no function of autoall or Optuna is
replaced); ``hand``: the same study written by hand with Optuna and autoall's ``train()``, the
reference. The JSON holds the process start, the end of the imports, the end of ``main``, the
process's CPU seconds, every span summed (``{name: [seconds, calls]}``), the compute (the sum of
the ``epoch_seconds`` of every epoch) and the trials from the Optuna storage.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def autoall_child(
    out_path: Path, profile_path: Path | None, threads: int | None, cli_args: list[str]
) -> int:
    """One study run: a span recorder installed, then `autoall study run ...` as the CLI does it."""
    code_start = time.time()
    import contextlib

    import autoall.cli._main  # click only; `study run` loads torch, optuna, ... itself
    from autoall import _timing as timing
    from autoall.tracking._writer import prestarted

    # as `study run` does first thing: the MLflow writer process starts before torch loads
    writer = prestarted() if "--no-tracking" not in cli_args else contextlib.nullcontext()
    writer.__enter__()

    # what `study run` imports (torch, optuna, the worker loop), loaded before `main` so that
    # "after start-up" (`main` alone) leaves the imports out
    import autoall.study._objective
    import autoall.study._workers  # noqa: F401

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    imported = time.time()
    profiler = None
    if profile_path is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with timing.recording() as spans:
        try:
            autoall.cli._main.main(["study", "run", *cli_args], standalone_mode=False)
            exit_code = 0
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else 1
    main_end = time.time()
    writer.__exit__(None, None, None)
    cpu_seconds = time.process_time()  # every thread of this process, since it started
    if profiler is not None and profile_path is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    _write_report(
        out_path,
        exit_code=exit_code,
        times=(code_start, imported, main_end, cpu_seconds),
        spans=spans,
    )
    return exit_code


def _write_report(
    out_path: Path,
    *,
    exit_code: int,
    times: tuple[float, float, float, float],
    spans: dict[str, list[float]],
) -> None:
    """One run's figures as JSON: (process start, imports done, `main` end, CPU seconds),
    summed spans, compute (sum of epoch_seconds) and the trials from the storage."""
    code_start, imported, main_end, cpu_seconds = times
    compute = spans.get("epoch.compute", [])
    report = {
        "exit_code": exit_code,
        "code_start": code_start,
        "imported": imported,
        "main_end": main_end,
        "cpu_seconds": cpu_seconds,
        "timers": {k: [sum(v), len(v)] for k, v in spans.items()},
        "compute_seconds": sum(compute),
        "epochs": len(compute),
        "trials": _trials(),
    }
    out_path.write_text(json.dumps(report))


def hand_child(out_path: Path, threads: int | None, n_trials: int) -> int:
    """The reference: the same study written by hand with Optuna and autoall's `train()`.

    What an Optuna user writes without autoall, from studies/digits.yaml: its search space, data
    split, sampler, pruner and training settings, a plain SQLite storage, an objective that
    reports every epoch; no heartbeat, checkpoints, tracking, progress display or target across
    restarts.
    """
    code_start = time.time()
    import optuna
    import torch

    from autoall.config._study_file import load_study_file
    from autoall.config._trial_plan import trial_plan
    from autoall.training._data import load_data
    from autoall.training._loop import train
    from autoall.training._plan import build

    if threads is not None:
        torch.set_num_threads(threads)
    imported = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_file(Path(__file__).resolve().parent.parent / "studies" / "digits.yaml")
    if (cfg.sampler.name, cfg.pruner.name) != ("tpe", "median"):
        raise SystemExit(f"the reference writes TPE + median by hand, but the file has {cfg.sampler.name} + {cfg.pruner.name}.")  # fmt: skip
    data = load_data(cfg.data.name, val_fraction=cfg.data.val_fraction,
                     split_seed=cfg.data.split_seed)  # fmt: skip
    data = replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])  # as the workers do
    train_seconds: list[float] = []
    compute: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, Any] = {}
        for name, spec in cfg.search.items():
            if spec.type == "categorical":
                params[name] = trial.suggest_categorical(name, list(spec.choices))
            else:
                assert spec.low is not None and spec.high is not None
                low, high = float(spec.low), float(spec.high)
                if spec.type == "int":
                    params[name] = trial.suggest_int(name, int(low), int(high), log=spec.log)
                else:
                    params[name] = trial.suggest_float(name, low, high, log=spec.log)
        plan = trial_plan(cfg, "mlp", "all", params)
        model, trial_data = build(plan, data)

        def on_epoch(stats: Any) -> None:
            compute.append(stats.epoch_seconds)
            trial.report(stats.val_acc, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        start = time.perf_counter()
        try:
            result = train(model, trial_data, plan.train, on_epoch=on_epoch)
        finally:
            train_seconds.append(time.perf_counter() - start)
        return result.final_val_acc

    study = optuna.create_study(
        study_name="digits/mlp",
        storage="sqlite:///autoall.db",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=cfg.sampler.seed,
            n_startup_trials=cfg.sampler.n_startup_trials,
            multivariate=True,
            constant_liar=True,
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner.n_startup_trials,
            n_warmup_steps=cfg.pruner.n_warmup_steps,
        ),
    )
    study.optimize(objective, n_trials=n_trials)
    main_end = time.time()
    _write_report(
        out_path,
        exit_code=0,
        times=(code_start, imported, main_end, time.process_time()),
        spans={"trial.train": train_seconds, "epoch.compute": compute},
    )
    return 0


def _trials() -> list[dict[str, Any]]:
    import optuna

    study = optuna.load_study(study_name="digits/mlp", storage="sqlite:///autoall.db")
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value if t.values else None,
            "train_seconds": t.user_attrs.get("train_seconds"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
        }
        for t in study.get_trials(deepcopy=False)
    ]


def main(argv: list[str]) -> int:
    kind, out, *rest = argv
    if kind == "hand":
        threads, n_trials = rest
        return hand_child(Path(out), None if threads == "-" else int(threads), int(n_trials))
    if kind == "autoall":
        profile, threads, sep, *cli_args = rest
        assert sep == "--", argv
        return autoall_child(
            Path(out),
            None if profile == "-" else Path(profile),
            None if threads == "-" else int(threads),
            cli_args,
        )
    raise SystemExit(f"expected `autoall` or `hand` as the first argument, but got {kind!r}.")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
