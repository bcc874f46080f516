"""`autoall ui` and `autoall dashboard`: a server in its own process group, on a free port.

The port is checked before the server starts (a busy port is one line and exit code 2, not
another server's link and a silent exit minutes later). The server runs in a new session, so
it and every helper it starts (MLflow's gunicorn/uvicorn workers) form one process group;
Ctrl-C, SIGTERM and SIGHUP to autoall stop that whole group (SIGTERM, then SIGKILL after 10 s).
A watchdog process stops the group the same way when autoall itself dies (SIGKILL, a crash), so
no server is left holding the port.

URLs never go on a command line, where `ps` shows them to every user of the host: the MLflow UI
reads its stores from the environment (MLFLOW_BACKEND_STORE_URI, ...), optuna-dashboard its
storage from a configuration it reads on its standard input (`--from-config /dev/stdin`). The
store is opened before the server starts: one that cannot be (not a database, wrong password)
is one line and exit code 2, not the server's tracebacks.

Quiet unless `--verbose`: no access log (uvicorn's and gunicorn's own settings, and any
request line another server prints), no start-up chatter, each Python warning of the server
on one line, each traceback as its last line; anything else it prints passes through.

`mlflow_ui` and `optuna_dashboard` check what they can before anything starts (the port, the
executable, the storage) and return the `Server` to run with `serve`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from autoall.errors import UserError

HOST = "127.0.0.1"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ServerError(UserError, ValueError):
    """A server cannot be started (port, executable, storage); the message says what to do."""


class PortInUse(ServerError):
    """The port asked for cannot be bound on 127.0.0.1."""


@dataclass(frozen=True)
class Server:
    cmd: list[str]  # never a URL: `ps` shows it to everyone
    lines: list[str]  # shown before it starts: its address, the store, links
    verbose: bool = False  # everything the server prints, as it prints it
    env: dict[str, str] = field(default_factory=dict)  # added to its environment: the URLs
    stdin: str | None = None  # written to its standard input, then closed


_QUIET_UVICORN = "--no-access-log --log-level warning"


def mlflow_ui(port: int, tracking_uri: str | None, *, verbose: bool = False) -> Server:
    """The MLflow UI on 127.0.0.1:`port` for the project's tracking store, with a link to each
    experiment's runs table; quiet (no access log, uvicorn at warning level) unless
    `verbose`."""
    from autoall._secrets import mask_secrets
    from autoall.tracking import quiet_mlflow, resolve_tracking_uri

    check_port(port)
    if not verbose:
        quiet_mlflow()  # no INFO lines of MLflow's, here (opening the store) or in the server
    uri = resolve_tracking_uri(tracking_uri)
    # the stores as `mlflow ui` reads them from the environment; the registry's is MLflow's
    # default, given so that it prints no line saying so
    env = {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_REGISTRY_STORE_URI": uri}
    if uri.startswith("sqlite"):
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = Path("mlruns/artifacts").resolve().as_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui"]
    cmd += ["--host", HOST, "--port", str(port), "--workers", "1"]
    if not verbose and not os.environ.get("MLFLOW_GUNICORN_OPTS"):  # else the user's server
        own = os.environ.get("MLFLOW_UVICORN_OPTS", "")
        cmd += ["--uvicorn-opts", f"{own} {_QUIET_UVICORN}".strip()]
    experiments = _experiment_links(uri, port)
    header = f"MLflow UI: http://{HOST}:{port}  ({mask_secrets(uri)}; Ctrl-C stops it)"
    return Server(cmd, [header, *experiments], verbose=verbose, env=env)


_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # stores MLflow keeps in a database


def _experiment_links(uri: str, port: int) -> list[str]:
    """Links straight to each experiment's training-runs table (MLflow 3 opens GenAI views),
    and for an experiment with study parents, `<name> studies:` the table filtered to them.

    Opens the store first: a ServerError, one line, when it cannot be opened (a file that is
    not a database, a wrong password, a server that is down)."""
    if not uri.startswith(_DATABASES):
        return []
    import mlflow

    from autoall._secrets import mask_secrets, sqlite_file
    from autoall.study import storage_reason
    from autoall.tracking import STUDY_PARENTS, client_uri, studies_link

    try:
        client = mlflow.MlflowClient(client_uri(uri))  # absolute: MLflow keeps a store per URI
        found = client.search_experiments()
    except Exception as exc:
        db = sqlite_file(uri)
        fix = f"move {db} aside" if db is not None else "check the URL, its password and server"
        raise ServerError(
            f"the MLflow store {mask_secrets(uri)} cannot be opened ({storage_reason(exc)}); "
            f"{fix}, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a working store."
        ) from None
    lines = []
    try:
        for e in found:
            if e.name == "Default":
                continue
            eid = e.experiment_id
            lines.append(f"  {e.name}: http://{HOST}:{port}/#/experiments/{eid}/runs")
            if client.search_runs([eid], STUDY_PARENTS, max_results=1):
                lines.append(f"  {e.name} studies: http://{HOST}:{port}/{studies_link(eid)}")
    except Exception:  # the links are a help: the server shows every experiment anyway
        pass
    return lines


def optuna_dashboard(port: int, storage: str | None, *, verbose: bool = False) -> Server:
    """optuna-dashboard on 127.0.0.1:`port` for the study storage (checked reachable first:
    a wrong URL or password is one line, not a server that fails later); quiet (its
    `--quiet`) unless `verbose`."""
    from autoall._secrets import mask_secrets, storage_url
    from autoall.config import DEFAULT_STORAGE
    from autoall.study import StorageError, make_storage

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    if not Path(exe).exists():
        raise ServerError("optuna-dashboard is not installed; pip install 'autoall[dashboard]'.")
    _check_dashboard_version()
    url = storage or DEFAULT_STORAGE
    check_port(port)
    try:
        make_storage(url, create=False)
    except StorageError as exc:
        raise ServerError(mask_secrets(str(exc))) from None
    header = f"optuna-dashboard: http://{HOST}:{port}  ({mask_secrets(url)}; Ctrl-C stops it)"
    # the storage in a configuration read from its standard input (optuna-dashboard 0.20+)
    cmd = [exe, "--from-config", "/dev/stdin", "--host", HOST, "--port", str(port)]
    config = f"[optuna_dashboard]\nstorage = {toml_string(storage_url(url))}\n"
    cmd = cmd if verbose else [*cmd, "--quiet"]
    return Server(cmd, [header], verbose=verbose, stdin=config)


_DASHBOARD_MIN = (0, 20)  # the first to read its storage from a file (`--from-config`)


def _check_dashboard_version() -> None:
    """A ServerError when the optuna-dashboard installed here is older than 0.20, which would
    need the storage URL on its command line."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("optuna-dashboard")
    except PackageNotFoundError:  # another environment's, on PATH: it says so itself if old
        return
    numbers = tuple(int(x) for x in re.findall(r"\d+", installed)[:2])
    if numbers < _DASHBOARD_MIN:
        raise ServerError(
            f"optuna-dashboard {installed} is too old: autoall needs 0.20 or later, which reads "
            "the storage URL from a file instead of its command line (where every user of the "
            "host sees it); pip install -U 'autoall[dashboard]'."
        )


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (JSON's escapes, which TOML shares, and DEL escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


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
    or SIGHUP. Unless `server.verbose`, its output passes through `quiet_lines` to stderr.

    A watchdog stops the server's group if autoall dies first (even by SIGKILL)."""
    watchdog, alarm = _start_watchdog()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
    proc: subprocess.Popen[bytes] | None = None
    relay: threading.Thread | None = None
    try:
        env = {**os.environ, **server.env}
        out = None if server.verbose else subprocess.PIPE  # quiet: through quiet_lines
        if out is not None:
            env["PYTHONUNBUFFERED"] = "1"  # its lines as it prints them
        proc = subprocess.Popen(
            server.cmd,
            start_new_session=True,
            env=env,
            stdin=None if server.stdin is None else subprocess.PIPE,
            stdout=out,
            stderr=None if out is None else subprocess.STDOUT,
        )
        # the group the watchdog is to stop (autoall killed in the microseconds before this
        # line would leave the server running, as it always did)
        with contextlib.suppress(BrokenPipeError):  # the watchdog died: serve without one
            os.write(alarm, f"{proc.pid}\n".encode())
        if server.stdin is not None:
            _feed(proc, server.stdin)
        if proc.stdout is not None:
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
        try:
            if proc is not None:
                stop_group(proc)
            watchdog.kill()  # the group is gone: nothing left to watch
            watchdog.wait()
        finally:
            os.close(alarm)  # a stop cut short (a second Ctrl-C): the watchdog ends it
        if relay is not None:
            relay.join(timeout=5)  # the group is gone: its pipe is at its end


# Reads the server's process group from its standard input, then waits for the end of it: autoall
# holds the other end, so it ends when autoall does, however it ends (autoall kills the watchdog
# first when it stops the server itself). Then it stops the group as `stop_group` would.
_WATCHDOG = """
import os, signal, sys, time
for sig in (signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
line = sys.stdin.buffer.readline()
if line.strip().isdigit():
    group = int(line)
    sys.stdin.buffer.read()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.1)
            os.killpg(group, 0)
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def _start_watchdog() -> tuple[subprocess.Popen[bytes], int]:
    """The watchdog process (in a session of its own) and the pipe end that keeps it waiting."""
    read_end, alarm = os.pipe()  # neither is inherited by the server (close_fds)
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(alarm)
        raise
    finally:
        os.close(read_end)
    return watchdog, alarm


def _feed(proc: subprocess.Popen[bytes], text: str) -> None:
    """Write `text` to the server's standard input and close it (a server that has already
    exited says why itself)."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        try:
            proc.stdin.write(text.encode())
        finally:
            proc.stdin.close()


def _relay(stream: Iterable[bytes]) -> None:
    from autoall._secrets import mask_secrets

    lines = (raw.decode(errors="replace").rstrip("\n") for raw in stream)
    for line in quiet_lines(lines):
        print(mask_secrets(line), file=sys.stderr, flush=True)


_REQUEST = re.compile(r'"(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) \S+ HTTP/[\d.]+" \d{3}')
_WARNING = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$")  # Python's `file:line: Category: text`
_NOTICES = (  # MLflow's start-up notices: the UI listens on 127.0.0.1 only, as autoall says
    "[MLflow] Security middleware enabled with default settings",
    "Registry store URI not provided",
)
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (  # between the tracebacks of a chain of exceptions
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_DETAILS = ("[SQL: ", "[parameters: ", "(Background on this error at: ")  # after SQLAlchemy's


def quiet_lines(lines: Iterable[str]) -> Iterator[str]:
    """A server's output without request lines (an access log) and start-up notices, each
    Python warning as one line (`server warning: Category: text`, its source line dropped),
    each traceback as its exception's line (`server error: Type: message`); every other line
    as it is."""
    after_warning = in_traceback = after_error = in_detail = False
    for line in lines:
        if in_traceback:
            if not line.strip() or line[:1].isspace():  # its frames and source lines
                continue
            in_traceback, after_error = False, True
            yield f"server error: {line}"
            continue
        if after_error:
            if in_detail:  # a statement over several lines, to its ']'
                in_detail = not line.rstrip().endswith("]")
                continue
            if line.startswith(_DETAILS):
                in_detail = line.startswith("[") and not line.rstrip().endswith("]")
                continue
            if not line.strip() or line.startswith(_CHAINED):
                continue
            after_error = False
        if line.startswith(_TRACEBACK):
            in_traceback = True
            continue
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
