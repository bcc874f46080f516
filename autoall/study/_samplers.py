"""One random stream per trial, so that independent workers never draw the same parameters and
independent replicates of a study share nothing; and what drew each trial, chance or the model.

Optuna seeds a sampler once, when it is made. Workers started together (one `srun`, one
Kubernetes Job, an ssh loop) make their samplers from the same study file at the same moment,
so any seed they derive from what they can see (the trials stored so far, the clock) is the same
in each: two `study run` processes started at once ran 3 identical pairs in 8 trials.

`PerTrialSeed` wraps the study file's sampler and, before every trial, reseeds it with
`stream_seed(seed, replicate, trial.number)`: NumPy's `SeedSequence` of the three, which hashes
them into unrelated streams. Trial numbers are unique in a study, whichever worker or host runs
the trial, so no two trials share a stream; the replicates of a study share none either (the
former `seed + trial.number` gave seed 1's trial k the stream of seed 0's trial k+1); and a study
run by one worker draws the same parameters on every rerun (reproducible).

Each trial the sampler draws records the user attribute `sampler_phase`: "startup" when the
sampler drew it at random because too few trials had finished (`phase`: what the wrapped sampler
itself counts), always for the random and grid samplers; "guided" when its model drew it. The
report weighs what the search found against what chance alone found with it. Everything else
is the wrapped sampler's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    GridSampler,
    NSGAIISampler,
    RandomSampler,
    TPESampler,
)
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autoall.config import ParamSpec, SamplerConfig
from autoall.study._storage import _STATES, finished_trials, reseed, set_user_attr

# A sampler of the study file's `sampler:` section, from that section and the searched knobs
# (called only by the grid sampler, whose grid they are).
SamplerFactory = Callable[[SamplerConfig, Callable[[], Mapping[str, ParamSpec]]], BaseSampler]


def _grid(s: SamplerConfig, space: Callable[[], Mapping[str, ParamSpec]]) -> BaseSampler:
    """Every choice of every knob; the grid's order is shuffled once with the seed: the same
    in every worker."""
    grid = {name: list(spec.choices) for name, spec in space().items()}
    return GridSampler(grid, seed=s.seed)


# The sampler each name of the study file's `sampler.name` (config's SAMPLERS) makes; each
# wrapped by `PerTrialSeed`. TPE: multivariate, with the constant liar (several workers).
SAMPLER_FACTORIES: dict[str, SamplerFactory] = {
    "tpe": lambda s, _: TPESampler(
        seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True, constant_liar=True
    ),
    "random": lambda s, _: RandomSampler(seed=s.seed),
    "cmaes": lambda s, _: CmaEsSampler(seed=s.seed, n_startup_trials=s.n_startup_trials),
    "gp": lambda s, _: GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials),
    "grid": _grid,
    "nsgaii": lambda s, _: NSGAIISampler(seed=s.seed),
}

STARTUP, GUIDED = "startup", "guided"
PHASE_ATTR = "sampler_phase"  # the trial's user attribute: STARTUP or GUIDED


def stream_seed(seed: int, replicate: int, number: int) -> int:
    """The seed of trial `number`'s stream in replicate `replicate` of a study seeded `seed`
    (32 bits): unrelated to every other (seed, replicate, number)."""
    return int(np.random.SeedSequence([seed, replicate, number]).generate_state(1)[0])


def phase(sampler: BaseSampler, study: Study, trial: FrozenTrial, n_startup_trials: int) -> str:
    """Whether `sampler` draws `trial` at random (STARTUP) or from its model (GUIDED), counted
    as Optuna 5 counts before it decides: TPE, the COMPLETE and PRUNED trials (RUNNING ones are
    not counted, constant liar or not; the same cached snapshot it reads); GP and CMA-ES, the
    COMPLETE ones; NSGA-II, whether the trial is of the first, random generation. The random
    and grid samplers are always STARTUP: they never model the space."""
    if isinstance(sampler, RandomSampler | GridSampler):
        return STARTUP
    if isinstance(sampler, NSGAIISampler):
        return STARTUP if sampler.get_trial_generation(study, trial) == 0 else GUIDED
    if isinstance(sampler, TPESampler):
        states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
    else:  # GPSampler, CmaEsSampler (consider_pruned_trials off, as make_sampler makes it)
        states = (TrialState.COMPLETE,)
    finished = finished_trials(study, states)
    return STARTUP if len(finished) < n_startup_trials else GUIDED


class PerTrialSeed(BaseSampler):
    """`sampler`, reseeded with `stream_seed(seed, replicate, trial.number)` before each trial
    (no reseeding with seed None: the OS's entropy), recording each trial's `sampler_phase`
    (module docstring)."""

    def __init__(
        self,
        sampler: BaseSampler,
        seed: int | None,
        *,
        replicate: int = 0,
        n_startup_trials: int = 0,
    ) -> None:
        if seed is not None and reseed(sampler, seed) == 0:
            raise TypeError(
                f"{type(sampler).__name__} has none of the random states autoall reseeds per "
                f"trial ({', '.join(_STATES)}); this Optuna version is not supported."
            )
        self.sampler = sampler
        self.seed = seed
        self.replicate = replicate
        self.n_startup_trials = n_startup_trials

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if self.seed is not None:
            reseed(self.sampler, stream_seed(self.seed, self.replicate, trial.number))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Optuna calls this once per trial, at its first parameter that is neither fixed (an
        enqueued or retried trial's) nor single-valued, before any independent draw: when the
        sampler decides. A retried trial keeps the phase it inherited."""
        if PHASE_ATTR not in trial.user_attrs:
            drawn = phase(self.sampler, study, trial, self.n_startup_trials)
            set_user_attr(study, trial, PHASE_ATTR, drawn)
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()

    def __repr__(self) -> str:
        return f"PerTrialSeed({self.sampler!r}, seed={self.seed}, replicate={self.replicate})"
