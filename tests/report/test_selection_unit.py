"""Picking a study's winner (autoall/report/_selection.py) on an in-memory Optuna study and a
store that trains nothing: the first `budget` finished trials, the top-k COMPLETE ones (ties at
the cut included), re-evaluated on the selection seeds, the best mean validation accuracy wins
(then lower validation loss, then fewer parameters; never the search value, trial order or
test accuracy)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import write_study
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoall.config import StudyConfig, load_study_file
from autoall.report._selection import finished_trials, select, top_k
from autoall.report._types import RunRecord
from autoall.training import RunPlan

SEEDS = (2000, 2001)
BASE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
}
ALL = {
    **BASE,
    "hidden_size": IntDistribution(8, 32, log=True),
    "all_lr": FloatDistribution(1e-3, 1e-2, log=True),
    "aux_weight": FloatDistribution(1e-3, 1e-1, log=True),
    "aux_loss": CategoricalDistribution(["reconstruction", "none"]),
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    return load_study_file(write_study(tmp_path_factory.mktemp("sel") / "study.yaml"))


def _study(*trials: tuple[TrialState, float | None], name: str = "t/mlp") -> optuna.Study:
    """Trials numbered in order; trial n has lr = (n + 1) / 1000, so a plan names its trial."""
    study = optuna.create_study(direction="maximize", study_name=name)
    for n, (state, value) in enumerate(trials):
        params = {"lr": (n + 1) / 1000, "weight_decay": 1e-4}
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params if state != TrialState.RUNNING else {},
                distributions=BASE if state != TrialState.RUNNING else {},
                intermediate_values={1: value} if value is not None else {},
            )
        )
    return study


C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def _trial_of(plan: RunPlan) -> int:
    return round(plan.train.lr * 1000) - 1


class FakeStore:
    """Selection runs scored from a table: trial -> (val acc per seed, val loss, params); each
    run also carries a test accuracy that orders the trials the other way round."""

    def __init__(self, table: dict[int, tuple[tuple[float, ...], float, int]]) -> None:
        self.table = table
        self.calls: list[dict[str, Any]] = []

    def get_or_train_seeds(
        self, name: str, plans: list[RunPlan], data: Any, **kw: Any
    ) -> list[RunRecord]:
        self.calls.append({"name": name, "plans": plans, "data": data, **kw})
        out = []
        for plan in plans:
            trial = _trial_of(plan)
            accs, loss, params = self.table[trial]
            acc = accs[SEEDS.index(plan.train.seed)]
            metrics = {"final_val_acc": acc, "final_val_loss": loss, "params_total": float(params)}
            metrics["test_acc"] = 1.0 - acc  # were it read, the worst would win
            out.append(
                RunRecord(plan.arch, name, plan.train.seed, f"{name}-{plan.train.seed}", metrics,
                          [acc], [0.1], None, False, replicate=kw["replicate"])
            )  # fmt: skip
        return out


def _select(cfg: StudyConfig, study: optuna.Study, store: FakeStore, **kw: Any) -> Any:
    options: dict[str, Any] = {"budget": 10, "k": 2, "seeds": SEEDS, "replicate": 0}
    options.update(kw)
    data = object()  # the store's business: select hands it on untouched
    return select(
        cfg, "mlp", options.pop("kind", "baseline"), study, data=data,  # type: ignore[arg-type]
        store=store, split={"name": "digits"}, device="cpu", **options,  # type: ignore[arg-type]
    )  # fmt: skip


def test_finished_trials_are_complete_and_pruned_ones_in_number_order_within_the_budget() -> None:
    study = _study((C, 0.5), (F, None), (P, 0.9), (TrialState.RUNNING, None), (C, 0.7), (C, 0.6))
    assert [t.number for t in finished_trials(study)] == [0, 2, 4, 5]
    # a failed or running trial spends no budget; a pruned one does
    assert [t.number for t in finished_trials(study, 3)] == [0, 2, 4]
    assert finished_trials(study, 0) == []


def test_top_k_takes_the_best_complete_trials_and_every_trial_tied_at_the_cut() -> None:
    study = _study((C, 0.90), (P, 0.99), (C, 0.95), (C, 0.90), (C, 0.80), (F, None))
    trials = finished_trials(study)
    assert [t.number for t in top_k(trials, 1)] == [2]
    assert [t.number for t in top_k(trials, 2)] == [2, 0, 3]  # 0 and 3 tie at the cut
    assert [t.number for t in top_k(trials, 3)] == [2, 0, 3]
    assert [t.number for t in top_k(trials, 4)] == [2, 0, 3, 4]
    assert [t.number for t in top_k(trials, 10)] == [2, 0, 3, 4]  # never the pruned one


def test_the_winner_is_the_best_mean_validation_accuracy_on_the_selection_seeds(
    cfg: StudyConfig,
) -> None:
    # trial 0 leads the search and the first selection seed; trial 1 leads on the mean
    study = _study((C, 0.97), (C, 0.95), (C, 0.50))
    store = FakeStore({0: ((0.95, 0.85), 0.2, 1000), 1: ((0.93, 0.93), 0.3, 1000)})
    selection, runs = _select(cfg, study, store)
    assert [c.trial for c in selection.ranked] == [1, 0]
    w = selection.winner
    assert (w.trial, w.value, w.val_acc, w.val_loss) == (1, 0.95, (0.93, 0.93), (0.3, 0.3))
    assert w.mean_val_acc == pytest.approx(0.93) and w.params == {"lr": 0.002, "weight_decay": 1e-4}
    assert selection.ranked[1].value == 0.97  # its search value is kept, not used
    assert (selection.study, selection.budget, selection.notes) == ("t/mlp", 10, ())
    assert len(runs) == 4 and {r.seed for r in runs} == set(SEEDS)


def test_selection_trains_on_the_selection_seeds_without_the_test_split(cfg: StudyConfig) -> None:
    study = _study((C, 0.97), (C, 0.95))
    store = FakeStore({0: ((0.9, 0.9), 0.2, 10), 1: ((0.8, 0.8), 0.2, 10)})
    _select(cfg, study, store, seeds=(2001, 2000), replicate=2, cohort=False)
    assert [c["name"] for c in store.calls] == ["select-baseline-0", "select-baseline-1"]
    for call in store.calls:
        assert [p.train.seed for p in call["plans"]] == [2001, 2000]  # in the order given
        assert call["evaluate_test"] is False
        assert (call["replicate"], call["cohort"], call["split"]) == (2, False, {"name": "digits"})
        assert all(p.spec is None for p in call["plans"])  # the baseline kind: a plain model


def test_ties_go_to_the_lower_validation_loss_then_fewer_parameters_never_trial_order(
    cfg: StudyConfig,
) -> None:
    study = _study((C, 0.9), (C, 0.9), (C, 0.9))
    same_acc = FakeStore(
        {0: ((0.9, 0.8), 0.30, 10), 1: ((0.8, 0.9), 0.20, 10), 2: ((0.7, 0.7), 0.1, 1)}
    )
    selection, _ = _select(cfg, study, same_acc, k=3)
    assert [c.trial for c in selection.ranked] == [1, 0, 2]
    same_loss = FakeStore(
        {0: ((0.9, 0.8), 0.2, 20), 1: ((0.8, 0.9), 0.2, 10), 2: ((0.7, 0.7), 0.1, 1)}
    )
    selection, _ = _select(cfg, study, same_loss, k=3)
    assert [c.trial for c in selection.ranked] == [1, 0, 2]
    assert selection.ranked[0].params_total == 10


def test_only_the_first_budget_finished_trials_count(cfg: StudyConfig) -> None:
    study = _study((C, 0.80), (P, 0.70), (F, None), (C, 0.85), (C, 0.99))
    store = FakeStore(
        {0: ((0.8, 0.8), 0.2, 10), 3: ((0.85, 0.85), 0.2, 10), 4: ((1.0, 1.0), 0.1, 1)}
    )
    selection, _ = _select(cfg, study, store, budget=3, k=5)  # trials 0, 1 and 3
    assert [c.trial for c in selection.ranked] == [3, 0]
    assert all(c["name"] != "select-baseline-4" for c in store.calls)  # beyond the budget
    assert selection.budget == 3
    assert selection.notes == (
        "t/mlp: only 2 COMPLETE trial(s) in the budget of 3, fewer than top-k 5; all of them "
        "were re-evaluated.",
    )


def test_trials_tied_at_the_cut_are_all_re_evaluated_and_noted(cfg: StudyConfig) -> None:
    study = _study((C, 0.95), (C, 0.90), (C, 0.90), (C, 0.90), (C, 0.80))
    table = {n: ((0.9, 0.9), 0.3 - n / 100, 10) for n in range(4)}
    store = FakeStore(table)
    selection, runs = _select(cfg, study, store, k=2)
    assert sorted(c.trial for c in selection.ranked) == [0, 1, 2, 3]  # not 4, below the cut
    assert selection.winner.trial == 3  # equal accuracy: the lowest loss
    assert len(runs) == 4 * len(SEEDS)
    assert selection.notes == (
        "t/mlp: 4 trials tie at the top-2 cut (validation accuracy 0.9000); all were re-evaluated.",
    )


def test_accept_restricts_the_candidates_and_none_qualifying_gives_none(cfg: StudyConfig) -> None:
    study = optuna.create_study(direction="maximize", study_name="t/mlp")
    for n, (value, aux) in enumerate(((0.97, "none"), (0.90, "reconstruction"), (0.85, "none"))):
        params = {"lr": (n + 1) / 1000, "weight_decay": 1e-4, "hidden_size": 16,
                  "all_lr": 1e-3, "aux_weight": 0.01, "aux_loss": aux}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(value=value, params=params, distributions=ALL))
    store = FakeStore({1: ((0.9, 0.9), 0.2, 10)})

    def custom(p: Any) -> bool:
        return p.get("aux_loss") != "none"

    selection, _ = _select(cfg, study, store, kind="all", k=1, accept=custom, label="custom-loss")
    assert [c.trial for c in selection.ranked] == [1]
    plans = store.calls[0]["plans"]
    assert store.calls[0]["name"] == "select-all-1" and plans[0].spec.aux_loss == "reconstruction"
    assert selection.notes == ()
    nothing = _select(cfg, study, FakeStore({}), kind="all", accept=lambda p: False)
    assert nothing is None
    assert _select(cfg, _study((P, 0.9), (F, None)), FakeStore({})) is None  # no COMPLETE trial


def test_the_notes_name_the_label_of_a_restricted_selection(cfg: StudyConfig) -> None:
    study = _study((C, 0.9))
    selection, _ = _select(cfg, study, FakeStore({0: ((0.9, 0.9), 0.2, 10)}), label="custom-loss")
    assert selection.notes == (
        "t/mlp: only 1 COMPLETE custom-loss trial(s) in the budget of 10, fewer than top-k 2; "
        "all of them were re-evaluated.",
    )
