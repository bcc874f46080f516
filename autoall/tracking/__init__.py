"""MLflow: the tracker (a study's parent run, one nested run per trial, batched and retried
calls, lost logging recorded, never fatal), the writer process that keeps MLflow out of a
worker's way, the roles a study talks to (`StudyTracker`, `TrackedRun`), learning curves, and
the model registry (logging, registering and loading the published models, pt2 only).
"""

from __future__ import annotations

from autoall.tracking._model_registry import (
    BestModel,
    LoggedModel,
    accuracy,
    load_best,
    log_model,
    logged_model_name,
    register,
    registered_name,
    registered_suffix,
    serving_copy,
    version_tags,
)
from autoall.tracking._roles import StudyTracker, TrackedRun
from autoall.tracking._run import MlflowTrialRun, NullTracker, final_metrics
from autoall.tracking._store import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_LENGTH,
    STUDY_PARENTS,
    RetryingCalls,
    client_uri,
    flatten,
    log_params,
    masked,
    metric_batch,
    no_artifact_progress_bars,
    quiet_mlflow,
    resolve_tracking_uri,
    studies_link,
    tracking_sqlite_file,
)
from autoall.tracking._tracker import Tracker, TrackingError, check_server
from autoall.tracking._writer import TrackingWriter, check_artifact_location, prestarted

__all__ = [
    "BestModel",
    "LoggedModel",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_TAG_LENGTH",
    "NullTracker",
    "RetryingCalls",
    "STUDY_PARENTS",
    "StudyTracker",
    "TrackedRun",
    "Tracker",
    "TrackingError",
    "TrackingWriter",
    "MlflowTrialRun",
    "accuracy",
    "check_artifact_location",
    "check_server",
    "client_uri",
    "final_metrics",
    "flatten",
    "load_best",
    "log_model",
    "log_params",
    "logged_model_name",
    "masked",
    "metric_batch",
    "no_artifact_progress_bars",
    "prestarted",
    "quiet_mlflow",
    "register",
    "registered_name",
    "registered_suffix",
    "resolve_tracking_uri",
    "serving_copy",
    "studies_link",
    "tracking_sqlite_file",
    "version_tags",
]
