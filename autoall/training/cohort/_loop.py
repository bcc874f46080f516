"""The batched training loop of a cohort (autoall/training/cohort/_cohort.py says what it guarantees).

`CohortLoop` holds the members (each built alone by `autoall.training._plan.build`, with its own
generator, callback, checkpoint and `RunResult`) and their stacked state
(autoall/training/cohort/_state.py), and runs `train()`'s epoch for all of them at once: per step every
member's own batch ``(K, B, ...)``, one vmapped forward/backward, one optimizer step; per epoch
every member's validation, then `train()`'s end of epoch per member (divergence, history, best,
target, checkpoint, callback). Members that ended leave the state at the end of the epoch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from autoall.errors import RunFailed, one_line, raise_if_interrupted
from autoall.training._batches import apply_augmentation, draw_augmentation
from autoall.training._data import DeviceData
from autoall.training._loop import (
    EpochCallback,
    EpochStats,
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    TrainingOOMError,
    _device_name,
    _raise_if_non_finite,
    resolve_device,
    steps_per_epoch,
)
from autoall.training._models import count_parameters
from autoall.training._optim import lr_factor
from autoall.training._plan import RunPlan, build
from autoall.training.cohort._checkpoint import member_weights, restore_member, save_member
from autoall.training.cohort._state import CohortALL, CohortState, template

Outcome = RunResult | Exception  # a member's result, or what ended it (pruned, diverged, ...)
EndCallback = Callable[[int, Outcome], None]


class CannotBatch(RunFailed, RuntimeError):
    """vmap failed on the cohort's first step: nothing observable has happened yet."""


@dataclass
class _Member:
    index: int  # in the caller's list
    cfg: TrainConfig
    data: DeviceData
    shell: nn.Module  # the member's own model (CPU): its parameter count, its checkpoints
    generator: torch.Generator
    result: RunResult
    on_epoch: EpochCallback | None
    checkpoint: Path | None
    on_trained: Callable[[nn.Module], object] | None = None
    epoch: int = 0  # last finished epoch
    elapsed: float = 0.0  # its wall seconds: its shares of the cohort's epochs
    saved: float = field(default_factory=time.perf_counter)


class CohortLoop:
    """The members of one cohort (built, stacked, resumed from their checkpoints) and the loop
    that trains them; `run()` returns one outcome per member, in the callers' order."""

    def __init__(
        self,
        plans: Sequence[RunPlan],
        data: DeviceData,
        callbacks: Sequence[EpochCallback | None],
        checkpoints: Sequence[Path | None],
        evaluate_test: bool,
        checkpoint_every: float,
        on_end: EndCallback | None,
        on_trained: Sequence[Callable[[nn.Module], object] | None] | None = None,
    ) -> None:
        self.device = resolve_device(plans[0].train.device)
        self.on_cuda = self.device.type == "cuda"
        self.data = data = data.to(self.device)
        self.checkpoint_every, self.on_end = checkpoint_every, on_end
        self.members: list[_Member] = []
        for i, plan in enumerate(plans):
            shell, own = build(plan, data)
            cfg = replace(plan.train, evaluate_test=evaluate_test)
            self.members.append(
                _Member(
                    index=i,
                    cfg=cfg,
                    data=own,
                    shell=shell,
                    generator=torch.Generator(device=self.device).manual_seed(cfg.seed),
                    result=RunResult(
                        history=[],
                        best_val_acc=0.0,
                        best_epoch=0,
                        final_val_acc=0.0,
                        wall_seconds=0.0,
                        compile_seconds=0.0,
                        params=count_parameters(shell),
                        device=_device_name(self.device),
                        stopped_early=False,
                        target_acc=cfg.target_acc,
                    ),
                    on_epoch=callbacks[i],
                    checkpoint=checkpoints[i],
                    on_trained=on_trained[i] if on_trained is not None else None,
                )
            )
        first = self.members[0]
        self.cfg = first.cfg  # the shared settings (batch size, optimizer, amp, ...)
        self.shared = all(m.data is data for m in self.members)
        n_train = first.data.n_train
        self.drop_last = n_train > self.cfg.batch_size  # as train(): BatchNorm needs 2 samples
        self.steps = steps_per_epoch(n_train, self.cfg.batch_size)
        self.model = template(
            plans[0].arch,
            [p.spec for p in plans],
            in_shape=data.in_shape,
            num_classes=data.num_classes,
            head_width=plans[0].head_width,
        )
        self.alls = {n: m for n, m in self.model.named_modules() if isinstance(m, CohortALL)}
        self.coding = [n for n, m in self.alls.items() if m.needs_activations]  # return (h, a)
        self.state = CohortState(
            self.model,
            [m.shell for m in self.members],
            [m.cfg for m in self.members],
            device=self.device,
            steps_per_epoch=self.steps,
        )
        self.cohort_size = len(self.members)
        for row, member in enumerate(self.members):
            if member.checkpoint is not None and member.checkpoint.exists():
                member.epoch = restore_member(
                    self.state,
                    row,
                    shell=member.shell,
                    cfg=member.cfg,
                    generator=member.generator,
                    result=member.result,
                    path=member.checkpoint,
                    fused=self.on_cuda,
                )
                member.elapsed = sum(s.epoch_seconds for s in member.result.history)
        self._train_fn = torch.vmap(self._member_loss)
        self._eval_shared = torch.vmap(self._member_logits, in_dims=(0, 0, None))
        self._eval_own = torch.vmap(self._member_logits)
        self.autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda and self.cfg.amp
        )

    # -------------------------------------------------------------------------- the loop

    def run(self) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(self.members)
        try:
            self._end(
                [(r, m, None) for r, m in enumerate(self.members) if m.epoch >= m.cfg.epochs],
                outcomes,
            )
            probing = True  # until the first epoch is validated, nothing observable happened
            while self.members:
                raise_if_interrupted()  # a Ctrl-C Python dropped inside a finalizer
                start = time.perf_counter()
                try:
                    losses, sums = self._train_epoch()
                    val_loss, val_acc, _ = self._evaluate("val")
                except (torch.OutOfMemoryError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    if probing:
                        raise CannotBatch(f"torch.vmap: {one_line(exc)}") from exc
                    raise
                probing = False
                share = (time.perf_counter() - start) / len(self.members)
                ended = []
                for row, member in enumerate(self.members):
                    done, why = self._after_epoch(
                        row, member, losses, sums, val_loss, val_acc, share
                    )
                    if done:
                        ended.append((row, member, why))
                self._end(ended, outcomes)
        except torch.OutOfMemoryError as exc:
            raise TrainingOOMError(self.cfg.batch_size, _device_name(self.device)) from exc
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    def member_model(self, row: int) -> nn.Module:
        """Member `row` as the plain module it would be alone: its own shapes and weights, in
        eval mode, on the CPU. What `on_trained` gets, as `fit`'s does: a caller logs or
        evaluates a cohort member like any run."""
        member = self.members[row]
        member.shell.load_state_dict(member_weights(self.state, row, member.shell))
        return member.shell.eval()

    def _train_epoch(self) -> tuple[Tensor, list[Tensor]]:
        """One epoch of every member; per-step losses ``(steps, K)`` and per-member sums."""
        self.model.train()
        k, b = len(self.members), self.cfg.batch_size
        lrs = self.state.epoch_lrs()
        n = self.members[0].data.n_train
        perms = torch.stack(
            [torch.randperm(n, generator=m.generator, device=self.device) for m in self.members]
        )
        losses = torch.zeros(self.steps, k, device=self.device)
        task_sum = torch.zeros(k, device=self.device)
        aux_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        size = b if self.drop_last else n
        for step in range(self.steps):
            idx = perms[:, step * size : (step + 1) * size]  # (K, B): member i's own batch
            x, y = self._batch(idx)
            with self.autocast:
                task, hits, *pairs = self._train_fn(self.state.params(), self.state.buffers, x, y)
                activations = {
                    n: (pairs[2 * i], pairs[2 * i + 1]) for i, n in enumerate(self.coding)
                }
                aux = self.state.custom_losses(activations)
                loss = task + aux
            with warnings.catch_warnings():  # the leaves' grads are strided views, on purpose
                warnings.filterwarnings("ignore", message="grad and param do not obey")
                loss.sum().backward()  # the members' gradients are independent
            self.state.step(lrs[step])
            losses[step] = loss.detach()
            task_sum += task.detach() * y.shape[1]
            aux_sum += aux.detach()
            correct += hits
        return losses, [task_sum, aux_sum, correct]

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The members' batches ``(K, B, C, H, W)`` (augmented, normalised) and labels."""
        if self.shared:
            xb, yb = self.data.train_x[idx], self.data.train_y[idx]
        else:
            xb = torch.stack([m.data.train_x[i] for m, i in zip(self.members, idx, strict=True)])
            yb = torch.stack([m.data.train_y[i] for m, i in zip(self.members, idx, strict=True)])
        k, b = idx.shape
        if self.data.augment:  # each member's crops and flips from its own generator
            drawn = [
                draw_augmentation(b, generator=m.generator, device=self.device)
                for m in self.members
            ]
            offsets = torch.cat([d[0] for d in drawn], dim=1)
            flips = torch.cat([d[1] for d in drawn])
            xb = apply_augmentation(xb.flatten(0, 1), offsets, flips).view(xb.shape)
        return self._normalize(xb), yb

    def _normalize(self, xb: Tensor) -> Tensor:
        if self.shared:
            return self.data.normalize(xb)
        mean = torch.stack([m.data.mean for m in self.members])  # (K, 1, C, 1, 1)
        std = torch.stack([m.data.std for m in self.members])
        return (xb.float() - mean) / std

    def _member_loss(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, ...]:
        """One member (under vmap): cross-entropy, correct count, and the ``(h, a)`` of each
        ALL whose custom losses need them (`CohortState.custom_losses`)."""
        logits = functional_call(self.model, (params, buffers), (x,))
        task = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        hits = (logits.argmax(dim=1) == y).sum()
        kept: list[Tensor] = []
        for layer in self.alls.values():
            if layer.activations is not None:
                kept += layer.activations
                layer.activations = None
        return (task, hits, *kept)

    def _member_logits(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return functional_call(self.model, (params, buffers), (x,))

    @torch.no_grad()
    def _evaluate(
        self, split: str, rows: Sequence[int] | None = None, *, predictions: bool = False
    ) -> tuple[list[float], list[float], list[np.ndarray] | None]:
        """Per member (`rows`: those only): mean cross-entropy, accuracy, predicted classes."""
        rows = list(range(len(self.members))) if rows is None else list(rows)
        members = [self.members[r] for r in rows]
        index = torch.tensor(rows, device=self.device)
        params = {n: p[index] for n, p in self.state.params().items()}
        buffers = {n: b[index] for n, b in self.state.buffers.items()}
        self.model.eval()
        shared = self.shared  # else each member's own split (train) and normalisation
        y_all = members[0].data.split(split)[1]
        count = int(y_all.shape[0])
        chunk = max(64, self.cfg.eval_batch_size // len(rows))  # the memory of one model alone
        loss_sum = torch.zeros(len(rows), device=self.device)
        correct = torch.zeros(len(rows), device=self.device, dtype=torch.long)
        predicted: list[Tensor] = []
        with self.autocast:
            for i in range(0, count, chunk):
                if shared:
                    x = members[0].data.normalize(members[0].data.split(split)[0][i : i + chunk])
                    logits = self._eval_shared(params, buffers, x).float()  # (K, n, classes)
                    y = y_all[i : i + chunk].expand(len(rows), -1)
                else:
                    x = torch.stack(
                        [m.data.normalize(m.data.split(split)[0][i : i + chunk]) for m in members]
                    )
                    logits = self._eval_own(params, buffers, x).float()
                    y = torch.stack([m.data.split(split)[1][i : i + chunk] for m in members])
                nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                loss_sum += nll.view(y.shape).sum(dim=1)
                classes = logits.argmax(dim=2)
                correct += (classes == y).sum(dim=1)
                if predictions:
                    predicted.append(classes.to(torch.uint8))
        self.model.train()
        n = max(count, 1)
        kept = (
            list(torch.cat(predicted, dim=1).cpu().numpy()) if predictions and predicted else None
        )
        return [v / n for v in loss_sum.tolist()], [v / n for v in correct.tolist()], kept

    # ------------------------------------------------------------------ members' epochs

    def _after_epoch(
        self,
        row: int,
        member: _Member,
        losses: Tensor,
        sums: list[Tensor],
        val_loss: list[float],
        val_acc: list[float],
        share: float,
    ) -> tuple[bool, Exception | None]:
        """`train()`'s end of an epoch for one member: whether it ended, and the exception
        that ended it (None: it finished, or its callback stopped it)."""
        member.epoch += 1
        epoch, result = member.epoch, member.result
        try:
            _raise_if_non_finite(losses[:, row], epoch)
        except NonFiniteLossError as exc:
            return True, exc
        task_sum, aux_sum, correct = (s[row].item() for s in sums)
        seen = self.steps * (self.cfg.batch_size if self.drop_last else member.data.n_train)
        member.elapsed += share
        group_lr = self._lrs(row)
        stats = EpochStats(
            epoch=epoch,
            train_loss=task_sum / seen,
            aux_loss=aux_sum / self.steps,
            train_acc=correct / seen,
            val_loss=val_loss[row],
            val_acc=val_acc[row],
            epoch_seconds=share,
            lr=group_lr[0],
            all_lr=group_lr[1],
        )
        result.record(stats, seconds=member.elapsed)
        cfg = member.cfg
        due = time.perf_counter() - member.saved >= self.checkpoint_every
        if member.checkpoint is not None and due:
            save_member(
                self.state,
                row,
                shell=member.shell,
                cfg=cfg,
                generator=member.generator,
                result=result,
                path=member.checkpoint,
                epoch=epoch,
                fused=self.on_cuda,
            )
            member.saved = time.perf_counter()
        if member.on_epoch is not None:
            try:
                if member.on_epoch(stats):
                    result.stopped_early = True
                    return True, None
            except Exception as exc:
                return True, exc
        return epoch >= cfg.epochs, None

    def _lrs(self, row: int) -> tuple[float, float | None]:
        """The member's two groups' lr at the end of the epoch, as LambdaLR leaves them."""
        member = self.members[row]
        cfg = member.cfg
        factor = lr_factor(cfg, steps_per_epoch=self.steps)(self.state.steps[row])
        all_lr = cfg.all_lr if cfg.all_lr is not None else cfg.lr
        return cfg.lr * factor, all_lr * factor if member.result.params.all else None

    def _end(
        self, ended: list[tuple[int, _Member, Exception | None]], outcomes: list[Outcome | None]
    ) -> None:
        """Finish the members that ended (test evaluation), drop them, then tell the caller."""
        if not ended:
            return
        finished = [(r, m) for r, m, why in ended if why is None]
        for _, m in finished:
            m.result.wall_seconds = sum(s.epoch_seconds for s in m.result.history)
            m.result.final_val_acc = m.result.history[-1].val_acc if m.result.history else 0.0
            m.result.extra["cohort_size"] = self.cohort_size
        if finished and self.cfg.evaluate_test:
            rows = [r for r, _ in finished]
            test_loss, test_acc, predicted = self._evaluate("test", rows, predictions=True)
            train_acc = self._evaluate("train", rows)[1]
            for j, (_, m) in enumerate(finished):
                m.result.test_loss, m.result.test_acc = test_loss[j], test_acc[j]
                m.result.test_predictions = predicted[j] if predicted else None
                m.result.train_eval_acc = train_acc[j]
        for r, m in finished:
            if m.on_trained is not None:
                m.on_trained(self.member_model(r))
        gone = {r for r, _, _ in ended}
        keep = [r for r in range(len(self.members)) if r not in gone]
        self.state.keep(keep)
        self.members = [self.members[r] for r in keep]
        for _, m, why in ended:
            outcome: Outcome = m.result if why is None else why
            outcomes[m.index] = outcome
            if self.on_end is not None:
                self.on_end(m.index, outcome)
