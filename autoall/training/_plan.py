"""What one training run trains, and the one function that trains it.

A study trial, a report's selection run and a report's evaluation run are each a `RunPlan`: an
architecture, an optional ALL, the training settings (whose `seed` fixes initialisation, batch
order and augmentation) and the share of the train split it sees. `fit()` is the one place that
goes seed -> model -> `train()`, so one plan and one seed give one model wherever it runs:

    seed_everything(seed); model = build_model(arch, all_spec=spec, head_width=w); train(...)

Because the base network is built before any ALL is inserted, and `train()` draws batches from
its own generator seeded with the same seed, two plans that differ only in their ALL (or its
knobs) start from the same shared weights and see the same batches: their runs are paired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from autoall import _timing as timing
from autoall.layer import ALLSpec
from autoall.training._data import DeviceData, train_subset
from autoall.training._loop import EpochCallback, RunResult, TrainConfig, seed_everything, train
from autoall.training._models import build_model


@dataclass(frozen=True)
class RunPlan:
    arch: str
    train: TrainConfig  # train.seed: initialisation, batch order, augmentation (and subset)
    spec: ALLSpec | None = None  # None: the plain network
    head_width: int | None = None  # the parameter-matched control: the layer before the head
    train_fraction: float = 1.0  # stratified share of the train split (generalisation claims)

    def with_seed(self, seed: int) -> RunPlan:
        return replace(self, train=replace(self.train, seed=seed))


def build(plan: RunPlan, data: DeviceData) -> tuple[nn.Module, DeviceData]:
    """The model `plan` starts from and the data it trains on: the train split cut to
    `train_fraction` (drawn with the seed), then `seed_everything(seed)` and `build_model`.
    `fit` trains that; a cohort (autoall/training/cohort/_cohort.py) builds every member with it."""
    seed = plan.train.seed
    if plan.train_fraction < 1:
        data = train_subset(data, plan.train_fraction, seed=seed)
    seed_everything(seed)
    with timing.span("trial.build_model"):
        model = build_model(
            plan.arch,
            in_shape=data.in_shape,
            num_classes=data.num_classes,
            all_spec=plan.spec,
            head_width=plan.head_width,
        )
    return model, data


def fit(
    plan: RunPlan,
    data: DeviceData,
    *,
    on_epoch: EpochCallback | None = None,
    evaluate_test: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 0.0,
    on_trained: Callable[[nn.Module], object] | None = None,
) -> RunResult:
    """Seed, build and train `plan` on `data`; the test split only with `evaluate_test`.

    `on_trained(model)` gets the trained model (on the training device, in eval mode) once
    training and evaluation are done, e.g. to log it.
    """
    model, data = build(plan, data)
    cfg = replace(plan.train, evaluate_test=evaluate_test)
    with timing.span("trial.train"):
        result = train(
            model, data, cfg, on_epoch, checkpoint=checkpoint, checkpoint_every=checkpoint_every
        )
    if on_trained is not None:
        on_trained(model.eval())
    return result
