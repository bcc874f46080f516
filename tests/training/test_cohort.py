"""fit_cohort: K runs trained as one vmapped job give each member the run it has alone.

"Equal within float tolerance": a batched matrix product rounds differently from a single one
(~1e-7 relative per step). On the digits MLP that stays ~1e-6 after training; a conv net with
BatchNorm amplifies it (a channel with zero variance turns rounding into a whole Adam step), so
its members match within training noise instead: the same accuracy up to a validation image or
two (test_a_batchnorm_cnn_cohort_...).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import make_vmap_unbatchable

from autoall.layer import ALLSpec
from autoall.training._baselines import baseline
from autoall.training._data import DeviceData, load_data
from autoall.training._loop import EpochStats, NonFiniteLossError, RunResult, evaluate
from autoall.training._plan import RunPlan, fit
from autoall.training.cohort._cohort import cohort_blocker, fit_cohort, group_plans

LOSS_TOL = 1e-5  # per-epoch losses, digits MLP (observed: <= 1e-5 after a few epochs)


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    return load_data("digits", val_fraction=0.25)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast for these models, and steadier on a shared machine
    yield
    torch.set_num_threads(threads)


def _cfg(arch: str = "mlp", **overrides: Any) -> Any:
    return replace(baseline(arch, "digits").config, **{"device": "cpu", "epochs": 3, **overrides})


def _same_run(alone: RunResult, member: Any, *, loss_tol: float = LOSS_TOL) -> None:
    """`member` (a cohort's outcome) is `alone`'s run: every epoch, the final figures."""
    assert isinstance(member, RunResult), member
    assert len(member.history) == len(alone.history)
    for a, c in zip(alone.history, member.history, strict=True):
        assert c.epoch == a.epoch
        assert c.val_acc == a.val_acc and c.train_acc == pytest.approx(a.train_acc, abs=1e-9)
        for key in ("val_loss", "train_loss", "aux_loss"):
            assert getattr(c, key) == pytest.approx(getattr(a, key), abs=loss_tol), key
        assert (c.lr, c.all_lr) == (a.lr, a.all_lr)  # the schedule, exactly
    assert member.params == alone.params
    assert (member.final_val_acc, member.best_val_acc) == (alone.final_val_acc, alone.best_val_acc)
    assert member.best_epoch == alone.best_epoch
    assert member.test_acc == alone.test_acc and member.train_eval_acc == alone.train_eval_acc
    if alone.test_predictions is not None:
        assert member.test_predictions is not None
        assert (member.test_predictions == alone.test_predictions).all()


@pytest.mark.parametrize("fraction", [1.0, 0.3])
def test_a_seed_cohort_equals_each_seed_trained_alone(digits: DeviceData, fraction: float) -> None:
    """The report's seeds of one variant: same knobs, own initialisation and batch order (and,
    on a share of the train split, their own stratified subset and normalisation)."""
    spec = ALLSpec(hidden_size=16, aux_loss="reconstruction", aux_weight=0.1)
    plans = [
        RunPlan("mlp", _cfg(seed=seed, all_lr=3e-3), spec, train_fraction=fraction)
        for seed in (1000, 1001, 1002)
    ]
    members = fit_cohort(plans, digits, evaluate_test=True)
    for plan, member in zip(plans, members, strict=True):
        _same_run(fit(plan, digits, evaluate_test=True), member)
        assert isinstance(member, RunResult)
        assert member.extra["cohort_size"] == 3
        assert member.wall_seconds == pytest.approx(sum(s.epoch_seconds for s in member.history))
    first = members[0]
    assert isinstance(first, RunResult) and isinstance(members[1], RunResult)
    assert first.history[0].val_loss != members[1].history[0].val_loss  # seeds differ


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_trial_cohort_of_different_knobs_equals_each_trial_alone(
    digits: DeviceData, optimizer: str
) -> None:
    """Members differ in hidden size (padded to the widest), custom-loss kind and weight,
    positions (a head member carries frozen zero block ALLs), all_lr, weight decay and epochs;
    SGD is Nesterov SGD with momentum, as train() runs it."""
    lr = 0.05 if optimizer == "sgd" else 1e-3
    specs = [
        ALLSpec(16, "reconstruction", 0.1),
        ALLSpec(40, "sparsity", 0.3, positions="blocks"),
        ALLSpec(8, "orthogonality", 0.05),
        ALLSpec(24, "none", 0.5, positions="blocks"),
        ALLSpec(32, "reconstruction", 0.0),
    ]
    plans = [
        RunPlan(
            "mlp",
            _cfg(
                optimizer=optimizer,
                lr=lr,
                seed=i,
                all_lr=1e-3 * (i + 1),
                weight_decay=0.01 * i,
                epochs=3 + i % 2,
            ),  # fmt: skip
            spec,
        )
        for i, spec in enumerate(specs)
    ]
    members = fit_cohort(plans, digits)
    for plan, member in zip(plans, members, strict=True):
        _same_run(fit(plan, digits), member, loss_tol=1e-4)  # orthogonality: an M x M Gram


def test_a_tuned_baseline_cohort_differs_in_lr_and_weight_decay_only(digits: DeviceData) -> None:
    plans = [
        RunPlan("mlp", _cfg(seed=0, lr=lr, weight_decay=wd))
        for lr, wd in ((1e-3, 0.0), (3e-3, 1e-2), (3e-4, 1e-4))
    ]
    for plan, member in zip(plans, fit_cohort(plans, digits), strict=True):
        _same_run(fit(plan, digits), member)


def test_a_batchnorm_cnn_cohort_matches_each_run_within_training_noise(
    digits: DeviceData,
) -> None:
    """BatchNorm's running statistics are stacked buffers that vmap updates per member: the
    validation (eval mode, running statistics) matches the run alone."""
    spec = ALLSpec(hidden_size=24, aux_loss="sparsity", aux_weight=0.1)
    plans = [RunPlan("cnn", _cfg("cnn", seed=s, epochs=2, all_lr=2e-3), spec) for s in (0, 1)]
    for plan, member in zip(plans, fit_cohort(plans, digits), strict=True):
        alone = fit(plan, digits)
        assert isinstance(member, RunResult)
        assert [s.epoch for s in member.history] == [1, 2]
        for a, c in zip(alone.history, member.history, strict=True):
            # Up to 9 images of 360: after epoch 1 (about 70%, small margins) the float order of
            # another CPU's kernels moved 5 images while the losses agreed within 0.3%.
            assert c.val_acc == pytest.approx(a.val_acc, abs=9 / 360)
            assert c.val_loss == pytest.approx(a.val_loss, rel=0.02)
            assert c.train_loss == pytest.approx(a.train_loss, rel=0.02)
        assert member.final_val_acc > 0.8  # the running statistics were learnt


def test_each_member_ends_on_its_own_and_the_others_go_on(digits: DeviceData) -> None:
    """Member 0 diverges, member 1's callback raises at epoch 2 (a pruner), member 2's stops it
    after epoch 1, member 3 runs through: each outcome is its own, on_end says it as it ends,
    and the survivors' runs are untouched."""
    spec = ALLSpec(hidden_size=16, aux_loss="none", aux_weight=0.1)
    sgd = _cfg(optimizer="sgd", lr=0.05, warmup_epochs=0)
    plans = [RunPlan("mlp", replace(sgd, seed=s), spec) for s in range(4)]
    plans[0] = replace(plans[0], train=replace(sgd, lr=1e12))

    class Pruned(Exception):
        pass

    def prune_at_2(stats: EpochStats) -> None:
        if stats.epoch == 2:
            raise Pruned("pruned at epoch 2")

    seen: dict[int, list[int]] = {i: [] for i in range(4)}

    def watch(i: int, then: Any = None) -> Any:
        def callback(stats: EpochStats) -> Any:
            seen[i].append(stats.epoch)
            return then(stats) if then is not None else None

        return callback

    ends: list[tuple[int, str]] = []
    outcomes = fit_cohort(
        plans,
        digits,
        on_epoch=[watch(0), watch(1, prune_at_2), watch(2, lambda s: True), watch(3)],
        on_end=lambda i, outcome: ends.append((i, type(outcome).__name__)),
    )
    assert isinstance(outcomes[0], NonFiniteLossError) and outcomes[0].epoch == 1
    assert isinstance(outcomes[1], Pruned)
    assert isinstance(outcomes[2], RunResult) and outcomes[2].stopped_early
    assert outcomes[2].epochs_run == 1
    assert seen == {0: [], 1: [1, 2], 2: [1], 3: [1, 2, 3]}  # a diverged epoch is not reported
    assert ends == [(0, "NonFiniteLossError"), (2, "RunResult"), (1, "Pruned"), (3, "RunResult")]
    _same_run(fit(plans[3], digits), outcomes[3])


def test_checkpoints_move_between_a_cohort_and_train(digits: DeviceData, tmp_path: Path) -> None:
    """A member's checkpoint is train()'s: a single run resumes a cohort member's, a cohort
    resumes single runs' (members at different epochs), each as if never interrupted."""
    plans = [
        RunPlan("mlp", _cfg(seed=s, epochs=4, weight_decay=1e-3, all_lr=3e-3), spec)
        for s, spec in enumerate(
            [ALLSpec(8, "reconstruction", 0.1), ALLSpec(24, "sparsity", 0.1, positions="blocks")]
        )
    ]
    whole = [fit(p, digits) for p in plans]
    first = [tmp_path / "a0.pt", tmp_path / "a1.pt"]
    stopped = fit_cohort(plans, digits, on_epoch=[lambda s: s.epoch == 2] * 2, checkpoints=first)
    assert [r.epochs_run for r in stopped if isinstance(r, RunResult)] == [2, 2]
    for plan, path, alone in zip(plans, first, whole, strict=True):
        resumed = fit(plan, digits, checkpoint=path)
        assert resumed.extra["resumed_from_epoch"] == 2
        _same_run(alone, resumed)

    second = [tmp_path / "b0.pt", tmp_path / "b1.pt"]
    for plan, path, epochs in zip(plans, second, (1, 3), strict=True):
        fit(plan, digits, on_epoch=lambda s, e=epochs: s.epoch == e, checkpoint=path)
    for alone, member in zip(whole, fit_cohort(plans, digits, checkpoints=second), strict=True):
        assert isinstance(member, RunResult) and member.extra["resumed_from_epoch"] in (1, 3)
        _same_run(alone, member)


def test_what_vmap_cannot_batch_trains_one_by_one_with_one_line(
    digits: DeviceData, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_vmap_unbatchable(monkeypatch)
    plans = [RunPlan("mlp", _cfg(seed=s, epochs=2)) for s in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="autoall.cohort"):
        outcomes = fit_cohort(plans, digits)
        again = fit_cohort(plans, digits)  # known now: no second attempt, no second line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "mlp runs cannot train as one cohort (torch.vmap: RuntimeError: Batching rule not "
        "implemented for aten::something); training them one by one."
    ]
    for plan, member, repeat in zip(plans, outcomes, again, strict=True):
        alone = fit(plan, digits)
        _same_run(alone, member, loss_tol=0)  # fit() itself: bit for bit
        _same_run(alone, repeat, loss_tol=0)
    assert cohort_blocker(plans) is not None


def test_what_members_must_share(digits: DeviceData) -> None:
    mlp, cnn = RunPlan("mlp", _cfg()), RunPlan("cnn", _cfg("cnn"))
    wide = replace(mlp, head_width=300)
    compiled = RunPlan("mlp", _cfg(compile=True))
    assert group_plans([mlp, cnn, mlp.with_seed(1), wide, cnn.with_seed(2)]) == [
        [0, 2],
        [1, 4],
        [3],
    ]
    assert cohort_blocker([mlp, mlp.with_seed(1)]) is None
    assert cohort_blocker([mlp, cnn]) == "their architectures or shared training settings differ"
    assert cohort_blocker([compiled, compiled.with_seed(1)]) == (
        "compile is set, and torch.compile is not applied to a vmapped cohort"
    )
    with pytest.raises(ValueError, match="a cohort's plans must share their architecture"):
        fit_cohort([mlp, cnn], digits)


def test_a_cohort_hands_out_each_member_as_the_module_it_trains_alone(digits: DeviceData) -> None:
    """`on_trained[i]` gets member i as a plain module (its own shapes, eval mode), the weights
    `fit` trains alone for its plan, scoring the member's final validation accuracy: a caller
    logs a cohort member like any run."""
    specs = [
        ALLSpec(16, "reconstruction", 0.1),
        ALLSpec(40, "sparsity", 0.3),
        ALLSpec(8, "none", 0.5),
    ]
    plans = [RunPlan("mlp", _cfg(seed=i, lr=1e-3 * (i + 1)), spec) for i, spec in enumerate(specs)]
    got: list[list[torch.nn.Module]] = [[] for _ in plans]
    members = fit_cohort(plans, digits, on_trained=[g.append for g in got])
    for plan, member, models in zip(plans, members, got, strict=True):
        assert isinstance(member, RunResult)
        (model,) = models
        assert not model.training
        alone: list[torch.nn.Module] = []
        fit(plan, digits, on_trained=alone.append)
        want, have = alone[0].state_dict(), model.state_dict()
        assert have.keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(have[key].cpu(), value.cpu(), atol=1e-4, rtol=1e-4)
        one_image = 1.5 / len(digits.val_y)
        val_acc = evaluate(model, digits, "val", cfg=plan.train)[1]
        assert val_acc == pytest.approx(member.final_val_acc, abs=one_image)
