"""report.md, report.html and the CSV tables: the verdicts first, then the evidence.

Each architecture's section opens with its conclusion in plain words (autoall/report/_conclusion.py).

One document model (headings, paragraphs, tables, images) is built once and rendered twice:
Markdown next to the PNG files, and a self-contained HTML page (every image embedded as a base64
data URI, one small style sheet). Accuracies and their differences are printed in percentage
points; every interval is a 95 % interval, unadjusted, next to its own test.
"""

from __future__ import annotations

import base64
import html
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

from autoall.report import _stats as stats
from autoall.report._claims import UNITS, family_size
from autoall.report._conclusion import arch_conclusion
from autoall.report._names import VariantName
from autoall.report._types import ArchReport, Claim, Report


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
    rows: Sequence[tuple[str, ...]]


@dataclass(frozen=True)
class Image:
    file: str  # a PNG next to report.md
    caption: str


Block = Union[Heading, Paragraph, Table, Image]  # noqa: UP007 (a runtime alias on Python 3.10)


def document(report: Report) -> list[Block]:
    """The whole report: the verdicts, per architecture the evidence, then the method."""
    blocks: list[Block] = [Heading(1, f"autoall report: {report.name}"), Paragraph(_intro(report))]
    if report.reachable:
        blocks.append(Paragraph(f"**Before training:** {report.reachable}"))
    blocks += [Heading(2, "Verdicts"), _verdict_table(report)]
    blocks += [Paragraph(_headline(rep)) for rep in report.archs]
    for rep in report.archs:
        blocks += _arch_blocks(rep)
    if report.notes:
        blocks += [Heading(2, "Notes"), *(Paragraph(n) for n in report.notes)]
    blocks += [Heading(2, "Method"), *(Paragraph(p) for p in method(report))]
    return blocks


def _intro(report: Report) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (py3.10)
    archs = ", ".join(r.arch for r in report.archs)
    budgets = "; ".join(
        f"{r.arch}: {', '.join(str(rp.budget) for rp in r.replicates)} trials per study"
        for r in report.archs
    )
    replicates = (
        f"{report.replicates} independent searches of each arm (replicates)"
        if report.replicates > 1
        else "one search of each arm (re-tuning variance unmeasured: use --replicates >= 2)"
    )
    return (
        f"Does an Auto-Learning Layer make {archs} better on {report.data}? The tuned ALL is "
        f"compared with an equally tuned baseline ({budgets}; both search the base lr and "
        f"weight decay over the same ranges with the same sampler, pruner and epochs), "
        f"{replicates}, each picked on validation, then trained on {len(report.seeds)} "
        f"evaluation seeds and evaluated once on the {report.test_size:,}-image test split. "
        f"{family_size(report.claims)} claims are tested together (Holm-Shaffer over their "
        f"difference and equivalence tests, alpha = {report.alpha:g}). Study file "
        f"{report.path}; MLflow report run {report.parent_run_id}; written {when}."
    )


def _verdict_table(report: Report) -> Table:
    """Claims x architectures: the verdict and the effect (deeper networks side by side)."""
    archs = [r.arch for r in report.archs]
    titles: dict[str, str] = {}
    cells: dict[tuple[str, str], str] = {}
    for c in report.claims:
        titles.setdefault(c.key, c.title)
        cells[(c.key, c.arch)] = _cell(c)
    rows = [(title, *(cells.get((key, a), "-") for a in archs)) for key, title in titles.items()]
    return Table(("claim", *archs), rows)


def _cell(c: Claim) -> str:
    verdict = f"**{c.verdict}**"
    if c.test is None:
        return f"{verdict} ({c.reason})"
    est = c.test.estimate
    interval = "" if est.ci is None else f" [{_effect(c, est.ci[0])}, {_effect(c, est.ci[1])}]"
    if c.verdict == "equivalent":
        return f"{verdict} within ±{_effect(c, c.test.margin or 0.0, sign=False)}: {_effect(c, est.mean)}{interval}"
    return f"{verdict}: {_effect(c, est.mean)}{interval}, adjusted p {_p_eq(c.adjusted_p)}"


def _headline(rep: ArchReport) -> str:
    def acc(variant: str) -> str:
        runs = rep.runs_of(variant)
        if not runs:
            return "-"
        return _acc([r.metrics["test_acc"] for r in runs])

    n = len(rep.runs_of(VariantName.ALL))
    return (
        f"**{rep.arch}** (test accuracy, mean ± sd over n = {n} runs, replicates x seeds): "
        f"ALL {acc(VariantName.ALL)}, tuned "
        f"baseline {acc(VariantName.TUNED_BASELINE)}, hand-set baseline "
        f"{acc(VariantName.HAND_SET)}, parameter-matched {acc(VariantName.PARAM_MATCHED)}."
    )


def _arch_blocks(rep: ArchReport) -> list[Block]:
    n = len(rep.runs_of(VariantName.ALL))
    blocks: list[Block] = [
        Heading(2, rep.arch),
        Paragraph(f"**Conclusion.** {arch_conclusion(rep)}"),  # autoall/report/_conclusion.py
        Heading(3, "Search budgets"),
    ]
    blocks.append(
        Table(
            ("study", "finished trials", "random start-up", "guided", "trial-epochs", "seconds"),
            [
                (
                    a.study,
                    str(a.finished),
                    str(a.startup),
                    str(a.guided),
                    str(a.trial_epochs),
                    f"{a.seconds:.1f}",
                )
                for rp in rep.replicates
                for a in rp.arms.values()
            ],  # fmt: skip
        )
    )
    retuned = [(rp.index, t) for rp in rep.replicates for t in rp.retuned]
    if retuned:
        blocks += [
            Heading(3, "Re-tuned controls (validation only)"),
            Table(
                (
                    "replicate",
                    "variant",
                    "knobs",
                    "candidates",
                    "trial-epochs",
                    "seconds",
                    "picked",
                    "val acc",
                ),
                [
                    (
                        str(r),
                        _label(rep, t.variant),
                        ", ".join(t.knobs),
                        str(t.trials),
                        str(t.epochs),
                        f"{t.seconds:.1f}",
                        ", ".join(f"{k}={v:.4g}" for k, v in t.best.items()),
                        f"{t.best_val_acc:.4f}",
                    )
                    for r, t in retuned
                ],
            ),  # fmt: skip
        ]
    blocks.append(Heading(3, "Selection (validation only)"))
    rows = []
    for key, sel in [(k, s) for rp in rep.replicates for k, s in rp.selections.items()]:
        for rank, cand in enumerate(sel.ranked, start=1):
            rows.append(
                (
                    f"{sel.study} ({key})",
                    f"#{cand.trial}",
                    f"{cand.value:.4f}",
                    _acc(list(cand.val_acc)),
                    f"{statistics.fmean(cand.val_loss):.4f}",
                    "winner" if rank == 1 else str(rank),
                )
            )
    blocks.append(
        Table(("study", "trial", "search val acc", "selection val acc", "val loss", "rank"), rows)
    )
    blocks += [
        Heading(3, "Variants"),
        Table(
            ("replicate", "variant", "settings"),
            [
                (str(rp.index), v.label + (" (**untuned**)" if v.untuned else ""), v.note)
                for rp in rep.replicates
                for v in rp.variants
            ],
        ),
        Heading(3, f"Test accuracy (n = {n} runs per variant: replicates x seeds)"),
        Table(
            ("variant", "test acc, mean ± sd", "train-test gap", "parameters (ALL share)"),
            [_variant_row(rep, v.name, v.label) for v in rep.variants],
        ),
        Heading(3, "Claims"),
        Paragraph(
            "Effect = mean over replicates and seeds of V - C, with the mixed model's 95 % "
            "interval and p (a t test on the replicate means, df = replicates - 1; over seeds "
            "when there is one replicate). Test noise: the two-way bootstrap over (replicates, "
            "seeds) x test examples. Equivalence: two one-sided tests against ±margin. Adjusted: "
            "Holm-Shaffer over every claim's difference and equivalence tests. Intervals are "
            f"95 %, unadjusted. Accuracy margin ±{100 * rep.margin:.2f} points "
            f"({rep.margin_source})."
        ),
        Table(
            (
                "claim",
                "V vs C",
                "effect [95 % CI] (df)",
                "p",
                "test noise [95 % CI] p",
                "equivalence p",
                "adjusted p",
                "verdict",
            ),  # fmt: skip
            [_claim_row(c, rep) for c in rep.claims],
        ),
        Heading(3, "Efficiency"),
        Paragraph(f"Target validation accuracy {rep.target_acc:.4f} ({rep.target_source})."),
        Table(
            ("variant", "median s/epoch", "epochs to target", "seconds to target"),
            [
                _efficiency_row(rep, v)
                for v in (VariantName.ALL, VariantName.TUNED_BASELINE, VariantName.HAND_SET)
            ],
        ),
    ]
    blocks += [Image(file, caption) for file, caption in rep.figures]
    blocks += [Paragraph(f"Note: {note}") for note in rep.notes]
    return blocks


def _variant_row(rep: ArchReport, name: str, label: str) -> tuple[str, ...]:
    runs = rep.runs_of(name)
    if not runs:
        return (label, "-", "-", "-")
    total, share = int(runs[0].metrics["params_total"]), int(runs[0].metrics["params_all"])
    return (
        label,
        f"{_acc([r.metrics['test_acc'] for r in runs])} ({len(runs)})",
        _points([r.gap for r in runs]),
        f"{total:,} ({100 * share / total:.1f} %)" if total else "0",
    )


def _claim_row(c: Claim, rep: ArchReport) -> tuple[str, ...]:
    vs = f"{_label(rep, c.variant)} vs {_label(rep, c.comparator)}"
    title = c.title + (f" ({c.note})" if c.note else "")
    verdict = f"**{c.verdict}** ({c.reason})" if c.reason else f"**{c.verdict}**"
    t = c.test
    if t is None:
        return (title, vs, "-", "-", "-", "-", "-", verdict)
    est = t.estimate
    ci = "" if est.ci is None else f" [{_effect(c, est.ci[0])}, {_effect(c, est.ci[1])}]"
    noise = "-"
    if t.bootstrap is not None:
        b = t.bootstrap
        noise = (
            f"{_effect(c, b.mean)} [{_effect(c, b.ci[0])}, {_effect(c, b.ci[1])}], p {_p_eq(b.p)}"
        )
    margin = (
        "-" if t.margin is None else f"±{_effect(c, t.margin, sign=False)}: {_p(t.p_equivalence)}"
    )
    adjusted = f"{_p(c.adjusted_p)} / {_p(c.adjusted_p_equivalence)}"
    return (
        title,
        vs,
        f"{_effect(c, est.mean)}{ci} ({est.df} df, {est.unit})",
        _p(est.p),
        noise,
        margin,
        adjusted,
        verdict,
    )


def _efficiency_row(rep: ArchReport, name: str) -> tuple[str, ...]:
    runs = rep.runs_of(name)
    if not runs:
        return (name, "-", "-", "-")
    median = statistics.median(r.metrics["median_epoch_seconds"] for r in runs)
    epochs = [r.target_epoch for r in runs if r.target_epoch is not None]
    seconds = [r.target_seconds for r in runs if r.target_seconds is not None]
    reached = f"({len(epochs)}/{len(runs)} reached)"
    return (
        _label(rep, name),
        f"{median:.4g}",
        f"median {statistics.median(epochs):g} {reached}" if epochs else f"not reached {reached}",
        f"median {statistics.median(seconds):.3g} s" if seconds else "-",
    )


def method(report: Report) -> list[str]:
    m = family_size(report.claims)
    seeds = report.seeds
    sel = report.selection_seeds
    return [
        "**Equal arms.** The ALL study searches the base network's lr and weight_decay and the "
        "ALL's knobs (hidden_size, all_lr, aux_weight, aux_loss, positions); its tuned baseline "
        "searches the same lr and weight_decay ranges, with the same sampler, pruner, number of "
        "finished trials and epochs per trial. Both use only the train and validation splits. "
        "The search budgets table states each arm's trials (random start-up and guided), "
        "trial-epochs and seconds.",
        f"**Replicates.** Each arm was searched {report.replicates} time(s), independently: "
        "replicate r's sampler draws each trial from its own stream (a NumPy SeedSequence of "
        "the sampler seed, r and the trial number), trains with search seed train.seed + r and "
        "selects with its own selection seeds. Each replicate picks its own winners; their "
        "spread is part of every interval below.",
        f"**Selection (validation only).** The top {report.top_k} COMPLETE trials of each study "
        f"(ties at the cut included) are retrained on the replicate's selection seeds "
        f"({'; '.join(_seeds(s) for s in sel)}) and the one with the highest mean final "
        "validation accuracy wins (ties: lower mean validation loss, then fewer parameters; "
        "never trial order). When the ALL winner has no custom loss, the custom-loss claim uses "
        "the best trial with one, picked the same way.",
        f"**Controls, re-tuned.** Each control is re-tuned on what its change frees, with "
        f"{report.tuning_trials} candidates on validation (the winner's own knobs first, then "
        "random draws from the study file's ranges): the parameter-matched plain model and the "
        "ALL at all_lr = lr re-tune lr and weight_decay; the ALL at aux_weight = 0 and at the "
        "other positions re-tune lr and all_lr. A control that keeps the winner's knobs is "
        "labelled untuned, and a claim against it is never supported.",
        "**Less data.** The ALL and the tuned baseline on a share of the train split train with "
        "as many optimizer steps as on the full split (more epochs, the same warm-up and cosine "
        "schedule in steps), each with lr and weight_decay re-tuned on the share with the same "
        "budget; the train-test gap is shown beside them.",
        f"**Evaluation.** Every variant trains on the train split with each evaluation seed "
        f"{_seeds(seeds)} (none is a search or selection seed) and is evaluated once on the "
        "test split. Seed s fixes the initialisation of the shared parts and the batch order, "
        "so runs pair by (replicate, seed). The ALL and the tuned baseline train alone, so the "
        "seconds of the efficiency claims are each run's own, measured alike for both arms.",
        "**Statistics per claim.** d[r, i] = metric(V, r, i) - metric(C, r, i). The effect is "
        "the mean of d; its interval and p come from the balanced mixed model d = mu + a_r + "
        "e_ri, whose exact test is a t test on the replicate means with replicates - 1 degrees "
        "of freedom (with one replicate, over the seeds). For test accuracy, the test set's own "
        "noise is a two-way bootstrap over (replicates, seeds within them) x test examples; the "
        "difference p is the larger of the two (an intersection-union test). Equivalence "
        "within ±margin: two one-sided tests, the larger p of the mixed model's and the "
        "bootstrap's.",
        f"**Multiplicity and verdicts.** The {m} tested claims' difference and equivalence "
        "tests are adjusted together by Holm's step-down procedure with Shaffer's bound (at "
        "most one of a claim's two nulls is true), so the family-wise error rate of every "
        f"finding is at most alpha = {report.alpha:g}. Supported: the difference is significant "
        "in the claimed direction; opposite: significant the other way; equivalent: the "
        "equivalence test is significant; inconclusive: neither, with the minimum detectable "
        "effect at this n and the n it would need (80 % power); undetermined: no variance or "
        "fewer than two units. The tuning-cost claim compares the expected best validation "
        "accuracy of n trials (Tang et al. 2020's unbiased estimator of Dodge et al. 2019's "
        "curve), averaged over n, across replicates.",
        "**Efficiency.** Epochs and seconds of training until a run's validation accuracy first "
        "reaches the target, which is fixed from validation (never from test).",
    ]


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
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5;color:#222}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
    "th,td{padding:.3rem .6rem;border-bottom:1px solid #ccc;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}figure{margin:1.5rem 0}img{max-width:100%}"
    "figcaption{font-size:.9rem;color:#555}"
)


def write(report: Report, folder: Path, blocks: list[Block] | None = None) -> None:
    """report.md and report.html into `folder`, which already holds the PNG files."""
    blocks = document(report) if blocks is None else blocks
    (folder / "report.md").write_text(markdown(blocks))
    page = to_html(blocks, folder, title=f"autoall report: {report.name}")
    (folder / "report.html").write_text(page)


def _label(rep: ArchReport, name: str) -> str:
    return next((v.label for v in rep.variants if v.name == name), name)


def _effect(c: Claim, value: float, *, sign: bool = True) -> str:
    unit = UNITS.get(c.metric, "")
    plus = "+" if sign else ""
    if unit == "points":
        return f"{100 * value:{plus}.2f} points"
    return f"{value:{plus}.3g} {unit}".rstrip()


def _p(p: float | None) -> str:
    return "-" if p is None else stats.format_p(p)


def _p_eq(p: float | None) -> str:
    """ "= 0.0123" or "< 0.0001", to follow a "p"."""
    text = _p(p)
    return text if text.startswith("<") else f"= {text}"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))


def _acc(values: list[float]) -> str:
    mean, std = stats.mean_std(values)
    spread = "n/a" if math.isnan(std) else f"{100 * std:.2f}"
    return f"{100 * mean:.2f} % ± {spread}"


def _points(values: list[float]) -> str:
    mean, std = stats.mean_std(values)
    spread = "n/a" if math.isnan(std) else f"{100 * std:.2f}"
    return f"{100 * mean:+.2f} ± {spread} points"


def _seeds(seeds: tuple[int, ...]) -> str:
    if len(seeds) > 3 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))
