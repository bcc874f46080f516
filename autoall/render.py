"""report.md, report.html and the CSV tables: the verdicts first, then the evidence.

One document model (headings, paragraphs, tables, images) is built once and rendered twice:
Markdown next to the PNG files, and a self-contained HTML page (every image embedded as a base64
data URI, one small style sheet). Accuracies and their differences are printed in percentage
points; every interval is a 95 % interval, unadjusted, next to its own test.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

from autoall import stats
from autoall.claims import UNITS, family_size
from autoall.report_types import ArchReport, Claim, Report, RunRecord


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

RUN_COLUMNS: tuple[str, ...] = (
    "arch", "variant", "seed", "test_acc", "final_val_acc", "train_eval_acc", "gap",
    "median_epoch_seconds", "wall_seconds", "target_epoch", "target_seconds", "params_total",
    "params_all", "mlflow_run_id",
)  # fmt: skip
CLAIM_COLUMNS: tuple[str, ...] = (
    "arch", "claim", "variant", "comparator", "metric", "direction", "n", "effect", "t_low",
    "t_high", "p_t", "p_sign_flip", "example_low", "example_high", "p_example", "decision_p",
    "adjusted_p", "verdict", "reason",
)  # fmt: skip


def document(report: Report) -> list[Block]:
    """The whole report: the verdicts, per architecture the evidence, then the method."""
    blocks: list[Block] = [Heading(1, f"autoall report: {report.name}"), Paragraph(_intro(report))]
    needed = _seeds_hint(report)
    if needed:
        blocks.append(Paragraph(needed))
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
        f"{r.arch}: {r.selections['all'].budget} trials per study" for r in report.archs
    )
    return (
        f"Does an Auto-Learning Layer make {archs} better on {report.data}? The tuned ALL is "
        f"compared with an equal-budget tuned baseline ({budgets}; same sampler, pruner and "
        f"epochs), each picked on validation, then trained on {len(report.seeds)} evaluation "
        f"seeds and evaluated once on the {report.test_size:,}-image test split. "
        f"{family_size(report.claims)} claims are tested together (Holm, alpha = "
        f"{report.alpha:g}). Study file {report.path}; MLflow report run "
        f"{report.parent_run_id}; written {when}."
    )


def _seeds_hint(report: Report) -> str:
    m = family_size(report.claims)
    if not m:
        return ""
    needed = stats.seeds_needed(report.alpha / m)
    if len(report.seeds) >= needed:
        return ""
    return (
        f"**With {len(report.seeds)} seeds no claim can be supported**: the exact sign-flip "
        f"test's smallest p-value at n = {len(report.seeds)} is "
        f"{stats.sign_flip_min_p(len(report.seeds)):.3g}, not below alpha / m = "
        f"{report.alpha / m:.3g} for {m} claims. Rerun with `--seeds {needed}` (finished runs "
        "are reused)."
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
    opposite = " (opposite direction)" if c.reason.startswith("opposite") else ""
    return f"{verdict}{opposite}: {_effect(c, c.test.mean)}, Holm p {_p_eq(c.adjusted_p)}"


def _headline(rep: ArchReport) -> str:
    def acc(variant: str) -> str:
        runs = rep.runs_of(variant)
        if not runs:
            return "-"
        return _acc([r.metrics["test_acc"] for r in runs])

    n = len(rep.runs_of("all"))
    return (
        f"**{rep.arch}** (test accuracy, mean ± sd over n = {n} seeds): ALL {acc('all')}, tuned "
        f"baseline {acc('tuned-baseline')}, hand-set baseline {acc('hand-set')}, "
        f"parameter-matched {acc('param-matched')}."
    )


def _arch_blocks(rep: ArchReport) -> list[Block]:
    n = len(rep.runs_of("all"))
    blocks: list[Block] = [Heading(2, rep.arch), Heading(3, "Selection (validation only)")]
    rows = []
    for key, sel in rep.selections.items():
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
        Table(("variant", "settings"), [(v.label, v.note) for v in rep.variants]),
        Heading(3, f"Test accuracy (n = {n} seeds per variant)"),
        Table(
            ("variant", "test acc, mean ± sd", "train-test gap", "parameters (ALL share)"),
            [_variant_row(rep, v.name, v.label) for v in rep.variants],
        ),
        Heading(3, "Claims"),
        Paragraph(
            "Effect = mean over seeds of V - C. t: paired t interval and p; sign-flip: exact "
            "permutation p; test noise: interval and p over test examples; Holm: the decision p "
            "(the largest of the three) adjusted over every claim of this report. Intervals are "
            "95 %, unadjusted: one can exclude 0 while the verdict is not 'supported'."
        ),
        Table(
            (
                "claim",
                "V vs C",
                "effect [t 95 % CI]",
                "t p",
                "sign-flip p",
                "test noise [95 % CI] p",
                "Holm p",
                "verdict",
            ),  # fmt: skip
            [_claim_row(c, rep) for c in rep.claims],
        ),
        Heading(3, "Efficiency"),
        Paragraph(f"Target validation accuracy {rep.target_acc:.4f} ({rep.target_source})."),
        Table(
            ("variant", "median s/epoch", "epochs to target", "seconds to target"),
            [_efficiency_row(rep, v) for v in ("all", "tuned-baseline", "hand-set")],
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
    ci = "" if t.t_ci is None else f" [{_effect(c, t.t_ci[0])}, {_effect(c, t.t_ci[1])}]"
    example = "-"
    if t.example is not None:
        e = t.example
        interval = "" if e.ci is None else f" [{_effect(c, e.ci[0])}, {_effect(c, e.ci[1])}]"
        example = f"{_effect(c, e.mean)}{interval}, p {_p_eq(e.p)}"
    return (
        title,
        vs,
        f"{_effect(c, t.mean)}{ci}",
        _p(t.p_t),
        _p(t.p_sign_flip),
        example,
        _p(c.adjusted_p),
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
    seeds, sel = report.seeds, report.selection_seeds
    return [
        "**Budgets.** The ALL study searches the ALL's knobs (hidden_size, all_lr, aux_weight, "
        "aux_loss, positions) on top of the study file's training settings; its tuned baseline "
        "searches the plain network's lr and weight_decay with the same sampler, pruner, number "
        "of finished trials and epochs per trial. Both use only the train and validation splits.",
        f"**Selection (validation only).** The top {report.top_k} COMPLETE trials of each study "
        f"(ties at the cut included) are retrained on the selection seeds {_seeds(sel)} and the "
        "one with the highest mean final validation accuracy wins (ties: lower mean validation "
        "loss, then fewer parameters; never trial order). When the ALL winner has no custom "
        "loss, the custom-loss claim uses the best trial with one, picked the same way.",
        f"**Evaluation.** Every variant trains on the train split with each evaluation seed "
        f"{_seeds(seeds)} (none is the search seed) and is evaluated once on the test split. "
        "Seed s fixes the initialisation of the shared parts (the base network is built before "
        "any ALL is inserted, and every ALL starts as the identity) and the batch order, so the "
        "variants' runs are paired by seed. The parameter-matched control is the tuned baseline "
        "with the layer before the head widened to within 2 % of the ALL model's parameters.",
        "**Statistics per claim.** d_i = metric(V, seed i) - metric(C, seed i). The paired t "
        "interval and test (scipy's t distribution; the interval excludes 0 exactly when its p "
        "< 0.05); the exact two-sided sign-flip permutation test (all 2^n sign vectors for n <= "
        "12, Monte Carlo with a fixed seed above); for test accuracy, the test set's own "
        "sampling noise: per test example j, delta_j = the seed-averaged difference in correct "
        "predictions, a paired t test over the test examples (with one seed this is McNemar's "
        "test; the effect equals the accuracy difference). A claim's decision p is the largest "
        "of these (an intersection-union test: supported only if every test rejects).",
        f"**Multiplicity and verdicts.** Holm's step-down correction over the {m} tested claims "
        f"of this report (every architecture). Supported: Holm-adjusted p < {report.alpha:g} and "
        "the effect in the claimed direction. Undetermined: zero variance of the differences, "
        "fewer than 2 seeds, a target not reached, or too few seeds for the sign-flip test to "
        f"reach alpha / m (needs n >= {stats.seeds_needed(report.alpha / max(m, 1))} here). "
        "Otherwise not supported. Tuning cost is one pair of searches: it is described, not "
        "tested.",
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


def write_csv(report: Report, folder: Path) -> None:
    """results.csv (one row per evaluation run, full precision: equal to the MLflow metrics)
    and claims.csv (one row per claim)."""
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        for rep in report.archs:
            for variant in rep.variants:
                writer.writerows(_run_row(r) for r in rep.runs_of(variant.name))
    with (folder / "claims.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CLAIM_COLUMNS)
        writer.writeheader()
        writer.writerows(_claim_csv(c) for c in report.claims)


def _run_row(r: RunRecord) -> dict[str, object]:
    m = r.metrics
    return {
        "arch": r.arch,
        "variant": r.variant,
        "seed": r.seed,
        **{k: m[k] for k in ("test_acc", "final_val_acc", "train_eval_acc", "wall_seconds")},
        "gap": r.gap,
        "median_epoch_seconds": m["median_epoch_seconds"],
        "target_epoch": r.target_epoch,
        "target_seconds": r.target_seconds,
        "params_total": int(m["params_total"]),
        "params_all": int(m["params_all"]),
        "mlflow_run_id": r.run_id,
    }


def _claim_csv(c: Claim) -> dict[str, object]:
    t = c.test
    e = t.example if t is not None else None
    return {
        "arch": c.arch,
        "claim": c.key,
        "variant": c.variant,
        "comparator": c.comparator,
        "metric": c.metric,
        "direction": c.direction,
        "n": t.n if t else "",
        "effect": t.mean if t else "",
        "t_low": t.t_ci[0] if t and t.t_ci else "",
        "t_high": t.t_ci[1] if t and t.t_ci else "",
        "p_t": t.p_t if t and t.p_t is not None else "",
        "p_sign_flip": t.p_sign_flip if t else "",
        "example_low": e.ci[0] if e and e.ci else "",
        "example_high": e.ci[1] if e and e.ci else "",
        "p_example": e.p if e and e.p is not None else "",
        "decision_p": t.decision_p if t else "",
        "adjusted_p": c.adjusted_p if c.adjusted_p is not None else "",
        "verdict": c.verdict,
        "reason": c.reason,
    }


def _label(rep: ArchReport, name: str) -> str:
    return next((v.label for v in rep.variants if v.name == name), name)


def _effect(c: Claim, value: float) -> str:
    unit = UNITS.get(c.metric, "")
    if unit == "points":
        return f"{100 * value:+.2f} points"
    return f"{value:+.3g} {unit}".rstrip()


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
