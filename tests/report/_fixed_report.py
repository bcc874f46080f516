"""A small report built by hand, for the unit tests of claims, rendering and selection.

No training, no MLflow, no Optuna storage: the data types of autoall/report/_types.py filled
with hand-chosen numbers. Two architectures, 3 replicates x 2 evaluation seeds each (the unit
of every claim is the replicate, df = 2), test accuracies in steps of 1/400 (one test image).

Each difference V - C below is chosen for one verdict (they are decided together, as one
family, by `claims.decide`):

mlp (the ALL at positions "head", so "more layers" is other-positions vs all)
    accuracy      +5.00 points, tight, with test predictions (bootstrap) -> supported
    parameters    +0.04 points, tight, margin 1 point                    -> equivalent
    custom-loss   +3.00 points, tight, but no-aux is untuned             -> inconclusive
    own-lr        -4.00 points, tight                                    -> opposite
    more-layers   noisy around 0                                         -> inconclusive
    gap           -4.00 points (the ALL's train-test gap is smaller)     -> supported
    data-10%      the same difference in every replicate                 -> undetermined
    epochs        -3 epochs, too few replicates for df = 2 under Holm    -> inconclusive
    seconds       -2 s, tight, every run timed alone                     -> supported
    tuning-cost   the ALL study's trials better by ~5 points             -> supported
cnn (the ALL at positions "blocks", so "more layers" is all vs other-positions)
    accuracy      +0.03 points, tight                                    -> equivalent
    parameters, custom-loss, own-lr, data: no such variant               -> undetermined
    more-layers   +3.00 points, tight                                    -> supported
    gap           +3.00 points (the ALL's gap is larger)                 -> opposite
    epochs        one ALL run never reaches the target                   -> undetermined
    seconds       the baseline was timed in a cohort                     -> undetermined
    tuning-cost   one replicate has search budgets                       -> undetermined
"""

from __future__ import annotations

from typing import cast

import numpy as np
import optuna

from autoall.layer import ALLSpec
from autoall.report import _claims as claims
from autoall.report._types import (
    ArchReport,
    ArmBudget,
    Candidate,
    Replicate,
    Report,
    Retuned,
    RunRecord,
    Selection,
    Variant,
)
from autoall.training import RunPlan, TrainConfig

SEEDS = (1000, 1001)
REPLICATES = 3
SELECTION_SEEDS = ((2000, 2001), (2100, 2101), (2200, 2201))
N_TEST = 400
TEST_Y = np.arange(N_TEST) % 10
MARGIN = 0.01  # one accuracy point
ALPHA = 0.05
NO_AUX_UNTUNED = "ALL, aux_weight = 0: tuning_trials is 0, so it keeps the winner's knobs"

Table = list[list[float]]  # [replicate][seed]


def _plus(a: Table, b: Table, sign: float = 1.0) -> Table:
    return [
        [x + sign * y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)
    ]


def _const(value: float) -> Table:
    return [[value] * len(SEEDS) for _ in range(REPLICATES)]


# --- mlp: the ALL's test accuracy, and each comparator's difference d = V - C -------------
MLP_ALL: Table = [[0.9300, 0.9325], [0.9300, 0.9275], [0.9350, 0.9300]]
MLP_D: dict[str, Table] = {
    # replicate means 0.05, 0.05125, 0.04875: mean 0.05, sd 0.00125
    "tuned-baseline": [[0.0500, 0.0500], [0.0525, 0.0500], [0.0500, 0.0475]],
    # replicate means 0.0005, 0.0005, 0.00025
    "param-matched": [[0.0005, 0.0005], [0.0000, 0.0010], [0.0005, 0.0000]],
    # custom (= the ALL winner) minus no-aux
    "no-aux": [[0.0300, 0.0300], [0.0310, 0.0300], [0.0300, 0.0290]],
    # the ALL minus the ALL at all_lr = lr: the shared lr is better
    "all-shared-lr": [[-0.0400, -0.0400], [-0.0410, -0.0400], [-0.0400, -0.0390]],
    # other-positions minus all (V is other-positions here): noise around 0
    "other-positions": [[0.0100, -0.0300], [0.0150, 0.0010], [-0.0050, 0.0010]],
}
MLP_GAP_D: Table = [[-0.0400, -0.0400], [-0.0410, -0.0400], [-0.0400, -0.0390]]
MLP_ALL_GAP = 0.02
MLP_EPOCHS = {"all": [[2, 2], [3, 2], [2, 2]], "tuned-baseline": [[5, 5], [5, 5], [5, 6]]}
MLP_SECONDS = {
    "all": [[2.00, 2.01], [2.00, 2.02], [2.01, 2.00]],
    "tuned-baseline": [[4.00, 4.01], [4.02, 4.02], [4.00, 4.00]],
}
MLP_DATA = {"all@10%": 0.80, "tuned-baseline@10%": 0.78}  # d = 0.02 in every run

# --- cnn -----------------------------------------------------------------------------------
CNN_ALL: Table = [[0.9000, 0.9050], [0.9025, 0.9000], [0.9050, 0.9025]]
CNN_D: dict[str, Table] = {
    # replicate means 0.0003, 0.00035, 0.00025: well inside the margin
    "tuned-baseline": [[0.0003, 0.0003], [0.0004, 0.0003], [0.0002, 0.0003]],
    # all (blocks) minus other-positions (head)
    "other-positions": [[-0.0300, -0.0300], [-0.0310, -0.0300], [-0.0300, -0.0290]],
}
CNN_GAP_D: Table = [[0.0300, 0.0300], [0.0310, 0.0300], [0.0300, 0.0290]]


def plan(arch: str, positions: str | None = None) -> RunPlan:
    spec = None if positions is None else ALLSpec(16, positions=positions)
    return RunPlan(arch, TrainConfig(), spec)


def run(
    arch: str,
    variant: str,
    replicate: int,
    seed: int,
    test_acc: float,
    *,
    gap: float = 0.03,
    params: tuple[int, int] = (1000, 0),
    target: tuple[int | None, float | None] = (4, 4.0),
    arrangement: str = "alone",
    predictions: bool = False,
) -> RunRecord:
    """An evaluation run with every FINAL_METRICS figure; its predictions (when asked) are
    right on the first test_acc * N_TEST test images."""
    preds = None
    if predictions:
        right = round(test_acc * N_TEST)
        assert abs(right - test_acc * N_TEST) < 1e-6, test_acc
        preds = np.where(np.arange(N_TEST) < right, TEST_Y, (TEST_Y + 1) % 10)
    metrics = {
        "test_acc": test_acc,
        "final_val_acc": test_acc + 0.005,
        "final_val_loss": 0.25,
        "train_eval_acc": test_acc + gap,
        "wall_seconds": 10.0,
        "median_epoch_seconds": 0.5,
        "epochs_run": 8.0,
        "params_total": float(params[0]),
        "params_all": float(params[1]),
    }
    return RunRecord(
        arch=arch,
        variant=variant,
        seed=seed,
        run_id=f"{arch}-{variant}-r{replicate}-s{seed}",
        metrics=metrics,
        val_acc=[0.5, 0.8, 0.9],
        epoch_seconds=[0.5, 0.5, 0.5],
        test_predictions=preds,
        reused=False,
        replicate=replicate,
        arrangement=arrangement,
        target_epoch=target[0],
        target_seconds=target[1],
    )


def _runs(arch: str, variant: str, acc: Table, **per_cell: object) -> list[RunRecord]:
    """One run per (replicate, seed); a keyword given as a Table is read per cell."""
    out = []
    for r in range(REPLICATES):
        for i, seed in enumerate(SEEDS):
            kw = {k: (v[r][i] if isinstance(v, list) else v) for k, v in per_cell.items()}
            out.append(run(arch, variant, r, seed, acc[r][i], **kw))  # type: ignore[arg-type]
    return out


def candidate(trial: int, value: float, val_acc: tuple[float, ...], loss: float) -> Candidate:
    return Candidate(trial, {"lr": 0.01, "weight_decay": 1e-4}, value, val_acc, (loss, loss), 1000)


def _selections(arch: str, r: int, budget: int) -> dict[str, Selection]:
    suffix = "" if r == 0 else f"/r{r}"
    study = f"t/{arch}{suffix}"
    return {
        "all": Selection(
            study,
            budget,
            (candidate(3, 0.9100, (0.9200, 0.9150), 0.25), candidate(1, 0.9150, (0.9100, 0.9100), 0.3)),
            (f"{study}: 3 trials tie at the top-2 cut (validation accuracy 0.9100); all were re-evaluated.",) if r == 0 else (),
        ),
        "baseline": Selection(
            f"{study}/tuned-baseline", budget, (candidate(2, 0.8800, (0.8800, 0.8700), 0.35),)
        ),
    }  # fmt: skip


def _arms(
    arch: str, r: int, all_values: tuple[float, ...], base_values: tuple[float, ...]
) -> dict[str, ArmBudget]:
    """Both arms' search budgets: as many finished trials as values, 3 of them at random."""
    suffix, n = ("" if r == 0 else f"/r{r}"), len(all_values)
    return {
        "all": ArmBudget(f"t/{arch}{suffix}", n, n - 1, 3, n - 3, 17, 34.5, all_values),
        "baseline": ArmBudget(f"t/{arch}{suffix}/tuned-baseline", n, n, 3, n - 3, 18, 21.3, base_values),
    }  # fmt: skip


def mlp_report() -> ArchReport:
    a = "mlp"
    all_plan = plan(a, "head")
    variants = [
        Variant("tuned-baseline", "tuned baseline", plan(a), "t/mlp/tuned-baseline trial #2", timed=True),
        Variant("all", "ALL", all_plan, "t/mlp trial #3", timed=True),
        Variant("param-matched", "parameter-matched", plan(a), "head 40 wide"),
        Variant("all-shared-lr", "ALL, all_lr = lr", all_plan, "the ALL trained at the base lr"),
        Variant("custom", "ALL with custom loss", all_plan, "the ALL winner itself", timed=True),
        Variant("no-aux", "ALL, aux_weight = 0", all_plan, "without L(W, a)", untuned=NO_AUX_UNTUNED),
        Variant("other-positions", "ALL, positions = blocks", plan(a, "blocks"), "blocks"),
        Variant("tuned-baseline@10%", "tuned baseline on 10% of train", plan(a), "10 %"),
        Variant("all@10%", "ALL on 10% of train", all_plan, "10 %"),
    ]  # fmt: skip
    hand = Variant("hand-set", "hand-set baseline", plan(a), "a reference row, no claim")
    base_values = (0.80, 0.82, 0.84, 0.85, 0.86, 0.87)
    replicates = []
    for r in range(REPLICATES):
        shift = (0.050, 0.051, 0.049)[r]
        rp = Replicate(
            index=r,
            all_study=cast(optuna.Study, None),
            baseline_study=cast(optuna.Study, None),
            budget=6,
            selections=_selections(a, r, 6),
            variants=([variants[0], hand, *variants[1:]] if r == 0 else list(variants)),
            arms=_arms(a, r, tuple(v + shift for v in base_values), base_values),
            retuned=[Retuned("param-matched", ("lr", "weight_decay"), 2, 6, 3.5,
                             {"lr": 0.0123456, "weight_decay": 1e-4}, 0.91234)],
        )  # fmt: skip
        replicates.append(rp)
    tb_acc = _plus(MLP_ALL, MLP_D["tuned-baseline"], -1)
    tb_gap = _plus(_const(MLP_ALL_GAP), MLP_GAP_D, -1)
    timed = {
        v: [[(e, s) for e, s in zip(er, sr, strict=True)]
            for er, sr in zip(MLP_EPOCHS[v], MLP_SECONDS[v], strict=True)]
        for v in ("all", "tuned-baseline")
    }  # fmt: skip
    runs = [
        *_runs(a, "tuned-baseline", tb_acc, gap=tb_gap, target=timed["tuned-baseline"], predictions=True),
        *[run(a, "hand-set", 0, s, 0.85) for s in SEEDS],
        *_runs(a, "all", MLP_ALL, gap=MLP_ALL_GAP, params=(1200, 200), target=timed["all"], predictions=True),
        *_runs(a, "custom", MLP_ALL, gap=MLP_ALL_GAP, params=(1200, 200)),
        *_runs(a, "no-aux", _plus(MLP_ALL, MLP_D["no-aux"], -1)),
        *_runs(a, "param-matched", _plus(MLP_ALL, MLP_D["param-matched"], -1), params=(1190, 0)),
        *_runs(a, "all-shared-lr", _plus(MLP_ALL, MLP_D["all-shared-lr"], -1)),
        *_runs(a, "other-positions", _plus(MLP_ALL, MLP_D["other-positions"], +1)),
        *_runs(a, "tuned-baseline@10%", _const(MLP_DATA["tuned-baseline@10%"])),
        *_runs(a, "all@10%", _const(MLP_DATA["all@10%"])),
    ]  # fmt: skip
    rep = ArchReport(
        a, replicates, runs=runs, margin=MARGIN, margin_source="the study file's report.margin"
    )
    rep.target_acc, rep.target_source = 0.9, "--target-acc"
    rep.selection_runs = [
        RunRecord(a, "select-all-3", s, f"sel-{s}", {"final_val_acc": 0.92, "final_val_loss": 0.25,
                  "params_total": 1200.0}, [0.9], [0.5], None, False)
        for s in (2000, 2001, 2001)  # the last one: the same run picked twice (ALL and custom)
    ]  # fmt: skip
    rep.selection_runs[2] = rep.selection_runs[1]
    rep.tuning_runs = [
        RunRecord(a, "tune-param-matched", 0, "tune-0", {"final_val_acc": 0.91, "final_val_loss": 0.3,
                  "params_total": 1190.0}, [0.91], [0.5], None, False)
    ]  # fmt: skip
    rep.figures = [("test_acc_mlp.png", "Test accuracy per variant (mlp)")]
    rep.notes = ["mlp note: a hand-written note."]
    return rep


def cnn_report() -> ArchReport:
    a = "cnn"
    variants = [
        Variant("tuned-baseline", "tuned baseline", plan(a), "t/cnn/tuned-baseline trial #2", timed=True),
        Variant("all", "ALL", plan(a, "blocks"), "t/cnn trial #3", timed=True),
        Variant("other-positions", "ALL, positions = head", plan(a, "head"), "head"),
    ]  # fmt: skip
    values = (0.70, 0.75, 0.80, 0.82)
    replicates = [
        Replicate(
            index=r,
            all_study=cast(optuna.Study, None),
            baseline_study=cast(optuna.Study, None),
            budget=4,
            selections=_selections(a, r, 4),
            variants=list(variants),
            arms=_arms(a, r, values, values) if r == 0 else {},
        )
        for r in range(REPLICATES)
    ]
    tb_gap = _plus(_const(0.02), CNN_GAP_D, -1)
    never = [[(3, 3.0), (3, 3.0)], [(3, 3.0), (None, None)], [(3, 3.0), (3, 3.0)]]
    runs = [
        *_runs(a, "tuned-baseline", _plus(CNN_ALL, CNN_D["tuned-baseline"], -1), gap=tb_gap,
               params=(5000, 0), arrangement="cohort of 2"),
        *_runs(a, "all", CNN_ALL, gap=0.02, params=(5200, 200), target=never),
        *_runs(a, "other-positions", _plus(CNN_ALL, CNN_D["other-positions"], +1)),
    ]  # fmt: skip
    rep = ArchReport(
        a, replicates, runs=runs, margin=MARGIN, margin_source="the study file's report.margin"
    )
    rep.target_acc, rep.target_source = 0.85, "--target-acc"
    return rep


def build_report(*, decided: bool = True) -> Report:
    """The fixed report: both architectures' claims tested and (unless `decided` is False)
    adjusted together and judged, as `run_report` does."""
    archs = [mlp_report(), cnn_report()]
    for rep in archs:
        rep.claims = claims.arch_claims(rep, test_y=TEST_Y)
    report = Report(
        name="fixed",
        path="studies/fixed.yaml",
        data="digits",
        test_size=N_TEST,
        archs=archs,
        seeds=SEEDS,
        selection_seeds=SELECTION_SEEDS,
        top_k=2,
        alpha=ALPHA,
        tracking_uri="sqlite:///mlruns/mlflow.db",
        parent_run_id="parent123",
        replicates=REPLICATES,
        tuning_trials=2,
        reachable=None,
        notes=["A report-wide note."],
    )
    if decided:
        claims.decide(report.claims, alpha=ALPHA)
    return report
