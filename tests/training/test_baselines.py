"""Tests for `autoall.baselines`: every entry exists, published ones are their source's recipe,
defaults claim no source, and the study files keep their per-trial budgets."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest

from autoall.config._study_file import load_study_file
from autoall.training._baselines import RECIPE_FIELDS, Baseline, baseline
from autoall.training._data import DATASETS
from autoall.training._loop import TrainConfig
from autoall.training._models import ARCHITECTURES

STUDIES = Path(__file__).resolve().parents[2] / "studies"

# kuangliu/pytorch-cifar, main.py at commit 7ad1b9c745bebd47a273a606bfea9a8749a3bee7:
#   L19     parser.add_argument('--lr', default=0.1, ...)
#   L31-32  transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()
#   L45     DataLoader(trainset, batch_size=128, shuffle=True, num_workers=2)
#   L86     criterion = nn.CrossEntropyLoss()                        (no label smoothing)
#   L87-88  optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
#           (no nesterov=: SGD's default, False)
#   L89     CosineAnnealingLR(optimizer, T_max=200)                  (eta_min: default 0)
#   L151    for epoch in range(start_epoch, start_epoch+200):        (no warm-up anywhere)
KUANGLIU_MAIN = TrainConfig(
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
# kuangliu/pytorch-cifar README.md, "## Accuracy": "| [VGG16](...) | 92.64% |" and
# "| [ResNet18](...) | 93.02% |" (the same figures at commit 0ed52b170f4a8e2feaa7619895e4a22fd3842cac).
PUBLISHED: dict[tuple[str, str], tuple[TrainConfig, str]] = {
    ("vgg16", "cifar10"): (KUANGLIU_MAIN, "VGG16 92.64 %"),
    ("resnet18", "cifar10"): (KUANGLIU_MAIN, "ResNet18 93.02 %"),
}
CLAIMS_A_SOURCE = (
    "examples/mnist",
    "airbench",
    "keras",
    "the article's",
    "kuangliu",
    "chengyangfu",
)

ALL_PAIRS = [(a, d) for a in ARCHITECTURES for d in DATASETS]
DEFAULT_PAIRS = [pair for pair in ALL_PAIRS if pair not in PUBLISHED]


@pytest.mark.parametrize(("arch", "dataset"), ALL_PAIRS)
def test_every_architecture_and_data_set_has_an_entry(arch: str, dataset: str) -> None:
    base = baseline(arch, dataset)
    assert isinstance(base, Baseline) and isinstance(base.config, TrainConfig)
    assert base.kind in ("published", "default")
    assert base.source and "\n" not in base.source  # `autoall train` echoes it on one line
    assert base.config.device is None
    # the text states the recipe the config holds
    cfg = base.config
    assert f"batch {cfg.batch_size}, {cfg.epochs} epochs" in base.source
    assert base.source.startswith("SGD" if cfg.optimizer == "sgd" else "AdamW")
    assert ("Nesterov" in base.source) == (cfg.optimizer == "sgd" and cfg.nesterov)


def test_published_entries_are_exactly_the_checked_ones() -> None:
    published = {(a, d) for a, d in ALL_PAIRS if baseline(a, d).kind == "published"}
    assert published == set(PUBLISHED)


@pytest.mark.parametrize(("arch", "dataset"), sorted(PUBLISHED))
def test_a_published_entry_is_its_source_recipe(arch: str, dataset: str) -> None:
    base = baseline(arch, dataset)
    recipe, figure = PUBLISHED[(arch, dataset)]
    assert base.config == recipe
    assert base.url == "https://github.com/kuangliu/pytorch-cifar"
    assert base.figure is not None and figure in base.figure
    assert base.label == f"published recipe ({base.figure})"
    assert "kuangliu/pytorch-cifar" in base.source
    assert base.differences and all(d and "\n" not in d for d in base.differences)


@pytest.mark.parametrize(("arch", "dataset"), DEFAULT_PAIRS)
def test_a_default_entry_claims_no_source(arch: str, dataset: str) -> None:
    base = baseline(arch, dataset)
    assert base.kind == "default"
    assert base.figure is None and base.url is None and base.differences == ()
    assert base.label.startswith("default settings")
    text = f"{base.source} {base.label}".lower()
    for words in CLAIMS_A_SOURCE:
        assert words not in text, (words, text)


def test_label_for_names_what_a_study_changed() -> None:
    base = baseline("resnet18", "cifar10")
    assert base.label_for(replace(base.config, device="cpu", seed=3)) == base.label
    shortened = base.label_for(replace(base.config, epochs=30))
    assert shortened == f"{base.label}, changed: epochs 30 (recipe: 200)"


def test_recipe_fields_are_train_config_fields() -> None:
    assert set(RECIPE_FIELDS) <= {f.name for f in fields(TrainConfig)}


def test_a_published_baseline_needs_a_figure_and_a_url() -> None:
    with pytest.raises(ValueError, match="figure"):
        Baseline(config=TrainConfig(), kind="published", source="x", url="https://x")
    with pytest.raises(ValueError, match="no figure"):
        Baseline(config=TrainConfig(), kind="default", source="x", figure="90 %")


@pytest.mark.parametrize(
    ("arch", "dataset", "words"),
    [
        ("foo", "digits", ["'foo'", "mlp, cnn, vgg16, resnet18"]),
        ("mlp", "bar", ["'bar'", "digits, mnist, fashion-mnist, cifar10"]),
    ],
)
def test_unknown_names_are_named_in_the_error(arch: str, dataset: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        baseline(arch, dataset)
    for word in words:
        assert word in str(info.value)


# Per-trial epochs of every study file (what they were before the published recipes' 200).
STUDY_EPOCHS = {
    "digits.yaml": {"mlp": 20},
    "mnist.yaml": {"mlp": 20, "cnn": 10, "resnet18": 8},
    "fashion-mnist.yaml": {"mlp": 20, "cnn": 10, "resnet18": 8},
    "cifar10.yaml": {"cnn": 20, "vgg16": 30, "resnet18": 30},
}


@pytest.mark.parametrize("name", sorted(STUDY_EPOCHS))
def test_study_files_keep_their_per_trial_budget(name: str) -> None:
    study = load_study_file(STUDIES / name)
    epochs = {arch: study.train_config(arch).epochs for arch in study.architectures}
    assert epochs == STUDY_EPOCHS[name]
