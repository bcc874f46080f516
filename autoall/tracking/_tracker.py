"""MLflow tracking: one experiment per study file, one parent run per (study, architecture),
one nested child run per Optuna trial.

Everything goes through an explicit `mlflow.MlflowClient` (no fluent `mlflow.start_run`
state), so several studies or threads can log at once. Every client call is retried on
transient errors (HTTP 5xx/429, connection errors, SQLite "database is locked"); a call that
still fails is recorded in `lost` and logged as a warning on the "autoall.tracking" logger,
never dropped silently. Only `Tracker.connect` raises (`TrackingError`): a store that is down
fails the study at start, not an hour into it.

Here: the start-up check and the study's `Tracker`. The roles it plays (`StudyTracker`,
`TrackedRun`, `Epoch`): autoall/tracking/_roles.py; the store's URI and the retried call:
autoall/tracking/_store.py; a trial's run and the trackers that log nothing:
autoall/tracking/_run.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autoall._secrets import mask_secrets, sqlite_file
from autoall.errors import UserError, one_line
from autoall.tracking._run import MlflowTrialRun
from autoall.tracking._store import (
    MAX_TAG_LENGTH,
    RetryingCalls,
    _now_ms,
    _sqlite_init_lock,
    _write_ahead_log,
    client_uri,
    log_params,
    masked,
    metric_batch,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from autoall.tracking._roles import StudyTracker, TrackedRun
    from autoall.tracking._run import NullRun, NullTracker

_HEALTH_TIMEOUT = 5.0  # seconds for GET /health at start
_SETTLE_SECONDS = 0.5  # longer than one create_run takes: lets a concurrent parent show up
# MLflow's own HTTP retries default to 7 with backoff 2 (minutes per call); ours wrap them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

log = logging.getLogger("autoall.tracking")


class TrackingError(UserError, RuntimeError):
    """The tracking store could not be reached or set up when the study started."""


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
            f"MLflow tracking server at {mask_secrets(uri)} is not reachable: {one_line(exc)}. "
            "Start it (mlflow server ...) or pass --tracking-uri."
        ) from None


class Tracker(RetryingCalls):
    """Parent and child runs of one experiment in one tracking store."""

    _client: MlflowClient  # made by `connect`

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
                f"{one_line(exc)}. {fix} or pass --tracking-uri."
            ) from None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None:
            db_path = sqlite_file(self.uri)
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
                f"{mask_secrets(self.uri)}: {one_line(exc)}."
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
                tags=masked(run_tags, MAX_TAG_LENGTH),
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
            self._retrying(log_params, self._client, winner_id, params)
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
    ) -> MlflowTrialRun:
        """Start the RUNNING child run of one trial, with its params and `config.yaml`; with
        `system_metrics`, MLflow's system metrics of this host for it until it ends.

        If the run cannot be created, the returned run has `run_id == ""`, does nothing, and
        says why in `lost`.
        """
        run = MlflowTrialRun(self._client, "", retries=self.retries, retry_wait=self.retry_wait)
        run_tags = {
            **tags,
            "mlflow.parentRunId": parent_id,
            "optuna.trial_number": str(trial_number),
        }
        created = run._call(
            f"create run of trial {trial_number}",
            self._client.create_run,
            self.experiment_id,
            tags=masked(run_tags, MAX_TAG_LENGTH),
            run_name=run_name or f"trial-{trial_number}",
        )
        if created is None:
            return run
        run.run_id = created.info.run_id
        run._call("log params", log_params, self._client, run.run_id, params)
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
        name: str,
    ) -> str | None:
        """Log `model` (an `autoall.tracking._model_registry.ServingModel`) as the logged model `name` of run
        `run_id`, in this tracker's experiment (the study file's), and tag the run with its id
        (`autoall.model_id`); the id, or None (said in `lost`)."""
        from autoall.tracking._model_registry import log_model

        logged = self._call(
            f"log the model of run {run_id}",
            log_model,
            client_uri(self.uri),
            run_id,
            model,
            example=example,
            num_classes=num_classes,
            tags=tags,
            name=name,
            experiment_id=self.experiment_id,
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
        metrics = metric_batch(values, step=step)
        if best_value is not None:
            metrics += metric_batch({"best_val_acc": best_value}, step=n_complete + n_pruned)
        tags = {f"best.{k}": v for k, v in (best_params or {}).items()}
        if best_params is not None and best_trial is not None:
            tags["best.trial"] = best_trial
        run_tags = [RunTag(k, v) for k, v in masked(tags, MAX_TAG_LENGTH).items()]
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
            MlflowTrialRun(
                self._client, run_id, retries=self.retries, retry_wait=self.retry_wait
            ).finish("FAIL", reason=reason)

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


def _oldest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id))


if TYPE_CHECKING:  # mypy checks that each class plays the role it is used in

    def _roles(
        tracker: Tracker, null: NullTracker, run: MlflowTrialRun, null_run: NullRun
    ) -> tuple[StudyTracker, StudyTracker, TrackedRun, TrackedRun]:
        return tracker, null, run, null_run
