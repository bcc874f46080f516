"""The one mapping from exceptions to exit codes and messages (autoall/errors.py)."""

from __future__ import annotations

import contextlib
import signal

import pytest

from autoall import errors
from autoall import errors as autoall_errors
from autoall.errors import InvalidValue, RunFailed, exit_code, hint, message
from autoall.report._report import ReportError
from autoall.study._storage import StorageError
from autoall.tracking._tracker import TrackingError
from autoall.training._loop import NonFiniteLossError, TrainingOOMError


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KeyboardInterrupt(), 130),
        (InvalidValue("bad key"), 2),  # a ValueError autoall raised about the user's input
        (StorageError("wrong password"), 2),  # a RuntimeError a user can fix
        (TrackingError("server down"), 2),
        (ReportError("no study"), 2),
        (NonFiniteLossError(epoch=1, step=3, value=float("nan")), 1),
        (TrainingOOMError(batch_size=128, device="cuda"), 1),
        (RunFailed("workers failed"), 1),
        (ValueError("bad key"), None),  # a library's, never translated: a bug in autoall
        (RuntimeError("CUDA error"), None),
        (KeyError("x"), None),  # a bug: the traceback is the message
        (AttributeError("x"), None),
    ],
)
def test_each_failure_has_one_exit_code(exc: BaseException, code: int | None) -> None:
    assert exit_code(exc) == code


def test_a_failed_run_carries_its_hint_and_an_input_error_does_not() -> None:
    for exc, shown in ((RunFailed("diverged"), True), (InvalidValue("bad key"), False)):
        with pytest.raises(type(exc)) as caught, hint(failed="Resume with:\n  autoall x"):
            raise exc
        assert message(caught.value).startswith(f"Error: {exc}")
        assert ("Resume with:\n  autoall x" in message(caught.value)) is shown


def test_ctrl_c_says_what_was_kept() -> None:
    with pytest.raises(KeyboardInterrupt) as caught, hint(interrupted="runs are kept."):
        raise KeyboardInterrupt
    assert message(caught.value) == "\nInterrupted; runs are kept."
    assert message(KeyboardInterrupt()) == "\nInterrupted."


def test_messages_mask_passwords() -> None:
    exc = StorageError("cannot open postgresql://ann:s3cret@db:5432/optuna")
    assert "s3cret" not in message(exc)
    assert message(exc).startswith("Error: cannot open postgresql://ann:")


def test_a_remembered_ctrl_c_is_raised_again_inside_the_block_and_forgotten_after_it() -> None:
    """A Ctrl-C swallowed inside the block is raised at the next check; after the block the
    previous handler is back and the count is gone, so a later command in the same process
    (a test, a notebook) is not interrupted by an old Ctrl-C."""
    previous = signal.getsignal(signal.SIGINT)
    with errors.remember_interrupts():
        errors.raise_if_interrupted()  # nothing received yet
        with contextlib.suppress(KeyboardInterrupt):  # dropped, as a finalizer drops it
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            errors.raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is previous
    errors.raise_if_interrupted()  # forgotten after the block
    with errors.remember_interrupts():
        errors.raise_if_interrupted()  # a new block starts at zero


def test_every_error_autoall_raises_has_one_root_and_says_whose_it_is() -> None:
    """Each exception class in the package derives from AutoallError, through UserError (exit 2)
    or RunFailed (exit 1); private control-flow exceptions (a leading underscore) excepted."""
    import ast
    import importlib
    from pathlib import Path

    from autoall.errors import AutoallError, RunFailed, UserError

    root = Path(autoall_errors.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                parts = path.relative_to(root.parent).with_suffix("").parts
                module = importlib.import_module(".".join(p for p in parts if p != "__init__"))
                cls = getattr(module, node.name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    assert len(found) >= 15
    for cls in set(found) - {AutoallError}:
        assert issubclass(cls, UserError | RunFailed), cls
        assert issubclass(cls, AutoallError)
