"""Read studies back from a storage: `study status` summaries and the `study export` table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autoall.config import BASELINE_SUFFIX, load_study_file
from autoall.options import DEFAULT_STORAGE
from autoall.storage import make_storage
from autoall.study import Counts, best_trial, count_trials
from autoall.urls import mask_secrets


def resolve_study_names(
    target: str, *, storage: str | None = None, replicates: int | None = None
) -> tuple[Any, list[str]]:
    """A study file, `name` (all its architectures, kinds and replicates) or a study name such
    as `name/arch` -> (storage, study names), per architecture, per replicate, ALL study first.

    `replicates` R keeps replicates 0 to R - 1 (default: a file's `replicates`; for a name,
    every replicate stored). Only reads: a SQLite file that does not exist is a StorageError,
    not a new database; a storage that cannot be opened (wrong URL or password, server down) is
    a StorageError. Raises ValueError naming what exists when nothing matches.
    """
    url = storage or DEFAULT_STORAGE
    rdb = make_storage(url, create=False)
    existing = sorted(optuna.get_all_study_names(storage=rdb))
    if Path(target).is_file():
        cfg = load_study_file(target)
        if replicates is not None:
            cfg = cfg.with_replicates(replicates)
        wanted = [cfg.study_name(a, k, r) for a, k, r in cfg.studies()]
        names = [n for n in wanted if n in existing]
    elif "/" in target:
        names = [target] if target in existing else []
    else:  # <name>/<arch>[/tuned-baseline][/r<r>], nothing else under <name>
        pattern = re.compile(rf"{re.escape(target)}/([^/]+)(/{BASELINE_SUFFIX})?(?:/r([1-9]\d*))?")
        found = []
        for n in existing:
            match = pattern.fullmatch(n)
            replicate = int(match.group(3) or 0) if match else 0
            if match and (replicates is None or replicate < replicates):
                found.append(((match.group(1), replicate, bool(match.group(2))), n))
        names = [n for _, n in sorted(found)]
    if not names:
        there = ", ".join(existing) if existing else "none"
        raise ValueError(
            f"No study matching {target!r} in {mask_secrets(url)}; studies there: {there}."
        )
    return rdb, names


@dataclass(frozen=True)
class StudySummary:
    name: str
    counts: Counts
    target: int | None
    best_value: float | None
    best_params: dict[str, Any]
    trial_seconds: float  # summed durations of finished trials
    wall_seconds: float  # first trial start to last trial end

    def render(self) -> str:
        c = self.counts
        target = f" of {self.target}" if self.target else ""
        lines = [
            f"{self.name}",
            f"  trials     {c.done}{target} done: {c.complete} complete, {c.pruned} pruned, "
            f"{c.failed} failed, {c.running} running, {c.waiting} waiting",
        ]
        if self.best_value is None:
            lines.append("  best       - (no completed trial yet)")
        else:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best_params.items())
            lines.append(f"  best       val_acc {self.best_value:.4f}  ({params})")
        lines.append(
            f"  time       {self.trial_seconds:.1f} s in trials, {self.wall_seconds:.1f} s wall"
        )
        return "\n".join(lines)


def study_summaries(
    target: str, *, storage: str | None = None, replicates: int | None = None
) -> list[StudySummary]:
    rdb, names = resolve_study_names(target, storage=storage, replicates=replicates)
    return [summarize(optuna.load_study(study_name=n, storage=rdb)) for n in names]


def summarize(study: optuna.Study) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials)
    spans = [
        (t.datetime_start, t.datetime_complete)
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    seconds = sum((end - start).total_seconds() for start, end in spans)
    wall = 0.0
    if spans:
        wall = (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()
    return StudySummary(
        name=study.study_name,
        counts=count_trials(trials),
        target=study.user_attrs.get("n_trials"),
        best_value=best.values[0] if best else None,
        best_params=dict(best.params) if best else {},
        trial_seconds=seconds,
        wall_seconds=wall,
    )


def trials_table(target: str, *, storage: str | None = None) -> Any:
    """Optuna's trials dataframe for each matching study, with a `study` column (pandas)."""
    import pandas as pd

    rdb, names = resolve_study_names(target, storage=storage)
    frames = []
    for name in names:
        frame = optuna.load_study(study_name=name, storage=rdb).trials_dataframe()
        frame.insert(0, "study", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
