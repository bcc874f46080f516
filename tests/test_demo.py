"""`make demo`, the README's first command: the digits mlp study and its tuned baseline in 2
replicates, their summary, then the report, in an empty folder (here with 2 trials and 2 seeds
and one re-tuning candidate to stay short)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_demo_runs_both_studies_and_writes_an_honest_report(workdir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoall.cli",
            "demo",
            "--n-trials",
            "2",
            "--seeds",
            "2",
            "--tuning-trials",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "demo finished in" in out and "autoall ui" in out

    names = ("digits/mlp", "digits/mlp/tuned-baseline", "digits/mlp/r1",
             "digits/mlp/tuned-baseline/r1")  # fmt: skip
    for name in names:  # the equal budget, met in both replicates
        study = optuna.load_study(study_name=name, storage="sqlite:///autoall.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"], name
        assert {"lr", "weight_decay"} <= set(study.trials[0].params)

    report = workdir / "reports" / "digits"
    markdown = (report / "report.md").read_text()
    assert "## Verdicts" in markdown
    # never overclaims with 2 replicates, and says so before training, with what would do
    assert "**Before training:** A verdict needs an effect of more than" in markdown
    assert "2 replicates (df = 1)" in markdown and "replicates bring it under 4.0" in markdown
    assert "### Search budgets" in markdown and "### Re-tuned controls" in markdown
    assert (report / "report.html").is_file() and (report / "results.csv").is_file()
    with (report / "claims.csv").open() as f:
        claims = list(csv.DictReader(f))
    assert len(claims) >= 10 and {c["arch"] for c in claims} == {"mlp"}
    assert {c["verdict"] for c in claims} <= {"inconclusive", "undetermined"}
    accuracy = next(c for c in claims if c["claim"] == "accuracy")
    assert (accuracy["replicates"], accuracy["seeds"], accuracy["df"]) == ("2", "2", "1")

    from mlflow import MlflowClient

    # an absolute URI: MLflow caches a store per URI in this process, and a relative one would
    # hand later tests this folder's database
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    registered = {m.name for m in client.search_registered_models()}
    assert {"digits-mlp-all", "digits-mlp-baseline"} <= registered
