"""Checks every command makes before it stores, creates or trains anything.

A user's mistake must cost one line and nothing else: not a study full of FAIL trials, not an
`mlruns/` folder, not an hour of training followed by a crash. So, first:

- every output location can be written (`check_writable`): the report folder, the checkpoint
  folder, the folders of SQLite files, probed with a file that is removed at once;
- the Optuna storage is not the MLflow tracking database (`check_storage_apart`);
- the largest model the search space allows fits in the device's memory, as many times as
  runs train at once (`check_model_size`, with `--cohort` or the report's `report_cohort`);
- the number of workers fits the host (`cap_workers`): at most one per core on a CPU, one per
  GPU times `--trials-per-gpu`, and as many as the memory holds.

Each failure is a `PreflightError` (a ValueError: exit code 2) that says what to change.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from autoall.config import StudyConfig
from autoall.errors import UserError
from autoall.layer import ALLSpec
from autoall.study._host import available_cores, available_memory, physical_memory

# (C, H, W) of each data set, for sizing models without loading any data; ten classes each
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = 10
# float32 weights, their gradients and AdamW's two moments: 4 copies of 4 bytes per parameter
TRAIN_BYTES_PER_PARAMETER = 16
WORKER_BASE_BYTES = 1 << 30  # a worker process (torch, Optuna) and its MLflow writer, ~1 GiB


class PreflightError(UserError, ValueError):
    """A command cannot start as asked; the message names the option or key to change."""


def check_writable(path: str | Path, *, what: str) -> Path:
    """`path` (a folder, or a file to be made) can be created or written by this process.

    Probed for real, with a file created and removed at once in the folder itself or, if it
    does not exist yet, in its nearest existing parent (permission bits do not tell for root,
    read-only mounts or full disks). Creates nothing that stays.
    """
    target = Path(path).expanduser().absolute()
    probe_in = target
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise PreflightError(f"{what} {target}: {probe_in} is a file, not a folder.")
    try:
        fd, name = tempfile.mkstemp(prefix=".autoall-probe-", dir=probe_in)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PreflightError(
            f"{what} {target} cannot be written ({probe_in}: {reason}); pass a writable folder."
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return target


def check_storage_apart(storage: str, tracking_uri: str | None) -> None:
    """Refuse an Optuna storage that is the MLflow tracking database (`tracking_uri`, else
    $MLFLOW_TRACKING_URI, else the default): Optuna's tables would go into MLflow's database,
    whose schema checks then fail. Compared as files for SQLite (the same file however it is
    reached), else as the same database on the same server."""
    from autoall._secrets import sqlite_file, storage_url
    from autoall.tracking import resolve_tracking_uri

    tracking = resolve_tracking_uri(tracking_uri, create=False)
    db, mlflow_db = sqlite_file(storage), sqlite_file(tracking)
    if db is not None and mlflow_db is not None:
        same = _same_file(db, mlflow_db)
    else:
        ours, theirs = _database(storage_url(storage)), _database(tracking)
        same = db is None and mlflow_db is None and ours is not None and ours == theirs
    if same:
        raise PreflightError(
            f"--storage {storage} is the MLflow tracking database ({tracking}), and Optuna's "
            "tables cannot share MLflow's: point --storage (or $AUTOALL_STORAGE) or the "
            "tracking URI (--tracking-uri, $MLFLOW_TRACKING_URI) at another database."
        )


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return a.expanduser().resolve() == b.expanduser().resolve()


def _database(url: str) -> tuple[object, ...] | None:
    """(backend, host, port, database) of a SQLAlchemy URL; None if it is not one."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None
    return (parsed.get_backend_name(), parsed.host, parsed.port, parsed.database)


class Cohort(NamedTuple):
    """Runs that train at once, as one batched job, and what sets their number (for the
    message: the option or key, and what to change)."""

    size: int = 1
    source: str = ""  # "--cohort 8", "report.tuning_trials 8"
    fix: str = ""  # "lower --cohort"


def report_cohort(
    cfg: StudyConfig, *, seeds: int | None, selection_seeds: int | None, cohorts: bool
) -> Cohort:
    """The largest cohort `autoall report` trains for `cfg`: a variant's evaluation seeds
    (`--seeds`), a top-k trial's selection seeds (`--selection-seeds`) or a control's re-tuning
    candidates (`report.tuning_trials`, already overridden by `--tuning-trials`); one run at a
    time with `--no-cohorts`. An option given wins over the study file's key."""
    if not cohorts:
        return Cohort()
    given = {"seeds": seeds, "selection_seeds": selection_seeds, "tuning_trials": None}
    counts = []
    for key, value in given.items():
        option = "--" + key.replace("_", "-")
        source = option if value is not None else f"{cfg.path}: report.{key}"
        counts.append((getattr(cfg.report, key) if value is None else value, source, option))
    size, source, option = max(counts, key=lambda c: c[0])
    return Cohort(size, f"{source} {size}", f"lower {option} or pass --no-cohorts")


@dataclass(frozen=True)
class ModelSize:
    arch: str
    hidden_size: int | None
    positions: str | None
    parameters: int
    cohort: int = 1  # copies that train at once

    @property
    def train_bytes(self) -> int:
        """Bytes to train the model (16 per parameter), times the cohort's size."""
        return self.parameters * TRAIN_BYTES_PER_PARAMETER * self.cohort


def largest_models(cfg: StudyConfig) -> list[ModelSize]:
    """Per architecture, the largest model the file's ALL search space allows: the largest
    hidden_size, with an ALL after every block if `blocks` is a choice, built on the meta device
    (no memory, no initialisation) to count its parameters."""
    from autoall.training import build_model, count_parameters

    space = cfg.search
    hidden = space["hidden_size"].largest if "hidden_size" in space else None
    positions_spec = space.get("positions")
    choices = positions_spec.choices if positions_spec is not None else ("head",)
    positions = "blocks" if "blocks" in choices else str(choices[0])
    shape = INPUT_SHAPES[cfg.data.name]
    sizes = []
    for arch in cfg.architectures:
        spec = None
        if hidden is not None:
            spec = ALLSpec(hidden_size=int(hidden), aux_loss="reconstruction", positions=positions)
        with torch.device("meta"):
            model = build_model(arch, in_shape=shape, num_classes=NUM_CLASSES, all_spec=spec)
        sizes.append(ModelSize(arch, hidden, positions, count_parameters(model).total))
    return sizes


SMALL_STEP_FLOPS = (
    2e9  # a training step below this runs fastest on one thread (autoall/study/_host.py)
)


def step_flops(cfg: StudyConfig, arch: str) -> float:
    """FLOPs of one training step of the largest model of `arch`'s ALL study (its tuned
    baseline's models are smaller): forward multiply-adds of every Linear and Conv2d, counted
    on the meta device, x 2 (FLOPs) x 3 (forward and backward) x the batch size.

    digits: mlp ~0.4 GFLOP, cnn ~2; mnist cnn ~30; cifar10 vgg16 ~300, resnet18 ~700.
    """
    from torch import nn

    from autoall.training import build_model

    (size,) = largest_models(cfg.with_architectures([arch]))
    spec = None
    if size.hidden_size is not None:
        spec = ALLSpec(
            hidden_size=int(size.hidden_size),
            aux_loss="reconstruction",
            positions=size.positions or "head",
        )
    shape = INPUT_SHAPES[cfg.data.name]
    with torch.device("meta"):
        model = build_model(arch, in_shape=shape, num_classes=NUM_CLASSES, all_spec=spec)
        x = torch.empty(1, *shape)
    macs = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups
            per_output *= module.kernel_size[0] * module.kernel_size[1]
        else:
            assert isinstance(module, nn.Linear)
            per_output = module.in_features
        macs += output.numel() * per_output

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return 2.0 * 3.0 * macs * cfg.train_config(arch).batch_size


def device_memory(device: torch.device) -> tuple[int, str]:
    """Bytes of memory a model on `device` can use, and what they are (for the message)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"the {props.name}'s memory (cuda:{index})"
    return physical_memory(), "this machine's memory (cpu)" if device.type == "cpu" else (
        "this machine's unified memory (mps)"
    )


def check_model_size(
    cfg: StudyConfig, device: torch.device, cohort: Cohort | None = None
) -> list[ModelSize]:
    """Refuse a search space whose largest model cannot be trained in `device`'s memory, or not
    `cohort.size` times at once, with the figures (parameters, bytes to train them, bytes there
    are). The sizes returned count the cohort (`ModelSize.train_bytes`)."""
    cohort = cohort or Cohort()
    sizes = [replace(s, cohort=cohort.size) for s in largest_models(cfg)]
    memory, where = device_memory(device)
    for size in sizes:
        one = size.parameters * TRAIN_BYTES_PER_PARAMETER
        if not memory or size.train_bytes <= memory:
            continue
        knob = (
            f"hidden_size {size.hidden_size:,} (positions: {size.positions})"
            if size.hidden_size is not None
            else "no ALL"
        )
        model = (
            f"the largest model this search space allows, {size.arch} with {knob}, has "
            f"{size.parameters:,} parameters: ~{_bytes(one)} to train (float32 weights, "
            "gradients and AdamW's two moments)"
        )
        if one > memory:
            raise PreflightError(
                f"{cfg.path}: search.hidden_size: {model}, more than {where}, {_bytes(memory)}; "
                "lower search.hidden_size's high (or its choices)."
            )
        raise PreflightError(
            f"{cohort.source}: {cohort.size} runs train at once, and {model}: "
            f"~{_bytes(size.train_bytes)} together, more than {where}, {_bytes(memory)}; "
            f"{cohort.fix} (at most {memory // one} fit), or lower search.hidden_size's high."
        )
    return sizes


def check_model_fits(
    arch: str, *, data: str, spec: ALLSpec | None, device: torch.device, option: str
) -> int:
    """`autoall train`'s check: the model (`arch` with `spec` on data set `data`) can be trained
    in `device`'s memory; returns its parameters, else a PreflightError naming `option`."""
    from autoall.training import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(
            arch, in_shape=INPUT_SHAPES[data], num_classes=NUM_CLASSES, all_spec=spec
        )
    parameters = count_parameters(model).total
    memory, where = device_memory(device)
    needed = parameters * TRAIN_BYTES_PER_PARAMETER
    if memory and needed > memory:
        raise PreflightError(
            f"{option}: the model, {arch} with {'an ALL of hidden_size ' + format(spec.hidden_size, ',') if spec else 'no ALL'}, "
            f"has {parameters:,} parameters: ~{_bytes(needed)} to train (float32 weights, "
            f"gradients and AdamW's two moments), more than {where}, {_bytes(memory)}."
        )
    return parameters


def cap_workers(
    requested: int,
    *,
    gpus: int,
    trials_per_gpu: int,
    per_worker_bytes: int,
) -> tuple[int, str | None]:
    """The number of worker processes to start and, when it is fewer than `requested`, the one
    line that says why: one per core on a CPU (more only slow each other down), GPUs x
    `trials_per_gpu` on GPUs, and no more than the memory available holds."""
    if gpus > 0:
        limit, why = gpus * trials_per_gpu, f"{gpus} GPU(s) x --trials-per-gpu {trials_per_gpu}"
    else:
        cores = available_cores()
        limit = cores
        why = (
            f"this machine has {cores} CPU core{'s' if cores != 1 else ''} (more workers than "
            "cores only slow each other down)"
        )
    by_memory = max(1, available_memory() // max(1, per_worker_bytes))
    if by_memory < limit:
        limit = by_memory
        why = (
            f"the memory available ({_bytes(available_memory())}) holds {by_memory} worker"
            f"{'s' if by_memory != 1 else ''} of ~{_bytes(per_worker_bytes)} each"
        )
    if requested <= limit:
        return requested, None
    return limit, f"--n-jobs {requested} capped to {limit}: {why}."


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
