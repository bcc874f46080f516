"""MLflow tracking off the trial's path: a writer process owns the MLflow client.

`autoall study run` hands every tracking call to a child process (`main`, run by `_CHILD`)
through a pipe (a `multiprocessing.connection.Connection` each way, on the child's stdin and
stdout) and goes on training. The child imports MLflow, opens the store and makes the calls in
order, with the retries of `autoall.tracking._store`; on a machine
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

If the worker dies, the child sees its pipe close, finishes what it got (a trial's run is made
even when the worker was killed before it learnt the run's id) and exits without a word: it has
nobody left to answer. What the child does with each call: autoall/tracking/_child.py.

Before the study starts, `check_artifact_location` refuses a SQLite store whose experiment keeps
its artifacts in a local folder that is gone (the project folder moved: MLflow keeps absolute
artifact paths and would silently make the old folder again and write there).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from autoall._secrets import install_log_masking, sqlite_file
from autoall.errors import InvalidValue
from autoall.tracking._child import _Child, _receive, _send
from autoall.tracking._roles import Epoch
from autoall.tracking._run import TRIAL_STATES, EpochPoint, final_metrics
from autoall.tracking._store import client_uri, quiet_mlflow, resolve_tracking_uri
from autoall.tracking._tracker import TrackingError, check_server

if TYPE_CHECKING:
    from autoall.tracking._roles import StudyTracker, TrackedRun
    from autoall.training import RunResult

log = logging.getLogger("autoall.tracking")
_WAIT_SLICE = 1.0  # seconds between checks that the child is still alive while waiting


def check_artifact_location(uri: str, experiment: str) -> None:
    """Raise `TrackingError` if the SQLite store `uri` has experiment `experiment` keeping its
    artifacts in a local folder outside the store's folder that is gone, parent folder and all:
    the project folder was moved, and MLflow, which keeps that absolute path, would make it
    again and write every artifact there. Says where and what to do, in one line.

    Read with sqlite3 from MLflow's `experiments` table, in milliseconds, before anything is
    stored: opening an MLflow client here would cost the seconds the writer process saves.
    Anything else (no such file or experiment yet, a server, a remote artifact store, a
    store it cannot read) passes: the writer process reports what is wrong with the store.
    """
    import sqlite3

    db = sqlite_file(uri)
    if db is None or not db.is_file():
        return
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        ) as connection:
            rows = connection.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
            ).fetchall()
    except sqlite3.Error:
        return
    store = db.resolve().parent
    paths = [_local_path(location or "") for (location,) in rows]
    gone = [
        path
        for path in paths
        if path is not None
        and not path.is_relative_to(store)
        and not path.exists()
        and not path.parent.exists()
    ]
    if not gone or len(gone) < len(rows):  # no such experiment, or one that is in place
        return
    path = gone[0]
    moved = store / path.name
    target = moved if moved.exists() else Path("NEW_FOLDER")
    raise TrackingError(
        f"MLflow experiment {experiment!r} in {db} keeps its artifacts in {path}, which is gone "
        "(was the project folder moved?); MLflow would make that folder again and write there. "
        f"Move the project back, or link the old place to the new one (mkdir -p {path.parent} "
        f"&& ln -s {target} {path}), then run the command again."
    )


def _local_path(location: str) -> Path | None:
    """The local folder of an artifact location (`file:///...` or an absolute path), else None."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if not parts.scheme and location.startswith("/"):
        return Path(location)
    return None


@dataclass
class _Process:
    """The child and the two ends of its pipes that the worker holds."""

    proc: subprocess.Popen[bytes]
    to_child: Connection
    from_child: Connection

    def close(self) -> None:
        self.to_child.close()
        self.from_child.close()


# The child's entry point. Not `-m autoall.tracking._writer`: the package imports this module
# before runpy would run it as __main__, so it would run twice (and runpy warns on stderr).
_CHILD = "from autoall.tracking._writer import main; main()"


def _spawn() -> _Process:
    """The child; it imports MLflow at once, then waits for its calls."""
    requests, to_child = multiprocessing.Pipe(duplex=False)
    from_child, answers = multiprocessing.Pipe(duplex=False)
    with requests, answers:  # the child's ends: its stdin and stdout
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=requests.fileno(),
            stdout=answers.fileno(),
            start_new_session=True,  # Ctrl-C reaches the worker only; the child drains, exits
        )
    return _Process(proc, to_child, from_child)


_prestarted: _Process | None = None


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
            unused.proc.kill()
            unused.proc.wait()
            unused.close()


def _take_prestarted() -> _Process | None:
    global _prestarted
    proc, _prestarted = _prestarted, None
    return proc


class TrackingWriter:
    """The `Tracker` of one worker, in a child process; same methods, answers only when needed.

    Parent runs are named by key (`parent_run` returns it at once; the child finds or creates
    the run); child runs by the `WriterRun` that `start_trial` returns.
    """

    def __init__(self, child: _Process, *, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self._child = child
        self._proc = child.proc
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
        self,
        run_id: str,
        model: Any,
        *,
        example: Any,
        num_classes: int,
        tags: dict[str, str],
        name: str,
    ) -> None:
        """The child logs `model` (a CPU `ServingModel`, pickled through the pipe) into run
        `run_id` as the logged model `name`; the worker goes on at once (the export takes
        seconds, in the child)."""
        self._send("log_model", run_id, model, example, num_classes, tags, name)

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
                self._child.to_child.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=5)
            self._child.from_child.close()

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
                _send(self._child.to_child, message)
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
        while True:
            message = _receive(self._child.from_child)
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
            raise InvalidValue(
                f"state must be one of {', '.join(TRIAL_STATES)}, but got {state!r}."
            )
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


def main() -> None:
    """The child (`_CHILD`): serve the calls on stdin, answer on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop
    with contextlib.suppress(OSError):
        os.nice(10)  # training first: this process uses what the worker leaves idle
    requests = Connection(0, writable=False)
    answers = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    logging.basicConfig(format="autoall tracking: %(message)s", level=logging.WARNING)
    quiet_mlflow()  # no INFO lines ("Creating initial MLflow database tables...") on stderr
    # MLflow logs every failed SQLite write (a full disk: each epoch) with its traceback before
    # raising it; the call's one-line reason reaches the user as lost logging instead
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    install_log_masking()  # MLflow's own warnings may quote a tracking URI
    import mlflow  # noqa: F401  (now, while the worker starts; the calls come later)

    logging.raiseExceptions = False  # a stderr gone with its reader: no "Logging error" dumps
    _Child(answers).serve(requests)
    with contextlib.suppress(OSError):
        answers.close()
        sys.stderr.flush()
    # every call is written (MLflow's synchronous calls): skip the interpreter's teardown of
    # MLflow, SQLAlchemy and matplotlib, ~0.7 s the worker would wait for at the end
    os._exit(0)


if TYPE_CHECKING:  # mypy checks that the writer plays the tracker's and the run's roles

    def _roles(writer: TrackingWriter, run: WriterRun) -> tuple[StudyTracker, TrackedRun]:
        return writer, run
