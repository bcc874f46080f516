"""`autoall ui` and `autoall dashboard`: a server in its own process group, on a free port.

The port is checked before the server starts (a busy port is one line and exit code 2, not
another server's link and a silent exit minutes later). The server runs in a new session, so
it and every helper it starts (MLflow's gunicorn/uvicorn workers) form one process group;
Ctrl-C, SIGTERM and SIGHUP to autoall stop that whole group (SIGTERM, then SIGKILL after 10 s).

`mlflow_ui` and `optuna_dashboard` check what they can before anything starts (the port, the
executable, the storage) and return the `Server` to run with `serve`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ServerError(ValueError):
    """A server cannot be started (port, executable, storage); the message says what to do."""


class PortInUse(ServerError):
    """The port asked for cannot be bound on 127.0.0.1."""


@dataclass(frozen=True)
class Server:
    cmd: list[str]
    lines: list[str]  # shown before it starts: its address, the store, links


def mlflow_ui(port: int, tracking_uri: str | None) -> Server:
    """The MLflow UI on 127.0.0.1:`port` for the project's tracking store, with a link to each
    experiment's runs table."""
    from autoall.tracking_store import resolve_tracking_uri
    from autoall.urls import mask_secrets

    check_port(port)
    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", Path("mlruns/artifacts").resolve().as_uri()]
    cmd += ["--host", HOST, "--port", str(port), "--workers", "1"]
    experiments = _experiment_links(uri, port)
    header = f"MLflow UI: http://{HOST}:{port}  ({mask_secrets(uri)}; Ctrl-C stops it)"
    return Server(cmd, [header, *experiments])


def _experiment_links(uri: str, port: int) -> list[str]:
    """Links straight to each experiment's training-runs table (MLflow 3 opens GenAI views)."""
    if not uri.startswith("sqlite"):
        return []
    try:
        import mlflow

        from autoall.tracking_store import client_uri

        client = mlflow.MlflowClient(client_uri(uri))  # absolute: MLflow keeps a store per URI
        return [
            f"  {e.name}: http://127.0.0.1:{port}/#/experiments/{e.experiment_id}/runs"
            for e in client.search_experiments()
            if e.name != "Default"
        ]
    except Exception:
        return []


def optuna_dashboard(port: int, storage: str | None) -> Server:
    """optuna-dashboard on 127.0.0.1:`port` for the study storage (checked reachable first:
    a wrong URL or password is one line, not a server that fails later)."""
    from autoall.options import DEFAULT_STORAGE
    from autoall.storage import StorageError, make_storage
    from autoall.urls import mask_secrets, storage_url

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    if not Path(exe).exists():
        raise ServerError("optuna-dashboard is not installed; pip install 'autoall[dashboard]'.")
    url = storage or DEFAULT_STORAGE
    check_port(port)
    try:
        make_storage(url, create=False)
    except StorageError as exc:
        raise ServerError(mask_secrets(str(exc))) from None
    header = f"optuna-dashboard: http://{HOST}:{port}  ({mask_secrets(url)}; Ctrl-C stops it)"
    return Server([exe, storage_url(url), "--host", HOST, "--port", str(port)], [header])


def check_port(port: int, *, option: str = "--port") -> None:
    """Bind 127.0.0.1:`port` once (and let it go) or raise PortInUse with what to do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {HOST} is in use (another server, or an `autoall ui` still "
                    f"running); stop it or pass another {option}."
                ) from None
            raise PortInUse(
                f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); pass another {option}."
            ) from None


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def serve(cmd: list[str]) -> tuple[int, bool]:
    """Run the server `cmd` until it exits or autoall is told to stop; returns (exit code,
    whether autoall stopped it): the server's own code, 0 after Ctrl-C, 128 + the signal after
    SIGTERM or SIGHUP."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
        return proc.wait(), False
    except KeyboardInterrupt:
        return 0, True
    except _Stop as stop:
        return 128 + stop.signum, True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of `proc`, SIGKILL what is left after 10 s, reap `proc`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the server itself; its helpers exit on their own
        time.sleep(0.1)
    if group_alive(proc.pid):  # a helper ignored SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (zombies of other parents included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
