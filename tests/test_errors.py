"""The one mapping from exceptions to exit codes and messages (autoall/errors.py)."""

from __future__ import annotations

import contextlib
import signal

import pytest

from autoall import errors
from autoall.errors import exit_code, hint, message
from autoall.report._report import ReportError
from autoall.study._storage import StorageError
from autoall.tracking._tracker import TrackingError
from autoall.training._loop import NonFiniteLossError, TrainingOOMError


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KeyboardInterrupt(), 130),
        (ValueError("bad key"), 2),
        (StorageError("wrong password"), 2),  # a RuntimeError a user can fix
        (TrackingError("server down"), 2),
        (ReportError("no study"), 2),
        (NonFiniteLossError(epoch=1, step=3, value=float("nan")), 1),
        (TrainingOOMError(batch_size=128, device="cuda"), 1),
        (RuntimeError("workers failed"), 1),
        (KeyError("x"), None),  # a bug: the traceback is the message
        (AttributeError("x"), None),
    ],
)
def test_each_failure_has_one_exit_code(exc: BaseException, code: int | None) -> None:
    assert exit_code(exc) == code


def test_a_failed_run_carries_its_hint_and_an_input_error_does_not() -> None:
    for exc, shown in ((RuntimeError("diverged"), True), (ValueError("bad key"), False)):
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
