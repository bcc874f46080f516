"""MLflow tracking off the trial's path: a writer process owns the MLflow client.

`autoall study run` hands every tracking call to a child process (`python -m
autoall.tracking_writer`) through a pipe and goes on training. The child imports MLflow, opens
the store and makes the calls in order, with the retries of `autoall.tracking`; on a machine
with a spare core that work costs the trials nothing. A worker waits for the child only where
it needs an answer:

- a trial's run id, read without waiting once the child has created the run (`run_id`);
- the end of a trial (`finish`), so that logging lost on the way (the learning-curve PNG
  included) is a user attribute of the trial before Optuna finishes it;
- `find_trial_run` and `close`, which drains the child.

The store is opened while the worker sets up its storage and data. An http(s) server's /health
is checked before the child starts, so a server that is down still fails the study before any
trial; a store that fails later in the child (a broken SQLite file, a parent run that cannot
be made) is raised by `check()` as a `TrackingError`, at the latest a few epochs in.

If the worker dies, the child sees its pipe close, finishes what it got and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from autoall.tracking import Epoch, Tracker, TrackingError, check_server
from autoall.tracking_run import TRIAL_STATES, EpochPoint, TrialRun, final_metrics
from autoall.tracking_store import client_uri, quiet_mlflow, resolve_tracking_uri
from autoall.urls import install_log_masking

if TYPE_CHECKING:
    from autoall.tracking import StudyTracker, TrackedRun
    from autoall.train import RunResult

log = logging.getLogger("autoall.tracking")
_HEADER = struct.Struct("!I")
_WAIT_SLICE = 1.0  # seconds between checks that the child is still alive while waiting


def _write_frame(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _spawn() -> subprocess.Popen[bytes]:
    """The child; it imports MLflow at once, then waits for its calls."""
    return subprocess.Popen(
        [sys.executable, "-m", "autoall.tracking_writer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches the worker only; the child drains, then exits
    )


_prestarted: subprocess.Popen[bytes] | None = None


@contextlib.contextmanager
def prestarted(enabled: bool = True) -> Iterator[None]:
    """Start the writer process now, so it imports MLflow (~1-2 s) while this process imports
    torch and reads the study file; the first `TrackingWriter` takes it over. One that is not
    taken (a bad study file, --no-tracking decided later) is stopped at the end: it has touched
    no store."""
    global _prestarted
    if enabled and _prestarted is None:
        _prestarted = _spawn()
    try:
        yield
    finally:
        unused, _prestarted = _prestarted, None
        if unused is not None:
            unused.kill()
            unused.wait()
            for pipe in (unused.stdin, unused.stdout):
                if pipe is not None:
                    pipe.close()


def _take_prestarted() -> subprocess.Popen[bytes] | None:
    global _prestarted
    proc, _prestarted = _prestarted, None
    return proc


class TrackingWriter:
    """The `Tracker` of one worker, in a child process; same methods, answers only when needed.

    Parent runs are named by key (`parent_run` returns it at once; the child finds or creates
    the run); child runs by the `WriterRun` that `start_trial` returns.
    """

    def __init__(self, proc: subprocess.Popen[bytes], *, uri: str, experiment: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.uri = uri
        self.experiment = experiment
        self._proc = proc
        self._to_child = proc.stdin
        self._from_child = proc.stdout
        self._lost: list[str] = []
        self._fatal: str | None = None
        self._pending: dict[int, Future[Any]] = {}
        self._next_id = 0
        self._lock = threading.Lock()  # the pending calls
        self._write_lock = threading.Lock()  # the pipe (never held while waiting for _lock)
        self._closed = False
        self._reader = threading.Thread(
            target=self._read_answers, name="autoall-tracking-answers", daemon=True
        )
        self._connected: Future[Any] = Future()  # the child's answer to "connect"

    @classmethod
    def connect(
        cls, uri: str | None, *, experiment: str, retries: int = 3, retry_wait: float = 1.0
    ) -> TrackingWriter:
        """Check an http(s) server's /health, then have the child (the one `prestarted` began,
        else a new one) open the store; its answer is read by `check()` without waiting."""
        resolved = resolve_tracking_uri(uri)
        check_server(resolved)
        writer = cls(_take_prestarted() or _spawn(), uri=resolved, experiment=experiment)
        writer._reader.start()
        writer._connected = writer._call(
            "connect", client_uri(resolved), experiment, retries, retry_wait
        )
        return writer

    # -- the calls ---------------------------------------------------------------------------

    def parent_run(
        self, *, study_name: str, arch: str, params: dict[str, Any], tags: dict[str, str]
    ) -> str:
        """The key of the study's parent run, which the child finds or creates."""
        self._send("parent", study_name, study_name, arch, params, tags)
        return study_name

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
    ) -> WriterRun:
        """The trial's run; with `system_metrics`, the child samples this host's CPU, memory and
        GPUs into it (MLflow's system metrics) until it ends."""
        self.check()
        call = self._call(
            "start", parent_id, trial_number, params, tags, config_yaml, run_name, system_metrics
        )
        return WriterRun(self, call)

    def update_parent(self, parent_id: str, **summary: Any) -> None:
        self._send("update_parent", parent_id, summary)

    def log_parent_text(self, parent_id: str, text: str, artifact_file: str) -> None:
        self._send("parent_text", parent_id, text, artifact_file)

    def log_model(
        self, run_id: str, model: Any, *, example: Any, num_classes: int, tags: dict[str, str]
    ) -> None:
        """The child logs `model` (a CPU `ServingModel`, pickled through the pipe) into run
        `run_id`; the worker goes on at once (the export takes seconds, in the child)."""
        self._send("log_model", run_id, model, example, num_classes, tags)

    def finish_parent(self, parent_id: str) -> None:
        self._send("finish_parent", parent_id)

    def fail_run(self, run_id: str, reason: str) -> None:
        self._send("fail_run", run_id, reason)

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None:
        return self._wait(self._call("find_trial_run", parent_id, trial_number))  # type: ignore[no-any-return]

    def check(self) -> None:
        """Raise `TrackingError` if the child could not open the store or make a parent run."""
        if self._connected.done() and self._connected.exception() is None:
            answer = self._connected.result()
            if isinstance(answer, str):  # the store's error, as the child saw it
                self._fatal = self._fatal or answer
        if self._fatal is not None:
            raise TrackingError(self._fatal)

    @property
    def lost(self) -> list[str]:
        """Parent-run bookkeeping that failed after the retries (child runs keep their own)."""
        return list(self._lost)

    def close(self) -> None:
        """Let the child finish every call, then stop it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait(self._call("close"))
        except TrackingError:
            pass  # already reported (or the child died: said in `lost`)
        finally:
            with contextlib.suppress(OSError):
                self._to_child.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=5)
            self._from_child.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, op: str, *args: Any) -> None:
        self._write((op, None, *args))

    def _call(self, op: str, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            self._pending[call_id] = future
        future.call_id = call_id  # type: ignore[attr-defined]
        self._write((op, call_id, *args))
        return future

    def _write(self, message: tuple[Any, ...]) -> None:
        if self._closed and message[0] != "close":
            raise TrackingError("the MLflow tracking writer is closed")
        try:
            with self._write_lock:
                _write_frame(self._to_child, message)
        except (BrokenPipeError, ValueError, OSError):
            self._child_died()

    def _wait(self, future: Future[Any]) -> Any:
        while True:
            try:
                return future.result(timeout=_WAIT_SLICE)
            except TimeoutError:
                if self._proc.poll() is not None and not future.done():
                    self._reader.join(timeout=5)  # answers still in the pipe come first
                    if not future.done():
                        self._child_died()

    def _read_answers(self) -> None:
        answers = _FrameReader(self._from_child.fileno())
        while True:
            try:
                message = answers.read(timeout=None)
            except (OSError, ValueError, pickle.UnpicklingError):
                message = None
            if message is None:
                break
            call_id, kind, value = message
            if kind == "fatal":
                self._fatal = self._fatal or value
                continue
            if kind == "lost":
                self._lost.append(value)
                continue
            with self._lock:
                future = self._pending.pop(call_id, None)
            if future is None:
                continue
            if kind == "error":
                future.set_exception(TrackingError(f"MLflow tracking writer: {value}"))
            else:
                future.set_result(value)
        self._child_died()

    def _child_died(self) -> None:
        """Every open call ends with the reason; the study goes on without tracking."""
        code = self._proc.poll()
        message = (
            f"MLflow: the tracking writer process ended (exit code {code}); "
            "later logging of this worker is lost"
        )
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        if pending and not self._closed:
            log.warning(message)
            self._lost.append(message)
        for future in pending:
            if not future.done():
                future.set_exception(TrackingError(message))


class WriterRun:
    """A trial's child run as the worker sees it: calls go to the writer process."""

    def __init__(self, writer: TrackingWriter, started: Future[Any]) -> None:
        self._writer = writer
        self._started = started
        self.lost: list[str] = []
        self._finished = False

    @property
    def run_id(self) -> str:
        """The MLflow run id once the child has created the run, else "" (never waits)."""
        if self._started.done() and self._started.exception() is None:
            return str(self._started.result()[0])
        return ""

    def log_epoch(self, stats: Epoch) -> None:
        self._writer.check()
        self._writer._send("epoch", self._started_id, EpochPoint(stats.epoch, stats.metrics()))

    def finish(
        self,
        state: str,
        *,
        result: RunResult | None = None,
        reason: str | None = None,
        epoch: int | None = None,
    ) -> None:
        """End the run: waits until the child has logged its end and its learning-curve PNG."""
        if state not in TRIAL_STATES:
            raise ValueError(f"state must be one of {', '.join(TRIAL_STATES)}, but got {state!r}.")
        if self._finished:
            return
        self._finished = True
        final = final_metrics(result) if result is not None else None
        history = (
            [EpochPoint(s.epoch, s.metrics()) for s in result.history]
            if result is not None and result.history
            else None
        )
        try:
            done = self._writer._call(
                "finish", self._started_id, state, final, history, reason, epoch
            )
            self.lost = list(self._writer._wait(done))
        except TrackingError as exc:
            self.lost = [str(exc)]

    @property
    def _started_id(self) -> int:
        return self._started.call_id  # type: ignore[attr-defined,no-any-return]


# -- the child -------------------------------------------------------------------------------


@dataclass
class _Child:
    """The writer process: one Tracker, the runs of this worker's trials by start-call id."""

    answers: IO[bytes]
    tracker: Tracker | None = None

    def __post_init__(self) -> None:
        self.parents: dict[str, str] = {}
        self.runs: dict[int, TrialRun] = {}
        self.held: dict[int, list[EpochPoint]] = {}  # epochs not written yet, by run
        self.flushed: dict[int, float] = {}  # when each run's epochs were last written
        self.reported = 0  # how much of tracker.lost went to the worker

    def answer(self, call_id: int | None, kind: str, value: Any) -> None:
        _write_frame(self.answers, (call_id, kind, value))

    def serve(self, requests: _FrameReader) -> None:
        """Carry out the calls in order until the worker closes (or is gone).

        Epochs are held back up to `_EPOCH_FLUSH_SECONDS` and go in one log_batch per run: a
        study of short epochs writes a batch per second, not per epoch; anything else that
        comes (a trial's end, a new run) first writes what is held.
        """
        while True:
            held = any(self.held.values())
            message = requests.read(timeout=_EPOCH_FLUSH_SECONDS if held else None)
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
            run_id, model, example, num_classes, tags = args
            tracker.log_model(run_id, model, example=example, num_classes=num_classes, tags=tags)
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
            raise ValueError(f"unknown tracking call {op!r}")
        return False

    @staticmethod
    def _nothing(op: str) -> Any:
        return {"start": ("",), "finish": [], "find_trial_run": None}.get(op)

    def report_lost(self) -> None:
        if self.tracker is not None and len(self.tracker.lost) > self.reported:
            for message in self.tracker.lost[self.reported :]:
                self.answer(None, "lost", message)
            self.reported = len(self.tracker.lost)


_IDLE = object()  # no call within the timeout
_EPOCH_FLUSH_SECONDS = 1.0  # epochs are written at least this often (and at a trial's end)


class _FrameReader:
    """Messages from a file descriptor, with a timeout (select) for writing held epochs."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def read(self, timeout: float | None) -> Any:
        """The next message; `_IDLE` if none came within `timeout`; None at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self.buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= _HEADER.size + size:
                    data = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
                    del self.buffer[: _HEADER.size + size]
                    return pickle.loads(data)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                return _IDLE
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


def main() -> None:
    """`python -m autoall.tracking_writer`: serve the calls on stdin, answer on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop
    with contextlib.suppress(OSError):
        os.nice(10)  # training first: this process uses what the worker leaves idle
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    logging.basicConfig(format="autoall tracking: %(message)s", level=logging.WARNING)
    quiet_mlflow()  # no INFO lines ("Creating initial MLflow database tables...") on stderr
    install_log_masking()  # MLflow's own warnings may quote a tracking URI
    import mlflow  # noqa: F401  (now, while the worker starts; the calls come later)

    _Child(answers).serve(_FrameReader(sys.stdin.fileno()))
    answers.close()
    sys.stderr.flush()
    # every call is written (MLflow's synchronous calls): skip the interpreter's teardown of
    # MLflow, SQLAlchemy and matplotlib, ~0.7 s the worker would wait for at the end
    os._exit(0)


if __name__ == "__main__":
    main()


if TYPE_CHECKING:  # mypy checks that the writer plays the tracker's and the run's roles

    def _roles(writer: TrackingWriter, run: WriterRun) -> tuple[StudyTracker, TrackedRun]:
        return writer, run
