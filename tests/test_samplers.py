"""Independent workers never run the same parameters: a sampler stream per trial number
(autoall/samplers.py), reproducible for one worker."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from _helpers import at_once
from click.testing import CliRunner
from conftest import write_study

from autoall.cli import main
from autoall.config import load_study_file
from autoall.samplers import PerTrialSeed, reseed
from autoall.study import make_sampler, suggest


def _rounded(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        (k, float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in sorted(params.items())
    )


_GRID = {  # every knob of both studies as choices, as the grid sampler needs
    "search": {
        "hidden_size": {"type": "categorical", "choices": [8, 16, 32]},
        "all_lr": {"type": "categorical", "choices": [0.001, 0.003, 0.01, 0.03]},
        "aux_weight": 0.1,
        "aux_loss": "none",
        "positions": "head",
    },
    "baseline_search": {"lr": 0.001, "weight_decay": 0.0},
}


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "nsgaii", "grid"])
def test_every_sampler_is_reseeded_per_trial(workdir: Path, name: str) -> None:
    grid = _GRID if name == "grid" else {}
    cfg = load_study_file(write_study(workdir / "s.yaml", sampler={"name": name}, **grid))
    sampler = make_sampler(cfg)
    assert isinstance(sampler, PerTrialSeed) and sampler.seed == cfg.sampler.seed
    assert reseed(sampler.sampler, 1) >= 1  # Optuna still has the random states we seed


def _ask_in_turns(cfg: Any, storage: str, workers: int, rounds: int) -> list[tuple[Any, ...]]:
    """`workers` samplers made from the same file, as workers started together make them;
    each asks for a trial before any is told, in turns."""
    studies = [
        optuna.load_study(study_name="t/mlp", storage=storage, sampler=make_sampler(cfg))
        for _ in range(workers)
    ]
    drawn = []
    for _ in range(rounds):
        asked = [(s, s.ask()) for s in studies]
        for study, trial in asked:
            drawn.append(_rounded(suggest(trial, cfg.search)))
            study.tell(trial, 0.5 + 0.01 * trial.number)
    return drawn


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_workers_started_together_draw_different_parameters(workdir: Path, sampler: str) -> None:
    cfg = load_study_file(write_study(workdir / "s.yaml", sampler={"name": sampler, "seed": 0}))
    storage = f"sqlite:///{workdir / 'a.db'}"
    optuna.create_study(study_name="t/mlp", storage=storage, direction="maximize")
    drawn = _ask_in_turns(cfg, storage, workers=4, rounds=3)  # past TPE's 3 start-up trials
    assert len(set(drawn)) == len(drawn) == 12

    # one worker is reproducible: the same file gives the same draws in a new storage
    again = f"sqlite:///{workdir / 'b.db'}"
    optuna.create_study(study_name="t/mlp", storage=again, direction="maximize")
    assert _ask_in_turns(cfg, again, workers=4, rounds=3) == drawn


def test_grid_workers_and_later_restarts_take_different_points(workdir: Path) -> None:
    """The grid's order is shuffled with the study's seed alone, the same in every worker and
    every restart (it was shuffled with an offset that grew with the trials stored)."""
    cfg = load_study_file(
        write_study(workdir / "s.yaml", sampler={"name": "grid", "seed": 3}, **_GRID)
    )
    storage = f"sqlite:///{workdir / 'g.db'}"
    optuna.create_study(study_name="t/mlp", storage=storage, direction="maximize")
    first = _ask_in_turns(cfg, storage, workers=2, rounds=2)
    restarted = _ask_in_turns(cfg, storage, workers=2, rounds=2)  # new workers, 4 trials stored
    assert len(set(first + restarted)) == 8  # of the 12 grid points, none twice


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_study_runs_started_at_once_never_repeat_a_configuration(workdir: Path, n: int) -> None:
    path = write_study(workdir / "s.yaml", n_trials=8, train={"epochs": 2})
    go = workdir / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["study", "run", str(path), "--no-tracking", "--checkpoint-every", "0"]
    # the schema and the studies first, as a cluster's job script does (README): the workers
    # then race for trials only, not for the schema (test_distributed covers that race)
    created = CliRunner().invoke(main, ["study", "create", str(path)])
    assert created.exit_code == 0, created.output
    procs = [
        subprocess.Popen(
            [*at_once(go, i), *command],  # the processes reach the study within milliseconds
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    try:
        while not all(Path(f"{go}.{i}").exists() for i in range(n)):
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * n, outputs
    sharing = []  # workers that ran trials of each study
    for name in ("t/mlp", "t/mlp/tuned-baseline"):
        trials = optuna.load_study(study_name=name, storage="sqlite:///autoall.db").trials
        finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
        assert len(finished) == 8, (name, [t.state.name for t in trials])  # exactly the target
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        configurations = [_rounded(t.params) for t in finished]
        assert len(set(configurations)) == len(configurations), (name, configurations)
        sharing.append(len({t.user_attrs["worker_pid"] for t in finished}))
    # the work was shared: in both studies, unless on a busy machine one worker started so late
    # that the other had finished the first study alone (then they share the second)
    assert max(sharing) >= 2, sharing
