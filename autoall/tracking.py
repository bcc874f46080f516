"""MLflow tracking: one experiment per study file, one parent run per (study, architecture),
one nested child run per Optuna trial (DESIGN section 5).

Everything goes through an explicit `mlflow.MlflowClient` (no fluent `mlflow.start_run`
state), so several studies or threads can log at once. Every client call is retried on
transient errors (HTTP 5xx/429, connection errors, SQLite "database is locked"); a call that
still fails is recorded in `lost` and logged as a warning on the "autoall.tracking" logger,
never dropped silently. Only `Tracker.connect` raises (`TrackingError`): a store that is down
fails the study at start, not an hour into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from autoall.errors import UserError
from autoall.options import DEFAULT_TRACKING_URI
from autoall.urls import mask_secrets, storage_url

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from autoall.train import RunResult

TRIAL_STATES: tuple[str, ...] = ("COMPLETE", "PRUNED", "FAIL")
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_HEALTH_TIMEOUT = 5.0  # seconds for GET /health at start
_SETTLE_SECONDS = 0.5  # longer than one create_run takes: lets a concurrent parent show up
_MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_MAX_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
_MAX_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
# MLflow's own HTTP retries default to 7 with backoff 2 (minutes per call); ours wrap them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

log = logging.getLogger("autoall.tracking")
T = TypeVar("T")


class Epoch(Protocol):
    """An epoch's figures: `autoall.train.EpochStats`, or an `EpochPoint`."""

    @property
    def epoch(self) -> int: ...

    def metrics(self) -> dict[str, float]: ...


class TrackedRun(Protocol):
    """A trial's run as the objective logs to it: `TrialRun` (MLflow directly), `WriterRun`
    (through the writer process, autoall/tracking_writer.py) or `NullRun` (--no-tracking)."""

    @property
    def run_id(self) -> str: ...  # "" until the run exists (the writer creates it later)

    @property
    def lost(self) -> list[str]: ...  # logging calls that failed after their retries

    def log_epoch(self, stats: Epoch) -> None: ...

    def finish(
        self,
        state: str,
        *,
        result: RunResult | None = None,
        reason: str | None = None,
        epoch: int | None = None,
    ) -> None: ...


class StudyTracker(Protocol):
    """What a study's workers log through: `Tracker` (MLflow directly), `TrackingWriter` (a
    writer process) or `NullTracker` (--no-tracking). Parent runs are named by the id this
    returns from `parent_run`."""

    def parent_run(
        self, *, study_name: str, arch: str, params: dict[str, Any], tags: dict[str, str]
    ) -> str: ...

    def start_trial(
        self,
        *,
        parent_id: str,
        trial_number: int,
        params: dict[str, Any],
        tags: dict[str, str],
        config_yaml: str,
        run_name: str | None = None,
        system_metrics: bool = False,
    ) -> TrackedRun: ...

    def update_parent(
        self,
        parent_id: str,
        *,
        best_value: float | None,
        n_complete: int,
        n_pruned: int,
        n_failed: int,
        step: int,
        best_trial: int | None = None,
        best_params: Mapping[str, Any] | None = None,
    ) -> None: ...

    def log_parent_text(self, parent_id: str, text: str, artifact_file: str) -> None: ...

    def log_model(
        self, run_id: str, model: Any, *, example: Any, num_classes: int, tags: dict[str, str]
    ) -> str | None: ...

    def finish_parent(self, parent_id: str) -> None: ...

    def fail_run(self, run_id: str, reason: str) -> None: ...

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None: ...

    @property
    def lost(self) -> list[str]: ...  # parent-run bookkeeping that failed after its retries

    def check(self) -> None: ...  # raises TrackingError once the store is known to be lost

    def close(self) -> None: ...


class TrackingError(UserError, RuntimeError):
    """The tracking store could not be reached or set up when the study started."""


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


def resolve_tracking_uri(uri: str | None = None, *, create: bool = True) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else `DEFAULT_TRACKING_URI`; a plain `postgresql://`
    backend gets the installed driver (`autoall.urls.storage_url`).

    With `create`, makes the folder of a SQLite file (./mlruns/ for the default).
    """
    resolved = storage_url(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    db_path = _sqlite_path(resolved)
    if db_path is not None and create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    return resolved


def tracking_sqlite_file(uri: str | None = None) -> Path | None:
    """The SQLite file of the tracking store `uri` resolves to (None: not SQLite)."""
    return _sqlite_path(resolve_tracking_uri(uri, create=False))


def check_server(uri: str) -> None:
    """For an http(s) tracking server: cap MLflow's HTTP retries, then GET /health (5 s) or raise.

    MLflow's defaults (7 retries, backoff 2) make one call to a server that went down take
    minutes; MLFLOW_HTTP_REQUEST_* variables already set are kept. MLflow's own "View run ...
    at: <url>" lines (one per ended run, the URL unmasked) are turned off: always when the URL
    holds a secret, else unless the user asked for them. Other stores: nothing to do.
    """
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if mask_secrets(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    else:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        _check_health(uri)
    except Exception as exc:
        raise TrackingError(
            f"MLflow tracking server at {mask_secrets(uri)} is not reachable: {_reason(exc)}. "
            "Start it (mlflow server ...) or pass --tracking-uri."
        ) from None


@dataclass(frozen=True)
class EpochPoint:
    """One epoch's metrics as plain data (what a writer process receives instead of EpochStats)."""

    epoch: int
    values: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return self.values


class _Logger:
    """Retrying client calls; failures after the retries are appended to `lost`."""

    _client: MlflowClient
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
                log.info("MLflow call failed (%s); retry %d", _reason(exc), attempt + 1)
                time.sleep(self.retry_wait * 2**attempt)
        raise AssertionError("unreachable")

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return self._retrying(fn, *args, **kwargs)
        except Exception as exc:
            message = f"MLflow: {what} failed: {_reason(exc)}"
            log.warning(message)
            self.lost.append(message)
            return None


class Tracker(_Logger):
    """Parent and child runs of one experiment in one tracking store."""

    def __init__(
        self, uri: str, *, experiment: str, retries: int = 3, retry_wait: float = 1.0
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.experiment_id = ""
        self.retries = retries
        self.retry_wait = retry_wait
        self.lost: list[str] = []  # failed parent bookkeeping (update_parent, find_trial_run)

    @classmethod
    def connect(cls, uri: str | None, *, experiment: str, **kw: Any) -> Tracker:
        """Resolve `uri`, check that the store answers and get or create `experiment`.

        For an http(s) server: GET /health first (5 s timeout), and MLflow's own HTTP
        retries are capped (MLFLOW_HTTP_REQUEST_* defaults, unless already set), so a
        server that goes down later costs seconds per call, not minutes.
        """
        tracker = cls(resolve_tracking_uri(uri), experiment=experiment, **kw)
        tracker._open()
        return tracker

    def _open(self) -> None:
        from mlflow import MlflowClient

        is_http = urlsplit(self.uri).scheme in ("http", "https")
        check_server(self.uri)
        try:
            with _sqlite_init_lock(self.uri):  # MLflow's schema set-up is not concurrency-safe
                self._client = self._retrying(MlflowClient, tracking_uri=client_uri(self.uri))
                self.experiment_id = self._retrying(self._experiment_id)
                _write_ahead_log(self.uri)
        except TrackingError:
            raise
        except Exception as exc:
            what, fix = (
                ("server", "Start it (mlflow server ...)")
                if is_http
                else ("store", "Check the URI and its folder")
            )
            raise TrackingError(
                f"MLflow tracking {what} at {mask_secrets(self.uri)} is not reachable: "
                f"{_reason(exc)}. {fix} or pass --tracking-uri."
            ) from None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None:
            db_path = _sqlite_path(self.uri)
            location = (db_path.parent / "artifacts").resolve().as_uri() if db_path else None
            try:
                return self._client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException:  # created by another process in the meantime?
                experiment = self._client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} in {mask_secrets(self.uri)} is deleted; "
                "restore it in the MLflow UI or purge it with `mlflow gc`."
            )
        return str(experiment.experiment_id)

    def parent_run(
        self, *, study_name: str, arch: str, params: dict[str, Any], tags: dict[str, str]
    ) -> str:
        """The id of the one parent run of `study_name`, created (with `params`) if missing.

        Concurrent creators each search again after creating; all pick the oldest parent
        (start_time, then run_id) and every other creator deletes its own.
        """
        try:
            with _sqlite_init_lock(self.uri) as locked:  # one host: no race, no settle wait
                return self._parent_run(study_name, arch, params, tags, settle=not locked)
        except Exception as exc:
            raise TrackingError(
                f"Could not find or create the MLflow parent run of {study_name!r} in "
                f"{mask_secrets(self.uri)}: {_reason(exc)}."
            ) from None

    def _parent_run(
        self,
        study_name: str,
        arch: str,
        params: dict[str, Any],
        tags: dict[str, str],
        *,
        settle: bool,
    ) -> str:
        runs = self._parents(study_name)
        created = None
        if not runs:
            run_tags = {**tags, "autoall.study": study_name, "autoall.role": "study"}
            run_tags["autoall.arch"] = arch
            created = self._retrying(
                self._client.create_run,
                self.experiment_id,
                tags=_masked(run_tags, _MAX_TAG_LENGTH),
                run_name=study_name,
            ).info.run_id
        recent = created or _now_ms() - _oldest(runs).info.start_time < 1000 * _SETTLE_SECONDS
        if settle and recent:
            time.sleep(_SETTLE_SECONDS)
            runs = self._parents(study_name) or runs
        winner = _oldest(runs) if runs else None
        winner_id = winner.info.run_id if winner else created
        assert winner_id is not None
        if created and created != winner_id:
            self._retrying(self._client.delete_run, created)
        elif created:
            self._retrying(self._log_params, winner_id, params)
        if winner and winner.info.run_id != created and winner.info.status != "RUNNING":
            self._retrying(self._client.update_run, winner_id, status="RUNNING")  # resumed
        return winner_id

    def _parents(self, study_name: str) -> list[Run]:
        runs = self._retrying(
            self._client.search_runs,
            [self.experiment_id],
            filter_string="tags.\"autoall.role\" = 'study'",
        )
        return [r for r in runs if r.data.tags.get("autoall.study") == study_name]

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = list(_masked(flatten(params), _MAX_PARAM_LENGTH).items())
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):  # one call unless > 100 params
            batch = [Param(k, v) for k, v in items[i : i + _MAX_PARAMS_PER_BATCH]]
            self._client.log_batch(run_id, params=batch, synchronous=True)

    def finish_parent(self, parent_id: str) -> None:
        """Mark the parent FINISHED (the study's target is met)."""
        self._call("finish parent run", self._client.set_terminated, parent_id, "FINISHED")

    def start_trial(
        self,
        *,
        parent_id: str,
        trial_number: int,
        params: dict[str, Any],
        tags: dict[str, str],
        config_yaml: str,
        run_name: str | None = None,
        system_metrics: bool = False,
    ) -> TrialRun:
        """Start the RUNNING child run of one trial, with its params and `config.yaml`; with
        `system_metrics`, MLflow's system metrics of this host for it until it ends.

        If the run cannot be created, the returned run has `run_id == ""`, does nothing, and
        says why in `lost`.
        """
        run = TrialRun(self._client, "", retries=self.retries, retry_wait=self.retry_wait)
        run_tags = {
            **tags,
            "mlflow.parentRunId": parent_id,
            "optuna.trial_number": str(trial_number),
        }
        created = run._call(
            f"create run of trial {trial_number}",
            self._client.create_run,
            self.experiment_id,
            tags=_masked(run_tags, _MAX_TAG_LENGTH),
            run_name=run_name or f"trial-{trial_number}",
        )
        if created is None:
            return run
        run.run_id = created.info.run_id
        run._call("log params", self._log_params, run.run_id, params)
        run._call(
            "log config.yaml",
            self._client.log_text,
            run.run_id,
            mask_secrets(config_yaml),
            "config.yaml",
        )
        if system_metrics:
            run.start_system_metrics(client_uri(self.uri))
        return run

    def log_model(
        self,
        run_id: str,
        model: Any,
        *,
        example: Any,
        num_classes: int,
        tags: dict[str, str],
    ) -> str | None:
        """Log `model` (an `autoall.registry.ServingModel`) as the logged model of run `run_id`
        and tag the run with its id (`autoall.model_id`); the id, or None (said in `lost`)."""
        from autoall.registry import log_model

        logged = self._call(
            f"log the model of run {run_id}",
            log_model,
            client_uri(self.uri),
            run_id,
            model,
            example=example,
            num_classes=num_classes,
            tags=tags,
        )
        if logged is None:
            return None
        self._call(
            "tag the model's run", self._client.set_tag, run_id, "autoall.model_id", logged.model_id
        )
        return logged.model_id

    def update_parent(
        self,
        parent_id: str,
        *,
        best_value: float | None,
        n_complete: int,
        n_pruned: int,
        n_failed: int,
        step: int,
        best_trial: int | None = None,
        best_params: Mapping[str, Any] | None = None,
    ) -> None:
        """Log the study's live summary on the parent, in one call.

        Metrics at `step`: n_complete, n_pruned, n_failed and best_value; and `best_val_acc`
        (the best value so far) at step n_complete + n_pruned, the finished trials, so its chart
        is the best-so-far curve and never falls. With `best_params`, the tags `best.<param>`
        and `best.trial` (the best trial's number) are set too.
        """
        from mlflow.entities import RunTag

        values: dict[str, float] = {"n_complete": n_complete, "n_pruned": n_pruned}
        values["n_failed"] = n_failed
        if best_value is not None:
            values["best_value"] = best_value
        metrics = _metrics(values, step=step)
        if best_value is not None:
            metrics += _metrics({"best_val_acc": best_value}, step=n_complete + n_pruned)
        tags = {f"best.{k}": v for k, v in (best_params or {}).items()}
        if best_params is not None and best_trial is not None:
            tags["best.trial"] = best_trial
        run_tags = [RunTag(k, v) for k, v in _masked(tags, _MAX_TAG_LENGTH).items()]
        self._call(
            "update parent run", self._client.log_batch, parent_id, metrics=metrics, tags=run_tags
        )

    def log_parent_text(self, parent_id: str, text: str, artifact_file: str) -> None:
        """`text` (secrets masked) as the artifact `artifact_file` of the parent run, replacing
        an earlier one (e.g. trials.csv, rewritten at the end of every `study run`)."""
        self._call(
            f"log {artifact_file}",
            self._client.log_text,
            parent_id,
            mask_secrets(text),
            artifact_file,
        )

    def check(self) -> None:
        """Nothing to check: `connect` raised already if the store was not there."""

    def close(self) -> None:
        """Nothing to close (the client holds no process); for symmetry with TrackingWriter."""

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark a run that its worker left RUNNING (killed) as FAILED, with the reason."""
        run = self._call(f"get run {run_id}", self._client.get_run, run_id)
        if run is not None and run.info.status == "RUNNING":
            TrialRun(self._client, run_id, retries=self.retries, retry_wait=self.retry_wait).finish(
                "FAIL", reason=reason
            )

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None:
        """The newest active child run of `parent_id` for `trial_number`, or None."""
        runs = self._call(
            f"find run of trial {trial_number}",
            self._client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.\"mlflow.parentRunId\" = '{parent_id}' "
            f"and tags.\"optuna.trial_number\" = '{trial_number}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None


class TrialRun(_Logger):
    """The child run of one trial: per-epoch metrics, final metrics, artifacts, status."""

    def __init__(
        self, client: MlflowClient, run_id: str, *, retries: int = 3, retry_wait: float = 1.0
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.retries = retries
        self.retry_wait = retry_wait
        self.lost: list[str] = []  # messages of logging calls that failed after the retries
        self._history: list[Epoch] = []
        self._finished = False
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor, while the run goes on

    def start_system_metrics(self, uri: str) -> None:
        """MLflow's own system metrics for this run until it ends (`system/cpu_utilization_
        percentage`, `system/gpu_0_utilization_percentage`, `system/gpu_0_memory_usage_megabytes`,
        ...; GPUs through nvidia-ml-py): a sample every `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`
        seconds (10), the samples since the last one logged at the end."""
        if not self.run_id or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, tracking_uri=uri)
            monitor.start()
        except Exception as exc:  # psutil missing, ...: the trial goes on without them
            self.lost.append(f"MLflow: system metrics could not start: {_reason(exc)}")
            log.warning(self.lost[-1])
            return
        self._monitor = monitor

    def _stop_system_metrics(self) -> None:
        """Stop the monitor and log what it sampled since its last write (a trial shorter than
        the sampling interval gets one point, step 0)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            pending = monitor.aggregate_metrics()
            if pending:
                monitor.publish_metrics(pending)
                monitor.mlflow_logger.flush()
        except Exception as exc:
            self.lost.append(f"MLflow: system metrics not logged: {_reason(exc)}")
            log.warning(self.lost[-1])

    @property
    def history(self) -> list[Epoch]:
        """The epochs logged so far."""
        return list(self._history)

    def log_epoch(self, stats: Epoch) -> None:
        """All metrics of one epoch in ONE log_batch call, at step `stats.epoch`."""
        self.log_epochs([stats])

    def log_epochs(self, epochs: Sequence[Epoch]) -> None:
        """Several epochs' metrics (each at its step) in one log_batch call (MLflow takes up to
        1,000 metrics per call; more go in as many calls as needed)."""
        self._history.extend(epochs)
        if not self.run_id or not epochs:
            return
        metrics = [m for e in epochs for m in _metrics(e.metrics(), step=e.epoch)]
        first, last = epochs[0].epoch, epochs[-1].epoch
        what = f"log epoch {first}" if first == last else f"log epochs {first}-{last}"
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            batch = metrics[i : i + _MAX_METRICS_PER_BATCH]
            self._call(what, self._client.log_batch, self.run_id, metrics=batch, synchronous=True)

    def finish(
        self,
        state: str,
        *,
        result: RunResult | None = None,
        reason: str | None = None,
        epoch: int | None = None,
    ) -> None:
        """End the run as its trial ended: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.

        `end` (final metrics, state tags, status), then `log_curve` (from `result.history`,
        else the epochs logged).
        """
        final = final_metrics(result) if result is not None else None
        self.end(state, final=final, reason=reason, epoch=epoch)
        history: Sequence[Epoch] = self._history
        if result is not None and result.history:
            history = result.history
        self.log_curve(history)

    def end(
        self,
        state: str,
        *,
        final: Mapping[str, float] | None = None,
        reason: str | None = None,
        epoch: int | None = None,
        epochs: Sequence[Epoch] = (),
    ) -> None:
        """One log_batch with the final metrics and the state tags (and `epochs` not logged
        yet, each at its step), then the run's status."""
        if state not in _RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(TRIAL_STATES)}, but got {state!r}.")
        self._stop_system_metrics()
        if self._finished or not self.run_id:
            return
        self._finished = True
        from mlflow.entities import RunTag

        tags = {"optuna.state": state}
        if state == "PRUNED":
            tags["state"] = "PRUNED"
            if epoch is not None:
                tags["pruned_epoch"] = str(epoch)
            if reason:
                tags["pruned_reason"] = reason
        elif state == "FAIL":
            tags["fail_reason"] = reason or "unknown"
        run_tags = [RunTag(k, v) for k, v in _masked(tags, _MAX_TAG_LENGTH).items()]
        epoch_metrics = [m for e in epochs for m in _metrics(e.metrics(), step=e.epoch)]
        n_final = len(final or {}) + 1  # + best_val_acc, added below where it is missing
        if epochs and len(epoch_metrics) + n_final > _MAX_METRICS_PER_BATCH:
            self.log_epochs(epochs)  # a long backlog goes in batches of its own
            epoch_metrics = []
        else:
            self._history.extend(epochs)
        final = _with_best(final, self._history)
        metrics = epoch_metrics + (_metrics(final, step=len(self._history)) if final else [])
        what = "log final metrics"
        if epoch_metrics:
            what = f"log epochs {epochs[0].epoch}-{epochs[-1].epoch} and final metrics"
        self._call(
            what,
            self._client.log_batch,
            self.run_id,
            metrics=metrics,
            tags=run_tags,
            synchronous=True,
        )
        self._call("end run", self._client.set_terminated, self.run_id, _RUN_STATUS[state])

    def log_curve(self, history: Sequence[Epoch]) -> None:
        """`learning_curve.png` (loss and accuracy per epoch) as an artifact of the run."""
        if not history or not self.run_id:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "learning_curve.png"
            try:
                _plot_learning_curve(history, path)
            except Exception as exc:  # a plot must never fail the trial
                self.lost.append(f"MLflow: learning curve plot failed: {_reason(exc)}")
                log.warning(self.lost[-1])
            else:
                self._call(
                    "log learning_curve.png", self._client.log_artifact, self.run_id, str(path)
                )


def _with_best(final: Mapping[str, float] | None, history: Sequence[Epoch]) -> dict[str, float]:
    """`final`, with `best_val_acc` (the best epoch's validation accuracy) where it lacks one:
    a pruned or failed trial shows its best, not its last, figure in the runs table too."""
    out = dict(final or {})
    accs = [e.metrics()["val_acc"] for e in history if "val_acc" in e.metrics()]
    if "best_val_acc" not in out and accs:
        out["best_val_acc"] = max(accs)
    return out


class NullRun:
    """A `TrialRun` that logs nothing (--no-tracking)."""

    def __init__(self) -> None:
        self.run_id = ""
        self.lost: list[str] = []

    def log_epoch(self, stats: Epoch) -> None:
        pass

    def finish(self, state: str, **_: Any) -> None:
        pass


class NullTracker:
    """A `Tracker` that logs nothing (--no-tracking)."""

    def __init__(self, *_: Any, **__: Any) -> None:
        self.uri = ""
        self.experiment_id = ""
        self.lost: list[str] = []

    def parent_run(self, **_: Any) -> str:
        return ""

    def finish_parent(self, parent_id: str) -> None:
        pass

    def start_trial(self, **_: Any) -> NullRun:
        return NullRun()

    def update_parent(self, parent_id: str, **_: Any) -> None:
        pass

    def log_parent_text(self, parent_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_model(self, run_id: str, model: Any, **_: Any) -> str | None:
        return None

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None:
        return None

    def fail_run(self, run_id: str, reason: str) -> None:
        pass

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def _is_transient(exc: BaseException) -> bool:
    """5xx/429, connection or timeout errors, a locked SQLite database: worth another try."""
    import requests
    from mlflow.exceptions import MlflowException

    if "database is locked" in str(exc):
        return True
    if isinstance(exc, MlflowException):  # its connection errors come as INTERNAL_ERROR (500)
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError
    )


def _check_health(uri: str) -> None:
    """GET <uri>/health within a few seconds, or raise."""
    import requests

    env = os.environ.get
    verify = (
        env("MLFLOW_TRACKING_SERVER_CERT_PATH") or env("MLFLOW_TRACKING_INSECURE_TLS") != "true"
    )
    user, password = env("MLFLOW_TRACKING_USERNAME"), env("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password) if user and password else None  # else from the URL, if there
    url = uri.rstrip("/") + "/health"
    response = requests.get(url, timeout=_HEALTH_TIMEOUT, verify=verify, auth=auth)
    if response.status_code != 200:
        raise ConnectionError(f"GET /health answered HTTP {response.status_code}")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[bool]:
    """An exclusive lock on `<db>.lock` (POSIX) while a process creates or checks the tables or
    a parent run; yields whether it holds one (not for servers, not on Windows)."""
    path = _sqlite_path(uri)
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
    path = _sqlite_path(uri)
    if path is None:
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def client_uri(uri: str) -> str:
    """Absolute SQLite paths: a relative one would follow later chdirs (MLflow caches stores)."""
    path = _sqlite_path(uri)
    return uri if path is None or path.is_absolute() else "sqlite:///" + str(path.resolve())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_secrets(f"{type(exc).__name__}: {text[0] if text else ''}")[:500]


def _oldest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id))


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


def _masked(values: Mapping[str, Any], limit: int) -> dict[str, str]:
    return {k: mask_secrets(str(v))[:limit] for k, v in values.items()}


def _metrics(values: Mapping[str, float], *, step: int) -> list[Any]:
    from mlflow.entities import Metric

    timestamp = _now_ms()
    return [Metric(k, float(v), timestamp, step) for k, v in values.items()]


def final_metrics(result: RunResult) -> dict[str, float]:
    """A run's final figures as MLflow metrics (None values left out)."""
    values = {
        "final_val_acc": result.final_val_acc,
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_seconds": result.wall_seconds,
        "compile_seconds": result.compile_seconds,
        "median_epoch_seconds": result.median_epoch_seconds,
        "params_total": result.params.total,
        "params_all": result.params.all,
    }
    if result.history:
        values["final_val_loss"] = result.history[-1].val_loss
    for name in ("target_epoch", "target_seconds", "test_acc", "test_loss", "train_eval_acc"):
        if getattr(result, name) is not None:
            values[name] = getattr(result, name)
    return values


_CURVE_LOCK = threading.Lock()
_curve: tuple[Any, dict[str, tuple[Any, Any, Any]]] | None = None  # (figure, name -> axes, lines)


def _plot_learning_curve(history: Sequence[Epoch], path: Path) -> None:
    """Loss and accuracy vs epoch, train and validation, as a PNG (Agg, no pyplot state).

    One figure is made per process and its lines updated for every trial: half the cost of a
    new figure (~40 ms instead of ~80 ms).
    """
    global _curve
    with _CURVE_LOCK:
        if _curve is None:
            _curve = _curve_figure()
        fig, panels = _curve
        epochs = [s.epoch for s in history]
        values = [s.metrics() for s in history]
        for name, (ax, train_line, val_line) in panels.items():
            train_line.set_data(epochs, [v[f"train_{name}"] for v in values])
            val_line.set_data(epochs, [v[f"val_{name}"] for v in values])
            ax.relim()
            ax.autoscale_view()
        fig.savefig(path, dpi=80)


def _curve_figure() -> tuple[Any, dict[str, tuple[Any, Any, Any]]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))  # fixed margins: a constrained layout doubles the cost
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.96, wspace=0.25)
    panels = {}
    for ax, name, corner in zip(
        fig.subplots(1, 2), ("loss", "acc"), ("upper right", "lower right"), strict=True
    ):
        (train_line,) = ax.plot([], [], marker=".", label="train")
        (val_line,) = ax.plot([], [], marker=".", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if name == "acc" else name)
        ax.grid(alpha=0.3)
        ax.legend(loc=corner)
        panels[name] = (ax, train_line, val_line)
    return fig, panels


if TYPE_CHECKING:  # mypy checks that each class plays the role it is used in

    def _roles(
        tracker: Tracker, null: NullTracker, run: TrialRun, null_run: NullRun
    ) -> tuple[StudyTracker, StudyTracker, TrackedRun, TrackedRun]:
        return tracker, null, run, null_run
