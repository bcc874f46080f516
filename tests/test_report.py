"""`autoall report`: files, MLflow runs equal to results.csv, honest verdicts, reuse, the HTML
page in a real browser, and the errors that must leave nothing behind.

One tiny digits report (mlp, 2 epochs, 3 trials, 2 seeds, with the tuned baseline) is built once
for the module; its first attempt is interrupted on purpose, so continuing is tested too.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution

import autoall.report
from autoall.cli import main
from autoall.plots import param_importances
from autoall.report import FINAL_METRICS

SEEDS = 2
VARIANTS = ["baseline", "all", "ablation", "tuned-baseline"]
FIGURES = [
    "learning_curves",
    "test_acc",
    "optimisation_history",
    "param_importances",
    "best_so_far",
]


@dataclass
class Built:
    root: Path
    out: Path
    first_exit: int  # the interrupted attempt
    first_trained: int
    trained: int  # training runs of the attempt that finished
    rows: list[dict[str, str]]

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}")  # absolute path


def _report(*args: str) -> Any:
    return CliRunner().invoke(main, ["report", "study.yaml", "--seeds", str(SEEDS), *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread is fastest on a busy machine
    try:
        return _build(tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)


def _build(root: Path) -> Built:
    """Study, a report interrupted by Ctrl-C after 5 trainings, then the report that finishes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_study(root / "study.yaml", train={"epochs": 2}, n_trials=3)
        ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--no-tracking"])
        assert ran.exit_code == 0, ran.output

        real_train, calls = autoall.report.train, []

        def interrupting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 6:  # 3 tuning trials and 2 runs finished, then Ctrl-C
                raise KeyboardInterrupt
            return real_train(*args, **kwargs)

        mp.setattr(autoall.report, "train", interrupting)
        first = _report("--tuned-baseline")
        assert not (root / "reports").exists()  # nothing written half-way

        counted: list[int] = []
        mp.setattr(
            autoall.report, "train", lambda *a, **k: counted.append(1) or real_train(*a, **k)
        )
        result = _report("--tuned-baseline")
        assert result.exit_code == 0, result.output
        out = root / "reports" / "t"
        with (out / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
    return Built(root, out, first.exit_code, len(calls) - 1, len(counted), rows)


def test_an_interrupted_report_writes_nothing_and_the_rerun_continues(built: Built) -> None:
    assert built.first_exit == 130
    # 3 tuning trials, then 4 variants x 2 seeds; the 2 runs finished before Ctrl-C are reused
    assert built.first_trained == 5
    assert built.trained == 4 * SEEDS - 2


def test_every_file_is_written(built: Built) -> None:
    storage = f"sqlite:///{built.root}/autoall.db"
    values = {t.value for t in optuna.load_study(study_name="t/mlp", storage=storage).trials}
    figures = [f for f in FIGURES if f != "param_importances" or len(values) > 1]
    expected = {"report.md", "report.html", "results.csv"} | {f"{f}_mlp.png" for f in figures}
    assert {p.name for p in built.out.iterdir()} == expected
    assert all((built.out / name).stat().st_size > 0 for name in expected)
    skipped = "Note: Parameter importances of t/mlp skipped: every COMPLETE trial has the same"
    assert (skipped in (built.out / "report.md").read_text()) == (len(values) == 1)
    assert [p.name for p in built.out.parent.iterdir()] == ["t"]  # no temporary folder left
    assert [(r["variant"], r["seed"]) for r in built.rows] == [
        (v, str(s)) for v in VARIANTS for s in range(SEEDS)
    ]
    tuned = optuna.load_study(study_name="t/mlp/tuned-baseline", storage=storage).trials
    assert [t.state.name for t in tuned] == ["COMPLETE"] * 3  # the ALL study's budget, once


def test_param_importances_are_drawn_or_skipped_with_the_reason(tmp_path: Path) -> None:
    dists = {"x": FloatDistribution(1e-3, 1.0, log=True), "k": CategoricalDistribution(["a", "b"])}

    def study(values: list[float]) -> optuna.Study:
        s = optuna.create_study(study_name="s/mlp")
        for i, v in enumerate(values):
            params = {"x": 10 ** -(1 + i % 3), "k": "ab"[i % 2]}
            s.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=v))
        return s

    path = tmp_path / "importance.png"
    assert param_importances(study([0.9, 0.8, 0.85, 0.7]), path=path) is None
    assert path.stat().st_size > 0
    path.unlink()
    reason = param_importances(study([0.9, 0.9, 0.9]), path=path)
    assert reason is not None and "same value" in reason and not path.exists()
    reason = param_importances(study([0.9]), path=path)
    assert reason is not None and "at least 2 COMPLETE trials" in reason and not path.exists()


def test_results_csv_equals_the_mlflow_runs(built: Built) -> None:
    client = built.client()
    experiment = client.get_experiment_by_name("t")
    parents = client.search_runs([experiment.experiment_id], "tags.\"autoall.role\" = 'report'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert artifacts == {p.name for p in built.out.iterdir()}
    baseline = [float(r["test_acc"]) for r in built.rows if r["variant"] == "baseline"]
    target = sum(baseline) / len(baseline) - 0.005  # the default target
    assert f"Target validation accuracy: {target:.4f}" in (built.out / "report.md").read_text()
    for row in built.rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert (tags["arch"], tags["variant"], tags["seed"]) == (
            row["arch"],
            row["variant"],
            row["seed"],
        )
        assert len(tags["config_hash"]) == 16
        for key in FINAL_METRICS:
            assert float(row[key]) == run.data.metrics[key], key
        gap = run.data.metrics["train_eval_acc"] - run.data.metrics["test_acc"]
        assert float(row["gap"]) == pytest.approx(gap, abs=1e-12)
        seconds, val_acc = (
            _history(client, run.info.run_id, k) for k in ("epoch_seconds", "val_acc")
        )
        assert len(seconds) == len(val_acc) == 2  # one point per epoch
        reached = [e for e, acc in enumerate(val_acc, start=1) if acc >= target]
        assert row["target_epoch"] == (str(reached[0]) if reached else "")
        if reached:
            assert float(row["target_seconds"]) == pytest.approx(sum(seconds[: reached[0]]))
    hashes = {client.get_run(r["mlflow_run_id"]).data.tags["config_hash"] for r in built.rows}
    assert len(hashes) == len(built.rows)  # every run's settings differ


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_the_verdict_agrees_with_the_p_values_in_the_table(built: Built) -> None:
    md = (built.out / "report.md").read_text()
    verdict = md.split("\n\n")[1]  # the paragraph right under the title
    assert verdict.startswith("**mlp**") and f"n={SEEDS}" in verdict
    table = {
        cells[0]: cells
        for line in md.splitlines()
        if line.startswith("| ")
        and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 5
    }
    for label in ("ALL", "ablation (aux_weight=0)", "tuned baseline"):
        p_text = table[label][3]
        p = 0.0 if p_text.startswith("<") else float(p_text)
        sentence = re.search(
            rf"{re.escape(label[0].upper() + label[1:])} vs baseline: (.*?); P\(", verdict
        )
        assert sentence is not None, label
        assert f"Welch p = {p_text}," in sentence.group(1)
        assert ("not significant" in sentence.group(1)) == (p >= 0.05), sentence.group(1)
        assert "significant" in sentence.group(1)


def test_a_rerun_reuses_every_run_and_gives_the_same_results(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained although every run was finished")

    monkeypatch.chdir(built.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(autoall.report, "train", no_training)
    before = (built.out / "results.csv").read_text()
    result = _report("--tuned-baseline")
    assert result.exit_code == 0, result.output
    assert result.output.count("(reused)") == 4 * SEEDS
    assert (built.out / "results.csv").read_text() == before

    result = _report("--tuned-baseline", "--target-acc", "0.01", "--out", "elsewhere")
    assert result.exit_code == 0, result.output
    with (built.root / "elsewhere" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["mlflow_run_id"] for r in rows] == [r["mlflow_run_id"] for r in built.rows]
    assert {r["target_epoch"] for r in rows} == {"1"}  # any model beats 1 % after one epoch

    result = _report("--out", ".")  # a folder that holds more than a report is never replaced
    assert result.exit_code == 1 and "is not a report folder" in result.output
    assert (built.root / "study.yaml").exists()


def _chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing; `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return found


_PROBE = (
    '<script>window.addEventListener("load", () => { document.title = "W:" + '
    'Array.from(document.images, i => i.naturalWidth).join(","); });</script>'
)


def test_report_html_opens_in_chromium_with_every_image_loaded(
    built: Built, tmp_path: Path
) -> None:
    page = (built.out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) >= 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page  # self-contained
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in sources)
    assert embedded == sorted(p.read_bytes() for p in built.out.glob("*.png"))  # whole files
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    title = re.search(r"<title>W:([0-9,]*)</title>", dom)
    assert title is not None, dom[:500]
    widths = [int(w) for w in title.group(1).split(",")]
    assert len(widths) == len(sources) and all(w > 0 for w in widths), widths


def _nothing_written(root: Path) -> None:
    assert not (root / "reports").exists()
    assert not (root / "mlruns").exists()


def test_a_missing_study_is_a_clear_error_and_writes_nothing(workdir: Path) -> None:
    write_study(workdir / "study.yaml")
    result = _report()
    assert result.exit_code == 1
    assert "No Optuna storage at sqlite:///autoall.db" in result.output
    assert "autoall study run study.yaml" in result.output
    assert not (workdir / "autoall.db").exists()
    _nothing_written(workdir)

    optuna.create_study(study_name="other/mlp", storage="sqlite:///autoall.db")
    result = _report()
    assert result.exit_code == 1
    assert "No study 't/mlp' in sqlite:///autoall.db (studies there: other/mlp)" in result.output
    _nothing_written(workdir)

    result = CliRunner().invoke(main, ["report", "nosuch"])
    assert result.exit_code == 1 and "studies/nosuch.yaml" in result.output


def test_a_study_without_complete_trials_is_a_clear_error_and_writes_nothing(
    workdir: Path,
) -> None:
    (workdir / "studies").mkdir()
    write_study(workdir / "studies" / "t.yaml")
    study = optuna.create_study(study_name="t/mlp", storage="sqlite:///autoall.db")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    result = CliRunner().invoke(main, ["report", "t"])  # a name, with studies/t.yaml here
    assert result.exit_code == 1
    assert "Study 't/mlp' in sqlite:///autoall.db has no COMPLETE trial" in result.output
    assert "1 failed" in result.output and "autoall study run studies/t.yaml" in result.output
    _nothing_written(workdir)
