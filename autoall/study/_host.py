"""What one host offers autoall's workers: cores, memory, and the workers already on it.

Several workers on one host (`--n-jobs`, or independent `autoall study run` processes started by
ssh, Slurm or a shell loop) must share its cores. PyTorch gives every process as many intra-op
threads as the host has cores, so two workers on 2 cores run 4 busy threads: measured on a
2-core machine, two concurrent digits trainings took 15.5 s each instead of 3.35 s alone (4.6x,
not 2x), against 2.7-4.1 s each with one thread each.

Each worker registers in a per-host folder (`HostWorkers`): a file it holds an exclusive
`flock` on for as long as it lives. The kernel drops the lock when the process ends, however it
ends (SIGKILL included), so the live workers are the files whose lock is held; the others are
removed. Before each trial a worker on the CPU sets torch's threads to its share of the cores:

    threads = max(1, cores // live workers on this host)      (capped by OMP_NUM_THREADS if set)
    threads = 1 for a small model (a training step under 2 GFLOP, autoall.study._preflight.step_flops)

Small models gain nothing from intra-op threads (their ops are too short to split) and lose
most when the cores are busy: a digits MLP on this 2-core machine under load took 2.6-2.9 s per
20 epochs on one thread against 30-59 s on two, a digits CNN 4.0-4.3 s against 18-28 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from pathlib import Path

_LIVE = ".worker"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm or taskset allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def physical_memory() -> int:
    """Bytes of RAM of this host."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def available_memory() -> int:
    """Bytes of RAM available to new processes now (Linux MemAvailable), else the physical."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def workers_folder() -> Path:
    """`<autoall cache>/workers/<host name>`: per host even when the cache is on a shared home."""
    from autoall.training import cache_dir

    return cache_dir() / "workers" / socket.gethostname()


class HostWorkers:
    """The autoall workers alive on this host (module docstring)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or workers_folder()
        self._fd: int | None = None

    def register(self) -> bool:
        """Count this process as a worker until it ends (or `unregister`); False if the folder
        cannot be written (then this process is simply not counted)."""
        if self._fd is not None:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = self.folder / f"{name}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # locked before it gets the name counters look at: never seen unlocked and removed
            os.replace(tmp, self.folder / f"{name}{_LIVE}")
        except OSError:
            return False
        self._fd = fd
        self._path = self.folder / f"{name}{_LIVE}"
        return True

    def unregister(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self._path.unlink()
        os.close(self._fd)
        self._fd = None

    def live(self) -> int:
        """Workers alive on this host now (this one included if registered); removes the files
        of workers that ended without unregistering."""
        try:
            entries = list(self.folder.glob(f"*{_LIVE}"))
        except OSError:
            return 1
        count = 0
        for path in entries:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # removed meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                count += 1  # held: its worker is alive
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            finally:
                os.close(fd)
        return max(count, 1 if self._fd is not None else 0)


def threads_per_worker(workers: int, *, cores: int | None = None, small: bool = False) -> int:
    """Torch intra-op threads for one of `workers` workers sharing `cores` (default: this
    process's), 1 for a `small` model, capped by $OMP_NUM_THREADS when it is set."""
    share = 1 if small else max(1, (cores or available_cores()) // max(1, workers))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        share = min(share, int(limit))
    return share


def share_cores(workers: HostWorkers, *, small: bool = False) -> int:
    """Set torch's intra-op threads to this worker's share of the host's cores (1 for a `small`
    model); returns it."""
    import torch

    threads = threads_per_worker(1 if small else workers.live(), small=small)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
