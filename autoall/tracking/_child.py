"""The tracking writer's child process (autoall/tracking/_writer.py): it carries out one worker's
tracking calls in order with a `Tracker`, holds epochs back to write them in batches, and
answers the calls the worker waits for.

Both ends send their messages with `_send` and read them with `_receive`, one
`multiprocessing.connection.Connection` each way. A worker that is gone (killed) cannot be
answered: the child then carries out the calls it got, silently, and exits at the end of them.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from autoall.errors import InvalidValue
from autoall.tracking._run import EpochPoint, MlflowTrialRun
from autoall.tracking._tracker import Tracker, TrackingError

log = logging.getLogger("autoall.tracking")
_IDLE = object()  # no message within the timeout
_EPOCH_FLUSH_SECONDS = 1.0  # epochs are written at least this often (and at a trial's end)


def _send(connection: Connection, message: Any) -> None:
    # plain pickle, not Connection.send: torch registers its shared-memory reductions with
    # multiprocessing's pickler, and a model's tensors would reach the child as handles to
    # memory that a process multiprocessing did not start cannot open
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(connection: Connection, timeout: float | None = None) -> Any:
    """The next message; `_IDLE` if none came within `timeout`; None once the other end closed."""
    try:
        if not connection.poll(timeout):
            return _IDLE
        return pickle.loads(connection.recv_bytes())
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        return None


@dataclass
class _Child:
    """The writer process: one Tracker, the runs of this worker's trials by start-call id."""

    answers: Connection
    tracker: Tracker | None = None

    def __post_init__(self) -> None:
        self.parents: dict[str, str] = {}
        self.runs: dict[int, MlflowTrialRun] = {}
        self.held: dict[int, list[EpochPoint]] = {}  # epochs not written yet, by run
        self.flushed: dict[int, float] = {}  # when each run's epochs were last written
        self.reported = 0  # how much of tracker.lost went to the worker
        self.worker_gone = False  # its answers pipe is broken: nothing more is answered

    def answer(self, call_id: int | None, kind: str, value: Any) -> None:
        """Send an answer; none once the worker is gone (its calls are still carried out)."""
        if self.worker_gone:
            return
        try:
            _send(self.answers, (call_id, kind, value))
        except OSError:  # BrokenPipeError: the worker was killed
            self.worker_gone = True

    def serve(self, requests: Connection) -> None:
        """Carry out the calls in order until the worker closes (or is gone).

        Epochs are held back up to `_EPOCH_FLUSH_SECONDS` and go in one log_batch per run: a
        study of short epochs writes a batch per second, not per epoch; anything else that
        comes (a trial's end, a new run) first writes what is held.
        """
        while True:
            held = any(self.held.values())
            message = _receive(requests, _EPOCH_FLUSH_SECONDS if held else None)
            if message is _IDLE:
                self.flush_epochs()
                continue
            if message is None:  # the worker is gone: what came is done, nothing more will
                self.flush_epochs()
                return
            op, call_id, *args = message
            try:
                if op == "epoch":
                    self.hold_epoch(*args)
                    continue
                # a trial's end takes its own held epochs into its final batch (one write less)
                self.flush_epochs(but=args[0] if op == "finish" else None)
                if self.handle(op, call_id, args):
                    return
            except Exception as exc:  # a bug here must not leave the worker waiting
                log.exception("tracking writer: %s failed", op)
                if call_id is not None:
                    self.answer(call_id, "error", f"{type(exc).__name__}: {exc}")
            self.report_lost()

    def hold_epoch(self, start_id: int, point: EpochPoint) -> None:
        if start_id not in self.runs:
            return
        self.held.setdefault(start_id, []).append(point)
        now = time.monotonic()
        if now - self.flushed.get(start_id, 0.0) >= _EPOCH_FLUSH_SECONDS:
            self.flush_epochs()

    def flush_epochs(self, *, but: int | None = None) -> None:
        """Write every run's held epochs (except run `but`'s: its end writes them)."""
        for start_id, points in list(self.held.items()):
            if start_id == but:
                continue
            if points and start_id in self.runs:
                self.runs[start_id].log_epochs(points)
                self.flushed[start_id] = time.monotonic()
            del self.held[start_id]
        self.report_lost()

    def handle(self, op: str, call_id: int | None, args: list[Any]) -> bool:
        """Carry out one call; True when the worker asked to close."""
        if op == "connect":
            uri, experiment, retries, retry_wait = args
            try:
                self.tracker = Tracker(
                    uri, experiment=experiment, retries=retries, retry_wait=retry_wait
                )
                self.tracker._open()
            except TrackingError as exc:
                self.answer(call_id, "ok", str(exc))  # the worker raises it at check()
                return False
            self.answer(call_id, "ok", (self.tracker.experiment_id,))
            return False
        if op == "close":
            self.answer(call_id, "ok", None)
            return True
        tracker = self.tracker
        if tracker is None:  # could not connect: the worker raises at its next check
            if call_id is not None:
                self.answer(call_id, "ok", self._nothing(op))
            return False
        if op == "parent":
            key, study_name, arch, params, tags = args
            try:
                self.parents[key] = tracker.parent_run(
                    study_name=study_name, arch=arch, params=params, tags=tags
                )
            except TrackingError as exc:
                self.answer(None, "fatal", str(exc))
        elif op == "start":
            parent_key, number, params, tags, config_yaml, run_name, system_metrics = args
            run = tracker.start_trial(
                parent_id=self.parents.get(parent_key, ""),
                trial_number=number,
                params=params,
                tags=tags,
                config_yaml=config_yaml,
                run_name=run_name,
                system_metrics=system_metrics,
            )
            self.runs[call_id] = run  # type: ignore[index]
            self.answer(call_id, "ok", (run.run_id,))
        elif op == "finish":
            start_id, state, final, history, reason, epoch = args
            ending = self.runs.pop(start_id, None)
            if ending is None:
                self.answer(call_id, "ok", [])
                return False
            held = self.held.pop(start_id, [])
            ending.end(state, final=final, reason=reason, epoch=epoch, epochs=held)
            # the PNG before the answer: a PNG that cannot be stored is in the trial's
            # tracking_lost like any other logging (~50 ms a trial waits for it)
            ending.log_curve(history or ending.history)
            self.answer(call_id, "ok", list(ending.lost))
        elif op == "update_parent":
            key, summary = args
            if key in self.parents:
                tracker.update_parent(self.parents[key], **summary)
        elif op == "parent_text":
            key, text, artifact_file = args
            if key in self.parents:
                tracker.log_parent_text(self.parents[key], text, artifact_file)
        elif op == "log_model":
            run_id, model, example, num_classes, tags, name = args
            tracker.log_model(
                run_id, model, example=example, num_classes=num_classes, tags=tags, name=name
            )
        elif op == "finish_parent":
            (key,) = args
            if key in self.parents:
                tracker.finish_parent(self.parents[key])
        elif op == "fail_run":
            tracker.fail_run(*args)
        elif op == "find_trial_run":
            parent_key, number = args
            parent = self.parents.get(parent_key, "")
            self.answer(call_id, "ok", tracker.find_trial_run(parent, number) if parent else None)
        else:
            raise InvalidValue(f"unknown tracking call {op!r}")
        return False

    @staticmethod
    def _nothing(op: str) -> Any:
        return {"start": ("",), "finish": [], "find_trial_run": None}.get(op)

    def report_lost(self) -> None:
        if self.tracker is not None and len(self.tracker.lost) > self.reported:
            for message in self.tracker.lost[self.reported :]:
                self.answer(None, "lost", message)
            self.reported = len(self.tracker.lost)
