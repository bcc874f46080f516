"""The data types of one training run: its settings, its per-epoch record and its result.

A leaf module (no autoall import beyond `models.ParamCount`), as autoall/report/_types.py is for
the report: `TrainConfig` (validated on construction, "expected X, but got Y"), `EpochStats`,
`RunResult`, the `EpochCallback` that `train()` calls after each epoch, and the two errors that
end a run (`NonFiniteLossError`, `TrainingOOMError`). autoall/training/_loop.py fills them and exports
them under its own name, so `from autoall.training._loop import TrainConfig` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from autoall.errors import InvalidValue, RunFailed
from autoall.training._models import ParamCount

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adamw"  # "sgd" (momentum, Nesterov) or "adamw"
    lr: float = 1e-3  # base network; the ALL has its own all_lr
    all_lr: float | None = None  # None: the ALL trains at the base lr
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    warmup_epochs: float = 1.0  # linear warm-up before cosine decay
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak lr
    label_smoothing: float = 0.0
    seed: int = 0  # batch order and augmentation; the caller seeds initialisation
    device: str | None = None  # None: cuda, then mps, then cpu
    amp: bool = True  # bf16 autocast, on CUDA only
    channels_last: bool = True  # conv nets on CUDA only
    compile: bool = False  # torch.compile; its time is reported apart
    eval_batch_size: int = 2048
    target_acc: float | None = None  # validation accuracy whose first crossing is timed
    evaluate_test: bool = False  # the report's final evaluation; studies never set it

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidValue(f"{name} must be a positive integer, but got {value!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidValue(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, but got {self.optimizer!r}."
            )
        for name in ("lr", "all_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidValue(f"{name} must be a positive number, but got {value!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InvalidValue(
                f"weight_decay must be a non-negative number, but got {self.weight_decay!r}."
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise InvalidValue(
                f"warmup_epochs must be between 0 and epochs ({self.epochs}), "
                f"but got {self.warmup_epochs!r}."
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidValue(f"min_lr_ratio must be in [0, 1], but got {self.min_lr_ratio!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise InvalidValue(
                f"label_smoothing must be in [0, 1), but got {self.label_smoothing!r}."
            )
        if not 0 <= self.momentum < 1:
            raise InvalidValue(f"momentum must be in [0, 1), but got {self.momentum!r}.")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise InvalidValue(f"target_acc must be in (0, 1], but got {self.target_acc!r}.")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # cross-entropy, mean over the epoch's training samples
    aux_loss: float  # sum of aux_weight * L over the ALLs, mean over the epoch's batches
    train_acc: float  # on the (augmented) training batches as they were trained
    val_loss: float
    val_acc: float
    epoch_seconds: float  # training plus validation of this epoch
    lr: float  # base group, at the end of the epoch
    all_lr: float | None  # ALL group, at the end of the epoch; None without an ALL

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics as MLflow-style name -> value (no epoch, no None)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "epoch" and v is not None}


@dataclass
class RunResult:
    history: list[EpochStats]
    best_val_acc: float
    best_epoch: int
    final_val_acc: float
    wall_seconds: float  # training and validation, compile time excluded
    compile_seconds: float
    params: ParamCount
    device: str
    stopped_early: bool  # on_epoch asked to stop
    target_acc: float | None = None
    target_epoch: int | None = None  # first epoch with val_acc >= target_acc
    target_seconds: float | None = None  # wall seconds until the end of that epoch
    test_acc: float | None = None  # only with TrainConfig.evaluate_test
    test_loss: float | None = None
    train_eval_acc: float | None = None  # final model on the train split, eval mode (for the gap)
    test_predictions: np.ndarray | None = None  # predicted class per test example (uint8)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, stats: EpochStats, *, seconds: float | None) -> None:
        """One finished epoch, `seconds` into training: appended to the history, and the best
        epoch and the first epoch at `target_acc` updated. A run alone, a cohort member and a
        resumed checkpoint all keep their books here."""
        self.history.append(stats)
        if stats.val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = stats.val_acc, stats.epoch
        reached = self.target_acc is not None and stats.val_acc >= self.target_acc
        if reached and self.target_epoch is None:
            self.target_epoch, self.target_seconds = stats.epoch, seconds

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def median_epoch_seconds(self) -> float:
        return float(np.median([s.epoch_seconds for s in self.history])) if self.history else 0.0


class NonFiniteLossError(RunFailed, FloatingPointError):
    """The training loss became NaN or infinite: the run diverged."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"Training loss became non-finite ({value}) at epoch {epoch}, step {step}; "
            "the run diverged (learning rate too high?)."
        )


class TrainingOOMError(RunFailed, RuntimeError):
    """The device ran out of memory; names the batch size so the fix is obvious."""

    def __init__(self, batch_size: int, device: str) -> None:
        self.batch_size = batch_size
        super().__init__(
            f"{device} ran out of memory with batch_size {batch_size}; "
            "lower batch_size or run fewer trials per GPU."
        )


EpochCallback = Callable[[EpochStats], bool | None]
