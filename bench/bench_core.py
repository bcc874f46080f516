"""The data path: autoall's device-resident batches versus the article's DataLoader, side by
side in one process; and a 20-epoch digits MLP through `train()`.

Evidence (bench/RESULTS.md, section bench_core): AMD EPYC, 2 cores, torch.set_num_threads(2),
Python 3.11.7, torch 2.14.1, 2026-11-27; DataLoader seconds / device-resident seconds, median
(paired min-max):

- mlp, digits (5 runs): 6.21x (6.04-7.11); cnn, digits (5 runs): 1.42x (1.22-1.62);
- mlp, MNIST-sized (3 runs): 6.00x (5.70-6.00); cnn, MNIST-sized, 100 steps (3 runs): 1.06x
  (1.06-1.18);
- `train()` of the digits MLP, 20 epochs (5 runs): 0.405 s (0.394-0.421).

Same model, initialisation, optimizer (AdamW, foreach) and batch size; the two ways alternate
within every repetition so background load hits both alike:

- device-resident (autoall): ``iterate_batches`` (index slices of one ``randperm``) then
  ``DeviceData.normalize``, with the per-step work of ``train()`` (loss + ALL auxiliary loss,
  backward, step, loss and accuracy kept on the device, read once per epoch);
- DataLoader (the article): a torchvision-style ``Dataset`` whose ``__getitem__`` turns one
  uint8 image into a PIL image and applies ``ToTensor()`` + ``Normalize()``, through
  ``torch.utils.data.DataLoader(batch_size, shuffle=True)`` (``num_workers=0``, its default).

Cases: ``mlp`` and ``cnn`` on digits (1,293 training images of 1x8x8) and on MNIST-sized
synthetic data (60,000 x 1 x 28 x 28 uint8, random labels). ``cnn`` on the MNIST-sized data
times a fixed number of steps (``--cnn-steps``) instead of a full epoch. Figures go to
``bench/RESULTS.md`` between ``<!-- bench_core -->`` markers.

    .venv/bin/python bench/bench_core.py              # the figures above (minutes on 2 cores)
    .venv/bin/python bench/bench_core.py --quick --no-write   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, markdown_table, median, publish, spread  # noqa: E402

from autoall.layer import auxiliary_loss  # noqa: E402
from autoall.training._baselines import baseline  # noqa: E402
from autoall.training._batches import iterate_batches  # noqa: E402
from autoall.training._data import DeviceData, load_data  # noqa: E402
from autoall.training._loop import TrainConfig, seed_everything, train  # noqa: E402
from autoall.training._models import build_model  # noqa: E402

SECTION = "bench_core"
MNIST_SIZE = 60_000


@dataclass(frozen=True)
class Case:
    arch: str
    label: str  # data set as shown in the table
    data: DeviceData
    cfg: TrainConfig  # the architecture's baseline: batch size, lr, weight decay
    max_steps: int | None  # None: one full epoch
    repeats: int


class ArticleDataset(Dataset[tuple[Tensor, int]]):
    """torchvision-style data set (as ``datasets.MNIST``): one PIL image per item, transformed."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[..., Tensor]) -> None:
        self.images = images[:, 0].numpy()  # (N, H, W) uint8, one channel
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def article_loader(data: DeviceData, *, batch_size: int) -> DataLoader[tuple[Tensor, int]]:
    """``DataLoader(dataset, batch_size, shuffle=True)`` over ToTensor + Normalize items."""
    # ToTensor scales by 1/255, so the data set's own mean/std are scaled alike
    mean, std = data.mean.flatten().tolist(), data.std.flatten().tolist()
    transform = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize([m / 255 for m in mean], [s / 255 for s in std]),
        ]
    )
    dataset = ArticleDataset(data.train_x.cpu(), data.train_y.cpu(), transform)
    drop_last = len(dataset) > batch_size  # as train() does
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last)


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    steps: int,
    prepare: Callable[[Tensor], Tensor],
) -> tuple[float, int]:
    """``steps`` training steps of train()'s shape; one host read at the end, as per epoch.

    Returns the mean loss and the number of correct training predictions.
    """
    model.train()
    losses = torch.zeros(steps)
    correct = torch.zeros((), dtype=torch.long)
    step = 0
    for xb, yb in batches:
        if step == steps:
            break
        logits = model(prepare(xb))
        loss = F.cross_entropy(logits, yb) + auxiliary_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        correct += (logits.argmax(dim=1) == yb).sum()
        step += 1
    assert step == steps, (step, steps)
    return losses.mean().item(), int(correct.item())


def _fresh(case: Case) -> tuple[nn.Module, torch.optim.Optimizer]:
    seed_everything(0)
    model = build_model(case.arch, in_shape=case.data.in_shape, num_classes=case.data.num_classes)
    opt = torch.optim.AdamW(
        model.parameters(), lr=case.cfg.lr, weight_decay=case.cfg.weight_decay, foreach=True
    )
    return model, opt


@dataclass(frozen=True)
class Timing:
    resident: list[float]  # seconds per repetition
    dataloader: list[float]
    steps: int  # steps timed per repetition
    full: int  # steps in one full epoch


def time_case(case: Case) -> Timing:
    """Seconds per repetition for each way, the two ways alternating in order."""
    data, bs = case.data, case.cfg.batch_size
    full = data.n_train // bs if data.n_train > bs else 1
    steps = min(full, case.max_steps) if case.max_steps else full
    loader = article_loader(data, batch_size=bs)
    generator = torch.Generator().manual_seed(0)

    def resident(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
        batches = iterate_batches(
            data.train_x,
            data.train_y,
            batch_size=bs,
            generator=generator,
            drop_last=data.n_train > bs,
        )
        run_steps(model, opt, batches, steps=n, prepare=data.normalize)

    def dataloader(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
        run_steps(model, opt, loader, steps=n, prepare=lambda x: x)

    ways = {"resident": resident, "dataloader": dataloader}
    for fn in ways.values():  # warm-up: thread pools, allocator, first-call paths
        fn(*_fresh(case), min(steps, 3))
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for rep in range(case.repeats):
        order = list(ways) if rep % 2 == 0 else list(reversed(ways))
        for name in order:
            model, opt = _fresh(case)
            start = time.perf_counter()
            ways[name](model, opt, steps)
            seconds[name].append(time.perf_counter() - start)
    return Timing(seconds["resident"], seconds["dataloader"], steps, full)


def synthetic_mnist(n: int = MNIST_SIZE) -> DeviceData:
    """``n`` random uint8 images 1x28x28 with random labels 0..9 (val/test: 100 each, unused)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n + 200, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n + 200,), generator=g)
    sample = x[:n].float()
    return DeviceData(
        name="mnist-synthetic",
        in_shape=(1, 28, 28),
        num_classes=10,
        train_x=x[:n],
        train_y=y[:n],
        val_x=x[n : n + 100],
        val_y=y[n : n + 100],
        test_x=x[n + 100 :],
        test_y=y[n + 100 :],
        mean=sample.mean().view(1, 1, 1, 1),
        std=sample.std().view(1, 1, 1, 1),
        augment=False,
        device=torch.device("cpu"),
    )


def time_train_20(repeats: int) -> tuple[list[float], list[float], list[float]]:
    """train() of the digits MLP baseline for 20 epochs: call seconds, wall_seconds, final acc."""
    data = load_data("digits", device="cpu")
    cfg = replace(baseline("mlp", "digits").config, epochs=20, device="cpu")
    calls, walls, accs = [], [], []
    for rep in range(repeats + 1):  # the first run warms up and is not counted
        seed_everything(0)
        model = build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes)
        start = time.perf_counter()
        result = train(model, data, cfg)
        elapsed = time.perf_counter() - start
        if rep:
            calls.append(elapsed)
            walls.append(result.wall_seconds)
            accs.append(result.final_val_acc)
    return calls, walls, accs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--digits-reps", type=int, default=5)
    parser.add_argument("--mnist-reps", type=int, default=3)
    parser.add_argument("--cnn-steps", type=int, default=100, help="cnn steps, MNIST-sized data")
    parser.add_argument("--train-reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 rep, few steps: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    parser.add_argument("--note", default="", help="a line added to the section, e.g. load")
    args = parser.parse_args(argv)
    if args.quick:
        args.digits_reps = args.mnist_reps = args.train_reps = 1
        args.cnn_steps = 3
    torch.set_num_threads(args.threads)
    header = machine_header(threads=args.threads)
    print(header, flush=True)

    digits, mnist = load_data("digits", device="cpu"), synthetic_mnist()
    mnist_mlp_steps = 20 if args.quick else None
    cases = [
        Case("mlp", "digits", digits, baseline("mlp", "digits").config, None, args.digits_reps),
        Case("cnn", "digits", digits, baseline("cnn", "digits").config, None, args.digits_reps),
        Case(
            "mlp",
            "MNIST-sized synthetic",
            mnist,
            baseline("mlp", "mnist").config,
            mnist_mlp_steps,
            args.mnist_reps,
        ),
        Case(
            "cnn",
            "MNIST-sized synthetic",
            mnist,
            baseline("cnn", "mnist").config,
            args.cnn_steps,
            args.mnist_reps,
        ),
    ]
    rows, mlp_ratios, cnn_step = [], [], 0.0
    for case in cases:
        t = time_case(case)
        ratio = median(t.dataloader) / median(t.resident)
        paired = [d / r for d, r in zip(t.dataloader, t.resident, strict=True)]
        if case.arch == "mlp":
            mlp_ratios.append(ratio)
        else:
            cnn_step = median(t.resident) / t.steps
        timed = f"full epoch, {t.full}" if t.steps == t.full else f"{t.steps} of {t.full}"
        row = [
            case.arch,
            case.label,
            str(case.cfg.batch_size),
            f"{timed} steps",
            str(case.repeats),
            spread(t.resident),
            spread(t.dataloader),
            f"**{ratio:.2f}x** ({min(paired):.2f}-{max(paired):.2f})",
        ]
        rows.append(row)
        print(" | ".join(row), flush=True)

    calls, walls, accs = time_train_20(args.train_reps)
    print(f"train() 20 epochs: {spread(calls)}; final val acc {np.median(accs):.4f}", flush=True)

    table = markdown_table(
        [
            "model",
            "data",
            "batch",
            "timed",
            "runs",
            "device-resident, median (min-max)",
            "DataLoader, median (min-max)",
            "DataLoader / resident (paired min-max)",
        ],
        rows,
    )
    load_end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    mlp_verdict = "met" if min(mlp_ratios) >= 1.5 else "NOT met"
    train_verdict = "met" if median(calls) < 1.0 else "NOT met"
    body = f"""## Core: device-resident batches vs the article's DataLoader (`bench/bench_core.py`)

{header}
- Method: per case, one untimed warm-up of each way, then the two ways alternate in every
  repetition (fresh model from the same seed, AdamW foreach, the architecture's baseline batch
  size); seconds are wall time of the training steps only (no validation). DataLoader: a
  torchvision-style data set (PIL image + `ToTensor()` + `Normalize()` per item),
  `DataLoader(batch_size, shuffle=True)`, `num_workers=0`. Device-resident: `iterate_batches`
  + `DeviceData.normalize`, the loop of `train()`.
- MNIST-sized data: 60,000 random uint8 images 1x28x28 with random labels; `cnn` there times
  {args.cnn_steps} steps, not a full epoch ({cnn_step:.2f} s per device-resident step here).
- Load average at the end (1, 5, 15 min): {load_end}; other processes share these 2 cores.
{f"- Note: {args.note}" if args.note else ""}

{table}

Target (MLP, device-resident >= 1.5x faster): **{mlp_verdict}**
(ratios {", ".join(f"{r:.2f}x" for r in mlp_ratios)}).

### 20-epoch digits MLP training via `train()`

Baseline settings (`baseline("mlp", "digits")`, epochs=20, batch 64, AdamW), CPU, one untimed
warm-up run, then {args.train_reps} runs:

- `train()` call: {spread(calls)}; `RunResult.wall_seconds`: {spread(walls)}
- final validation accuracy: {np.median(accs):.4f} (median)
- Target (under 1 s): **{train_verdict}**
"""
    body = body.replace("\n\n\n", "\n\n")
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
