"""`make demo`, the README's first command: studies/demo.yaml (the digits mlp study and its tuned
baseline in 2 replicates), their summary, then the report, in an empty folder (here with 2 trials
and 2 seeds and one re-tuning candidate to stay short); then the next steps it prints, in order."""

from __future__ import annotations

import csv
import os
import shlex
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

    names = ("demo/mlp", "demo/mlp/tuned-baseline", "demo/mlp/r1",
             "demo/mlp/tuned-baseline/r1")  # fmt: skip
    for name in names:  # the equal budget, met in both replicates
        study = optuna.load_study(study_name=name, storage="sqlite:///autoall.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"], name
        assert {"lr", "weight_decay"} <= set(study.trials[0].params)

    report = workdir / "reports" / "demo"
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
    assert {"demo-mlp-all", "demo-mlp-baseline"} <= registered

    # the README's "first ten minutes", in order, as a user types them after the demo (the
    # report with the demo's overrides; `autoall ui` is tested in test_servers): the demo
    # printed the same first three; the report reruns without training and without noise
    readme = (ROOT / "README.md").read_text().split("## The first ten minutes", 1)[1]
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [x.split("  #")[0].strip() for x in block.splitlines() if x.strip()]
    lines = out.splitlines()
    steps = lines[lines.index(next(x for x in lines if x.startswith("demo finished in"))) + 1 :]
    overrides = " --seeds 2 --tuning-trials 1"
    printed = [x.split("  #")[0].strip().replace(f"{ROOT}/", "") for x in steps[:3]]
    assert printed == [commands[0], commands[1] + overrides, commands[2]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    said = {}
    for command in commands[1:]:
        args = [a.replace("studies/", f"{ROOT}/studies/") for a in shlex.split(command)]
        if args[0] == "autoall":
            args = [sys.executable, "-m", "autoall.cli", *args[1:]]
            args += overrides.split() if args[3] == "report" else []
        else:
            args[0] = sys.executable
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        said[command.split()[1]] = proc.stdout + proc.stderr
        assert proc.returncode == 0, (command, said)
        assert "Traceback" not in said[command.split()[1]], command
    report_out = said["report"]
    evaluated = [x for x in report_out.splitlines() if ": test_acc " in x]
    assert evaluated and all(x.endswith("(reused)") for x in evaluated), report_out
    assert "Downloading artifacts" not in report_out and "%|" not in report_out
    assert 0.5 < float(said["-c"].strip()) <= 1.0  # the champion's test accuracy
    assert "demo/mlp/tuned-baseline/r1" in said["study"]
    assert "validation: 360 images" in said["train"]
