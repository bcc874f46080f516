"""`autoall report A.yaml B.yaml ...`: one summary across study files (Agarwal et al. 2021).

A task is one (data set, architecture) of one report. Per claim that compares runs (V vs C on
one metric, paired by seed), across all tasks:

- the verdict of each task, from its own report (its own Holm family);
- the probability of improvement P(V better than C), per task over all pairs of runs (ties one
  half), averaged over tasks;
- the interquartile mean of the per-seed differences V - C over all runs of all tasks;

each with a 95 % stratified-bootstrap interval (runs resampled within each task, seeds kept
paired), as Agarwal et al. recommend for few runs per task ("Deep RL at the edge of the
statistical precipice", NeurIPS 2021; the rliable library). These describe the collection of
tasks; the per-task verdicts carry the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoall.report import _render as render
from autoall.report import _stats_across as stats_across
from autoall.report._claims import paired
from autoall.report._types import Claim, Report

_N_BOOT = 2000


@dataclass(frozen=True)
class Aggregate:
    key: str
    title: str
    direction: int
    tasks: int
    poi: float  # P(V better than C), averaged over tasks
    poi_ci: tuple[float, float]
    iqm: float  # interquartile mean of the differences V - C, all runs of all tasks
    iqm_ci: tuple[float, float]


def _pairs(report: Report, claim: Claim) -> np.ndarray | None:
    """(runs, 2) array of the claim's metric for V and C, paired by (replicate, seed), or None
    without paired runs."""
    if claim.test is None or claim.metric not in ("test_acc", "gap"):
        return None
    rep = next(r for r in report.archs if r.arch == claim.arch)

    def value(run: object) -> float:
        return run.gap if claim.metric == "gap" else run.metrics["test_acc"]  # type: ignore[attr-defined]

    pairs = paired(rep, claim.variant, claim.comparator)
    return np.array([[value(a), value(b)] for a, b in pairs])


def aggregates(reports: list[Report]) -> list[Aggregate]:
    """Per claim key: probability of improvement and IQM of the differences across tasks."""
    by_key: dict[str, dict[str, np.ndarray]] = {}
    meta: dict[str, Claim] = {}
    for report in reports:
        for claim in report.claims:
            pairs = _pairs(report, claim)
            if pairs is None:
                continue
            task = f"{report.name}: {report.data}/{claim.arch}"
            by_key.setdefault(claim.key, {})[task] = pairs * claim.direction  # higher = better
            meta.setdefault(claim.key, claim)
    out = []
    for key, tasks in by_key.items():

        def poi(runs: dict[str, np.ndarray]) -> float:
            return stats_across.probability_of_improvement(
                {t: a[:, 0] for t, a in runs.items()}, {t: a[:, 1] for t, a in runs.items()}
            )

        def iqm(runs: dict[str, np.ndarray]) -> float:
            return stats_across.iqm(np.concatenate([a[:, 0] - a[:, 1] for a in runs.values()]))

        claim = meta[key]
        out.append(
            Aggregate(
                key=key,
                title=claim.title,
                direction=claim.direction,
                tasks=len(tasks),
                poi=poi(tasks),
                poi_ci=stats_across.stratified_bootstrap_ci(tasks, poi, n_boot=_N_BOOT),
                iqm=claim.direction * iqm(tasks),
                iqm_ci=_signed(
                    stats_across.stratified_bootstrap_ci(tasks, iqm, n_boot=_N_BOOT), claim
                ),
            )
        )
    return out


def _signed(ci: tuple[float, float], claim: Claim) -> tuple[float, float]:
    low, high = claim.direction * ci[0], claim.direction * ci[1]
    return (min(low, high), max(low, high))


_TARGET_METRICS = ("target_epoch", "target_seconds")  # claims timed to a task's own target


def _task_free_title(claim: Claim, target_acc: float) -> str:
    """The claim's title without its task's efficiency target: each report picks its own,
    and the summary's cells name it."""
    if claim.metric not in _TARGET_METRICS:
        return claim.title
    return claim.title.replace(
        f"validation accuracy {target_acc:.4f}", "the task's target validation accuracy"
    )


def document(reports: list[Report]) -> list[render.Block]:
    """The summary's blocks: each task's verdict per claim (an efficiency verdict with the
    task's own target), then the aggregates across tasks."""
    tasks = [(r, rep.arch) for r in reports for rep in r.archs]
    header = ("claim", *(f"{r.name}: {r.data}/{arch}" for r, arch in tasks))
    cells: dict[tuple[str, str, str], str] = {}
    titles: dict[str, str] = {}
    for r in reports:
        for rep in r.archs:
            for c in rep.claims:
                titles.setdefault(c.key, _task_free_title(c, rep.target_acc))
                target = f" (to {rep.target_acc:.4f})" if c.metric in _TARGET_METRICS else ""
                cells[(r.name, c.arch, c.key)] = f"**{c.verdict}**{target}"
    rows = [
        (title, *(cells.get((r.name, arch, key), "-") for r, arch in tasks))
        for key, title in titles.items()
    ]
    agg_rows = [
        (
            a.title,
            str(a.tasks),
            f"{a.poi:.2f} [{a.poi_ci[0]:.2f}, {a.poi_ci[1]:.2f}]",
            f"{100 * a.iqm:+.2f} [{100 * a.iqm_ci[0]:+.2f}, {100 * a.iqm_ci[1]:+.2f}] points",
        )
        for a in aggregates(reports)
    ]
    links = ", ".join(
        f"{r.name} ({r.out / 'report.html' if r.out else 'not written'})" for r in reports
    )
    return [
        render.Heading(1, "autoall summary across studies"),
        render.Paragraph(
            f"{len(tasks)} tasks from {len(reports)} reports: {links}. Each cell is the verdict "
            "of the task's own report (Holm over that report's claims); an efficiency verdict "
            "names the validation accuracy its report timed the runs to."
        ),
        render.Heading(2, "Verdicts per task"),
        render.Table(header, rows),
        render.Heading(2, "Across tasks"),
        render.Paragraph(
            "P(improvement): the probability that a run of V beats a run of C on the claim's "
            "metric (ties one half), per task over all pairs of runs, averaged over tasks. IQM: "
            "the interquartile mean of the per-seed differences V - C over every run of every "
            "task (for the gap, lower is better: its sign is kept as measured). Intervals: 95 % "
            f"stratified bootstrap ({_N_BOOT:,} resamples of the runs within each task, seeds "
            "kept paired; Agarwal et al. 2021)."
        ),
        render.Table(
            ("claim", "tasks", "P(improvement) [95 % CI]", "IQM of V - C [95 % CI]"), agg_rows
        ),
    ]


def write_summary(reports: list[Report], out: Path) -> Path:
    """summary.md and summary.html (no figures) into `out`, atomically."""
    from autoall.report._report import write_atomically

    blocks = document(reports)

    def fill(folder: Path) -> None:
        (folder / "summary.md").write_text(render.markdown(blocks))
        page = render.to_html(blocks, folder, title="autoall summary across studies")
        (folder / "summary.html").write_text(page)

    return write_atomically(out, fill)
