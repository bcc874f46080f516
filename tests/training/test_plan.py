"""RunPlan and fit(): one seed means one initialisation of the shared parts and one batch order
in every variant (the report's runs are paired), and different seeds differ."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_study
from torch import nn

import autoall.training._plan
from autoall.config._study_file import load_study_file
from autoall.config._trial_plan import trial_plan
from autoall.layer import ALLSpec
from autoall.training._data import DeviceData, load_data, train_subset
from autoall.training._loop import TrainConfig
from autoall.training._models import build_model
from autoall.training._plan import RunPlan, fit


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    data = load_data("digits")
    return replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])


def _initial_weights(plan: RunPlan, data: DeviceData) -> dict[str, torch.Tensor]:
    """The weights `fit` starts `plan` from (it seeds, then builds), by parameter name."""
    captured: dict[str, torch.Tensor] = {}
    real = autoall.training._plan.train

    def spy(model: nn.Module, data: DeviceData, cfg: TrainConfig, *a: Any, **kw: Any) -> Any:
        captured.update({k: v.detach().clone() for k, v in model.named_parameters()})
        return real(model, data, replace(cfg, epochs=1), **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autoall.training._plan, "train", spy)
        fit(plan, data)
    return captured


CFG = TrainConfig(epochs=2, batch_size=128, warmup_epochs=0, device="cpu")


@pytest.mark.parametrize("positions", ["head", "blocks"])
def test_one_seed_gives_every_variant_the_same_shared_initialisation(
    digits: DeviceData, positions: str
) -> None:
    plain = RunPlan("mlp", replace(CFG, seed=1000))
    with_all = replace(plain, spec=ALLSpec(32, aux_loss="reconstruction", positions=positions))
    base = list(_initial_weights(plain, digits).values())
    ours = _initial_weights(with_all, digits)
    outside = [v for k, v in ours.items() if ".down." not in k and ".up." not in k
               and "recon_bias" not in k]  # fmt: skip
    assert len(outside) == len(base) == 6  # fc1, fc2, head: weight and bias
    assert all(torch.equal(a, b) for a, b in zip(base, outside, strict=True))
    other = list(_initial_weights(plain.with_seed(1001), digits).values())
    assert not torch.equal(base[0], other[0])  # the seed changes the initialisation


def test_one_seed_gives_the_same_batch_order_and_different_seeds_differ(
    digits: DeviceData,
) -> None:
    """Same seed, same model: identical training; the batch order comes from the seed alone."""
    plan = RunPlan("mlp", replace(CFG, seed=7))
    a, b = fit(plan, digits), fit(plan, digits)
    assert [s.train_loss for s in a.history] == [s.train_loss for s in b.history]
    c = fit(plan.with_seed(8), digits)
    assert [s.train_loss for s in a.history] != [s.train_loss for s in c.history]


def test_trial_plan_builds_the_all_and_the_baseline_from_a_trial(workdir: Path) -> None:
    cfg = load_study_file(write_study(workdir / "s.yaml"))
    params = {
        "hidden_size": 16,
        "all_lr": 0.01,
        "aux_weight": 0.1,
        "aux_loss": "sparsity",
        "positions": "blocks",
    }
    plan = trial_plan(cfg, "mlp", "all", params, device="cpu")
    assert plan.spec == ALLSpec(16, aux_loss="sparsity", aux_weight=0.1, positions="blocks")
    assert plan.train.all_lr == 0.01 and plan.train.lr == cfg.train_config("mlp").lr
    old = {k: v for k, v in params.items() if k != "positions"}  # stored before the knob existed
    assert trial_plan(cfg, "mlp", "all", old).spec.positions == "head"  # type: ignore[union-attr]
    base = trial_plan(cfg, "mlp", "baseline", {"lr": 0.02, "weight_decay": 1e-4})
    assert base.spec is None and (base.train.lr, base.train.weight_decay) == (0.02, 1e-4)
    assert base.train.all_lr is None
    with pytest.raises(ValueError, match="kind must be one of all, baseline, but got 'x'"):
        trial_plan(cfg, "mlp", "x", params)


def test_train_subset_is_stratified_seeded_and_keeps_validation(digits: DeviceData) -> None:
    small = train_subset(digits, 0.1, seed=3)
    assert small.n_train == pytest.approx(0.1 * digits.n_train, abs=1)
    assert torch.bincount(small.train_y).min() >= 10  # every class kept
    assert torch.equal(small.val_y, digits.val_y)
    again, other = train_subset(digits, 0.1, seed=3), train_subset(digits, 0.1, seed=4)
    assert torch.equal(small.train_x, again.train_x)
    assert not torch.equal(small.train_y, other.train_y) or not torch.equal(
        small.train_x, other.train_x
    )
    assert train_subset(digits, 1.0, seed=0) is digits
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], but got 1.5"):
        train_subset(digits, 1.5, seed=0)


def test_a_head_width_plan_trains_the_widened_model(digits: DeviceData) -> None:
    plan = RunPlan("mlp", replace(CFG, epochs=1), head_width=300)
    result = fit(plan, digits)
    wide = build_model("mlp", in_shape=digits.in_shape, num_classes=10, head_width=300)
    assert result.params.total == sum(p.numel() for p in wide.parameters())
