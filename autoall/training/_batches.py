"""Batches on the device: a shuffled pass over a split without host synchronisation, and the
CIFAR-style augmentation (random crop after padding, horizontal flip) drawn from the run's own
generator, so one seed gives one batch order and one augmentation wherever a run trains (alone
or in a cohort, which draws for each member with `draw_augmentation` and applies it in one
call)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from autoall.errors import InvalidValue


def iterate_batches(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x[idx], y[idx])`` batches covering every sample once (one epoch).

    ``idx`` are slices of one ``torch.randperm(n)`` on ``x.device`` (drawn on the
    generator's device and moved if that differs), or plain slices when
    ``shuffle=False``. Batches stay in ``x``'s dtype: normalise/augment afterwards.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InvalidValue(f"batch_size must be a positive integer, but got {batch_size!r}.")
    if x.shape[0] != y.shape[0]:
        raise InvalidValue(
            f"x and y must hold the same number of samples, but got {x.shape[0]} and {y.shape[0]}."
        )
    n = int(x.shape[0])
    stop = n - n % batch_size if drop_last else n
    perm = _randperm(n, generator=generator, device=x.device) if shuffle else None
    return _batches(x, y, perm, batch_size=batch_size, stop=stop)


def augment_batch(x: Tensor, *, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Random crop after ``pad``-pixel zero padding, then random horizontal flip, per sample.

    For image ``i`` of ``x`` ``(B, C, H, W)``, with offsets ``dy, dx`` uniform in
    ``[0, 2 pad]`` and ``flip`` a fair coin::

        out[i, c, r, k] = padded[i, c, dy + r, dx + (W - 1 - k if flip else k)]

    done as gathers on ``x.device``; returns the same shape and dtype. The same as
    ``apply_augmentation(x, *draw_augmentation(B, ...))``.
    """
    if x.dim() != 4:
        raise InvalidValue(
            f"augment_batch expects images (B, C, H, W), but got shape {tuple(x.shape)}."
        )
    _check_pad(pad)
    offsets, flip = draw_augmentation(x.shape[0], generator=generator, device=x.device, pad=pad)
    return apply_augmentation(x, offsets, flip, pad=pad)


def draw_augmentation(
    b: int, *, generator: torch.Generator | None, device: torch.device, pad: int = 4
) -> tuple[Tensor, Tensor]:
    """The random part of :func:`augment_batch` for ``b`` images, drawn from ``generator``
    (on its device) and moved to ``device``: offsets ``(2, b, 1)`` in ``[0, 2 pad]`` (rows,
    columns) and flips ``(b, 1)`` bool. A cohort draws each member's from its own generator
    and applies them to all members' images at once."""
    draw_on = generator.device if generator is not None else device
    offsets = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator, device=draw_on)
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=draw_on).bool()
    return offsets.to(device), flip.to(device)


def apply_augmentation(x: Tensor, offsets: Tensor, flip: Tensor, *, pad: int = 4) -> Tensor:
    """Crop and flip ``x`` ``(B, C, H, W)`` as :func:`draw_augmentation` drew it."""
    b, c, h, w = x.shape
    k = torch.arange(w, device=x.device)
    rows = offsets[0] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1] + torch.where(flip, w - 1 - k, k)  # (B, W)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    # two gathers (rows, then columns) beat one 4-index advanced-indexing gather ~3x on CPU
    padded = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    return padded.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _check_pad(pad: int) -> None:
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise InvalidValue(f"pad must be a non-negative integer, but got {pad!r}.")


def _batches(
    x: Tensor, y: Tensor, perm: Tensor | None, *, batch_size: int, stop: int
) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, stop, batch_size):
        if perm is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = perm[start : start + batch_size]
            yield x[idx], y[idx]


def _randperm(n: int, *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None or generator.device == device:
        return torch.randperm(n, generator=generator, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)
