"""Hand-tuned baseline training settings per (architecture, data set), each with its source.

Studies train the base network with these settings (the ALL adds only its own knobs), and the
report trains them, without an ALL, as the baseline. Epoch counts are budgets chosen for this
project (a study runs many trials), not the papers' full schedules; each entry says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from autoall.data import DATASETS
from autoall.models import ARCHITECTURES
from autoall.train import TrainConfig


@dataclass(frozen=True)
class Baseline:
    config: TrainConfig
    source: str  # one line: a paper or reference implementation, or the reason for the choice


def _family(dataset: str) -> str:
    return "mnist" if dataset in ("mnist", "fashion-mnist") else dataset


_ADAM = "Adam(W) at 1e-3 (Kingma & Ba 2015 default; the article's Keras MLP uses it)"
_CIFAR_SGD = "SGD momentum 0.9, wd 5e-4, cosine (kuangliu/pytorch-cifar, the standard CIFAR recipe)"

_TABLE: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    # digits: 1,437 training images of 8x8; small batches give enough steps per epoch.
    ("mlp", "digits"): (
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=30, warmup_epochs=1),
        f"{_ADAM}; batch 64 and 30 epochs reach >= 95 % on digits on a 2-core CPU in ~1 s",
    ),
    ("cnn", "digits"): (
        dict(optimizer="adamw", lr=2e-3, batch_size=64, epochs=15, warmup_epochs=1),
        "AdamW 2e-3: BN conv nets tolerate 2x the Adam default; 15 epochs converge on digits",
    ),
    ("vgg16", "digits"): (
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=15, warmup_epochs=1),
        f"{_ADAM}; SGD 0.05 diverges early on 1.4k images with 15M parameters",
    ),
    ("resnet18", "digits"): (
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=15, warmup_epochs=1),
        f"{_ADAM}; same budget as vgg16 on digits",
    ),
    ("mlp", "mnist"): (
        dict(optimizer="adamw", lr=1e-3, batch_size=128, epochs=20, warmup_epochs=1),
        f"{_ADAM}, batch 128: the article's 784-256-256-10 MNIST setting",
    ),
    ("cnn", "mnist"): (
        dict(optimizer="adamw", lr=2e-3, batch_size=128, epochs=10, weight_decay=5e-4),
        "AdamW 2e-3, wd 5e-4: PyTorch examples/mnist-style conv net, 10 epochs reach ~99.3 %",
    ),
    ("vgg16", "mnist"): (
        dict(optimizer="sgd", lr=0.05, batch_size=128, epochs=10, weight_decay=5e-4),
        "SGD 0.05, momentum 0.9, wd 5e-4 (chengyangfu/pytorch-vgg-cifar10), 10-epoch budget",
    ),
    ("resnet18", "mnist"): (
        dict(optimizer="sgd", lr=0.1, batch_size=128, epochs=10, weight_decay=5e-4),
        f"{_CIFAR_SGD}; 10-epoch budget",
    ),
    ("mlp", "cifar10"): (
        dict(optimizer="adamw", lr=1e-3, batch_size=128, epochs=30, weight_decay=1e-4),
        f"{_ADAM}, wd 1e-4: an MLP on CIFAR-10 is a weak, fast reference",
    ),
    ("cnn", "cifar10"): (
        dict(optimizer="sgd", lr=0.05, batch_size=256, epochs=30, weight_decay=5e-4),
        "SGD 0.05, momentum 0.9, wd 5e-4, batch 256: small VGG-style nets (Keller Jordan's airbench family)",
    ),
    ("vgg16", "cifar10"): (
        dict(optimizer="sgd", lr=0.05, batch_size=128, epochs=30, weight_decay=5e-4),
        "SGD 0.05, momentum 0.9, wd 5e-4 (chengyangfu/pytorch-vgg-cifar10), 30-epoch cosine budget",
    ),
    ("resnet18", "cifar10"): (
        dict(optimizer="sgd", lr=0.1, batch_size=128, epochs=30, weight_decay=5e-4),
        f"{_CIFAR_SGD}; 30 of its 200 epochs, cosine, ~93-94 %",
    ),
}


def baseline(arch: str, dataset: str) -> Baseline:
    """The hand-tuned settings for `arch` on `dataset` (a fresh TrainConfig, device unset)."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}."
        )
    if dataset not in DATASETS:
        raise ValueError(f"Unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}.")
    overrides, source = _TABLE[(arch, _family(dataset))]
    return Baseline(config=replace(TrainConfig(), **overrides), source=source)
