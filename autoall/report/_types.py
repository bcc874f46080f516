"""The report's data as plain types: what ran, what was selected, what each claim found.

A leaf module: report.py fills these, claims.py tests them, plots.py and render.py draw and
write them; none of those imports another for its types.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autoall.report._decision import ClaimTest
from autoall.training import RunPlan

# The report's outputs, per run (results.csv columns after arch, variant, seed).
FINAL_METRICS: tuple[str, ...] = (
    "test_acc", "final_val_acc", "final_val_loss", "train_eval_acc", "wall_seconds",
    "median_epoch_seconds", "epochs_run", "params_total", "params_all",
)  # fmt: skip
SELECTION_METRICS: tuple[str, ...] = ("final_val_acc", "final_val_loss", "params_total")


@dataclass(frozen=True)
class Variant:
    """One model and training recipe the report trains on every evaluation seed."""

    name: str  # a VariantName ("all", "tuned-baseline", ...), or one on a share: "all@10%"
    label: str  # for people: "ALL", "tuned baseline", ...
    plan: RunPlan  # its seed is replaced per run
    note: str  # where the settings come from
    untuned: str | None = None  # why its knobs were inherited, not re-tuned (None: tuned)
    timed: bool = False  # its runs train alone, so their seconds are their own


@dataclass
class RunRecord:
    """One trained (or reused) run: a variant on one seed, or a selection run on validation."""

    arch: str
    variant: str
    seed: int
    run_id: str
    metrics: dict[str, float]  # FINAL_METRICS (selection runs: SELECTION_METRICS)
    val_acc: list[float]  # per epoch
    epoch_seconds: list[float]  # per epoch
    test_predictions: np.ndarray | None  # predicted class per test example; None on selection
    reused: bool
    replicate: int = 0  # the independent search whose winner this run trains
    arrangement: str = "alone"  # "alone" or "cohort of K": how its seconds were measured
    target_epoch: int | None = None  # first epoch at or above the efficiency target
    target_seconds: float | None = None  # seconds of training until the end of that epoch

    @property
    def gap(self) -> float:
        """Train minus test accuracy of the final model (both in eval mode)."""
        return self.metrics["train_eval_acc"] - self.metrics["test_acc"]


@dataclass(frozen=True)
class Candidate:
    """A top-k trial re-evaluated on the selection seeds (validation split only)."""

    trial: int  # trial number in its study
    params: dict[str, Any]
    value: float  # the trial's own validation accuracy (search seed)
    val_acc: tuple[float, ...]  # final validation accuracy per selection seed
    val_loss: tuple[float, ...]
    params_total: int

    @property
    def mean_val_acc(self) -> float:
        return statistics.fmean(self.val_acc)

    @property
    def mean_val_loss(self) -> float:
        return statistics.fmean(self.val_loss)


@dataclass(frozen=True)
class Selection:
    """How one study's winner was picked."""

    study: str  # Optuna study name
    budget: int  # finished trials considered (the first `budget` by number)
    ranked: tuple[Candidate, ...]  # best first: mean val acc, then mean val loss, then params
    notes: tuple[str, ...] = ()  # e.g. fewer COMPLETE trials than top-k

    @property
    def winner(self) -> Candidate:
        return self.ranked[0]


@dataclass(frozen=True)
class Retuned:
    """How a control or a reduced-data arm was re-tuned on what its change frees (validation)."""

    variant: str
    knobs: tuple[str, ...]  # the knobs searched, e.g. ("lr", "all_lr")
    trials: int  # candidates trained (the inherited knobs first)
    epochs: int  # trial-epochs spent
    seconds: float  # summed training seconds
    best: dict[str, Any]  # the knobs picked
    best_val_acc: float


@dataclass(frozen=True)
class ArmBudget:
    """What one search (an arm of one replicate) spent: trials, trial-epochs and seconds."""

    study: str
    finished: int  # COMPLETE + PRUNED within the budget
    complete: int
    startup: int  # drawn at random before the sampler modelled the space
    guided: int
    trial_epochs: int
    seconds: float
    values: tuple[float, ...]  # each finished trial's validation accuracy (pruned: its last)


@dataclass
class Claim:
    """One hypothesis of the article, tested on one architecture (or described, if untestable)."""

    key: str  # "accuracy", "parameters", "custom-loss", ...
    arch: str
    title: str  # the hypothesis in words, with the article's section
    variant: str  # variant name whose metric should be better ...
    comparator: str  # ... than this variant's
    metric: str  # "test_acc", "gap", "target_epoch", "target_seconds"
    direction: int  # +1: higher is better for the claim, -1: lower is better
    test: ClaimTest | None = None  # None: not testable here (see `reason`)
    adjusted_p: float | None = None  # Holm-Shaffer, over every claim of the report
    adjusted_p_equivalence: float | None = None
    verdict: str = "undetermined"  # supported | opposite | equivalent | inconclusive | undetermined
    reason: str = ""  # why, in a few words
    note: str = ""  # what was compared, e.g. which trial stood in for the custom loss
    mde: float | None = None  # minimum detectable effect at this n (inconclusive)
    n_needed: int | None = None  # replicates (or seeds) it would need


@dataclass
class Replicate:
    """One independent search of each arm (its own sampler streams and seeds) and what the
    report picked and trained from it."""

    index: int
    all_study: optuna.Study
    baseline_study: optuna.Study
    budget: int  # finished trials each arm is judged on
    # by Kind ("all", "baseline"), and VariantName.CUSTOM ("custom") when it differs
    selections: dict[str, Selection]
    variants: list[Variant] = field(default_factory=list)
    arms: dict[str, ArmBudget] = field(default_factory=dict)  # by Kind: "all", "baseline"
    retuned: list[Retuned] = field(default_factory=list)


@dataclass
class ArchReport:
    """Everything the report says about one architecture, over its replicates."""

    arch: str
    replicates: list[Replicate]
    runs: list[RunRecord] = field(default_factory=list)  # evaluation runs, every replicate
    selection_runs: list[RunRecord] = field(default_factory=list)
    tuning_runs: list[RunRecord] = field(default_factory=list)  # re-tuning candidates
    claims: list[Claim] = field(default_factory=list)
    target_acc: float = 0.0
    target_source: str = ""
    margin: float = 0.0  # equivalence margin of accuracy claims (a fraction)
    margin_source: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[Variant]:
        """The variants' names, labels and notes as replicate 0 has them (the names are the
        same in every replicate)."""
        return self.replicates[0].variants

    @property
    def selections(self) -> dict[str, Selection]:
        return self.replicates[0].selections

    @property
    def all_study(self) -> optuna.Study:
        return self.replicates[0].all_study

    @property
    def baseline_study(self) -> optuna.Study:
        return self.replicates[0].baseline_study

    def runs_of(self, variant: str) -> list[RunRecord]:
        """The variant's runs, by replicate, then seed."""
        found = (r for r in self.runs if r.variant == variant)
        return sorted(found, key=lambda r: (r.replicate, r.seed))

    def variant(self, name: str, replicate: int = 0) -> Variant:
        return next(v for v in self.replicates[replicate].variants if v.name == name)


@dataclass
class Report:
    """One study file's report."""

    name: str
    path: str  # the study file
    data: str  # data set name
    test_size: int
    archs: list[ArchReport]
    seeds: tuple[int, ...]  # evaluation seeds
    selection_seeds: tuple[tuple[int, ...], ...]  # per replicate
    top_k: int
    alpha: float
    tracking_uri: str
    parent_run_id: str
    replicates: int = 1
    tuning_trials: int = 0  # re-tuning budget per control and per reduced-data arm
    reachable: str | None = None  # said before training: why no verdict may be reachable
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def claims(self) -> list[Claim]:
        return [c for rep in self.archs for c in rep.claims]
