"""One random stream per trial, so that independent workers never draw the same parameters.

Optuna seeds a sampler once, when it is made. Workers started together (one `srun`, one
Kubernetes Job, an ssh loop) make their samplers from the same study file at the same moment,
so any seed they derive from what they can see (the trials stored so far, the clock) is the same
in each: two `study run` processes started at once ran 3 identical pairs in 8 trials.

`PerTrialSeed` wraps the study file's sampler and, before every trial, reseeds it with
`seed + trial.number` (modulo 2^32). Trial numbers are unique in a study, whichever worker or host
runs the trial, so no two trials share a random stream; and a study run by one worker draws the
same parameters as before on every rerun (reproducible). Everything else is the wrapped sampler's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

# Optuna offers only `reseed_rng()` (fresh entropy from the OS), not a seed. The random states
# its samplers draw from are these private attributes (Optuna 4 and 5): `_rng` (TPE, random,
# GP, grid, NSGA-II), `_cma_rng` (CMA-ES), and the random sampler each keeps for start-up and
# independent draws. `reseed` is the one place autoall reaches into them; `PerTrialSeed` checks
# at construction that the wrapped sampler has at least one, so an Optuna that renames them
# fails loudly instead of silently sharing streams.
_STATES = ("_rng", "_cma_rng")
_INNER = ("_random_sampler", "_independent_sampler")


def reseed(sampler: BaseSampler, seed: int) -> int:
    """Seed every random state of `sampler` (and of its inner samplers) with `seed`; returns
    how many were seeded."""
    seeded = 0
    for name in _STATES:
        state = getattr(sampler, name, None)
        if isinstance(state, LazyRandomState):
            state.rng.seed(seed % 2**32)
            seeded += 1
    for name in _INNER:
        inner = getattr(sampler, name, None)
        if isinstance(inner, BaseSampler):
            seeded += reseed(inner, seed)
    return seeded


class PerTrialSeed(BaseSampler):
    """`sampler`, reseeded with `seed + trial.number` before each trial (module docstring)."""

    def __init__(self, sampler: BaseSampler, seed: int) -> None:
        if reseed(sampler, seed) == 0:
            raise TypeError(
                f"{type(sampler).__name__} has none of the random states autoall reseeds per "
                f"trial ({', '.join(_STATES)}); this Optuna version is not supported."
            )
        self.sampler = sampler
        self.seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        reseed(self.sampler, self.seed + trial.number)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
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
        return f"PerTrialSeed({self.sampler!r}, seed={self.seed})"


def per_trial(sampler: BaseSampler, seed: int | None) -> optuna.samplers.BaseSampler:
    """`sampler` with a stream per trial; a sampler without a seed (OS entropy) as it is."""
    return sampler if seed is None else PerTrialSeed(sampler, seed)
