"""Optuna: opening the storage (and every use of Optuna's private API), creating the studies and
counting their trials, the sampler and pruner, the objective that turns one trial into one
`fit`, the worker loop, worker processes and their share of the host, preflight checks made
before anything is stored or trained, and the status/export summaries.
"""

from __future__ import annotations

from autoall.study._outage import StorageError, storage_reason
from autoall.study._preflight import (
    WORKER_BASE_BYTES,
    Cohort,
    cap_workers,
    check_model_fits,
    check_model_size,
    check_storage_apart,
    check_writable,
    report_cohort,
)
from autoall.study._storage import make_storage
from autoall.study._summary import (
    check_export_file,
    export_text,
    study_summaries,
    trial_records,
    write_export,
)
from autoall.study._trials import count_trials, create_studies, sampler_phase, suggest
from autoall.study._workers import default_n_jobs, run_study

__all__ = [
    "Cohort",
    "StorageError",
    "WORKER_BASE_BYTES",
    "cap_workers",
    "check_export_file",
    "check_model_fits",
    "check_model_size",
    "check_storage_apart",
    "check_writable",
    "count_trials",
    "create_studies",
    "default_n_jobs",
    "export_text",
    "make_storage",
    "report_cohort",
    "run_study",
    "sampler_phase",
    "storage_reason",
    "study_summaries",
    "suggest",
    "trial_records",
    "write_export",
]
