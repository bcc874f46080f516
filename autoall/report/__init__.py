"""The verdict: select each study's winner on validation, re-train it and its controls on fresh
seeds (re-tuning what a control frees), test the article's claims with paired statistics,
write report.md/html/csv and plots, log the report to MLflow and register the models.
"""

from __future__ import annotations

from autoall.report._across import write_summary
from autoall.report._arch import ReportError
from autoall.report._out import check_out, hold_all
from autoall.report._report import check_studies, resolve_study_file, run_report

__all__ = [
    "ReportError",
    "check_out",
    "check_studies",
    "hold_all",
    "resolve_study_file",
    "run_report",
    "write_summary",
]
