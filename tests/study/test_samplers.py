"""Independent workers never run the same parameters: a sampler stream per (seed, replicate,
trial number) (autoall/study/_samplers.py), reproducible for one worker; and each trial records whether
the sampler drew it at random or from its model (`sampler_phase`)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from _helpers import at_once
from click.testing import CliRunner
from conftest import write_study

from autoall.cli._main import main
from autoall.config._study_file import load_study_file
from autoall.study._samplers import PerTrialSeed, reseed, stream_seed
from autoall.study._trials import make_sampler, sampler_phase, suggest


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
    sampler = make_sampler(cfg, replicate=2)
    assert isinstance(sampler, PerTrialSeed) and sampler.seed == cfg.sampler.seed
    assert sampler.replicate == 2
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


def _draws(cfg: Any, *, seed: int, replicate: int, n: int = 30) -> list[tuple[Any, ...]]:
    """`n` trials of the ALL study's space (7 knobs), each told before the next is asked."""
    cfg = replace(cfg, sampler=replace(cfg.sampler, seed=seed))
    sampler = make_sampler(cfg, replicate=replicate)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    drawn = []
    for _ in range(n):
        trial = study.ask()
        drawn.append(_rounded(suggest(trial, cfg.space("mlp", "all"))))
        study.tell(trial, 0.5)
    return drawn


def test_seeds_and_replicates_draw_from_streams_that_share_nothing(workdir: Path) -> None:
    """seed + trial number made seed 1's trial k draw what seed 0's trial k + 1 drew, and
    replicates of one seed drew the same; a hash of (seed, replicate, number) shares nothing."""
    cfg = load_study_file(write_study(workdir / "s.yaml", sampler={"name": "random"}))
    base = _draws(cfg, seed=0, replicate=0)
    next_seed = _draws(cfg, seed=1, replicate=0)
    next_replicate = _draws(cfg, seed=0, replicate=1)
    assert all(next_seed[k - 1] != base[k] for k in range(1, 30))
    assert len(set(base + next_seed + next_replicate)) == 90
    assert _draws(cfg, seed=0, replicate=1) == next_replicate  # a rerun redraws the same
    assert len({stream_seed(s, r, k) for s in range(3) for r in range(3) for k in range(50)}) == 450


def _phases(sampler_name: str, workdir: Path) -> tuple[list[str], list[int]]:
    """Trials asked and told in an order that leaves one RUNNING and one PRUNED while the
    sampler decides: the recorded phases, and the trials the sampler's model drew (its
    relative sample not empty)."""
    cfg = load_study_file(
        write_study(workdir / "s.yaml", sampler={"name": sampler_name, "n_startup_trials": 3})
    )
    sampler = make_sampler(cfg)
    inner = sampler.sampler  # type: ignore[attr-defined]
    modelled: list[int] = []
    model = inner.sample_relative

    def recording(study: Any, trial: Any, space: Any) -> Any:
        drawn = model(study, trial, space)
        if drawn:
            modelled.append(trial.number)
        return drawn

    inner.sample_relative = recording
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = {k: v for k, v in cfg.space("mlp", "all").items() if v.type == "float"}

    def ask() -> optuna.Trial:
        trial = study.ask()
        suggest(trial, space)
        return trial

    first = ask()
    study.tell(first, 0.5)  # 1 complete
    running = ask()  # stays RUNNING while the next ones are drawn
    pruned = ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    later = ask()  # drawn with 1 complete, 1 pruned, 1 running
    study.tell(running, 0.7)
    study.tell(later, state=optuna.trial.TrialState.PRUNED)
    for _ in range(2):  # drawn with 2 complete and 2 pruned, then 3 complete and 2 pruned
        study.tell(ask(), 0.8)
    phases = [sampler_phase(t) for t in study.get_trials(deepcopy=False)]
    assert [t.user_attrs["sampler_phase"] for t in study.trials] == phases
    return phases, modelled


def test_the_recorded_phase_is_what_tpe_counts_before_it_models(workdir: Path) -> None:
    """TPE counts COMPLETE and PRUNED trials, not RUNNING ones (constant liar or not)."""
    phases, modelled = _phases("tpe", workdir)
    assert phases == ["startup", "startup", "startup", "startup", "guided", "guided"]
    assert modelled == [4, 5]  # TPE's model drew exactly the guided trials


def test_the_recorded_phase_is_what_gp_counts_before_it_models(workdir: Path) -> None:
    """GP counts COMPLETE trials only: with 2 of them (and 2 pruned) trial 4 is still random."""
    phases, modelled = _phases("gp", workdir)
    assert phases == ["startup", "startup", "startup", "startup", "startup", "guided"]
    assert modelled == [5]


def test_random_samplers_always_start_up_and_old_trials_fall_back_to_their_number(
    workdir: Path,
) -> None:
    phases, _ = _phases("random", workdir)
    assert set(phases) == {"startup"}
    cfg = load_study_file(write_study(workdir / "s.yaml"))  # tpe, 3 start-up trials
    old = [optuna.trial.create_trial(value=0.5, params={}, distributions={}) for _ in range(5)]
    for number, trial in enumerate(old):
        trial.number = number
    assert [sampler_phase(t, cfg.sampler) for t in old] == ["startup"] * 3 + ["guided"] * 2
    random = replace(cfg.sampler, name="random")
    assert {sampler_phase(t, random) for t in old} == {"startup"}
