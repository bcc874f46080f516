"""Tests for autoall.train: accuracy, reproducibility, divergence, schedule, callbacks, results."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from autoall.layer import ALLSpec, AutoLearningLayer, all_layers
from autoall.training._baselines import baseline
from autoall.training._data import DeviceData, load_data
from autoall.training._loop import (
    EpochStats,
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    TrainingOOMError,
    resolve_device,
    seed_everything,
    train,
)
from autoall.training._models import build_model, count_parameters

MLP_DIGITS_PARAMS = 85_002  # 64*256+256 + 256*256+256 + 256*10+10
ALL16_PARAMS = 8_720  # down 256*16+16, up 16*256+256, recon_bias 256


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    return load_data("digits", device="cpu")


def _model(data: DeviceData, *, seed: int = 0, spec: ALLSpec | None = None) -> nn.Module:
    seed_everything(seed)
    return build_model("mlp", in_shape=data.in_shape, num_classes=data.num_classes, all_spec=spec)


def _cfg(**overrides: Any) -> TrainConfig:
    """The digits MLP baseline on the CPU, with `overrides` (e.g. fewer epochs)."""
    return replace(baseline("mlp", "digits").config, **{"device": "cpu", **overrides})


def _comparable(history: list[EpochStats]) -> list[dict[str, Any]]:
    """Every EpochStats field except the timing, which legitimately varies."""
    return [
        {k: v for k, v in dataclasses.asdict(s).items() if k != "epoch_seconds"} for s in history
    ]


def _run(data: DeviceData, *, seed: int = 0, spec: ALLSpec | None = None, **cfg: Any) -> RunResult:
    return train(_model(data, seed=seed, spec=spec), data, _cfg(seed=seed, **cfg))


# ------------------------------------------------------------------------- accuracy, results


def test_digits_mlp_baseline_reaches_95_percent_within_30_epochs(digits: DeviceData) -> None:
    cfg = _cfg()
    assert cfg.epochs <= 30
    result = _run(digits)
    accs = [s.val_acc for s in result.history]
    assert result.epochs_run == cfg.epochs
    assert [s.epoch for s in result.history] == list(range(1, cfg.epochs + 1))
    assert result.best_val_acc >= 0.95, accs
    assert result.best_val_acc == max(accs)
    assert accs[result.best_epoch - 1] == result.best_val_acc
    assert result.final_val_acc == accs[-1]
    assert result.stopped_early is False
    assert result.device == "cpu"
    assert result.wall_seconds > 0 and result.compile_seconds == 0.0
    assert 0 < result.median_epoch_seconds <= result.wall_seconds
    first, last = result.history[0], result.history[-1]
    assert last.train_loss < first.train_loss and last.val_loss < first.val_loss
    assert all(s.aux_loss == 0.0 and s.all_lr is None for s in result.history)


def test_same_seed_gives_identical_history(digits: DeviceData) -> None:
    a = _run(digits, seed=3, epochs=4)
    b = _run(digits, seed=3, epochs=4)
    assert _comparable(a.history) == _comparable(b.history)
    assert (a.best_val_acc, a.best_epoch, a.final_val_acc) == (
        b.best_val_acc,
        b.best_epoch,
        b.final_val_acc,
    )


def test_different_seed_gives_a_different_history(digits: DeviceData) -> None:
    a = _run(digits, seed=0, epochs=2)
    b = _run(digits, seed=1, epochs=2)
    assert [s.train_loss for s in a.history] != [s.train_loss for s in b.history]
    assert [s.val_loss for s in a.history] != [s.val_loss for s in b.history]


def test_params_equal_count_parameters(digits: DeviceData) -> None:
    model = _model(digits, spec=ALLSpec(16))
    result = train(model, digits, _cfg(epochs=1))
    assert result.params == count_parameters(model)
    assert (result.params.total, result.params.all) == (
        MLP_DIGITS_PARAMS + ALL16_PARAMS,
        ALL16_PARAMS,
    )
    assert _run(digits, epochs=1).params.all == 0


# ---------------------------------------------------------------------- divergence, memory


class _NaNFrom(nn.Module):
    """Wraps a model: from training forward number (epoch, step) on, the logits are NaN."""

    def __init__(self, inner: nn.Module, *, steps_per_epoch: int, epoch: int, step: int) -> None:
        super().__init__()
        self.inner = inner
        self.first_bad = (epoch - 1) * steps_per_epoch + step  # 1-based count of train steps
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if not self.training:
            return out  # validation stays finite: only the training loss diverges
        self.calls += 1
        return out * float("nan") if self.calls >= self.first_bad else out


def test_injected_nan_names_epoch_and_step(digits: DeviceData) -> None:
    cfg = _cfg(epochs=4)
    steps = digits.n_train // cfg.batch_size
    model = _NaNFrom(_model(digits), steps_per_epoch=steps, epoch=2, step=3)
    seen: list[int] = []
    with pytest.raises(NonFiniteLossError) as info:
        train(model, digits, cfg, on_epoch=lambda s: seen.append(s.epoch))
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert math.isnan(info.value.value)
    assert "at epoch 2, step 3" in str(info.value)
    assert seen == [1]  # epoch 1 was reported, epoch 2 was not


def test_huge_learning_rate_raises_non_finite_loss(digits: DeviceData) -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at epoch 1, step \d+") as info:
        _run(digits, optimizer="sgd", lr=1e12, warmup_epochs=0, epochs=3)
    assert info.value.epoch == 1 and info.value.step >= 1
    assert not math.isfinite(info.value.value)


def test_out_of_memory_becomes_an_error_naming_the_batch_size(
    digits: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(digits)

    def out_of_memory(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "forward", out_of_memory)
    with pytest.raises(TrainingOOMError, match="batch_size 48") as info:
        train(model, digits, _cfg(epochs=2, batch_size=48))
    assert info.value.batch_size == 48
    assert "lower batch_size" in str(info.value)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


# ------------------------------------------------------------------------ two groups, schedule


def _factor(step: int, *, epochs: int, steps: int, warmup_epochs: float, floor: float) -> float:
    """Warm-up + cosine factor after `step` scheduler steps, written out independently."""
    total, warmup = epochs * steps, round(warmup_epochs * steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_two_groups_follow_warmup_cosine_proportionally(digits: DeviceData) -> None:
    lr, all_lr, floor, epochs, warmup = 1e-3, 1e-2, 0.1, 5, 2
    cfg = _cfg(
        epochs=epochs,
        batch_size=128,
        lr=lr,
        all_lr=all_lr,
        warmup_epochs=warmup,
        min_lr_ratio=floor,
    )
    model = _model(digits, spec=ALLSpec(16))
    result = train(model, digits, cfg)
    steps = digits.n_train // cfg.batch_size
    assert len(result.history) == epochs
    for s in result.history:
        assert s.all_lr is not None
        assert s.all_lr / s.lr == pytest.approx(all_lr / lr, rel=1e-9)
        f = _factor(s.epoch * steps, epochs=epochs, steps=steps, warmup_epochs=warmup, floor=floor)
        assert s.lr == pytest.approx(lr * f, rel=1e-9)
        assert s.all_lr == pytest.approx(all_lr * f, rel=1e-9)
    assert result.history[0].lr == pytest.approx(lr * (steps + 1) / (warmup * steps))
    end_of_warmup = result.history[warmup - 1]
    assert (end_of_warmup.lr, end_of_warmup.all_lr) == (pytest.approx(lr), pytest.approx(all_lr))
    end = result.history[-1]
    assert (end.lr, end.all_lr) == (pytest.approx(lr * floor), pytest.approx(all_lr * floor))
    peak = max(s.lr for s in result.history)
    assert peak == pytest.approx(lr)


def test_aux_loss_in_history(digits: DeviceData) -> None:
    recon = _run(digits, spec=ALLSpec(16, aux_loss="reconstruction", aux_weight=0.1), epochs=2)
    assert all(s.aux_loss > 0 and math.isfinite(s.aux_loss) for s in recon.history)
    none = _run(digits, spec=ALLSpec(16, aux_loss="none"), epochs=2)
    assert [s.aux_loss for s in none.history] == [0.0, 0.0]


# ----------------------------------------------------------------- the custom loss trains


def _trained_state(data: DeviceData, spec: ALLSpec, **cfg: Any) -> dict[str, torch.Tensor]:
    model = _model(data, spec=spec)
    train(model, data, _cfg(**cfg))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("aux_loss", ["reconstruction", "sparsity"])
def test_the_custom_loss_changes_the_trained_weights(digits: DeviceData, aux_loss: str) -> None:
    """Same seed, same batches, aux_weight 0.5 against 0: the base network and the ALL end
    elsewhere. A trainer that optimised the task loss alone would give identical weights."""
    spec = ALLSpec(16, aux_loss=aux_loss, aux_weight=0.5)
    with_aux = _trained_state(digits, spec, epochs=2)
    without = _trained_state(digits, replace(spec, aux_weight=0.0), epochs=2)
    again = _trained_state(digits, replace(spec, aux_weight=0.0), epochs=2)
    assert all(torch.equal(again[k], v) for k, v in without.items())  # the gaps are the loss's
    assert with_aux.keys() == without.keys()
    base = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.1.weight"]
    layer = ["head.0.down.weight", "head.0.down.bias", "head.0.up.weight", "head.0.up.bias"]
    for key in base + layer:
        gap = (with_aux[key] - without[key]).abs().max().item()
        assert gap > 1e-4, f"{key} moved only {gap:.2e}"
    if aux_loss == "reconstruction":  # the decoder bias is trained by the custom loss alone
        assert torch.equal(without["head.0.recon_bias"], torch.zeros(256))
        assert with_aux["head.0.recon_bias"].abs().max() > 1e-3


def _hand_custom_loss(layer: AutoLearningLayer, x: torch.Tensor) -> float:
    """L(W, a) on a batch of feature vectors x (B, d), written out from the layer's definition (README)."""
    w, b = layer.down.weight, layer.down.bias
    a = torch.relu(x @ w.T + b)  # (B, m)
    if layer.aux_loss == "sparsity":
        return float(a.abs().sum(dim=1).mean() / layer.hidden_size)
    decoded = a @ w + layer.recon_bias  # (B, d)
    return float((x - decoded).pow(2).sum(dim=1).mean() / layer.features)


# sparsity at 0.5 silences every code unit within two epochs (L = 0 from then on): 0.1 keeps it
@pytest.mark.parametrize(("aux_loss", "weight"), [("reconstruction", 0.5), ("sparsity", 0.1)])
def test_reported_aux_loss_is_the_weighted_custom_loss_averaged_over_batches(
    digits: DeviceData, aux_loss: str, weight: float
) -> None:
    model = _model(digits, spec=ALLSpec(16, aux_loss=aux_loss, aux_weight=weight))
    (layer,) = all_layers(model)
    per_step: list[tuple[float, float]] = []  # (L as stored by the layer, L by hand)

    def record(module: nn.Module, args: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if module.training:
            assert isinstance(module, AutoLearningLayer) and module.aux_value is not None
            with torch.no_grad():
                per_step.append((module.aux_value.item(), _hand_custom_loss(module, args[0])))

    layer.register_forward_hook(record)
    cfg = _cfg(epochs=3)
    result = train(model, digits, cfg)
    steps = digits.n_train // cfg.batch_size
    assert len(per_step) == 3 * steps
    for stored, by_hand in per_step:
        assert stored == pytest.approx(by_hand, rel=1e-5)
    for stats in result.history:
        batches = per_step[(stats.epoch - 1) * steps : stats.epoch * steps]
        expected = sum(weight * stored for stored, _ in batches) / steps
        assert stats.aux_loss > 0
        assert stats.aux_loss == pytest.approx(expected, rel=1e-5)

    off = _run(digits, spec=ALLSpec(16, aux_loss=aux_loss, aux_weight=0.0), epochs=2)
    assert [s.aux_loss for s in off.history] == [0.0, 0.0]


@pytest.mark.parametrize(("arch", "epochs"), [("mlp", 6), ("cnn", 3)])
def test_a_blocks_model_trains_end_to_end(digits: DeviceData, arch: str, epochs: int) -> None:
    seed_everything(0)
    spec = ALLSpec(16, aux_loss="reconstruction", aux_weight=0.1, positions="blocks")
    model = build_model(
        arch, in_shape=digits.in_shape, num_classes=digits.num_classes, all_spec=spec
    )
    layers = all_layers(model)
    assert len(layers) == {"mlp": 2, "cnn": 4}[arch]
    cfg = replace(baseline(arch, "digits").config, device="cpu", epochs=epochs, all_lr=3e-3)
    result = train(model, digits, cfg)
    first, last = result.history[0], result.history[-1]
    assert result.best_val_acc > 0.5, [s.val_acc for s in result.history]  # chance: 0.1
    assert last.train_loss < first.train_loss
    assert all(s.aux_loss > 0 and s.all_lr is not None for s in result.history)
    assert result.params.all == count_parameters(model).all > 0
    for layer in layers:  # every ALL, the channel ALLs included, left the identity
        assert layer.up.weight.abs().max() > 0


# --------------------------------------------------------------------------------- callbacks


def test_on_epoch_returning_true_stops_early(digits: DeviceData) -> None:
    seen: list[int] = []

    def stop_at_3(stats: EpochStats) -> bool:
        seen.append(stats.epoch)
        return stats.epoch == 3

    result = train(_model(digits), digits, _cfg(epochs=10), on_epoch=stop_at_3)
    assert seen == [1, 2, 3]
    assert result.stopped_early is True
    assert result.epochs_run == 3
    assert result.final_val_acc == result.history[-1].val_acc


def test_on_epoch_running_through_does_not_stop(digits: DeviceData) -> None:
    result = train(_model(digits), digits, _cfg(epochs=2), on_epoch=lambda s: None)
    assert result.stopped_early is False and result.epochs_run == 2


def test_on_epoch_exception_propagates(digits: DeviceData) -> None:
    class Pruned(Exception):
        pass

    def prune_at_2(stats: EpochStats) -> None:
        if stats.epoch == 2:
            raise Pruned(f"pruned at {stats.epoch}")

    with pytest.raises(Pruned, match="pruned at 2"):
        train(_model(digits), digits, _cfg(epochs=5), on_epoch=prune_at_2)


# -------------------------------------------------------------------------- test split, target


def _count_split_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = DeviceData.split

    def counting(self: DeviceData, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(which)
        return original(self, which)

    monkeypatch.setattr(DeviceData, "split", counting)
    return calls


def test_test_split_untouched_without_evaluate_test(
    digits: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_split_calls(monkeypatch)
    result = _run(digits, epochs=2)
    assert result.test_acc is None and result.test_loss is None
    assert calls.count("test") == 0
    assert calls.count("val") == 2  # once per epoch


def test_evaluate_test_evaluates_the_test_split_once(
    digits: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_split_calls(monkeypatch)
    result = _run(digits, epochs=3, evaluate_test=True)
    assert calls.count("test") == 1
    assert result.test_acc is not None and result.test_loss is not None
    assert 0.5 < result.test_acc <= 1.0
    assert result.test_loss > 0
    assert result.train_eval_acc is not None and 0.5 < result.train_eval_acc <= 1.0


def test_target_acc_records_first_crossing(digits: DeviceData) -> None:
    target = 0.9
    result = _run(digits, epochs=6, target_acc=target)
    first = next(s.epoch for s in result.history if s.val_acc >= target)
    assert result.target_acc == target
    assert result.target_epoch == first
    assert result.target_seconds is not None
    assert 0 < result.target_seconds <= result.wall_seconds


def test_target_acc_never_reached_is_none(digits: DeviceData) -> None:
    result = _run(digits, epochs=1, target_acc=1.0)
    assert all(s.val_acc < 1.0 for s in result.history)
    assert result.target_epoch is None and result.target_seconds is None


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, but got 0."),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adamw, but got 'rmsprop'."),
        ({"lr": -1}, "lr must be a positive number, but got -1."),
        ({"all_lr": 0.0}, "all_lr must be a positive number, but got 0.0."),
        ({"batch_size": 0}, "batch_size must be a positive integer, but got 0."),
        ({"weight_decay": -0.1}, "weight_decay must be a non-negative number, but got -0.1."),
        (
            {"epochs": 5, "warmup_epochs": 6},
            "warmup_epochs must be between 0 and epochs (5), but got 6.",
        ),
        ({"target_acc": 1.5}, "target_acc must be in (0, 1], but got 1.5."),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert str(info.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda() -> None:
    with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), load_data("digits"), _cfg(device="cuda")
        )


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device(None)
    assert resolve_device("auto") == auto
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif not torch.backends.mps.is_available():
        assert auto.type == "cpu"
