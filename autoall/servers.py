"""`autoall ui` and `autoall dashboard`: a server in its own process group, on a free port.

The port is checked before the server starts (a busy port is one line and exit code 2, not
another server's link and a silent exit minutes later). The server runs in a new session, so
it and every helper it starts (MLflow's gunicorn/uvicorn workers) form one process group;
Ctrl-C, SIGTERM and SIGHUP to autoall stop that whole group (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from types import FrameType

HOST = "127.0.0.1"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class PortInUse(ValueError):
    """The port asked for cannot be bound on 127.0.0.1."""


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
