"""report.md, report.html and the CSV tables of a small report built by hand
(tests/report/_fixed_report.py): the verdict table, numbers as the code formats them, each
architecture's conclusion once, the budget lines, a well-formed page with the same verdicts,
one results.csv row per run with its role."""

from __future__ import annotations

import base64
import csv
import html
import re
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _fixed_report import NO_AUX_UNTUNED, build_report

from autoall.report import _render as render
from autoall.report._conclusion import arch_conclusion
from autoall.report._render_csv import CLAIM_COLUMNS, RUN_COLUMNS, write_csv
from autoall.report._types import Report

PNG = b"\x89PNG\r\n\x1a\nnot really an image"


@dataclass
class Written:
    report: Report
    folder: Path
    md: str
    page: str


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    report = build_report()
    folder = tmp_path_factory.mktemp("fixed-report")
    (folder / "test_acc_mlp.png").write_bytes(PNG)
    render.write(report, folder)
    write_csv(report, folder)
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    return Written(report, folder, md, page)


def _table_after(md: str, heading: str, nth: int = 0) -> list[list[str]]:
    """The cells of the `nth` Markdown table after `heading` (header row first)."""
    start = [m.end() for m in re.finditer("^" + re.escape(heading) + "$", md, re.M)][nth]
    table = re.search(r"^\| .*?(?=\n\n)", md[start:], re.M | re.S)
    assert table is not None, heading
    lines = table.group(0).splitlines()
    assert set(lines[1]) == {"|", "-"}
    return [row[2:-2].split(" | ") for row in (lines[0], *lines[2:])]


def _verdict_rows(md: str) -> dict[str, list[str]]:
    header, *rows = _table_after(md, "## Verdicts")
    assert header == ["claim", "mlp", "cnn"]
    return {row[0]: row[1:] for row in rows}


def test_the_verdict_table_has_a_row_per_claim_and_a_column_per_architecture(
    written: Written,
) -> None:
    rows = _verdict_rows(written.md)
    claims = written.report.claims
    titles = list(dict.fromkeys(c.title for c in claims if c.arch == "mlp"))
    assert list(rows) == titles  # one row per claim, in the claims' order
    by = {(c.arch, c.key): c for c in claims}

    def cell(arch: str, key: str) -> str:  # rows are titled by the first architecture's claims
        return rows[by[("mlp", key)].title][("mlp", "cnn").index(arch)]

    for c in claims:
        assert cell(c.arch, c.key).startswith(f"**{c.verdict}**"), (c.arch, c.key)

    assert cell("mlp", "accuracy") == (
        "**supported**: +5.00 points [+4.69 points, +5.31 points], adjusted p = 0.0065"
    )
    assert cell("cnn", "accuracy") == (
        "**equivalent** within ±1.00 points: +0.03 points [+0.02 points, +0.04 points]"
    )
    assert cell("mlp", "own-lr") == (
        "**opposite**: -4.00 points [-4.12 points, -3.88 points], adjusted p = 0.000677"
    )
    assert cell("mlp", "epochs") == (
        "**inconclusive**: -3 epochs [-4.24 epochs, -1.76 epochs], adjusted p = 0.119"
    )
    assert cell("mlp", "seconds") == "**supported**: -2 s [-2.02 s, -1.98 s], adjusted p < 0.0001"
    assert cell("mlp", "data-10%") == "**undetermined**: +2.00 points, adjusted p = 1"
    assert cell("cnn", "data-10%") == "-"  # no such claim for the cnn
    assert cell("cnn", "parameters") == (
        "**undetermined** (not run: no 'param-matched' variant (see the notes))"
    )


@pytest.mark.xfail(
    strict=True,
    reason="bug: the verdict table titles each row with the first architecture's claim title, "
    "which for the efficiency claims names that architecture's target accuracy (mlp 0.9000) "
    "also over the columns of architectures whose target differs (cnn 0.8500)",
)
def test_a_verdict_row_s_title_holds_for_every_architecture_in_it(written: Written) -> None:
    rows = _verdict_rows(written.md)
    for title in (t for t in rows if t.startswith("Efficiency")):
        for rep in written.report.archs:
            assert f"{rep.target_acc:.4f}" in title or "validation accuracy 0." not in title, (
                rep.arch,
                title,
            )


def test_the_claims_tables_print_effects_in_units_and_p_values_as_text(written: Written) -> None:
    header, *mlp = _table_after(written.md, "### Claims")
    assert header == [
        "claim", "V vs C", "effect [95 % CI] (df)", "p", "test noise [95 % CI] p",
        "equivalence p", "adjusted p", "verdict",
    ]  # fmt: skip
    assert len(mlp) == 10
    acc = mlp[0]
    assert acc[1:4] == [
        "ALL vs tuned baseline",
        "+5.00 points [+4.69 points, +5.31 points] (2 df, replicates)",
        "0.000208",
    ]
    assert re.fullmatch(
        r"\+5\.00 points \[\+\d\.\d\d points, \+\d\.\d\d points\], p = 0\.0005", acc[4]
    )
    assert acc[5:] == [
        "±1.00 points: 1",
        "0.0065 / 1",
        "**supported** (Holm-Shaffer adjusted p = 0.0065 < 0.05 (m = 13 claims, t on 3 "
        "replicates, df = 2), mean +0.05 as claimed)",
    ]
    custom = mlp[2]
    assert custom[0].endswith("(the custom-loss ALL is each replicate's winner, or its best "
                              "custom-loss trial where the winner has aux_loss none)")  # fmt: skip
    assert custom[1] == "ALL with custom loss vs ALL, aux_weight = 0"
    assert custom[7].startswith(f"**inconclusive** (against an untuned control ({NO_AUX_UNTUNED})")
    seconds = mlp[8]
    assert seconds[0].endswith("(every run timed alone)")
    assert seconds[2:7] == [
        "-2 s [-2.02 s, -1.98 s] (2 df, replicates)",
        "< 0.0001",
        "-",  # no test-set bootstrap for seconds
        "±0.401 s: 1",
        "< 0.0001 / 1",
    ]
    assert mlp[1][5:7] == ["±1.00 points: < 0.0001", "0.491 / 0.000491"]  # equivalent
    header, *cnn = _table_after(written.md, "### Claims", nth=1)
    assert cnn[1][1:] == [
        "ALL vs param-matched", "-", "-", "-", "-", "-",
        "**undetermined** (not run: no 'param-matched' variant (see the notes))",
    ]  # fmt: skip


def test_accuracies_and_validation_figures_are_printed_as_promised(written: Written) -> None:
    md = written.md
    assert (
        "**mlp** (test accuracy, mean ± sd over n = 6 runs, replicates x seeds): ALL 93.08 % ± "
        "0.26, tuned baseline 88.08 % ± 0.30, hand-set baseline 85.00 % ± 0.00, "
        "parameter-matched 93.04 % ± 0.27." in md
    )
    assert "hand-set baseline -, parameter-matched -." in md  # the cnn has neither
    selection = _table_after(md, "### Selection (validation only)")
    assert selection[0] == ["study", "trial", "search val acc", "selection val acc", "val loss", "rank"]  # fmt: skip
    assert selection[1:4] == [
        ["t/mlp (all)", "#3", "0.9100", "91.75 % ± 0.35", "0.2500", "winner"],
        ["t/mlp (all)", "#1", "0.9150", "91.00 % ± 0.00", "0.3000", "2"],
        ["t/mlp/tuned-baseline (baseline)", "#2", "0.8800", "87.50 % ± 0.71", "0.3500", "winner"],
    ]
    assert len(selection) == 1 + 3 * 3  # every replicate's candidates
    retuned = _table_after(md, "### Re-tuned controls (validation only)")
    assert retuned[1] == [
        "0", "parameter-matched", "lr, weight_decay", "2", "6", "3.5",
        "lr=0.01235, weight_decay=0.0001", "0.9123",
    ]  # fmt: skip
    accuracy = _table_after(md, "### Test accuracy (n = 6 runs per variant: replicates x seeds)")
    assert accuracy[1] == ["tuned baseline", "88.08 % ± 0.30 (6)", "+6.00 ± 0.06 points", "1,000 (0.0 %)"]  # fmt: skip
    assert accuracy[3] == ["ALL", "93.08 % ± 0.26 (6)", "+2.00 ± 0.00 points", "1,200 (16.7 %)"]
    assert accuracy[2][0] == "hand-set baseline" and accuracy[2][1].endswith("(2)")
    variants = _table_after(md, "### Variants")
    assert ["0", "ALL, aux_weight = 0 (**untuned**)", "without L(W, a)"] in variants
    assert "Accuracy margin ±1.00 points (the study file's report.margin)." in md
    assert "Target validation accuracy 0.9000 (--target-acc)." in md
    assert "Target validation accuracy 0.8500 (--target-acc)." in md
    efficiency = _table_after(md, "### Efficiency", nth=1)  # the cnn's
    assert efficiency[1] == ["ALL", "0.5", "median 3 (5/6 reached)", "median 3 s"]
    assert efficiency[2] == ["tuned baseline", "0.5", "median 4 (6/6 reached)", "median 4 s"]


def test_each_architecture_s_conclusion_is_stated_once_first_in_its_section(
    written: Written,
) -> None:
    texts = [arch_conclusion(rep) for rep in written.report.archs]
    assert texts[0].startswith(
        "The ALL beats the tuned baseline by +5.00 points, which a plain model with as many "
        "parameters also achieves (ALL minus it +0.04 points, equivalent)"
    )
    assert texts[1].startswith("The ALL and the tuned baseline are equivalent within ±1.00 points")
    for rep, text in zip(written.report.archs, texts, strict=True):
        assert written.md.count(text) == 1, rep.arch
        assert f"## {rep.arch}\n\n**Conclusion.** {text}\n\n### Search budgets" in written.md
        assert written.page.count(html.escape(text, quote=False)) == 1, rep.arch
    assert written.md.count("**Conclusion.**") == 2


def test_the_budget_lines(written: Written) -> None:
    md = written.md
    assert (
        "compared with an equally tuned baseline (mlp: 6, 6, 6 trials per study; cnn: 4, 4, 4 "
        "trials per study; both search" in md
    )
    assert "3 independent searches of each arm (replicates), each picked on validation" in md
    assert "trained on 2 evaluation seeds and evaluated once on the 400-image test split" in md
    assert "13 claims are tested together (Holm-Shaffer" in md and "alpha = 0.05)" in md
    mlp = _table_after(md, "### Search budgets")
    assert mlp[0] == ["study", "finished trials", "random start-up", "guided", "trial-epochs", "seconds"]  # fmt: skip
    assert mlp[1:] == [
        [f"t/mlp{s}{arm}", "6", "3", "3", e, sec]
        for s in ("", "/r1", "/r2")
        for arm, e, sec in (("", "17", "34.5"), ("/tuned-baseline", "18", "21.3"))
    ]
    cnn = _table_after(md, "### Search budgets", nth=1)  # only replicate 0 has budgets
    assert cnn[1:] == [
        ["t/cnn", "4", "3", "1", "17", "34.5"],
        ["t/cnn/tuned-baseline", "4", "3", "1", "18", "21.3"],
    ]
    method = md.split("## Method\n\n", 1)[1]
    assert "Each arm was searched 3 time(s), independently" in method
    assert "The top 2 COMPLETE trials of each study" in method
    assert "selection seeds (2000, 2001; 2100, 2101; 2200, 2201)" in method
    assert "with each evaluation seed 1000, 1001 (none is" in method
    assert "with 2 candidates on validation" in method
    assert "The 13 tested claims' difference and equivalence tests" in method
    one = replace(written.report, replicates=1, seeds=(1000, 1001, 1002, 1003))
    text = render.markdown(render.document(one))
    assert "one search of each arm (re-tuning variance unmeasured: use --replicates >= 2)" in text
    assert "with each evaluation seed 1000..1003 (none is" in text


def test_notes_and_figures_are_in_report_md(written: Written) -> None:
    md = written.md
    assert "## Notes\n\nA report-wide note.\n" in md
    assert "Note: mlp note: a hand-written note." in md
    assert "![Test accuracy per variant (mlp)](test_acc_mlp.png)" in md


class _Tags(HTMLParser):
    """Opens and closes every tag; raises on a close that does not match."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []
        self.decl: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.decl.append(decl)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (self.open[-5:], tag)
        self.open.pop()


def _html_cell(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))


def test_report_html_is_a_well_formed_page_with_the_same_verdicts(written: Written) -> None:
    page = written.page
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert tags.decl == ["DOCTYPE html"] and tags.open == []
    assert tags.seen[:4] == ["html", "head", "meta", "title"] and "body" in tags.seen
    assert "<title>autoall report: fixed</title>" in page
    assert '<html lang="en">' in page and '<meta charset="utf-8">' in page
    rows = _verdict_rows(written.md)
    for title, cells in rows.items():
        row = "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in (title, *cells)) + "</tr>"
        assert row in page, title
    for verdict in ("supported", "opposite", "equivalent", "inconclusive", "undetermined"):
        assert page.count(f"<strong>{verdict}</strong>") == written.md.count(f"**{verdict}**")
    assert "**" not in page
    assert "adjusted p &lt; 0.0001" in page and "< 0.0001" not in page  # escaped, not markup
    data = base64.b64encode(PNG).decode("ascii")
    assert f'<img src="data:image/png;base64,{data}" alt="Test accuracy per variant (mlp)">' in page
    assert page.count("<h2>mlp</h2>") == page.count("<h2>cnn</h2>") == 1


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_results_csv_has_the_header_and_one_row_per_run_with_its_role(written: Written) -> None:
    header, rows = _csv(written.folder / "results.csv")
    assert header == list(RUN_COLUMNS) and "role" in header
    mlp, cnn = written.report.archs
    assert len(mlp.runs) == 56 and len(cnn.runs) == 18
    roles = [(r["arch"], r["role"]) for r in rows]
    assert roles == (
        [("mlp", "evaluation")] * 56 + [("mlp", "selection")] * 2 + [("mlp", "tuning")]
        + [("cnn", "evaluation")] * 18
    )  # fmt: skip
    ids = [r["mlflow_run_id"] for r in rows if r["role"] == "evaluation"]
    assert sorted(ids) == sorted(r.run_id for rep in (mlp, cnn) for r in rep.runs)  # each once
    assert ids[:8] == [
        "mlp-tuned-baseline-r0-s1000", "mlp-tuned-baseline-r0-s1001",
        "mlp-tuned-baseline-r1-s1000", "mlp-tuned-baseline-r1-s1001",
        "mlp-tuned-baseline-r2-s1000", "mlp-tuned-baseline-r2-s1001",
        "mlp-hand-set-r0-s1000", "mlp-hand-set-r0-s1001",
    ]  # fmt: skip
    by_id = {r["mlflow_run_id"]: r for r in rows}
    run = next(r for r in mlp.runs if r.run_id == "mlp-all-r1-s1001")
    row = by_id[run.run_id]
    assert (row["variant"], row["replicate"], row["seed"]) == ("all", "1", "1001")
    assert float(row["test_acc"]) == run.metrics["test_acc"]  # full precision
    assert float(row["gap"]) == run.gap
    assert (row["target_epoch"], row["target_seconds"]) == ("2", "2.02")
    assert (row["params_total"], row["params_all"]) == ("1200", "200")
    assert by_id["cnn-all-r1-s1001"]["target_epoch"] == ""  # never reached
    assert by_id["cnn-tuned-baseline-r0-s1000"]["arrangement"] == "cohort of 2"
    selection = by_id["sel-2001"]
    assert selection["role"] == "selection" and selection["final_val_acc"] == "0.92"
    assert selection["test_acc"] == selection["gap"] == selection["params_all"] == ""
    assert by_id["tune-0"]["role"] == "tuning"


def test_claims_csv_has_one_row_per_claim(written: Written) -> None:
    header, rows = _csv(written.folder / "claims.csv")
    assert header == list(CLAIM_COLUMNS)
    claims = written.report.claims
    assert [(r["arch"], r["claim"], r["verdict"]) for r in rows] == [
        (c.arch, c.key, c.verdict) for c in claims
    ]
    by = {(r["arch"], r["claim"]): r for r in rows}
    assert by[("mlp", "custom-loss")]["untuned"] == NO_AUX_UNTUNED
    assert by[("mlp", "accuracy")]["untuned"] == ""
    untested = by[("cnn", "parameters")]
    assert untested["effect"] == untested["adjusted_p"] == untested["p"] == ""
    assert untested["reason"] == "not run: no 'param-matched' variant (see the notes)"
    accuracy = next(c for c in claims if (c.arch, c.key) == ("mlp", "accuracy"))
    assert float(by[("mlp", "accuracy")]["adjusted_p"]) == accuracy.adjusted_p
    assert float(by[("mlp", "accuracy")]["effect"]) == accuracy.test.estimate.mean  # type: ignore[union-attr]
