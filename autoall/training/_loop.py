"""One training run: a model, device-resident data and a `TrainConfig` in, a `RunResult` out.

The loop knows nothing of Optuna or MLflow: they are callbacks (`on_epoch`), so the loop reads
top to bottom. Per step it does no host synchronisation: losses, accuracy and a per-step loss
record stay on the device and are read once per epoch, which is also where a non-finite loss is
found (with the exact epoch and step).

    loss = cross_entropy(logits, y) + sum over ALLs of aux_weight * L(W, a)

Two optimizer parameter groups (base: `lr`; ALL: `all_lr`) share one schedule: linear warm-up
for `warmup_epochs`, then cosine decay to `min_lr_ratio` of the peak, applied proportionally.

The run's data types (`TrainConfig`, `EpochStats`, `RunResult`, the two errors) live in the leaf
module autoall/training/_types.py and are importable from here.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoall.errors import InvalidValue, raise_if_interrupted
from autoall.layer import all_layers, auxiliary_loss
from autoall.training import _checkpoint_file as checkpoint_file
from autoall.training._batches import augment_batch, iterate_batches
from autoall.training._data import DeviceData
from autoall.training._models import count_parameters
from autoall.training._optim import make_optimizer, warmup_cosine
from autoall.training._types import (
    EpochCallback,
    EpochStats,
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    TrainingOOMError,
)

DEVICES = "cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"(cpu|mps|cuda)(?::(\d+))?")


def resolve_device(name: str | None = None) -> torch.device:
    """`None` or "auto": cuda, then mps, then cpu. Otherwise one of cpu, cuda, cuda:N, mps that
    this machine has; anything else (tpu, meta, cuda:7 on a 1-GPU host) is a ValueError that
    says what is allowed. Every command checks its --device here, before anything is stored."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise InvalidValue(f"device must be {DEVICES} (or auto), but got {name!r}.")
    kind, index = match[1], match[2]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValue(f"device {name!r} was asked for, but CUDA is not available here.")
        count = gpu_count()
        if index is not None and int(index) >= count:
            raise InvalidValue(
                f"device {name!r} was asked for, but this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})."
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InvalidValue(f"device {name!r} was asked for, but MPS is not available here.")
    return torch.device(name)


def gpu_count() -> int:
    """The CUDA devices this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch: whole batches only (the last partial batch is dropped,
    since a batch of one would break BatchNorm), or one batch of everything when the split is
    no larger than a batch."""
    return n_train // batch_size if n_train > batch_size else 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): call before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    model: nn.Module,
    data: DeviceData,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 0.0,
) -> RunResult:
    """Train `model` on `data.train`, validate every epoch on `data.val`.

    `on_epoch(stats)` runs after each epoch; a truthy return stops the run early
    (`result.stopped_early`), an exception it raises (e.g. optuna.TrialPruned) propagates.
    The test split is evaluated once at the end, and only when `cfg.evaluate_test`.

    With `checkpoint`, the state after a finished epoch (model, optimizer, scheduler, random
    states, history) is written to that file, atomically, once `checkpoint_every` seconds have
    passed since the last save (or the start; 0: every epoch); a run that finds the file
    resumes after its last epoch, with the same batch order it would have had. `on_epoch`
    sees only the epochs trained in this call. The caller removes the file when done. A
    checkpoint that cannot be written (full disk, read-only folder) or used (a directory, a
    link, a damaged file or one of another run) is one warning: the run goes on without it,
    or starts from epoch 1 (autoall/training/_checkpoint_file.py).
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = data.to(device)
    model = model.to(device)
    on_cuda = device.type == "cuda"
    if on_cuda and cfg.channels_last and _has_conv(model):
        model = model.to(memory_format=torch.channels_last)
    channels_last = on_cuda and cfg.channels_last and _has_conv(model)
    if on_cuda and _has_conv(model):
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): autotune once
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda and cfg.amp)

    alls = all_layers(model)
    optimizer = make_optimizer(model, cfg, fused=on_cuda)
    n_train = data.train_y.shape[0]
    drop_last = n_train > cfg.batch_size  # a last batch of one would break BatchNorm
    steps = steps_per_epoch(n_train, cfg.batch_size)
    scheduler = warmup_cosine(optimizer, cfg, steps_per_epoch=steps)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def prepare(xb: torch.Tensor) -> torch.Tensor:
        if data.augment:
            xb = augment_batch(xb, generator=generator)
        x = data.normalize(xb)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    step_fn = torch.compile(model) if cfg.compile else model
    compile_seconds = 0.0
    if cfg.compile:
        compile_seconds = _warm_up_compiled(
            step_fn, model, data, cfg, prepare=prepare, autocast=autocast, generator=generator
        )

    history: list[EpochStats] = []
    result = RunResult(
        history=history,
        best_val_acc=0.0,
        best_epoch=0,
        final_val_acc=0.0,
        wall_seconds=0.0,
        compile_seconds=compile_seconds,
        params=count_parameters(model),
        device=_device_name(device),
        stopped_early=False,
        target_acc=cfg.target_acc,
    )
    first_epoch = 1
    if checkpoint is not None:
        restored = checkpoint_file.restore_run(
            checkpoint, model, optimizer, scheduler, generator, result,
            epochs=cfg.epochs, steps_per_epoch=steps,
        )  # fmt: skip
        first_epoch = 1 if restored is None else restored + 1
    start = time.perf_counter() - sum(s.epoch_seconds for s in history)
    saved = time.perf_counter()
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            raise_if_interrupted()  # a Ctrl-C Python dropped inside a finalizer
            epoch_start = time.perf_counter()
            model.train()
            losses = torch.zeros(steps, device=device)  # per step, to locate a divergence
            task_sum = torch.zeros((), device=device)
            aux_sum = torch.zeros((), device=device)
            zero = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            batches = iterate_batches(
                data.train_x,
                data.train_y,
                batch_size=cfg.batch_size,
                generator=generator,
                drop_last=drop_last,
            )
            for step, (xb, yb) in enumerate(batches):
                x = prepare(xb)
                with autocast:
                    logits = step_fn(x)
                    task = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                    aux = auxiliary_loss(alls) if alls else zero
                    loss = task + aux
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses[step] = loss.detach()
                task_sum += task.detach() * yb.shape[0]
                aux_sum += aux.detach()
                correct += (logits.argmax(dim=1) == yb).sum()
                seen += yb.shape[0]
            _raise_if_non_finite(losses, epoch)
            val_loss, val_acc = evaluate(model, data, "val", cfg=cfg)
            lrs = [group["lr"] for group in optimizer.param_groups]
            stats = EpochStats(
                epoch=epoch,
                train_loss=task_sum.item() / seen,
                aux_loss=aux_sum.item() / steps,
                train_acc=correct.item() / seen,
                val_loss=val_loss,
                val_acc=val_acc,
                epoch_seconds=time.perf_counter() - epoch_start,
                lr=lrs[0],
                all_lr=lrs[1] if len(lrs) > 1 else None,
            )
            result.record(stats, seconds=time.perf_counter() - start)
            if checkpoint is not None and time.perf_counter() - saved >= checkpoint_every:
                checkpoint_file.save_run(
                    checkpoint, epoch, model, optimizer, scheduler, generator, result
                )
                saved = time.perf_counter()
            if on_epoch is not None and on_epoch(stats):
                result.stopped_early = True
                break
        result.wall_seconds = time.perf_counter() - start
        result.final_val_acc = history[-1].val_acc if history else 0.0
        if cfg.evaluate_test:
            result.test_loss, result.test_acc, result.test_predictions = _evaluate(
                model, data, "test", cfg=cfg, predictions=True
            )
            result.train_eval_acc = evaluate(model, data, "train", cfg=cfg)[1]
    except torch.OutOfMemoryError as exc:
        raise TrainingOOMError(cfg.batch_size, result.device) from exc
    return result


def evaluate(
    model: nn.Module, data: DeviceData, split: str, *, cfg: TrainConfig
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on one split, in eval mode, no augmentation."""
    loss, acc, _ = _evaluate(model, data, split, cfg=cfg)
    return loss, acc


@torch.no_grad()
def _evaluate(
    model: nn.Module, data: DeviceData, split: str, *, cfg: TrainConfig, predictions: bool = False
) -> tuple[float, float, np.ndarray | None]:
    """`evaluate`, and with `predictions` the predicted class of every example (uint8, CPU)."""
    x_all, y_all = data.split(split)
    was_training = model.training
    model.eval()
    on_cuda = x_all.device.type == "cuda"
    channels_last = on_cuda and cfg.channels_last and _has_conv(model)
    loss_sum = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device, dtype=torch.long)
    predicted: list[torch.Tensor] = []
    with torch.autocast(x_all.device.type, dtype=torch.bfloat16, enabled=on_cuda and cfg.amp):
        for i in range(0, y_all.shape[0], cfg.eval_batch_size):
            x = data.normalize(x_all[i : i + cfg.eval_batch_size])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y_all[i : i + cfg.eval_batch_size]
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            classes = logits.argmax(dim=1)
            correct += (classes == y).sum()
            if predictions:
                predicted.append(classes.to(torch.uint8))
    model.train(was_training)
    n = max(y_all.shape[0], 1)
    kept = torch.cat(predicted).cpu().numpy() if predictions and predicted else None
    return loss_sum.item() / n, correct.item() / n, kept


def _raise_if_non_finite(losses: torch.Tensor, epoch: int) -> None:
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        step = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(epoch, step + 1, float(losses[step]))


def _warm_up_compiled(
    step_fn: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    data: DeviceData,
    cfg: TrainConfig,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    autocast: torch.autocast,
    generator: torch.Generator,
) -> float:
    """Compile outside the timed loop: one forward/backward as training runs it (same
    autocast, so no recompile later), then restore every weight and the batch-order state."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = generator.get_state()
    start = time.perf_counter()
    x = prepare(data.train_x[: cfg.batch_size])
    with autocast:
        loss = F.cross_entropy(step_fn(x), data.train_y[: cfg.batch_size])
    loss.backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    generator.set_state(rng)
    return time.perf_counter() - start


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
