"""`autoall ui` and `autoall dashboard`: a server in its own process group, on a free port.

The port is checked before the server starts (a busy port is one line and exit code 2, not
another server's link and a silent exit minutes later). The server runs in a new session, so
it and every helper it starts (MLflow's gunicorn/uvicorn workers) form one process group;
Ctrl-C, SIGTERM and SIGHUP to autoall stop that whole group (SIGTERM, then SIGKILL after 10 s).

Quiet unless `--verbose`: no access log (uvicorn's and gunicorn's own settings, and any
request line another server prints), no start-up chatter, each Python warning of the server
on one line; its errors and anything else it prints pass through.

`mlflow_ui` and `optuna_dashboard` check what they can before anything starts (the port, the
executable, the storage) and return the `Server` to run with `serve`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
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
    verbose: bool = False  # everything the server prints, as it prints it


_QUIET_UVICORN = "--no-access-log --log-level warning"


def mlflow_ui(port: int, tracking_uri: str | None, *, verbose: bool = False) -> Server:
    """The MLflow UI on 127.0.0.1:`port` for the project's tracking store, with a link to each
    experiment's runs table; quiet (no access log, uvicorn at warning level) unless
    `verbose`."""
    from autoall.tracking_store import resolve_tracking_uri
    from autoall.urls import mask_secrets

    check_port(port)
    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--registry-store-uri", uri]  # MLflow's default, without its line saying so
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", Path("mlruns/artifacts").resolve().as_uri()]
    cmd += ["--host", HOST, "--port", str(port), "--workers", "1"]
    if not verbose and not os.environ.get("MLFLOW_GUNICORN_OPTS"):  # else the user's server
        own = os.environ.get("MLFLOW_UVICORN_OPTS", "")
        cmd += ["--uvicorn-opts", f"{own} {_QUIET_UVICORN}".strip()]
    experiments = _experiment_links(uri, port)
    header = f"MLflow UI: http://{HOST}:{port}  ({mask_secrets(uri)}; Ctrl-C stops it)"
    return Server(cmd, [header, *experiments], verbose=verbose)


STUDY_PARENTS = "tags.\"autoall.role\" = 'study'"  # the runs filter of the study parents


def studies_link(experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment filtered to its study parent runs, as a URL
    fragment: every study (ALL, tuned baseline, each replicate) on the first screen, however
    many trials are newer than them (the UI reads the filter from `searchFilter`)."""
    query = urllib.parse.urlencode({"searchFilter": STUDY_PARENTS}, quote_via=urllib.parse.quote)
    return f"#/experiments/{experiment_id}/runs?{query}"


def _experiment_links(uri: str, port: int) -> list[str]:
    """Links straight to each experiment's training-runs table (MLflow 3 opens GenAI views),
    and for an experiment with study parents, `<name> studies:` the table filtered to them."""
    if not uri.startswith("sqlite"):
        return []
    try:
        import mlflow

        from autoall.tracking_store import client_uri

        client = mlflow.MlflowClient(client_uri(uri))  # absolute: MLflow keeps a store per URI
        lines = []
        for e in client.search_experiments():
            if e.name == "Default":
                continue
            eid = e.experiment_id
            lines.append(f"  {e.name}: http://{HOST}:{port}/#/experiments/{eid}/runs")
            if client.search_runs([eid], STUDY_PARENTS, max_results=1):
                lines.append(f"  {e.name} studies: http://{HOST}:{port}/{studies_link(eid)}")
        return lines
    except Exception:
        return []


def optuna_dashboard(port: int, storage: str | None, *, verbose: bool = False) -> Server:
    """optuna-dashboard on 127.0.0.1:`port` for the study storage (checked reachable first:
    a wrong URL or password is one line, not a server that fails later); quiet (its
    `--quiet`) unless `verbose`."""
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
    cmd = [exe, storage_url(url), "--host", HOST, "--port", str(port)]
    return Server(cmd if verbose else [*cmd, "--quiet"], [header], verbose=verbose)


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


def serve(server: Server) -> tuple[int, bool]:
    """Run `server` until it exits or autoall is told to stop; returns (exit code, whether
    autoall stopped it): the server's own code, 128 + the signal after Ctrl-C (130), SIGTERM
    or SIGHUP. Unless `server.verbose`, its output passes through `quiet_lines` to stderr."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
    proc: subprocess.Popen[bytes] | None = None
    relay: threading.Thread | None = None
    try:
        if server.verbose:
            proc = subprocess.Popen(server.cmd, start_new_session=True)
        else:  # its lines as it prints them, through quiet_lines
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(server.cmd, start_new_session=True, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            relay = threading.Thread(target=_relay, args=(proc.stdout,), daemon=True)
            relay.start()
        return proc.wait(), False
    except KeyboardInterrupt:
        return 128 + signal.SIGINT, True
    except _Stop as stop:
        return 128 + stop.signum, True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            stop_group(proc)
        if relay is not None:
            relay.join(timeout=5)  # the group is gone: its pipe is at its end


def _relay(stream: Iterable[bytes]) -> None:
    lines = (raw.decode(errors="replace").rstrip("\n") for raw in stream)
    for line in quiet_lines(lines):
        print(line, file=sys.stderr, flush=True)


_REQUEST = re.compile(r'"(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) \S+ HTTP/[\d.]+" \d{3}')
_WARNING = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$")  # Python's `file:line: Category: text`
_NOTICES = (  # MLflow's start-up notices: the UI listens on 127.0.0.1 only, as autoall says
    "[MLflow] Security middleware enabled with default settings",
    "Registry store URI not provided",
)


def quiet_lines(lines: Iterable[str]) -> Iterator[str]:
    """A server's output without request lines (an access log) and start-up notices, each
    Python warning as one line (`server warning: Category: text`, its source line dropped);
    every other line as it is."""
    after_warning = False
    for line in lines:
        if after_warning and line[:1].isspace():  # the warning's source line
            after_warning = False
            continue
        after_warning = False
        warning = _WARNING.match(line)
        if warning:
            after_warning = True
            yield f"server warning: {warning.group(1)}: {warning.group(2)}"
        elif not _REQUEST.search(line) and not line.startswith(_NOTICES):
            yield line


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
