"""The report's folder (`--out`, default reports/<name>): autoall writes into it and replaces
only the files it wrote there itself.

- **Its own files.** `.autoall-report.json` in the folder (the manifest) lists every file autoall
  wrote there, with its SHA-256. A file is autoall's while its content is what the manifest
  says; anything else in the folder (`thesis.md`, a sibling folder, a file autoall wrote that
  the user has edited since) is never replaced, moved or deleted. A foreign file, or a symlink,
  with the name of an output (`report.md`, `results.csv`, a figure) is refused in one line
  before anything trains (`check_out`), and again just before the files are put in place.
- **Whole files.** The outputs are rendered into a private staging folder made inside the folder
  (`mkdtemp`: created exclusively, an unpredictable name, mode 0700, so nobody can plant a
  symlink in it), then each is renamed into place; the manifest is replaced the same way, through
  a temporary file made with `O_EXCL`. Files of an earlier report that this one no longer writes
  (a figure of an architecture since dropped) are removed, if unchanged. A failure to write (a
  full disk, a read-only folder) removes the staging folder and is one line naming the folder
  (`OutWriteError`, exit 1); the manifest is written before the renames, listing both the old
  and the new digest of each file, so a failure between them leaves nothing foreign behind.
- **Ctrl-C.** During the renames, Ctrl-C is held and raised as soon as they are done: the folder
  holds the whole earlier report or the whole new one, never a mix. A Ctrl-C while the files
  are rendered is raised at once (and, if Python had to drop it inside a finaliser, as soon as
  rendering ends), and nothing is written.
- **One writer.** `hold(out)` takes an exclusive `flock` on `.autoall-report.lock` in the folder
  (the holder's process id inside), for a whole report, before it trains; a second report into
  the same folder is refused in one line (exit 2) instead of training everything twice. The lock
  file, and the folders made for it if they are still empty, are removed when it is released;
  staging folders and temporary files a killed report left are removed by the next holder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from autoall.errors import RunFailed, UserError

MANIFEST = ".autoall-report.json"
LOCK = ".autoall-report.lock"
_STAGING = ".autoall-staging-"  # rendering folders: removed when done, or by the next holder
_TEMP = ".autoall-report.json."  # the manifest's temporary files
_NAMES = frozenset(
    {"report.md", "report.html", "results.csv", "claims.csv", "summary.md", "summary.html"}
)
_FIGURES = (
    "learning_curves_",
    "test_acc_",
    "paired_differences_",
    "optimisation_history_",
    "param_importances_",
    "budget_curves_",
)
_held: dict[Path, int] = {}  # the folders this process holds the lock of, with a count


class OutFolderError(UserError):
    """The folder cannot take the report: a foreign file with an output's name, another report
    writing there, a file where the folder should be (exit 2, before anything trains)."""


class OutWriteError(RunFailed, RuntimeError):
    """The report's files could not be written (a full disk, a read-only folder): exit 1."""


def is_output(name: str) -> bool:
    """Whether autoall may write a file called `name` into a report or summary folder."""
    return name in _NAMES or (name.endswith(".png") and name.startswith(_FIGURES))


def check_out(out: Path) -> Path:
    """`out`, absolute, if the report can be written into it: it is a folder (or not there
    yet), its manifest is autoall's, and no file in it with an output's name is foreign."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise OutFolderError(f"--out {out} is a file, not a folder; pass a folder for the report.")
    if out.is_dir():
        try:
            names = [p.name for p in out.iterdir() if is_output(p.name)]
        except OSError as exc:
            raise OutFolderError(
                f"Cannot read the report folder {out}: {exc.strerror or exc}; pass another --out."
            ) from None
        _refuse_foreign(out, names, _manifest(out))
    return out


@contextlib.contextmanager
def hold(out: Path) -> Iterator[Path]:
    """The exclusive lock on report folder `out` (made if missing) while the block runs: a
    second holder, in another process, is refused in one line. Re-entrant in one process."""
    out = Path(out).resolve()
    if out in _held:
        _held[out] += 1
        try:
            yield out
        finally:
            _held[out] -= 1
        return
    made = _make_folder(out)
    try:
        fd = _lock(out)
    except BaseException:
        _remove_empty(made)
        raise
    _held[out] = 1
    try:
        _sweep(out)
        yield out
    finally:
        del _held[out]
        with contextlib.suppress(OSError):
            if _same_file(out / LOCK, fd):
                os.unlink(out / LOCK)
        os.close(fd)
        _remove_empty(made)


@contextlib.contextmanager
def hold_all(outs: list[Path]) -> Iterator[None]:
    """`hold` of each of `outs` (the reports' and the summary's folders of one command)."""
    with contextlib.ExitStack() as stack:
        for out in outs:
            stack.enter_context(hold(out))
        yield


def write_outputs(out: Path, fill: Callable[[Path], None], *, kind: str) -> list[Path]:
    """`fill(folder)` renders files into a private folder; they replace autoall's own files in
    `out` (under its lock), those of the same `kind` it no longer writes are removed, and the
    manifest records them. Returns the files written, in `out`."""
    out = Path(out).resolve()
    with hold(out), _sigint_deferred() as deferred:
        staging: Path | None = None
        committing = False
        try:
            manifest = _manifest(out)
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out))
            fill(staging)
            deferred.check()  # a Ctrl-C that Python dropped while rendering
            new = {p.name: _digest(p) for p in sorted(staging.iterdir())}
            assert all(d is not None and _plain(n) for n, d in new.items()), new
            _refuse_foreign(out, list(new), manifest)
            committing = True
            with deferred.held():  # every file renamed, or none
                _commit(out, staging, new, manifest, kind)
        except OSError as exc:
            state = "nothing there was changed"
            if committing:
                state = "some of the files there may still be the earlier report's"
            raise OutWriteError(
                f"Cannot write the report's files into {out}: {exc.strerror or exc}; {state}, and "
                "no temporary file is left. Free space or make the folder writable, then rerun "
                "the same command (its finished runs are reused)."
            ) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in new]


def _commit(
    out: Path, staging: Path, new: dict[str, Any], manifest: dict[str, Any], kind: str
) -> None:
    """Rename the staged files into place and remove those of `kind` this write no longer
    makes; the manifest is written before (each file with its old and new digest) and after."""
    stale = [
        name
        for name, entry in manifest.items()
        if entry["kind"] == kind and name not in new and _digest(out / name) in entry["sha256"]
    ]
    both = {n: _entry(kind, *manifest.get(n, {}).get("sha256", []), d) for n, d in new.items()}
    _write_manifest(out, manifest | both)
    for name in new:
        os.replace(staging / name, out / name)
    for name in stale:
        os.unlink(out / name)
    kept = {n: e for n, e in manifest.items() if n not in stale and os.path.lexists(out / n)}
    _write_manifest(out, kept | {n: _entry(kind, d) for n, d in new.items()})


def _entry(kind: str, *digests: str) -> dict[str, Any]:
    return {"sha256": list(digests), "kind": kind}


def _refuse_foreign(out: Path, names: list[str], manifest: dict[str, Any]) -> None:
    """OutFolderError naming each of `names` in `out` that is not as autoall wrote it."""
    foreign = [
        name
        for name in sorted(names)
        if os.path.lexists(out / name)
        and _digest(out / name) not in manifest.get(name, {}).get("sha256", [])
    ]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise OutFolderError(
            f"{out} holds {', '.join(foreign[:5])}{more}, with the name of a report output, that "
            f"autoall did not write there (or that changed since; its own files are listed in "
            f"{MANIFEST}); autoall replaces only its own files: move them away or pass another "
            "--out."
        )


def _manifest(out: Path) -> dict[str, Any]:
    """The manifest's files: name -> {"sha256": [digests], "kind": ...}; {} when there is none."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return {}
    why = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            files = json.loads(f.read(1 << 22))["files"]
        if all(
            _plain(n) and _entry(e.get("kind"), *e.get("sha256")) == e for n, e in files.items()
        ):
            return dict(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
    raise OutFolderError(
        f"{path} is not the list of files autoall wrote ({why or 'unexpected contents'}); autoall "
        "keeps that list there to replace only its own files: move it away or pass another --out."
    )


def _plain(name: object) -> bool:
    """A file name of its own folder: no path, not the manifest or the lock."""
    if not isinstance(name, str) or name in ("", ".", "..", MANIFEST, LOCK):
        return False
    return name == Path(name).name


def _write_manifest(out: Path, files: dict[str, Any]) -> None:
    about = "The files autoall wrote into this folder, with their SHA-256: it replaces only these."
    text = json.dumps({"about": about, "files": dict(sorted(files.items()))}, indent=1)
    fd, name = tempfile.mkstemp(prefix=_TEMP, suffix=".tmp", dir=out)  # O_EXCL, random name
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text + "\n")
        os.replace(name, out / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _digest(path: Path) -> str | None:
    """SHA-256 of a regular file (not following a symlink); None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return hashlib.file_digest(f, "sha256").hexdigest()


def _make_folder(out: Path) -> list[Path]:
    """Make `out` and its missing parents; the folders made, outermost first."""
    missing = [p for p in (out, *out.parents) if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutFolderError(
            f"Cannot make the report folder {out}: {exc.strerror or exc}; pass a writable --out."
        ) from None
    return missing


def _remove_empty(made: list[Path]) -> None:
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def _lock(out: Path) -> int:
    """A descriptor of `out/LOCK` holding its flock (the file re-made if a holder removed it
    between our open and our lock); OutFolderError when another process holds it."""
    path = out / LOCK
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutFolderError(
                f"Cannot lock the report folder {out} ({path}: {exc.strerror or exc}); pass a "
                "writable --out."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise OutFolderError(
                f"Another report (process {pid if pid.isdigit() else '?'}) is writing to {out}; "
                "wait for it or pass another --out."
            ) from None
        if _same_file(path, fd):  # held read-only: a folder may be remounted read-only meanwhile
            with contextlib.suppress(OSError):
                note = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
                os.write(note, f"{os.getpid()}\n".encode())
                os.close(note)
            return fd
        os.close(fd)  # removed by the holder that just released it: lock the new one
    raise OutFolderError(f"Cannot lock the report folder {out}; pass another --out.")


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _sweep(out: Path) -> None:
    """Staging folders and temporary files a killed holder left (only a holder writes them)."""
    for p in out.iterdir():
        if p.name.startswith(_STAGING) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(_TEMP) and p.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


class _Deferred:
    """Ctrl-C while the report's files are written: raised at once, except inside `held()`,
    where it waits until the block is done; `check()` raises one that was caught but lost."""

    def __init__(self) -> None:
        self.caught = False
        self.holding = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.caught = True
        if not self.holding:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.caught:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        self.check()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[_Deferred]:
    """`_Deferred` as the SIGINT handler while the block runs (the main thread only, and only
    where Ctrl-C raises KeyboardInterrupt); the previous handler back afterwards."""
    deferred = _Deferred()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if previous is not signal.default_int_handler:
        yield deferred
        return
    signal.signal(signal.SIGINT, deferred.handler)
    try:
        yield deferred
    finally:
        signal.signal(signal.SIGINT, previous)
