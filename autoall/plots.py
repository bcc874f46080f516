"""The report's figures, as PNG files: matplotlib's Agg canvas, no pyplot state, no display.

Per architecture: validation learning curves (mean +- std band per variant), test accuracy per
variant (box plus one point per seed), the ALL study's optimisation history, its parameter
importances (fANOVA) and best-so-far validation accuracy against the number of trials (with the
tuned baseline's study next to it when there is one). Every title states its n.
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

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from autoall.report import ArchReport

COLORS: dict[str, str] = {
    "baseline": "#555555",
    "all": "#1f77b4",
    "ablation": "#ff7f0e",
    "tuned-baseline": "#2ca02c",
}
_DPI = 100


def draw_all(rep: ArchReport, folder: Path, *, seeds: int) -> None:
    """Draw every figure of one architecture into `folder`; record them in `rep.figures`.

    A figure that cannot be drawn from the data at hand (fANOVA with too few trials) is skipped
    and the reason is added to `rep.notes`.
    """
    arch = rep.arch
    curves = {v.name: [r.val_acc for r in rep.runs_of(v.name)] for v in rep.variants}
    labels = {v.name: v.label for v in rep.variants}
    name = f"learning_curves_{arch}.png"
    learning_curves(curves, labels, target=rep.target_acc, path=folder / name, seeds=seeds)
    rep.figures.append((name, f"{arch}: validation accuracy per epoch, mean ± std (n={seeds})"))

    accs = {v.name: [r.metrics["test_acc"] for r in rep.runs_of(v.name)] for v in rep.variants}
    name = f"test_acc_{arch}.png"
    accuracy_per_variant(accs, labels, path=folder / name, seeds=seeds)
    rep.figures.append((name, f"{arch}: test accuracy per variant, one point per seed (n={seeds})"))

    trials = finished_trials(rep.study)
    name = f"optimisation_history_{arch}.png"
    optimisation_history(trials, title=rep.study.study_name, path=folder / name)
    rep.figures.append((name, f"{rep.study.study_name}: optimisation history (n={len(trials)})"))

    name = f"param_importances_{arch}.png"
    skipped = param_importances(rep.study, path=folder / name)
    if skipped:
        rep.notes.append(f"Parameter importances of {rep.study.study_name} skipped: {skipped}.")
    else:
        caption = f"{rep.study.study_name}: fANOVA parameter importances (n={len(trials)} trials)"
        rep.figures.append((name, caption))

    studies = {"ALL study": trials}
    if rep.tuned_study is not None:
        studies["tuned-baseline study"] = finished_trials(rep.tuned_study)
    name = f"best_so_far_{arch}.png"
    best_so_far(studies, title=arch, path=folder / name)
    counts = ", ".join(f"{k} n={len(v)}" for k, v in studies.items())
    rep.figures.append((name, f"{arch}: best validation accuracy so far vs trials ({counts})"))


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
    fig, ax = _figure()
    names = [v for v in accs if accs[v]]
    ax.boxplot([accs[v] for v in names], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same report draws the same picture
    for i, variant in enumerate(names, start=1):
        x = i + rng.uniform(-0.12, 0.12, size=len(accs[variant]))
        ax.scatter(x, accs[variant], color=COLORS.get(variant), zorder=3, s=24)
    ax.set_xticks(range(1, len(names) + 1), [labels[v] for v in names])
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


def best_so_far(studies: Mapping[str, Sequence[FrozenTrial]], *, title: str, path: Path) -> None:
    """Best COMPLETE validation accuracy after the first k finished trials, k = 1..n."""
    fig, ax = _figure()
    for label, trials in studies.items():
        best, curve = -np.inf, []
        for t in trials:
            if t.state == TrialState.COMPLETE and t.values:
                best = max(best, t.values[0])
            curve.append(best if np.isfinite(best) else np.nan)
        ax.step(range(1, len(curve) + 1), curve, where="post", label=f"{label} (n={len(curve)})")
    ax.set(xlabel="number of finished trials", ylabel="best validation accuracy so far")
    ax.set_title(f"{title}: best so far vs number of trials")
    ax.legend(loc="lower right")
    _save(fig, path)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE and PRUNED trials in number order: the budget the plots count."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)


def _figure(*, integer_x: bool = True, left: float = 0.11) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7, 4.2))  # fixed margins: a constrained layout doubles the cost
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left, right=0.97, bottom=0.13, top=0.9)
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    if integer_x:  # epochs and trial counts
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=_DPI)
