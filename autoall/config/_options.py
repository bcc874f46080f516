"""The options of `autoall study run` and `autoall report`, with their defaults declared once.

A leaf module (no torch, no Optuna, no MLflow): the CLI reads its defaults from these
dataclasses, so `autoall --help` says what the library does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from autoall.errors import InvalidValue

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: enum.StrEnum as 3.11 defines it (members are their values, as strings)

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


DEFAULT_STORAGE = (
    "sqlite:///autoall.db"  # the Optuna storage when neither --storage nor $AUTOALL_STORAGE
)
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # MLflow 3's file store is in maintenance mode


class Kind(StrEnum):
    """What a study searches: the ALL study, or its equal-budget tuned baseline.

    Members are strings equal to their values, which are what is stored (a study's user
    attribute `kind`, the MLflow tag `autoall.kind` and param `kind`) and what the registered
    models end in (`<study>-<arch>-all`, `-baseline`); a stored or typed "all" is `Kind.ALL`.
    """

    ALL = "all"  # the ALL study: the base network's lr and weight_decay and the ALL's knobs
    BASELINE = "baseline"  # its tuned baseline: lr and weight_decay only, the same budget


KINDS: tuple[Kind, ...] = tuple(Kind)  # the ALL study first, then its tuned baseline
MAX_REPLICATES = 100  # independent searches per study (`replicates`, --replicates)
# The report's counts (the study file's `report:` keys, the options that override them):
# inclusive ranges; more seeds than 100 only make the memory of one cohort grow
REPORT_COUNTS = {"seeds": (2, 100), "selection_seeds": (1, 100), "top_k": (1, 100)}


@dataclass(frozen=True)
class RunOptions:
    """How `autoall study run` runs a study file (autoall/study/_workers.py)."""

    storage: str
    n_trials: int  # target per architecture: COMPLETE + PRUNED across workers and restarts
    n_jobs: int = 1
    device: str | None = None  # None: cuda, then mps, then cpu
    tracking_uri: str | None = None
    tracking: bool = True
    gpus: int = 0  # > 0 with several workers: worker i sees only GPU i % gpus
    checkpoint_dir: str = ".autoall/checkpoints"  # mid-trial checkpoints; shared across hosts
    checkpoint_every: float = 30.0  # seconds between a trial's checkpoints (0: every epoch)
    kinds: tuple[str, ...] = KINDS  # the ALL studies, their equal-budget tuned baselines, or both
    system_metrics: bool = False  # MLflow's system metrics in every trial's run
    log_models: bool = False  # a trial's model into its run when it becomes its study's best
    cohort: int = (
        1  # trials a worker asks at once and trains together (autoall/study/_cohort_trials.py)
    )


@dataclass(frozen=True)
class ReportOptions:
    """How `autoall report` evaluates a study file (autoall/report/_report.py)."""

    # None: the study file's `report:` keys (seeds, selection_seeds, top_k; 3 each by default)
    seeds: int | None = None  # K: evaluation runs per variant and replicate (unit: the replicate)
    selection_seeds: int | None = None  # seeds each top-k trial is re-evaluated on (validation)
    top_k: int | None = None
    fractions: tuple[float, ...] = (0.1, 0.3)  # of the train split, for generalisation
    target_acc: float | None = None  # None: TARGET_FRACTION of the weaker winner (validation)
    out: Path | None = None  # None: reports/<name>
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else DEFAULT_TRACKING_URI
    device: str | None = None  # None: cuda, then mps, then cpu
    run_baseline: bool = True  # run missing tuned-baseline trials (equal budget) first
    alpha: float = 0.05
    cohorts: bool = (
        True  # a variant's missing seeds train together (autoall/training/cohort/_cohort.py)
    )
    # None: the study file's (`replicates`, `report.margin`, `report.tuning_trials`)
    replicates: int | None = None  # independent searches per study the report reads
    margin: float | None = None  # equivalence margin, accuracy percentage points
    tuning_trials: int | None = None  # re-tuning trials per control and reduced-data arm

    def resolved(self, file: Any) -> ReportOptions:
        """These options with the study file's `report:` section (`file`, a ReportConfig) filled
        in wherever an option is None: the command line wins over the file."""
        given = {k: getattr(self, k) for k in REPORT_COUNTS}
        return replace(self, **{k: getattr(file, k) if v is None else v for k, v in given.items()})

    def count(self, key: str) -> int:
        """`seeds`, `selection_seeds` or `top_k` of options `resolved` against a study file."""
        value = getattr(self, key)
        if value is None:
            raise InvalidValue(f"ReportOptions.{key} is unset: resolve the options first.")
        return int(value)
