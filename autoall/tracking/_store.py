"""The MLflow tracking store and the calls made to it: where the store is (URI, SQLite file,
its start-up lock and write-ahead log), how MLflow logs (`quiet_mlflow`: no INFO lines, no
artifact progress bars), and how a call is made (`RetryingCalls`: retried on transient errors, a
failure kept in `lost`), with the masking and the batch limits MLflow imposes on params, tags
and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from autoall._secrets import mask_secrets, sqlite_file, storage_url
from autoall.config import DEFAULT_TRACKING_URI
from autoall.errors import one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient

_MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
MAX_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
MAX_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH

log = logging.getLogger("autoall.tracking")
T = TypeVar("T")


def quiet_mlflow() -> None:
    """MLflow and alembic log at WARNING and above: their INFO lines ("Creating initial MLflow
    database tables...", "Context impl SQLiteImpl.") would land among the progress lines.

    Sets `MLFLOW_LOGGING_LEVEL` (unless the user did), which MLflow reads when it is imported
    and child processes (the tracking writer, `mlflow ui`) inherit, and the loggers themselves
    in case MLflow is imported already.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    level = logging.getLevelName(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    level = level if isinstance(level, int) else logging.WARNING
    logging.getLogger("mlflow").setLevel(level)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))  # as MLflow sets it
    no_artifact_progress_bars()


def no_artifact_progress_bars() -> None:
    """MLflow draws no "Downloading artifacts" progress bar (tqdm, one per download: a report
    rerun reads every run's predictions back): `MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR` is false
    unless the user set it. MLflow reads it at each download; setting it imports nothing."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_tracking_uri(uri: str | None = None, *, create: bool = True) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else `DEFAULT_TRACKING_URI`; a plain `postgresql://`
    backend gets the installed driver (`autoall._secrets.storage_url`).

    With `create`, makes the folder of a SQLite file (./mlruns/ for the default).
    """
    resolved = storage_url(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    db_path = sqlite_file(resolved)
    if db_path is not None and create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    return resolved


def tracking_sqlite_file(uri: str | None = None) -> Path | None:
    """The SQLite file of the tracking store `uri` resolves to (None: not SQLite)."""
    return sqlite_file(resolve_tracking_uri(uri, create=False))


class RetryingCalls:
    """Retrying client calls; failures after the retries are appended to `lost`."""

    retries: int
    retry_wait: float
    lost: list[str]

    def _retrying(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == self.retries or not _is_transient(exc):
                    raise
                log.info("MLflow call failed (%s); retry %d", one_line(exc), attempt + 1)
                time.sleep(self.retry_wait * 2**attempt)
        raise AssertionError("unreachable")

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return self._retrying(fn, *args, **kwargs)
        except Exception as exc:
            message = f"MLflow: {what} failed: {one_line(exc)}"
            log.warning(message)
            self.lost.append(message)
            return None


def _is_transient(exc: BaseException) -> bool:
    """5xx/429, connection or timeout errors, a locked SQLite database: worth another try."""
    import requests
    from mlflow.exceptions import MlflowException

    if "database is locked" in str(exc):
        return True
    if "disk is full" in str(exc) or "No space left on device" in str(exc):
        return False  # waiting frees no space (MLflow calls it TEMPORARILY_UNAVAILABLE)
    if isinstance(exc, MlflowException):  # its connection errors come as INTERNAL_ERROR (500)
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError
    )


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[bool]:
    """An exclusive lock on `<db>.lock` (POSIX) while a process creates or checks the tables or
    a parent run; yields whether it holds one (not for servers, not on Windows)."""
    path = sqlite_file(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        path = None
    if path is None:
        yield False
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield True


def _write_ahead_log(uri: str) -> None:
    """Switch a SQLite store to SQLite's write-ahead log (kept in the file): a commit is one
    append (~1-2 ms instead of ~5), and the MLflow UI reading it never blocks a writer."""
    path = sqlite_file(uri)
    if path is None:
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def client_uri(uri: str) -> str:
    """Absolute SQLite paths, query string kept: a relative one would follow later chdirs, and
    MLflow keeps one store per URI in a process."""
    path = sqlite_file(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{path.resolve()}" + (f"?{query}" if query else "")


def _now_ms() -> int:
    return int(time.time() * 1000)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def masked(values: Mapping[str, Any], limit: int) -> dict[str, str]:
    return {k: mask_secrets(str(v))[:limit] for k, v in values.items()}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """`params` flattened and masked, in batches of MLflow's most per call: none is dropped."""
    from mlflow.entities import Param

    items = list(masked(flatten(params), _MAX_PARAM_LENGTH).items())
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):  # one call unless > 100 params
        batch = [Param(k, v) for k, v in items[i : i + MAX_PARAMS_PER_BATCH]]
        client.log_batch(run_id, params=batch, synchronous=True)


def metric_batch(values: Mapping[str, float], *, step: int) -> list[Any]:
    from mlflow.entities import Metric

    timestamp = _now_ms()
    return [Metric(k, float(v), timestamp, step) for k, v in values.items()]


STUDY_PARENTS = "tags.\"autoall.role\" = 'study'"  # the runs filter of the study parents


def studies_link(experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment filtered to its study parent runs, as a URL
    fragment: every study (ALL, tuned baseline, each replicate) on the first screen, however
    many trials are newer than them (the UI reads the filter from `searchFilter`)."""
    query = urllib.parse.urlencode({"searchFilter": STUDY_PARENTS}, quote_via=urllib.parse.quote)
    return f"#/experiments/{experiment_id}/runs?{query}"
