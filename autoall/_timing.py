"""Named wall-clock spans that a benchmark can collect: where a study's time goes.

The package marks its parts with `span` (a context manager or a decorator); a benchmark
installs a recorder with `recording` and reads the seconds of every call per name:

    from autoall import _timing as timing

    with timing.span("trial.train"):            # in the package
        result = train(model, data, cfg)

    @timing.span("setup.storage")               # a whole function
    def make_storage(url: str) -> RDBStorage: ...

    with timing.recording() as spans:           # in a benchmark (bench/bench_study.py)
        main(["study", "run", "studies/digits.yaml"])
    spans["trial.train"]                        # -> [seconds of each call, ...]

With no recorder installed (always, outside a benchmark) a span costs one `is None` check and
records nothing. The recorder is per process and collects from every thread (the progress
monitor's `monitor.draw` runs in its own); spawned worker processes (`--n-jobs N`) record
into their own, which nothing installs. Like `torch.profiler.record_function`, a span only
names a region; what it costs is measured with `time.perf_counter`.

Names and where they are set (in autoall/study/: _objective.py, _worker_loop.py, _storage.py,
_trials.py, _cohort_trials.py, _workers.py; in autoall/training/: _plan.py, _loop.py):

- setup: `setup.storage` (`make_storage`), `setup.create_studies`, `setup.data` (the study's
  data, test split dropped);
- the worker: `loop.run_worker` (one worker over one study), `monitor.draw` (the progress
  monitor, its own thread);
- a trial: `trial.optimize` (Optuna's `study.optimize` for one trial, everything below
  included), `trial.optuna_ask` (from that call to the objective: Optuna's stale-trial check,
  `ask` with the sampler, the heartbeat's start), `trial.suggest`, `trial.build_model`,
  `trial.train` (`train()`, its per-epoch callbacks included), `trial.optuna_tell` (from the
  objective's end to the callbacks: the heartbeat's stop, `tell`), `trial.after_trial` (the
  after-trial callback: counts, the parent run's summary);
- an epoch: `epoch.compute` (an epoch's own `epoch_seconds`, recorded with `add`),
  `epoch.optuna_report`, `epoch.should_prune`, `epoch.checkpoint` (a mid-trial checkpoint's
  `torch.save`);
- a cohort (`--cohort K`, autoall/study/_cohort_trials.py): `trial.optuna_ask` and `trial.optuna_tell`
  around each member's `study.ask` and `study.tell`, `cohort.train` (`fit_cohort`, the members'
  per-epoch callbacks included); `trial.suggest`, the epoch and the MLflow spans per member;
- MLflow, around the tracker's calls: `tracking.connect`, `tracking.parent_run`,
  `tracking.start_trial`, `tracking.log_epoch`, `tracking.finish`, `tracking.update_parent`,
  `tracking.finish_parent`, `tracking.close`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

Spans = dict[str, list[float]]  # name -> seconds of each call, in order

_recorder: Spans | None = None  # installed by `recording`; None: spans record nothing


class span:  # noqa: N801 (lower case, as it reads: `with span("trial.train"):`)
    """Time the block (or every call of the decorated function) under `name`."""

    __slots__ = ("name", "_start")

    def __init__(self, name: str) -> None:
        self.name = name
        self._start = 0.0

    def __enter__(self) -> None:
        if _recorder is not None:
            self._start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if _recorder is not None and self._start:
            _recorder.setdefault(self.name, []).append(time.perf_counter() - self._start)
        self._start = 0.0

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        name = self.name

        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            if _recorder is None:
                return fn(*args, **kwargs)
            with span(name):  # a fresh span per call: calls may nest or run in other threads
                return fn(*args, **kwargs)

        return timed


def add(name: str, seconds: float) -> None:
    """Record `seconds` measured elsewhere under `name` (e.g. an epoch's `epoch_seconds`)."""
    if _recorder is not None:
        _recorder.setdefault(name, []).append(seconds)


def since(name: str, start: float) -> None:
    """Record the seconds from `start` (a `time.perf_counter()` reading) to now under `name`."""
    if _recorder is not None:
        _recorder.setdefault(name, []).append(time.perf_counter() - start)


@contextmanager
def recording() -> Iterator[Spans]:
    """Collect every span in this process while the block runs; yields the `{name: [seconds,
    ...]}` it fills. The recorder installed before (if any) is back afterwards."""
    global _recorder
    previous, spans = _recorder, Spans()
    _recorder = spans
    try:
        yield spans
    finally:
        _recorder = previous
