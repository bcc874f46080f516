"""The report's fairness rules, one at a time and without a whole report: reduced data at equal
optimizer steps, controls re-tuned on what they free, time claims only from runs timed alike,
the margin fixed from validation, budgets and boundaries read from the studies."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from autoall.config._space import ParamSpec
from autoall.config._study_file import SamplerConfig
from autoall.report import _claims as claims
from autoall.report._budget import arm_budget, default_margin
from autoall.report._retune import ReducedDataError, equal_steps, retune
from autoall.report._types import ArchReport, Claim, Replicate, RunRecord, Variant
from autoall.training._data import load_data, train_subset
from autoall.training._loop import TrainConfig, steps_per_epoch
from autoall.training._plan import RunPlan, fit


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_data("digits", val_fraction=0.1)  # 1,293 training images


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every optimizer step taken, counted at AdamW's step."""
    counted: list[int] = []
    real = torch.optim.AdamW.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return counted


def test_reduced_data_runs_take_as_many_optimizer_steps_as_full_data_runs(
    digits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = RunPlan("mlp", TrainConfig(epochs=3, batch_size=128, warmup_epochs=1, seed=5))
    full = 3 * steps_per_epoch(1293, 128)
    assert full == 30
    counted = _count_steps(monkeypatch)
    fit(plan, digits)
    assert len(counted) == full
    for fraction, share_steps in ((0.1, 1), (0.3, 3)):  # 130 and 388 images
        reduced = equal_steps(plan, digits, fraction)
        assert reduced.train_fraction == fraction
        assert reduced.train.epochs == full // share_steps  # 30 and 10 epochs, not 3
        # the warm-up lasts as many steps as on full data (one full epoch: 10 steps)
        assert reduced.train.warmup_epochs * share_steps == pytest.approx(10)
        counted.clear()
        result = fit(reduced, digits)
        assert len(counted) == full, fraction
        assert result.epochs_run == reduced.train.epochs


def test_a_share_whose_steps_cannot_match_is_refused_before_training(digits: Any) -> None:
    plan = RunPlan("mlp", TrainConfig(epochs=2, batch_size=128))  # 20 steps; 30 %: 3 a epoch
    with pytest.raises(ReducedDataError) as info:
        equal_steps(plan, digits, 0.3)
    message = str(info.value)
    assert "--fractions: 0.3 of the train split is 388 images, 3 optimizer steps" in message
    assert "not the 20 of a full-data run" in message and "\n" not in message
    # within 1 %, whole epochs: 200 steps, 3 a epoch -> 67 epochs, 201 steps
    long = equal_steps(replace(plan, train=replace(plan.train, epochs=20)), digits, 0.3)
    assert long.train.epochs == 67


class _FakeStore:
    """Scores each candidate by its knobs: the validation accuracy peaks at lr = 0.02."""

    def __init__(self) -> None:
        self.calls: list[list[RunPlan]] = []

    def get_or_train_seeds(self, variant: str, plans: list[RunPlan], data: Any, **kw: Any) -> Any:
        assert variant.startswith("tune-") and kw["evaluate_test"] is False
        self.calls.append(list(plans))
        return [
            RunRecord(
                arch=p.arch,
                variant=variant,
                seed=p.train.seed,
                run_id=f"r{i}",
                metrics={
                    "final_val_acc": 1 - abs(math.log(p.train.lr / 0.02)) / 10,
                    "final_val_loss": 0.1,
                    "params_total": 1.0,
                },
                val_acc=[0.5, 0.6],
                epoch_seconds=[0.1, 0.1],
                test_predictions=None,
                reused=False,
                replicate=kw["replicate"],
            )
            for i, p in enumerate(plans)
        ]


def _retune(store: Any, plan: RunPlan, trials: int, replicate: int = 0) -> Any:
    space = {
        "lr": ParamSpec("lr", "float", low=1e-4, high=1e-1, log=True),
        "weight_decay": ParamSpec("weight_decay", "float", low=1e-6, high=1e-2, log=True),
    }
    return retune(
        store, name="param-matched", plan=plan, space=space, trials=trials, seed=0,
        data=None, split={}, replicate=replicate, cohort=True,
    )  # fmt: skip


def test_a_control_is_re_tuned_on_what_it_frees_and_its_knobs_differ_from_the_winner() -> None:
    winner = RunPlan("mlp", TrainConfig(lr=1e-3, weight_decay=1e-4, seed=3), head_width=300)
    store = _FakeStore()
    plan, summary, runs = _retune(store, winner, trials=8)
    candidates = store.calls[0]
    assert len(candidates) == len(runs) == summary.trials == 8
    assert (candidates[0].train.lr, candidates[0].train.weight_decay) == (1e-3, 1e-4)  # inherited
    assert all(c.head_width == 300 and c.train.seed == 3 for c in candidates)  # only knobs move
    best = max(candidates, key=lambda c: -abs(math.log(c.train.lr / 0.02)))
    assert plan.train.lr == best.train.lr != winner.train.lr
    assert summary.best == {"lr": plan.train.lr, "weight_decay": plan.train.weight_decay}
    assert summary.knobs == ("lr", "weight_decay") and summary.epochs == 16
    # the same replicate draws the same candidates (a rerun reuses them); another draws others
    again = _FakeStore()
    _retune(again, winner, trials=8)
    assert [c.train.lr for c in again.calls[0]] == [c.train.lr for c in candidates]
    other = _FakeStore()
    _retune(other, winner, trials=8, replicate=1)
    assert [c.train.lr for c in other.calls[0]][1:] != [c.train.lr for c in candidates][1:]
    # one candidate: the winner's own knobs, nothing else
    plan, summary, _ = _retune(_FakeStore(), winner, trials=1)
    assert plan == winner and summary.trials == 1


def _record(variant: str, replicate: int, seed: int, seconds: float, arrangement: str) -> RunRecord:
    return RunRecord(
        arch="mlp", variant=variant, seed=seed, run_id=f"{variant}{replicate}{seed}",
        metrics={"test_acc": 0.9, "train_eval_acc": 0.95}, val_acc=[0.5, 0.95],
        epoch_seconds=[seconds, seconds], test_predictions=None, reused=False,
        replicate=replicate, arrangement=arrangement, target_epoch=2, target_seconds=2 * seconds,
    )  # fmt: skip


def _arch_report(runs: list[RunRecord]) -> ArchReport:
    plan = RunPlan("mlp", TrainConfig())
    variants = [Variant("all", "ALL", plan, ""), Variant("tuned-baseline", "tuned", plan, "")]
    replicates = [Replicate(r, None, None, 3, {}, variants=variants) for r in (0, 1)]  # type: ignore[arg-type]
    return ArchReport("mlp", replicates, runs=runs, margin=0.01)


def test_time_claims_need_both_arms_timed_in_one_arrangement() -> None:
    def seconds_claim(arrangement: str) -> Claim:
        runs = [
            _record(v, r, s, (1.0 if v == "all" else 1.5) + 0.01 * s + 0.02 * r, a)
            for v, a in (("all", "alone"), ("tuned-baseline", arrangement))
            for r in (0, 1)
            for s in (1000, 1001, 1002)
        ]
        item = Claim("seconds", "mlp", "", "all", "tuned-baseline", "target_seconds", -1)
        claims._test(item, _arch_report(runs), test_y=np.zeros(1))
        return item

    mixed = seconds_claim("cohort of 3")
    assert mixed.test is None
    assert "different arrangements (alone, cohort of 3)" in mixed.reason
    alike = seconds_claim("alone")
    assert alike.test is not None and "every run timed alone" in alike.note
    assert alike.test.estimate.replicates == 2 and alike.test.estimate.seeds == 3
    assert alike.test.estimate.mean == pytest.approx(2 * (1.0 - 1.5))


def test_a_claim_against_an_untuned_control_carries_why() -> None:
    runs = [
        _record(v, r, s, 1.0, "alone")
        for v in ("all", "tuned-baseline")
        for r in (0, 1)
        for s in (1000, 1001)
    ]
    rep = _arch_report(runs)
    for rp in rep.replicates:
        rp.variants = [
            rp.variants[0],
            replace(rp.variants[1], untuned="tuned: tuning_trials is 0, so it keeps the knobs"),
        ]
    item = Claim("x", "mlp", "", "all", "tuned-baseline", "gap", -1)
    claims._test(item, rep, test_y=np.zeros(1))
    assert item.test is not None and item.test.untuned is not None
    assert "tuning_trials is 0" in item.test.untuned


def test_the_default_margin_is_one_standard_error_of_a_test_accuracy() -> None:
    assert default_margin(0.97, 360) == pytest.approx(math.sqrt(0.97 * 0.03 / 360))  # 0.90 points
    assert default_margin(0.93, 10_000) == pytest.approx(0.002551, abs=1e-6)
    assert default_margin(1.0, 360) == pytest.approx(math.sqrt((1 / 360) * (359 / 360) / 360))
    with pytest.raises(ValueError, match="test_size must be a positive integer"):
        default_margin(0.9, 0)


def test_an_arm_s_budget_counts_start_up_and_guided_trials_epochs_and_seconds() -> None:
    study = optuna.create_study(direction="maximize")
    for number in range(5):
        phase = "startup" if number < 2 else "guided"
        trial = optuna.trial.create_trial(
            value=0.5 + number / 10,
            params={}, distributions={},
            intermediate_values={1: 0.4, 2: 0.5},
            user_attrs={"sampler_phase": phase},
        )  # fmt: skip
        study.add_trial(trial)
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.3},
        user_attrs={"sampler_phase": "guided"},
    )  # fmt: skip
    study.add_trial(pruned)
    arm = arm_budget(study, budget=6, sampler=SamplerConfig())
    assert (arm.finished, arm.complete, arm.startup, arm.guided) == (6, 5, 2, 4)
    assert arm.trial_epochs == 11
    assert arm.values == pytest.approx((0.5, 0.6, 0.7, 0.8, 0.9, 0.3))  # pruned: its last
    assert (
        arm_budget(study, budget=3, sampler=SamplerConfig()).finished == 3
    )  # the first 3 by number only


def test_the_subset_size_does_not_depend_on_the_seed(digits: Any) -> None:
    """equal_steps reads the share's size once (seed 0): every seed's share has that size."""
    sizes = {int(train_subset(digits, 0.3, seed=s).train_y.numel()) for s in range(5)}
    assert sizes == {388}
