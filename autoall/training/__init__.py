"""Training, blind to Optuna and MLflow: the data splits on the device, the four base
architectures, the hand-set baseline recipes, a run's plan (architecture, ALL, settings, seed)
and `fit`, the one loop `train()` with its checkpoint file, and `cohort/`, which trains K
same-shape plans as one batched model.

Everything above this package (config, tracking, study, report, cli) trains through `fit` or
`fit_cohort`; nothing here imports them.
"""

from __future__ import annotations

from autoall.training._baselines import baseline, recipe_text
from autoall.training._checkpoint_file import remove as remove_checkpoint
from autoall.training._checkpoint_file import sweep_temp_files
from autoall.training._data import (
    DATASETS,
    DeviceData,
    cache_dir,
    load_data,
    train_subset,
    without_test,
)
from autoall.training._loop import (
    gpu_count,
    resolve_device,
    seed_everything,
    steps_per_epoch,
    train,
)
from autoall.training._models import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    parameter_matched_width,
)
from autoall.training._plan import RunPlan, fit
from autoall.training._types import (
    EpochStats,
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    TrainingOOMError,
)
from autoall.training.cohort import Outcome, cohort_blocker, fit_cohort, group_plans

__all__ = [
    "remove_checkpoint",
    "sweep_temp_files",
    "ARCHITECTURES",
    "DATASETS",
    "DeviceData",
    "EpochStats",
    "NonFiniteLossError",
    "Outcome",
    "RunPlan",
    "RunResult",
    "TrainConfig",
    "TrainingOOMError",
    "baseline",
    "build_model",
    "cache_dir",
    "cohort_blocker",
    "count_parameters",
    "fit",
    "fit_cohort",
    "group_plans",
    "load_data",
    "parameter_matched_width",
    "recipe_text",
    "resolve_device",
    "seed_everything",
    "steps_per_epoch",
    "train",
    "train_subset",
    "without_test",
    "gpu_count",
]
