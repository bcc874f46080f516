"""report.md and report.html: the statistics per architecture, as text, tables and figures.

One document model (headings, paragraphs, tables, images) is built once and rendered twice:
Markdown next to the PNG files, and a self-contained HTML page (every image embedded as a base64
data URI, one small style sheet). The report opens with one verdict paragraph per architecture.
"""

from __future__ import annotations

import base64
import html
import math
import re
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Union

from autoall import stats

if TYPE_CHECKING:
    from autoall.report import ArchReport, Report


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str  # may hold **bold**


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass(frozen=True)
class Image:
    file: str  # a PNG next to report.md
    caption: str


Block = Union[Heading, Paragraph, Table, Image]  # noqa: UP007 (a runtime alias on Python 3.10)


@dataclass(frozen=True)
class Summary:
    """One variant of one architecture over its seeds; the comparisons are to the baseline."""

    variant: str
    label: str
    n: int
    mean: float  # test accuracy
    std: float
    diff: float | None  # mean(variant) - mean(baseline); None for the baseline itself
    ci: tuple[float, float] | None
    p: float | None
    prob: float | None  # P(variant > baseline)
    median_epoch_seconds: float  # median over seeds of each run's median
    target_epochs: list[int | None]
    target_seconds: list[float | None]
    params_total: int
    params_all: int
    gap_mean: float  # train - test accuracy
    gap_std: float


def summarise(rep: ArchReport) -> list[Summary]:
    """The statistics of every variant of `rep` (stats.py does the arithmetic)."""
    base = [r.metrics["test_acc"] for r in rep.runs_of("baseline")]
    out = []
    for variant in rep.variants:
        runs = rep.runs_of(variant.name)
        acc = [r.metrics["test_acc"] for r in runs]
        mean, std = stats.mean_std(acc)
        gap_mean, gap_std = stats.mean_std(
            [r.metrics["train_eval_acc"] - r.metrics["test_acc"] for r in runs]
        )
        compare = variant.name != "baseline"
        out.append(
            Summary(
                variant=variant.name,
                label=variant.label,
                n=len(runs),
                mean=mean,
                std=std,
                diff=mean - stats.mean_std(base)[0] if compare else None,
                ci=stats.bootstrap_ci(acc, base) if compare else None,
                p=stats.welch_p(acc, base) if compare else None,
                prob=stats.prob_greater(acc, base) if compare else None,
                median_epoch_seconds=statistics.median(
                    r.metrics["median_epoch_seconds"] for r in runs
                ),
                target_epochs=[r.target_epoch for r in runs],
                target_seconds=[r.target_seconds for r in runs],
                params_total=int(runs[0].metrics["params_total"]),
                params_all=int(runs[0].metrics["params_all"]),
                gap_mean=gap_mean,
                gap_std=gap_std,
            )
        )
    return out


def verdict_paragraph(rep: ArchReport, summaries: list[Summary]) -> str:
    """The architecture's verdict: accuracy per variant, then efficiency and generalisation."""
    by = {s.variant: s for s in summaries}
    base, ours = by["baseline"], by["all"]
    parts = [
        f"**{rep.arch}** (n={base.n} seeds per variant): the baseline reaches "
        f"{_acc(base.mean, base.std)} test accuracy, the ALL {_acc(ours.mean, ours.std)}."
    ]
    for s in summaries[1:]:
        assert s.diff is not None and s.ci is not None and s.p is not None and s.prob is not None
        parts.append(
            stats.verdict(
                label=s.label,
                baseline_label="baseline",
                diff=s.diff,
                ci=s.ci,
                p=s.p,
                prob=s.prob,
                n=s.n,
            )
        )
    if rep.best.params.get("aux_loss") == "none":
        parts.append("The best trial's aux_loss is 'none', so the ablation trains the same model.")
    ratio = ours.median_epoch_seconds / base.median_epoch_seconds
    parts.append(
        f"Efficiency: an ALL epoch takes {ratio:.2f}x the baseline's median time "
        f"({ours.median_epoch_seconds:.3g} s vs {base.median_epoch_seconds:.3g} s); to the target "
        f"validation accuracy {rep.target_acc:.4f} the ALL needs {_epochs(ours)} against "
        f"{_epochs(base)} for the baseline."
    )
    parts.append(
        f"Generalisation: the train-test gap is {_points(ours.gap_mean, ours.gap_std)} with the "
        f"ALL and {_points(base.gap_mean, base.gap_std)} without; the ALL adds "
        f"{ours.params_all:,} parameters ({_share(ours)} of {ours.params_total:,})."
    )
    return " ".join(parts)


def document(report: Report) -> list[Block]:
    """The whole report: verdicts first, then per architecture the tables and the figures."""
    cfg, opts = report.cfg, report.opts
    summaries = {rep.arch: summarise(rep) for rep in report.archs}
    blocks: list[Block] = [Heading(1, f"autoall report: {cfg.name}")]
    blocks += [Paragraph(verdict_paragraph(r, summaries[r.arch])) for r in report.archs]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (py3.10)
    blocks.append(
        Paragraph(
            f"Data set {cfg.data.name}; study file {cfg.path}; {opts.seeds} seeds (0..{opts.seeds - 1}) "
            f"per variant, each trained on the train split and evaluated once on the test split; "
            f"MLflow experiment {cfg.name!r}, report run {report.parent_run_id}; written {when}."
        )
    )
    for rep in report.archs:
        blocks += _arch_blocks(rep, summaries[rep.arch])
    blocks += [Heading(2, "Method"), Paragraph(_METHOD)]
    return blocks


_METHOD = (
    "Test accuracy is given as mean ± sample standard deviation over the seeds (n). The "
    "difference to the baseline is the difference of means, in percentage points, with a 95 % "
    "percentile bootstrap interval (10,000 resamples, each group resampled independently, fixed "
    "seed). p is the two-sided Welch t-test p-value (scipy); when both groups have zero variance "
    "it is 1 if their means are equal and 0 otherwise. A difference with p >= 0.05 is reported "
    "as not significant. P(> baseline) is the probability that a random run of the variant beats "
    "a random baseline run, ties counted one half. Epochs and seconds to target come from each "
    "run's validation accuracy per epoch (first epoch at or above the target; seconds summed "
    "over epochs up to it), as the median over the runs that reached it."
)


def _arch_blocks(rep: ArchReport, summaries: list[Summary]) -> list[Block]:
    n = summaries[0].n
    blocks: list[Block] = [
        Heading(2, f"{rep.arch}"),
        Table(("variant", "settings"), [(v.label, v.note) for v in rep.variants]),
        Heading(3, f"Test accuracy (n={n} seeds per variant)"),
        Table(
            (
                "variant",
                "test acc mean ± std (n)",
                "diff to baseline [95 % CI]",
                "Welch p",
                "P(> baseline)",
            ),
            [
                (
                    s.label,
                    f"{_acc(s.mean, s.std)} ({s.n})",
                    "-"
                    if s.ci is None or s.diff is None
                    else f"{100 * s.diff:+.2f} [{100 * s.ci[0]:+.2f}, {100 * s.ci[1]:+.2f}] points",
                    "-" if s.p is None else stats.format_p(s.p),
                    "-" if s.prob is None else f"{s.prob:.2f}",
                )
                for s in summaries
            ],
        ),  # fmt: skip
        Heading(3, f"Efficiency and generalisation (n={n} seeds per variant)"),
        Paragraph(f"Target validation accuracy: {rep.target_acc:.4f} ({rep.target_source})."),
        Table(
            (
                "variant",
                "median s/epoch",
                "epochs to target",
                "seconds to target",
                "params (ALL share)",
                "train-test gap",
            ),
            [
                (
                    s.label,
                    f"{s.median_epoch_seconds:.4g}",
                    _epochs(s),
                    _seconds(s),
                    f"{s.params_total:,} ({_share(s)})",
                    _points(s.gap_mean, s.gap_std),
                )
                for s in summaries
            ],
        ),  # fmt: skip
    ]
    blocks += [Image(file, caption) for file, caption in rep.figures]
    blocks += [Paragraph(f"Note: {note}") for note in rep.notes]
    return blocks


def markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            lines.append(b.text)
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b.rows]
        else:
            lines.append(f"![{b.caption}]({b.file})\n\n*{b.caption}*")
        lines.append("")
    return "\n".join(lines)


def to_html(blocks: list[Block], folder: Path, *, title: str) -> str:
    """A self-contained page: each Image's PNG (read from `folder`) inlined as a data URI."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            alt = html.escape(b.caption, quote=True)
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{alt}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5;color:#222}table{border-collapse:collapse;margin:1rem 0}"
    "th,td{padding:.3rem .7rem;border-bottom:1px solid #ccc;text-align:left}"
    "th{background:#f4f4f4}figure{margin:1.5rem 0}img{max-width:100%}"
    "figcaption{font-size:.9rem;color:#555}"
)


def write(report: Report, folder: Path) -> None:
    """report.md and report.html into `folder`, which already holds the PNG files."""
    blocks = document(report)
    (folder / "report.md").write_text(markdown(blocks))
    page = to_html(blocks, folder, title=f"autoall report: {report.cfg.name}")
    (folder / "report.html").write_text(page)


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))


def _acc(mean: float, std: float) -> str:
    spread = "n/a" if math.isnan(std) else f"{100 * std:.2f}"
    return f"{100 * mean:.2f} % ± {spread}"


def _points(mean: float, std: float) -> str:
    spread = "n/a" if math.isnan(std) else f"{100 * std:.2f}"
    return f"{100 * mean:+.2f} ± {spread} points"


def _share(s: Summary) -> str:
    return f"ALL {100 * s.params_all / s.params_total:.1f} %" if s.params_total else "ALL 0 %"


def _epochs(s: Summary) -> str:
    reached = [e for e in s.target_epochs if e is not None]
    if not reached:
        return f"not reached (0/{s.n})"
    median = statistics.median(reached)
    unit = "epoch" if median == 1 else "epochs"
    return f"median {median:g} {unit} ({len(reached)}/{s.n} reached)"


def _seconds(s: Summary) -> str:
    reached = [t for t in s.target_seconds if t is not None]
    if not reached:
        return f"not reached (0/{s.n})"
    return f"median {statistics.median(reached):.3g} s ({len(reached)}/{s.n} reached)"
