"""Baseline training settings per (architecture, data set): a published recipe, or a default.

Studies train the base network with these settings (the ALL adds only its own knobs; a study
file overrides the epochs to fit its budget), and the report trains them, without an ALL, as the
hand-set baseline. Each entry is one of two kinds:

- ``published``: a source's own recipe, as closely as `TrainConfig` can say it, with the figure
  the source reports, where to read both, and what still differs. Only kuangliu/pytorch-cifar's
  CIFAR-10 ``VGG('VGG16')`` and ``ResNet18()`` qualify: they are our ``vgg16`` and ``resnet18``
  (models/vgg.py, models/resnet.py; same layers, same shapes, same parameter count except the
  source's conv biases ahead of batch norm), trained by its main.py::

      optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)   # not Nesterov
      CosineAnnealingLR(optimizer, T_max=200); 200 epochs; batch 128; no warm-up
      RandomCrop(32, padding=4) + RandomHorizontalFlip()      # our augment_batch does the same

- ``default``: settings chosen for this project where we found no source whose recipe
  `TrainConfig` can reproduce for this model on this data. Our ``cnn`` matches no published
  network; PyTorch's examples/mnist trains a different net (no batch norm, dropout, Adadelta). The
  one 784-256-256-10 MLP recipe found (aymericdamien/TensorFlow-Examples, Adam 1e-3, batch 100,
  15 epochs, 94.59 % on MNIST) draws every weight and bias from N(0, 1), which our model does not
  do, so its figure is not what our ``mlp`` reaches. vgg16 and resnet18 have no published recipe
  on digits or MNIST here. The text of a default gives the reason for its values, no citation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from autoall.errors import InvalidValue
from autoall.training._data import DATASETS
from autoall.training._loop import TrainConfig
from autoall.training._models import ARCHITECTURES

Kind = Literal["published", "default"]
KINDS: tuple[Kind, ...] = ("published", "default")

# What a recipe is made of; the rest of TrainConfig (device, seed, amp, ...) is how it runs.
RECIPE_FIELDS: tuple[str, ...] = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "batch_size",
    "epochs",
    "warmup_epochs",
    "min_lr_ratio",
    "label_smoothing",
)


@dataclass(frozen=True)
class Baseline:
    """The settings for one (architecture, data set) and where they come from."""

    config: TrainConfig
    kind: Kind
    source: str  # one line: the recipe, then its citation (published) or the reason (default)
    figure: str | None = None  # published: the result the source reports, and who reports it
    url: str | None = None  # published: where the recipe and the figure can be read
    differences: tuple[str, ...] = ()  # published: what autoall does that the source did not

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidValue(f"kind must be one of {', '.join(KINDS)}, but got {self.kind!r}.")
        if "\n" in self.source or not self.source:
            raise InvalidValue(f"source must be one non-empty line, but got {self.source!r}.")
        if self.kind == "published" and not (self.figure and self.url):
            raise InvalidValue(
                "a published baseline needs the figure its source reports and a url."
            )
        if self.kind == "default" and (self.figure or self.url):
            raise InvalidValue("a default baseline has no source, so no figure and no url.")

    @property
    def label(self) -> str:
        """What the report prints for this row, e.g. "published recipe (kuangliu/...: ...)"."""
        if self.kind == "published":
            return f"published recipe ({self.figure})"
        return "default settings (no published recipe for this model on this data set)"

    def label_for(self, used: TrainConfig) -> str:
        """`label`, plus every recipe setting that `used` changes (e.g. a study's epochs)."""
        changed = [
            f"{name} {getattr(used, name)!r} (recipe: {getattr(self.config, name)!r})"
            for name in RECIPE_FIELDS
            if getattr(used, name) != getattr(self.config, name)
        ]
        return f"{self.label}, changed: {', '.join(changed)}" if changed else self.label


def recipe_text(cfg: TrainConfig) -> str:
    """The recipe settings of `cfg` in words, e.g. "SGD lr 0.1, momentum 0.9, wd 0.0005, ..."."""
    if cfg.optimizer == "sgd":
        nesterov = " (Nesterov)" if cfg.nesterov else ""
        parts = [f"SGD lr {cfg.lr:g}, momentum {cfg.momentum:g}{nesterov}"]
    else:
        parts = [f"AdamW lr {cfg.lr:g}"]
    if cfg.weight_decay:
        parts.append(f"wd {cfg.weight_decay:g}")
    parts.append(f"batch {cfg.batch_size}, {cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'}")
    warmup = cfg.warmup_epochs
    parts.append(
        "no warm-up" if not warmup else f"{warmup:g} warm-up epoch{'' if warmup == 1 else 's'}"
    )
    if cfg.min_lr_ratio == 1:
        parts.append("constant lr")
    else:
        parts.append(
            f"cosine to {cfg.min_lr_ratio:g}" + (" of the peak" if cfg.min_lr_ratio else "")
        )
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    return ", ".join(parts)


@dataclass(frozen=True)
class _Entry:
    settings: dict[str, Any]  # TrainConfig fields that differ from its defaults
    kind: Kind
    why: str  # published: the citation; default: the reason for the values
    figure: str | None = None
    url: str | None = None
    differences: tuple[str, ...] = ()


_KUANGLIU = "https://github.com/kuangliu/pytorch-cifar"
# main.py: lr 0.1 (--lr default), batch 128, SGD momentum 0.9 wd 5e-4 (nesterov: SGD's default,
# False), CosineAnnealingLR(T_max=200) (eta_min: default 0), 200 epochs, plain CrossEntropyLoss.
_KUANGLIU_RECIPE: dict[str, Any] = dict(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=5e-4,
    batch_size=128,
    epochs=200,
    warmup_epochs=0,
    min_lr_ratio=0.0,
    label_smoothing=0.0,
)
_KUANGLIU_DIFFERENCES: tuple[str, ...] = (
    "the figure is one run's best test accuracy over all epochs (main.py keeps the checkpoint "
    "with the best test accuracy); autoall reports the last epoch, on a test split it never "
    "selects on",
    "the README gave the same figure when it described a step schedule (lr 0.1, 0.01, 0.001 "
    "for epochs [0,150), [150,250), [250,350)); main.py now uses the cosine over 200 epochs "
    "and the README does not say which schedule produced the figure",
    "trains on 45,000 images (10 % held out for validation), the source on all 50,000",
    "the cosine steps after every batch here, after every epoch there",
    "inputs are normalised with the train split's exact per-channel mean and std, there with "
    "the constants (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010)",
    "bf16 autocast and channels-last on CUDA (amp=True, channels_last=True), fp32 there",
)

# digits: ~1,300 training images of 8x8 after the test and validation splits.
_TABLE: dict[tuple[str, str], _Entry] = {
    ("mlp", "digits"): _Entry(
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=30, warmup_epochs=1),
        "default",
        "Adam's usual lr 1e-3; batch 64 gives ~20 steps per epoch on ~1,300 training images",
    ),
    ("cnn", "digits"): _Entry(
        dict(optimizer="adamw", lr=2e-3, batch_size=64, epochs=15, warmup_epochs=1),
        "default",
        "twice Adam's usual lr 1e-3, which a batch-norm conv net tolerates; batch 64 as for mlp",
    ),
    ("vgg16", "digits"): _Entry(
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=15, warmup_epochs=1),
        "default",
        "Adam's usual lr 1e-3, batch and epochs as for cnn on digits; not tuned",
    ),
    ("resnet18", "digits"): _Entry(
        dict(optimizer="adamw", lr=1e-3, batch_size=64, epochs=15, warmup_epochs=1),
        "default",
        "Adam's usual lr 1e-3, batch and epochs as for cnn on digits; not tuned",
    ),
    ("mlp", "mnist"): _Entry(
        dict(optimizer="adamw", lr=1e-3, batch_size=128, epochs=20, warmup_epochs=1),
        "default",
        "Adam's usual lr 1e-3 with TrainConfig's default batch and epochs; not tuned",
    ),
    ("cnn", "mnist"): _Entry(
        dict(optimizer="adamw", lr=2e-3, batch_size=128, epochs=10, weight_decay=5e-4),
        "default",
        "the lr of cnn on digits with light decoupled weight decay; not tuned",
    ),
    ("vgg16", "mnist"): _Entry(
        dict(optimizer="sgd", lr=0.05, batch_size=128, epochs=10, weight_decay=5e-4),
        "default",
        "momentum, wd and batch of the published vgg16 CIFAR-10 recipe at half its lr, a "
        "cautious choice for a 10-epoch run; not tuned",
    ),
    ("resnet18", "mnist"): _Entry(
        dict(optimizer="sgd", lr=0.1, batch_size=128, epochs=10, weight_decay=5e-4),
        "default",
        "lr, momentum, wd and batch of the published resnet18 CIFAR-10 recipe, cut to 10 "
        "epochs with warm-up; not tuned",
    ),
    ("mlp", "cifar10"): _Entry(
        dict(optimizer="adamw", lr=1e-3, batch_size=128, epochs=30, weight_decay=1e-4),
        "default",
        "Adam's usual lr 1e-3 with light weight decay: an MLP on CIFAR-10 is a weak, fast "
        "reference; not tuned",
    ),
    ("cnn", "cifar10"): _Entry(
        dict(optimizer="sgd", lr=0.05, batch_size=256, epochs=30, weight_decay=5e-4),
        "default",
        "momentum and wd of the published vgg16/resnet18 CIFAR-10 recipe; batch 256 and lr "
        "0.05 chosen, not tuned, for a small net in a short run",
    ),
    ("vgg16", "cifar10"): _Entry(
        _KUANGLIU_RECIPE,
        "published",
        "kuangliu/pytorch-cifar main.py training its models/vgg.py VGG('VGG16'), our vgg16",
        figure="kuangliu/pytorch-cifar README: VGG16 92.64 % CIFAR-10 test accuracy",
        url=_KUANGLIU,
        differences=_KUANGLIU_DIFFERENCES
        + (
            "the source's 13 convolutions carry biases (4,224 parameters) that the batch norm "
            "after each cancels; ours have none",
        ),
    ),
    ("resnet18", "cifar10"): _Entry(
        _KUANGLIU_RECIPE,
        "published",
        "kuangliu/pytorch-cifar main.py training its models/resnet.py ResNet18(), our resnet18",
        figure="kuangliu/pytorch-cifar README: ResNet18 93.02 % CIFAR-10 test accuracy",
        url=_KUANGLIU,
        differences=_KUANGLIU_DIFFERENCES,
    ),
}


def _family(dataset: str) -> str:
    return "mnist" if dataset in ("mnist", "fashion-mnist") else dataset


def baseline(arch: str, dataset: str) -> Baseline:
    """The settings for `arch` on `dataset` (a fresh TrainConfig, device unset)."""
    if arch not in ARCHITECTURES:
        raise InvalidValue(
            f"Unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}."
        )
    if dataset not in DATASETS:
        raise InvalidValue(f"Unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}.")
    entry = _TABLE[(arch, _family(dataset))]
    config = replace(TrainConfig(), **entry.settings)
    prefix = "" if entry.kind == "published" else "default, "
    return Baseline(
        config=config,
        kind=entry.kind,
        source=f"{recipe_text(config)} ({prefix}{entry.why})",
        figure=entry.figure,
        url=entry.url,
        differences=entry.differences,
    )
