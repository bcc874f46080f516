"""The report's figures, as PNG files: matplotlib's Agg canvas, no pyplot state, no display.

Per architecture: validation learning curves (mean +- std band per variant), test accuracy per
variant (box plus one point per seed), the paired per-seed differences of each claim, the
optimisation history of each replicate's ALL study and tuned baseline, the ALL study's parameter
importances (fANOVA), and each arm's expected best validation accuracy against the number of
trials (its mean over the replicates, with their range as a band). Every title states its n.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from autoall.config import Kind
from autoall.report._claims import budget_curve, paired
from autoall.report._names import VariantName
from autoall.report._selection import finished_trials
from autoall.report._types import ArchReport, RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS: dict[str, str] = {
    VariantName.HAND_SET: "#555555",
    VariantName.ALL: "#1f77b4",
    VariantName.NO_AUX: "#ff7f0e",
    VariantName.TUNED_BASELINE: "#2ca02c",
    VariantName.PARAM_MATCHED: "#9467bd",
}
_DPI = 100
_CURVES: tuple[str, ...] = (  # the learning-curve figure
    VariantName.TUNED_BASELINE,
    VariantName.HAND_SET,
    VariantName.ALL,
    VariantName.PARAM_MATCHED,
)


def draw_all(rep: ArchReport, folder: Path, *, seeds: int) -> None:
    """Draw every figure of one architecture into `folder`; record them in `rep.figures`.

    A figure that cannot be drawn from the data at hand (fANOVA with too few trials) is skipped
    and the reason is added to `rep.notes`.
    """
    arch = rep.arch
    labels = {v.name: v.label for v in rep.variants}
    curves = {v: [r.val_acc for r in rep.runs_of(v)] for v in _CURVES if v in labels}
    name = f"learning_curves_{arch}.png"
    learning_curves(curves, labels, target=rep.target_acc, path=folder / name, seeds=seeds)
    rep.figures.append((name, f"{arch}: validation accuracy per epoch, mean ± std (n={seeds})"))

    accs = {v.name: [r.metrics["test_acc"] for r in rep.runs_of(v.name)] for v in rep.variants}
    name = f"test_acc_{arch}.png"
    accuracy_per_variant(accs, labels, path=folder / name, seeds=seeds)
    rep.figures.append((name, f"{arch}: test accuracy per variant, one point per seed (n={seeds})"))

    diffs = {
        c.title.split(":")[0]: _differences(rep, c.variant, c.comparator, c.metric)
        for c in rep.claims
        if c.metric in ("test_acc", "gap") and c.test is not None
    }
    name = f"paired_differences_{arch}.png"
    paired_differences(diffs, path=folder / name, seeds=seeds)
    rep.figures.append(
        (name, f"{arch}: per-seed differences V - C of each claim, in points (n={seeds})")
    )

    for rp in rep.replicates:
        for study in (rp.all_study, rp.baseline_study):
            trials = finished_trials(study)
            name = f"optimisation_history_{study.study_name.replace('/', '_')}.png"
            optimisation_history(trials, title=study.study_name, path=folder / name)
            caption = f"{study.study_name}: optimisation history (n={len(trials)})"
            rep.figures.append((name, caption))

    study = rep.all_study
    name = f"param_importances_{arch}.png"
    skipped = param_importances(study, path=folder / name)
    if skipped:
        rep.notes.append(f"Parameter importances of {study.study_name} skipped: {skipped}.")
    else:
        n = len(finished_trials(study))
        caption = f"{study.study_name}: fANOVA parameter importances (n={n} trials)"
        rep.figures.append((name, caption))

    budgets = {
        label: [budget_curve(rp.arms[key]) for rp in rep.replicates if rp.arms.get(key)]
        for key, label in ((Kind.ALL, "ALL study"), (Kind.BASELINE, "tuned-baseline study"))
    }
    name = f"budget_curves_{arch}.png"
    budget_curves(budgets, title=arch, path=folder / name)
    counts = ", ".join(f"{k}: {len(v)} replicates" for k, v in budgets.items())
    rep.figures.append(
        (name, f"{arch}: expected best validation accuracy vs number of trials ({counts})")
    )


def _differences(rep: ArchReport, variant: str, comparator: str, metric: str) -> list[float]:
    def value(r: RunRecord) -> float:
        return r.gap if metric == "gap" else r.metrics[metric]

    return [value(a) - value(b) for a, b in paired(rep, variant, comparator)]


def paired_differences(diffs: dict[str, list[float]], *, path: Path, seeds: int) -> None:
    """One row per claim: each seed's difference V - C as a point, the mean as a bar."""
    fig, ax = _figure(integer_x=False, left=0.3)
    names = list(diffs)
    for i, claim in enumerate(names):
        values = 100 * np.asarray(diffs[claim])
        ax.scatter(values, np.full(values.size, i), color="#1f77b4", s=20, zorder=3)
        if values.size:
            ax.plot([values.mean()] * 2, [i - 0.3, i + 0.3], color="black", linewidth=2)
    ax.axvline(0, color="#999999", linewidth=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("difference V - C (percentage points)")
    ax.set_title(f"Paired per-seed differences (n={seeds} seeds)")
    _save(fig, path)


def learning_curves(
    curves: dict[str, list[list[float]]],
    labels: dict[str, str],
    *,
    target: float | None,
    path: Path,
    seeds: int,
) -> None:
    """val_acc per epoch: the mean over seeds as a line, +- one sample std as a band."""
    fig, ax = _figure()
    for variant, runs in curves.items():
        if not runs:
            continue
        epochs = min(len(r) for r in runs)
        values = np.array([r[:epochs] for r in runs])
        x = np.arange(1, epochs + 1)
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(epochs)
        color = COLORS.get(variant)
        ax.plot(x, mean, color=color, label=labels[variant], marker="." if epochs < 30 else None)
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    if target is not None:
        ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:.4f}")
    ax.set(xlabel="epoch", ylabel="validation accuracy")
    ax.set_title(f"Learning curves, mean ± std (n={seeds} seeds per variant)")
    ax.legend(loc="lower right")
    _save(fig, path)


def accuracy_per_variant(
    accs: dict[str, list[float]], labels: dict[str, str], *, path: Path, seeds: int
) -> None:
    """A box per variant with every seed's test accuracy as a point (jittered sideways)."""
    fig, ax = _figure(bottom=0.3)
    names = [v for v in accs if accs[v]]
    ax.boxplot([accs[v] for v in names], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same report draws the same picture
    for i, variant in enumerate(names, start=1):
        x = i + rng.uniform(-0.12, 0.12, size=len(accs[variant]))
        ax.scatter(x, accs[variant], color=COLORS.get(variant), zorder=3, s=24)
    ax.set_xticks(range(1, len(names) + 1), [labels[v] for v in names], rotation=35, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Test accuracy per variant (n={seeds} seeds each)")
    _save(fig, path)


def optimisation_history(trials: Sequence[FrozenTrial], *, title: str, path: Path) -> None:
    """Final validation accuracy of each COMPLETE trial, the last reported value of each PRUNED
    trial, and the best COMPLETE value so far, against the trial number."""
    fig, ax = _figure()
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.values[0] for t in done], label="complete", s=24)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="#999999", label="pruned")
    if done:
        best = np.maximum.accumulate([t.values[0] for t in done])
        ax.step([t.number for t in done], best, where="post", color="#d62728", label="best so far")
    ax.set(xlabel="trial number", ylabel="validation accuracy")
    ax.set_title(f"Optimisation history of {title} (n={len(trials)} trials)")
    ax.legend(loc="lower right")
    _save(fig, path)


def param_importances(study: optuna.Study, *, path: Path) -> str | None:
    """fANOVA importances of the first objective as horizontal bars.

    Returns None when the figure was written, else the reason it was not (fewer than 2 COMPLETE
    trials, no variation in their values, or fANOVA failing on the data).
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = {t.values[0] for t in done if t.values}
    if len(done) < 2:
        return f"fANOVA needs at least 2 COMPLETE trials, the study has {len(done)}"
    if len(values) < 2:
        return "every COMPLETE trial has the same value, so there is nothing to attribute"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda t: t.values[0]
        )
    except Exception as exc:  # a figure must never fail the report; the reason is reported
        return f"fANOVA failed ({type(exc).__name__}: {exc})"
    fig, ax = _figure(integer_x=False, left=0.2)  # room for the parameter names
    names = list(reversed(importances))
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA, share of the variance)")
    ax.set_title(f"Parameter importances of {study.study_name} (n={len(done)} trials)")
    _save(fig, path)
    return None


def budget_curves(curves: Mapping[str, Sequence[np.ndarray]], *, title: str, path: Path) -> None:
    """Per arm, the expected best validation accuracy of n trials (Tang et al. 2020's unbiased
    estimator), n = 1..N: the mean over replicates as a line, their range as a band (each
    replicate's curve cut to the shortest)."""
    fig, ax = _figure()
    for label, per_replicate in curves.items():
        if not per_replicate:
            continue
        n = min(len(c) for c in per_replicate)
        stack = np.stack([np.asarray(c[:n]) for c in per_replicate])
        x = np.arange(1, n + 1)
        line = ax.plot(x, stack.mean(axis=0), label=f"{label} (R={len(per_replicate)})")
        if len(per_replicate) > 1:
            color = line[0].get_color()
            ax.fill_between(x, stack.min(axis=0), stack.max(axis=0), color=color, alpha=0.2)
    ax.set(xlabel="number of trials", ylabel="expected best validation accuracy")
    ax.set_title(f"{title}: expected best validation accuracy vs trials")
    ax.legend(loc="lower right")
    _save(fig, path)


def _figure(
    *, integer_x: bool = True, left: float = 0.11, bottom: float = 0.13
) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7, 4.2))  # fixed margins: a constrained layout doubles the cost
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left, right=0.97, bottom=bottom, top=0.9)
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    if integer_x:  # epochs and trial counts
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=_DPI)
