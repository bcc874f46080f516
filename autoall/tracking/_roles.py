"""The tracking roles, declared once as `typing.Protocol`s: what the study's workers log
through (`StudyTracker`), a trial's run as the objective logs to it (`TrackedRun`), and the
epoch figures a run takes (`Epoch`).

A leaf module (no MLflow, no torch): the trackers (`_tracker.py`, `_run.py`, `_writer.py` in
autoall/tracking/) and their callers (`_objective.py`, `_trials.py`, `_workers.py` in
autoall/study/) import the roles from here, so no module imports another in a circle for its
types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from autoall.training import RunResult


class Epoch(Protocol):
    """An epoch's figures: `autoall.training._loop.EpochStats`, or an `EpochPoint`."""

    @property
    def epoch(self) -> int: ...

    def metrics(self) -> dict[str, float]: ...


class TrackedRun(Protocol):
    """A trial's run as the objective logs to it: `TrialRun` (MLflow directly), `WriterRun`
    (through the writer process, autoall/tracking/_writer.py) or `NullRun` (--no-tracking)."""

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
        self,
        run_id: str,
        model: Any,
        *,
        example: Any,
        num_classes: int,
        tags: dict[str, str],
        name: str,
    ) -> str | None: ...  # `name`: the logged model's, e.g. <study>-<arch>-trial<n>

    def finish_parent(self, parent_id: str) -> None: ...

    def fail_run(self, run_id: str, reason: str) -> None: ...

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None: ...

    @property
    def lost(self) -> list[str]: ...  # parent-run bookkeeping that failed after its retries

    def check(self) -> None: ...  # raises TrackingError once the store is known to be lost

    def close(self) -> None: ...
