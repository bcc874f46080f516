"""The study file: its schema, validation and defaults (`load_study_file` -> `StudyConfig`),
the bounded YAML reader, the search space (each knob's type and range), the options every
command shares, the study kinds (`Kind`: the ALL study and its tuned baseline), and
`trial_plan`: a suggested point turned into the `RunPlan` that trains it.
"""

from __future__ import annotations

from autoall.config._options import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    KINDS,
    MAX_REPLICATES,
    REPORT_COUNTS,
    Kind,
    ReportOptions,
    RunOptions,
    StrEnum,
)
from autoall.config._space import ParamSpec
from autoall.config._study_file import (
    BASELINE_KNOBS,
    BASELINE_SUFFIX,
    SamplerConfig,
    StudyConfig,
    StudyFileError,
    check_name,
    load_study_file,
)
from autoall.config._trial_plan import trial_plan

__all__ = [
    "BASELINE_KNOBS",
    "BASELINE_SUFFIX",
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING_URI",
    "KINDS",
    "Kind",
    "MAX_REPLICATES",
    "ParamSpec",
    "REPORT_COUNTS",
    "ReportOptions",
    "RunOptions",
    "SamplerConfig",
    "StudyConfig",
    "StrEnum",
    "StudyFileError",
    "check_name",
    "load_study_file",
    "trial_plan",
]
