"""A checkpoint on disk: written without following links, read back checked, its leftovers swept.

`write` puts a checkpoint into a temp file beside its final path, created exclusively
(`O_CREAT | O_EXCL | O_NOFOLLOW`) under a name no one can guess,
`.<name>~<host>~<pid>~<random>.tmp`, and renames it over the final path: a symbolic link planted
at either name is never followed (the rename replaces a link at the final path, not its target)
and a reader never sees half a checkpoint. A checkpoint only saves time, so one that cannot be
written (a full disk, a read-only folder, a directory in its place) is one warning naming the
path, the reason and what to do, and the run goes on without it; its temp file is removed on
every failure path, and the failure also sweeps the folder's stale temp files.

`read` opens only a regular file, never through a link, and loads it with
`torch.load(weights_only=True)`; `mismatch` says why a loaded state cannot be this run's (its
epoch, its history, its tensors' shapes, its schedule). What cannot be used is one warning, and
the run starts from epoch 1. `sweep_temp_files` deletes the temp files of writers that are gone
(a process that no longer exists on this host, or a file untouched for an hour); `remove`
deletes a checkpoint, and a folder that refuses it is a warning, never an error.

`save_run` and `restore_run` are the one checkpoint format, of a run alone and of a cohort
member alike: epoch, model, optimizer, scheduler, the batch generator's and torch's random
states, the history and the epoch the target was reached.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import pickle
import re
import secrets
import socket
import stat
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from autoall import _timing as timing
from autoall.training._types import EpochStats, RunResult

log = logging.getLogger("autoall.checkpoint")

STALE_SECONDS = 3600.0  # a temp file untouched this long is left by a writer that is gone
GRACE_SECONDS = 60.0  # ... or this long, when its process is gone from this host
_TEMP = re.compile(r"\.(?P<name>.+)~(?P<host>[^~]*)~(?P<pid>\d{1,9})~[0-9a-f]{16}\.tmp")
_OLD_TEMP = re.compile(r"\.trial-\d+\.pt\.\d+\.tmp")  # a study's, written before: host unknown
_FIELDS = tuple(EpochStats.__dataclass_fields__)
_KEYS = {"epoch", "model", "optimizer", "scheduler", "generator", "torch_rng", "history",
         "target_epoch", "target_seconds"}  # fmt: skip
_warned: set[tuple[str, str]] = set()  # (what, path): one warning until the path works again


def temp_name(name: str) -> str:
    """A fresh temp file name for the checkpoint `name`, in its folder: the writer's host and
    process (for the sweep), and 64 random bits."""
    return f".{name}~{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(8)}.tmp"


class _Sink:
    """The file torch.save writes to, keeping the OSError (e.g. a full disk) that torch turns
    into "unexpected pos"."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return int(self.file.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def write(path: Path, state: dict[str, Any]) -> bool:
    """Write `state` (tensors and plain data) to `path`, whole or not at all; return whether it
    was written. Failing is one warning (once until a write to `path` works again)."""
    folder: int | None = None
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        name = temp_name(path.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o666, dir_fd=folder)
        temp = name  # ours from here on: removed unless renamed into place
        with os.fdopen(fd, "wb") as file:
            sink = _Sink(file)
            try:
                torch.save(state, cast(IO[bytes], sink))  # torch needs only `write`
            except RuntimeError as exc:
                raise sink.error or exc from None
        os.replace(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        temp = None
    except (OSError, RuntimeError) as exc:
        message = f"not written: {_reason(exc)}; the run goes on without it{_what_to_do(exc)}"
        _warn_once("write", path, message)
        written = False
    else:
        _warned.discard(("write", str(path)))
        written = True
    finally:  # Ctrl-C included: no temp file stays behind
        if temp is not None and folder is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)
        if folder is not None:
            os.close(folder)
    if not written:
        sweep_temp_files(path.parent)  # a killed writer's temp file may be what filled the disk
    return written


def read(path: Path, *, map_location: torch.device) -> dict[str, Any] | None:
    """The state stored at `path`, or None: none there, or one that is not a regular file or
    not a checkpoint (warned). Never follows a link, never waits on a FIFO."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        link = exc.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink()
        ignore(path, "it is a symbolic link" if link else _reason(exc))
        return None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        ignore(path, "it is a directory" if stat.S_ISDIR(mode) else "it is not a regular file")
        return None
    with os.fdopen(fd, "rb") as file:
        try:
            state = torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # not torch's format, or not tensors and plain data
            ignore(path, "not a checkpoint: torch.load refused it (UnpicklingError)")
            return None
        except Exception as exc:  # whatever else a damaged file makes torch.load raise
            ignore(path, f"not a checkpoint: {_reason(exc)}")
            return None
    if not isinstance(state, dict):
        ignore(path, f"not a checkpoint: it holds a {type(state).__name__}")
        return None
    return state


def ignore(path: Path, reason: str) -> None:
    """The one warning for a checkpoint a run cannot use: it starts from epoch 1."""
    log.warning("checkpoint %s ignored (%s); training starts from epoch 1.", path, reason)


def remove(path: Path) -> bool:
    """Delete the checkpoint `path` (a directory there is not one: kept); return whether it is
    gone. A folder that refuses is one warning."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        _warn_once("remove", path, f"not removed: {_reason(exc)}{_what_to_do(exc)}")
        return False
    return True


def sweep_temp_files(folder: Path, *, now: float | None = None) -> list[Path]:
    """Delete the checkpoint temp files in `folder` whose writer is gone: its process no longer
    exists on this host (and the file is over a minute old), or the file is untouched for an
    hour; return them. Other files are never touched."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    swept: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return swept
    for name in sorted(names):
        match = _TEMP.fullmatch(name)
        if match is None and _OLD_TEMP.fullmatch(name) is None:
            continue
        path = folder / name
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            continue
        age = now - info.st_mtime
        gone = match is not None and match["host"] == host and not _alive(int(match["pid"]))
        if age > STALE_SECONDS or (gone and age > GRACE_SECONDS):
            try:
                path.unlink()
            except OSError:
                continue
            swept.append(path)
            log.info("deleted %s, a checkpoint's temp file left by a writer that is gone", path)
    return swept


def mismatch(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    epochs: int,
    steps_per_epoch: int,
) -> str | None:
    """Why `state` cannot be this run's checkpoint, or None: its epoch is an integer within
    [0, epochs], its history has that many epochs, its tensors have the model's names and
    shapes, its optimizer the model's parameters, its schedule that many epochs' steps and its
    random states their sizes. Checked before anything is loaded, so nothing is half-loaded."""
    missing = sorted(_KEYS - set(state))
    if missing:
        return f"it lacks {', '.join(missing)}"
    epoch = state["epoch"]
    if not _is_int(epoch) or not 0 <= epoch <= epochs:
        return f"epoch must be an integer from 0 to {epochs}, but it is {epoch!r}"
    try:
        return (
            _history(state["history"], epoch)
            or _target(state["target_epoch"], state["target_seconds"], epoch)
            or _tensors("model", state["model"], model.state_dict())
            or _optimizer(state["optimizer"], optimizer)
            or _scheduler(state["scheduler"], scheduler, epoch * steps_per_epoch)
            or _rng("generator", state["generator"], generator.get_state())
            or _rng("torch_rng", state["torch_rng"], torch.get_rng_state())
        )
    except Exception as exc:  # e.g. a tensor where a number belongs: its comparison raises
        return f"it holds something no checkpoint holds ({_reason(exc)})"


def _history(history: Any, epoch: int) -> str | None:
    if not isinstance(history, list) or len(history) != epoch:
        size = len(history) if isinstance(history, list) else type(history).__name__
        return f"its history must hold {epoch} epochs, but it holds {size}"
    for i, entry in enumerate(history, start=1):
        if not isinstance(entry, dict) or tuple(entry) != _FIELDS:
            return f"history entry {i} is not an epoch's record"
        if not _is_int(entry["epoch"]) or entry["epoch"] != i:
            return f"history entry {i} is not epoch {i}'s record"
        numbers = [v for k, v in entry.items() if k not in ("epoch", "all_lr")]
        if not all(_is_real(v) for v in numbers):
            return f"history entry {i} holds a value that is not a number"
        if entry["all_lr"] is not None and not _is_real(entry["all_lr"]):
            return f"history entry {i} holds a value that is not a number"
        if not all(0 <= entry[k] <= 1 for k in ("train_acc", "val_acc")):
            return f"history entry {i} holds an accuracy outside [0, 1]"
    return None


def _target(target_epoch: Any, target_seconds: Any, epoch: int) -> str | None:
    if target_epoch is not None and not (_is_int(target_epoch) and 1 <= target_epoch <= epoch):
        return f"target_epoch must be empty or from 1 to {epoch}, but it is {target_epoch!r}"
    seconds_ok = _is_real(target_seconds) and math.isfinite(target_seconds) and target_seconds >= 0
    if target_seconds is not None and not seconds_ok:
        return f"target_seconds must be empty or a time, but it is {target_seconds!r}"
    return None


def _tensors(what: str, saved: Any, live: dict[str, torch.Tensor]) -> str | None:
    if not isinstance(saved, dict) or set(saved) != set(live):
        return f"its {what} tensors are not this model's"
    for name, value in live.items():
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != value.shape:
            shape = getattr(saved[name], "shape", type(saved[name]).__name__)
            return f"{what} tensor {name} has shape {tuple(shape)}, not {tuple(value.shape)}"
    return None


def _optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> str | None:
    live = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        return "its optimizer state is not torch's"
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        return "its optimizer has other parameter groups than this model"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in live["param_groups"] for i in g["params"]]
    shapes = {i: p.shape for i, p in zip(ids, params, strict=True)}
    for mine, theirs in zip(live["param_groups"], groups, strict=True):
        if not isinstance(theirs, dict) or set(theirs) != set(mine):
            return "its optimizer has other parameter groups than this model"
        if not isinstance(theirs["params"], list) or theirs["params"] != mine["params"]:
            return "its optimizer has other parameters than this model"
        for key, value in mine.items():
            if _is_real(value) and not (_is_real(theirs[key]) and math.isfinite(theirs[key])):
                return f"its optimizer's {key} is {theirs[key]!r}, not a number"
    for key, entry in saved["state"].items():
        if key not in shapes or not isinstance(entry, dict):
            return "its optimizer state is for other parameters than this model's"
        for name, value in entry.items():
            shape = shapes[key]
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shape:
                return f"its optimizer's {name} has shape {tuple(value.shape)}, not {tuple(shape)}"
    return None


def _scheduler(
    saved: Any, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int
) -> str | None:
    live = scheduler.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(live):
        return "its schedule is not this run's"
    if not _is_int(saved["last_epoch"]) or saved["last_epoch"] != steps:
        return f"its schedule is at step {saved['last_epoch']!r}, not {steps}"
    for key in ("base_lrs", "_last_lr"):
        values = saved.get(key)
        if not isinstance(values, list) or len(values) != len(live[key]):
            return f"its schedule's {key} is not this run's"
        if not all(_is_real(v) and math.isfinite(v) for v in values):
            return f"its schedule's {key} holds a value that is not a number"
    return None


def _rng(what: str, saved: Any, live: torch.Tensor) -> str | None:
    if (
        not isinstance(saved, torch.Tensor)
        or saved.dtype != torch.uint8
        or saved.shape != live.shape
    ):
        return f"its {what} state is not a random state of this device"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's counts)."""
    if pid <= 0:
        return False  # no process a writer could have been (0: signals the process group)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _what_to_do(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return " (free space there, or choose another --checkpoint-dir)"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return " (make the folder writable, or choose another --checkpoint-dir)"
    if code in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
        return " (something else is in its place: move it away)"
    return ""


def _warn_once(what: str, path: Path, message: str) -> None:
    if (what, str(path)) not in _warned:
        _warned.add((what, str(path)))
        log.warning("checkpoint %s %s.", path, message)


@timing.span("epoch.checkpoint")
def save_run(
    path: str | Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    result: RunResult,
) -> None:
    """Tensors and plain data only, so `torch.load(weights_only=True)` reads it back; written
    safely or not at all, with a warning (`write`)."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [asdict(s) for s in result.history],
        "target_epoch": result.target_epoch,
        "target_seconds": result.target_seconds,
    }
    write(Path(path), state)  # a reader never sees half a checkpoint


def restore_run(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    result: RunResult,
    *,
    epochs: int,
    steps_per_epoch: int,
) -> int | None:
    """Load a checkpoint written by `save_run` into a run of `epochs` epochs; return its last
    finished epoch, or None when there is none to use: no file, or one that is not this run's
    (warned, see `mismatch`), and nothing was loaded."""
    path = Path(path)
    state = read(path, map_location=generator.device)
    if state is None:
        return None
    problem = mismatch(
        state, model=model, optimizer=optimizer, scheduler=scheduler, generator=generator,
        epochs=epochs, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    if problem is not None:
        ignore(path, problem)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    for saved in state["history"]:
        result.record(EpochStats(**saved), seconds=None)
    result.target_epoch, result.target_seconds = state["target_epoch"], state["target_seconds"]
    result.extra["resumed_from_epoch"] = int(state["epoch"])
    return int(state["epoch"])
