"""A trial's MLflow run (`MlflowTrialRun`: per-epoch metrics, final metrics, state tags, status,
learning curve), and the run and tracker that log nothing (`NullRun`, `NullTracker`:
--no-tracking)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoall.errors import InvalidValue, one_line
from autoall.tracking._learning_curve import plot_learning_curve
from autoall.tracking._store import (
    MAX_METRICS_PER_BATCH,
    MAX_TAG_LENGTH,
    RetryingCalls,
    masked,
    metric_batch,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autoall.tracking._roles import Epoch
    from autoall.training import RunResult

TRIAL_STATES: tuple[str, ...] = ("COMPLETE", "PRUNED", "FAIL")
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

log = logging.getLogger("autoall.tracking")


@dataclass(frozen=True)
class EpochPoint:
    """One epoch's metrics as plain data (what a writer process receives instead of EpochStats)."""

    epoch: int
    values: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return self.values


class MlflowTrialRun(RetryingCalls):
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
            self.lost.append(f"MLflow: system metrics could not start: {one_line(exc)}")
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
            self.lost.append(f"MLflow: system metrics not logged: {one_line(exc)}")
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
        metrics = [m for e in epochs for m in metric_batch(e.metrics(), step=e.epoch)]
        first, last = epochs[0].epoch, epochs[-1].epoch
        what = f"log epoch {first}" if first == last else f"log epochs {first}-{last}"
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[i : i + MAX_METRICS_PER_BATCH]
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
            raise InvalidValue(
                f"state must be one of {', '.join(TRIAL_STATES)}, but got {state!r}."
            )
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
        run_tags = [RunTag(k, v) for k, v in masked(tags, MAX_TAG_LENGTH).items()]
        epoch_metrics = [m for e in epochs for m in metric_batch(e.metrics(), step=e.epoch)]
        n_final = len(final or {}) + 1  # + best_val_acc, added below where it is missing
        if epochs and len(epoch_metrics) + n_final > MAX_METRICS_PER_BATCH:
            self.log_epochs(epochs)  # a long backlog goes in batches of its own
            epoch_metrics = []
        else:
            self._history.extend(epochs)
        final = _with_best(final, self._history)
        metrics = epoch_metrics + (metric_batch(final, step=len(self._history)) if final else [])
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
                plot_learning_curve(history, path)
            except Exception as exc:  # a plot must never fail the trial
                self.lost.append(f"MLflow: learning curve plot failed: {one_line(exc)}")
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
    """A `MlflowTrialRun` that logs nothing (--no-tracking)."""

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
