"""Read studies back from a storage: `study status` summaries and the `study export` table."""

from __future__ import annotations

import contextlib
import csv as csv_module
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna

from autoall._secrets import mask_secrets
from autoall.config import BASELINE_SUFFIX, DEFAULT_STORAGE, load_study_file
from autoall.errors import InvalidValue, RunFailed, UserError
from autoall.study._storage import make_storage
from autoall.study._trials import Counts, best_trial, count_trials


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
    wanted = file_study_names(target, replicates)
    if wanted is not None:
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
        raise InvalidValue(
            f"No study matching {target!r} in {mask_secrets(url)}; studies there: {there}."
        )
    return rdb, names


def file_study_names(target: str, replicates: int | None = None) -> list[str] | None:
    """When `target` is a study file: the names of every study it defines (per architecture,
    per replicate, ALL study first; `replicates` R: replicates 0 to R - 1); otherwise None."""
    if not Path(target).is_file():
        return None
    cfg = load_study_file(target)
    if replicates is not None:
        cfg = cfg.with_replicates(replicates)
    return [cfg.study_name(a, k, r) for a, k, r in cfg.studies()]


@dataclass(frozen=True)
class StudySummary:
    name: str
    counts: Counts
    target: int | None
    best_value: float | None
    best_params: dict[str, Any]
    trial_seconds: float  # summed durations of finished trials
    wall_seconds: float  # first trial start to last trial end
    started: bool = True  # False: the study file defines it, the storage does not hold it yet

    def render(self) -> str:
        if not self.started:
            return f"{self.name}\n  not started (no study in the storage yet)"
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
    """Each study of `target` (as `resolve_study_names` finds them) summarised; for a study
    file, every study it defines in its order, those the storage does not hold yet as not
    started."""
    rdb, names = resolve_study_names(target, storage=storage, replicates=replicates)
    wanted = file_study_names(target, replicates) or names
    return [
        summarize(optuna.load_study(study_name=n, storage=rdb))
        if n in names
        else StudySummary(n, Counts(), None, None, {}, 0.0, 0.0, started=False)
        for n in wanted
    ]


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


_NESTED = ("params", "user_attrs", "system_attrs")  # trials_dataframe's `<group>_<key>` columns


def trial_records(
    target: str, *, storage: str | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Every trial of each study matching `target` (as `study status` resolves it) as one flat
    record with the columns of Optuna's `trials_dataframe` (`number`, `value`, the times,
    `params_<name>`, `user_attrs_<name>`, `system_attrs_<name>`, `state`) after a `study` column.

    Values are as stored: an int stays an int, a float keeps every digit, a time is a datetime,
    a duration a timedelta, a missing one None. Returns (the columns in order, the records).
    """
    rdb, names = resolve_study_names(target, storage=storage)
    records: list[dict[str, Any]] = []
    objectives: list[str] = []  # value columns, first seen first
    nested: dict[str, set[str]] = {group: set() for group in _NESTED}
    for name in names:
        study = optuna.load_study(study_name=name, storage=rdb)
        value_columns = _value_columns(study)
        objectives += [c for c in value_columns if c not in objectives]
        for t in study.get_trials(deepcopy=False):
            values = t.values or [None] * len(value_columns)
            record: dict[str, Any] = {"study": name, "number": t.number}
            record.update(zip(value_columns, values, strict=True))
            record.update(
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                duration=t.duration,
            )
            for group, attrs in (
                ("params", t.params),
                ("user_attrs", t.user_attrs),
                ("system_attrs", t.system_attrs),
            ):
                nested[group] |= {f"{group}_{k}" for k in attrs}
                record.update({f"{group}_{k}": v for k, v in attrs.items()})
            record["state"] = t.state.name
            records.append(record)
    if not records:
        return [], []
    columns = ["study", "number", *objectives, "datetime_start", "datetime_complete", "duration"]
    columns += [c for group in _NESTED for c in sorted(nested[group])]
    return [*columns, "state"], records


def _value_columns(study: optuna.Study) -> list[str]:
    """The objective columns `trials_dataframe` names: `value`, `value_<metric>`, or
    `values_<i>` / `values_<metric>` for several objectives."""
    metrics = study.metric_names
    if len(study.directions) == 1:
        return ["value" if metrics is None else f"value_{metrics[0]}"]
    return [f"values_{m}" for m in (metrics or range(len(study.directions)))]


def iso_duration(duration: timedelta) -> str:
    """A duration as ISO 8601 seconds, to the microsecond: 3.61393 s -> `PT3.613930S`."""
    seconds = duration.days * 86400 + duration.seconds
    return f"PT{seconds}.{duration.microseconds:06d}S"


def _exported(value: Any, *, csv: bool) -> Any:
    """A record's value as written: times and durations as ISO 8601 text (times as stored by
    Optuna, local time without a UTC offset), floats at full precision (non-finite ones as
    text in JSON), None empty in CSV; nested values (a retried trial's `fixed_params`) as
    JSON in CSV."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, float) and not math.isfinite(value) and not csv:
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if csv and value is None:
        return ""
    if csv and isinstance(value, dict | list):
        return json.dumps(value)
    return value


def export_text(columns: list[str], records: list[dict[str, Any]], fmt: str) -> str:
    """The records as CSV (a header row, then one row per trial) or as a JSON array of
    objects; every float written so that it reads back as the same float."""
    if fmt == "json":
        rows = [{c: _exported(r.get(c), csv=False) for c in columns} for r in records]
        return json.dumps(rows, indent=2) + "\n"
    out = io.StringIO()
    writer = csv_module.writer(out, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    for r in records:
        writer.writerow([_exported(r.get(c), csv=True) for c in columns])
    return out.getvalue()


class ExportError(RunFailed, RuntimeError):
    """The export could not be written (a full disk, a device that fails); exit code 1."""


def check_export_file(output: str, *, storage: str | None, force: bool) -> Path:
    """Refuse an `-o` that would destroy something (exit code 2, before anything is read or
    written): the Optuna storage being read, the MLflow database, any other SQLite database or
    an existing YAML file (a study file), whatever `--force` says; another existing file
    without `--force`. Probes that the file can be created (its folder, or the nearest existing
    parent when the folder is to be made). Returns the path."""
    from autoall._secrets import sqlite_file
    from autoall.study._preflight import check_writable
    from autoall.tracking import tracking_sqlite_file

    path = Path(output).expanduser()
    target = path.resolve()
    kept = [
        (sqlite_file(storage or DEFAULT_STORAGE), "the Optuna storage this export reads"),
        (tracking_sqlite_file(), "the MLflow database"),
    ]
    for file, what in kept:
        if file is not None and target == file.expanduser().resolve():
            raise UserError(f"-o {output} is {what}; writing there would destroy it. "
                            "Pass another file.")  # fmt: skip
    if target.is_file() and target.suffix.lower() in (".yaml", ".yml"):
        raise UserError(f"-o {output} is a YAML file (a study file); pass another file.")
    if target.is_file() and _is_sqlite(target):
        raise UserError(f"-o {output} is a SQLite database; pass another file.")
    if target.is_file() and not force:
        raise UserError(f"-o {output} exists; pass --force to overwrite it, or another file.")
    if not target.exists():  # a device or a pipe is written in place, nothing is created
        check_writable(target.parent, what="-o's folder")
    return path


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def write_export(text: str, path: Path) -> None:
    """Write `text` to `path`, making its missing folders; a failed write removes what it
    created and raises ExportError naming the path."""
    created = not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            f.write(text)
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise ExportError(f"cannot write -o {path}: {exc.strerror or exc}.") from None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
