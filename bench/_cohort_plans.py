"""Trial plans for the cohort benchmarks (bench_cohort.py, gpu_cohort.py): knobs drawn from a study
file's search space, and one variant on several seeds. Imports no Optuna (the GPU machine may
lack it)."""

from __future__ import annotations

import math
import random

from autoall.config._study_file import StudyConfig
from autoall.config._trial_plan import trial_plan
from autoall.training._plan import RunPlan


def draw_plans(
    cfg: StudyConfig, k: int, *, seed: int, arch: str = "mlp", device: str = "cpu"
) -> list[RunPlan]:
    """K ALL trial plans of `arch` with knobs drawn uniformly (log scale where the file says
    so) from the study file's search space, as a random sampler would."""
    rng = random.Random(seed)
    plans = []
    for _ in range(k):
        params: dict[str, object] = {}
        for name, spec in cfg.search.items():
            if spec.type == "categorical":
                params[name] = rng.choice(list(spec.choices))
                continue
            assert spec.low is not None and spec.high is not None
            low, high = float(spec.low), float(spec.high)
            if spec.log:
                value = 10 ** rng.uniform(math.log10(low), math.log10(high))
            else:
                value = rng.uniform(low, high)
            params[name] = round(value) if spec.type == "int" else value
        plans.append(trial_plan(cfg, arch, "all", params, device=device))
    return plans


def seed_plans(cfg: StudyConfig, k: int) -> list[RunPlan]:
    """One ALL variant (fixed knobs) on K seeds, as the report trains a variant."""
    params = {"hidden_size": 64, "all_lr": 3e-3, "aux_weight": 0.01,
              "aux_loss": "reconstruction", "positions": "head"}  # fmt: skip
    plan = trial_plan(cfg, "mlp", "all", params, device="cpu")
    return [plan.with_seed(1000 + i) for i in range(k)]
