"""What a failure means to the user: one mapping from exceptions to exit codes and messages.

| exception                                    | exit code | printed                            |
|----------------------------------------------|-----------|------------------------------------|
| `UserError` (bad input: `InvalidValue`, ...) | 2         | `Error: <message>` (click's usage) |
| `RunFailed` (a run failed: NaN loss, OOM)    | 1         | `Error: <message>` and the hints   |
| `KeyboardInterrupt` (Ctrl-C)                 | 130       | `Interrupted; <hint>`              |
| anything else (`ValueError`, `KeyError`, ...)| traceback | a bug in autoall                   |

Every error autoall raises on purpose derives from `AutoallError`, through `UserError` or
`RunFailed`; an exception from a library (torch, Optuna, MLflow, PyYAML) is translated into one
of them where autoall catches it, with the file, key or URL it concerns, never by its type here.

A command adds what the user should do next with `hint(...)`: the hint rides on the exception
as a PEP 678 note. Every message goes through `mask_secrets`, so no password reaches the
terminal. A leaf module: every package's exception classes derive from these without importing
anything heavy.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
USAGE = 2  # click's exit code for usage errors
FAILED = 1
_INTERRUPT_NOTE = "autoall-interrupted: "  # prefix of the note shown on Ctrl-C only


class AutoallError(Exception):
    """The root of every error autoall raises on purpose; `exit_code` says whose it is."""

    exit_code: int = FAILED


class UserError(AutoallError):
    """Input or an environment the user can fix: a file, a key, a URL, a password, a folder.

    Errors that mean this derive from it and keep their place in Python's hierarchy as well
    (`StorageError(UserError, RuntimeError)`); they exit with code 2."""

    exit_code = USAGE


class InvalidValue(UserError, ValueError):
    """A value autoall does not accept (an argument, an option, a study file's key): a
    `ValueError`, as Python's callers expect, that the command line reports in one line."""


class RunFailed(AutoallError):
    """A run that failed once it started (a non-finite loss, out of memory, a full disk, workers
    that died): exit code 1, with what to do next."""

    exit_code = FAILED


def exit_code(exc: BaseException) -> int | None:
    """The exit code for `exc`, or None when it is a bug (the traceback is the message)."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, AutoallError):
        return exc.exit_code
    return None


def message(exc: BaseException) -> str:
    """What the user reads for `exc` (secrets masked), hints included."""
    from autoall._secrets import mask_secrets

    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    if isinstance(exc, KeyboardInterrupt):
        said = [n.removeprefix(_INTERRUPT_NOTE) for n in notes if n.startswith(_INTERRUPT_NOTE)]
        text = "\nInterrupted" + ("; " + " ".join(said) if said else ".")
    else:
        shown = [n for n in notes if not n.startswith(_INTERRUPT_NOTE)]
        text = "Error: " + "\n".join([str(exc), *shown])
    return mask_secrets(text)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """`exc` as one line for a log, a run's tag or a warning: its type and the first line of its
    message, secrets masked, at most `limit` characters."""
    from autoall._secrets import mask_secrets

    text = str(exc).strip().splitlines()
    return mask_secrets(f"{type(exc).__name__}: {text[0] if text else ''}")[:limit]


@contextlib.contextmanager
def hint(*, failed: str | None = None, interrupted: str | None = None) -> Iterator[None]:
    """Tell the user what to do next when the block fails (`failed`: a run failed, exit code 1)
    or is interrupted (`interrupted`, after "Interrupted; "). Input errors get no hint: the
    message itself says what to fix."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if interrupted:
            exc.add_note(_INTERRUPT_NOTE + interrupted)
        raise
    except Exception as exc:
        if failed and exit_code(exc) == FAILED:
            exc.add_note(failed)
        raise


_interrupts = [0]  # Ctrl-Cs received inside the innermost `remember_interrupts` block


@contextlib.contextmanager
def remember_interrupts() -> Iterator[None]:
    """Inside the block, Ctrl-C raises KeyboardInterrupt as always and is remembered, so that one
    Python drops (raised inside a `__del__` or a weakref callback while a cohort trains) is raised
    again at the next epoch by `raise_if_interrupted`. The count starts at zero and the previous
    handler comes back when the block ends, so nothing outlives it. The main thread only; a plain
    block elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, count = signal.getsignal(signal.SIGINT), _interrupts[0]
    _interrupts[0] = 0
    signal.signal(signal.SIGINT, _remembered)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupts[0] = count


def _remembered(signum: int, frame: object) -> None:
    _interrupts[0] += 1
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if this process received a Ctrl-C (`remember_interrupts`): a loop
    calls it once per epoch, so a swallowed Ctrl-C cannot let training run on."""
    if _interrupts[0]:
        raise KeyboardInterrupt
