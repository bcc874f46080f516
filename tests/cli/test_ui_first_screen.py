"""`autoall ui`'s studies link: every study parent on the first screen of the MLflow UI, however
many trial runs are newer than the parents (the plain runs table shows the newest 100 runs, and a
parent only when one of its trials is among them).

A store made with MlflowClient directly (no training): experiment `digits` with 4 study parents,
then 150 trial runs nested below them in turn (38 each, the last parent 36), so the newest 100
runs hold no trial of the first parent; and an experiment `other` with no study parent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from _helpers import browse, chromium, start_ui
from conftest import free_port
from mlflow import MlflowClient

from autoall.cli._servers import _experiment_links
from autoall.report._mlflow import report_experiment_note, study_experiment_note
from autoall.tracking._store import studies_link

PARENTS = [
    "digits/mlp",
    "digits/mlp/tuned-baseline",
    "digits/mlp/r1",
    "digits/mlp/tuned-baseline/r1",
]
FILTER = "searchFilter=tags.%22autoall.role%22%20%3D%20%27study%27"


def _store(root: Path, template: Path, trials: int) -> dict[str, str]:
    """root/mlruns/mlflow.db: `digits` (the study parents, then `trials` trials below them in
    turn) and `other` (one run, no study); the experiments' ids by name."""
    (root / "mlruns").mkdir(parents=True)
    shutil.copyfile(template, root / "mlruns" / "mlflow.db")
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    digits = client.create_experiment("digits")
    other = client.create_experiment("other")
    client.set_terminated(client.create_run(other, run_name="a train run").info.run_id)
    parents = []
    for name in PARENTS:
        run = client.create_run(digits, run_name=name, tags={"autoall.role": "study"})
        client.set_terminated(run.info.run_id)
        parents.append(run.info.run_id)
    for i in range(trials):  # each newer than every parent
        parent = parents[min(i // 38, len(parents) - 1)]
        run = client.create_run(digits, run_name=f"trial-{i}", tags={"mlflow.parentRunId": parent})
        client.set_terminated(run.info.run_id)
    return {"digits": digits, "other": other}


def test_the_studies_link_is_printed_only_for_an_experiment_with_study_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
) -> None:
    ids = _store(tmp_path, empty_store, trials=2)
    monkeypatch.chdir(tmp_path)
    base = "http://127.0.0.1:5000/#/experiments"
    assert _experiment_links("sqlite:///mlruns/mlflow.db", 5000) == [  # the newest first
        f"  other: {base}/{ids['other']}/runs",
        f"  digits: {base}/{ids['digits']}/runs",
        f"  digits studies: {base}/{ids['digits']}/runs?{FILTER}",
    ]


def test_both_experiment_descriptions_link_the_studies_without_their_trials() -> None:
    link = f"#/experiments/7/runs?{FILTER}"
    assert studies_link("7") == link
    assert f"[every study, without its trials]({link})" in study_experiment_note(
        "digits.yaml", ("digits report", "8"), "7"
    )
    note = report_experiment_note(("digits", "7"))
    assert f"[digits](#/experiments/7/runs) ([every study, without its trials]({link}))" in note


@pytest.mark.slow
def test_the_studies_link_shows_every_study_parent_on_the_first_screen_in_chromium(
    tmp_path: Path, empty_store: Path
) -> None:
    chromium()  # skips (or fails on CI) before a server starts
    ids = _store(tmp_path, empty_store, trials=150)
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = start_ui(tmp_path, port, stdout=out)
    base = f"http://127.0.0.1:{port}"
    try:
        lines = log.read_text().splitlines()
        plain = f"{base}/#/experiments/{ids['digits']}/runs"
        assert f"  digits: {plain}" in lines
        (link,) = [x.split(": ", 1)[1] for x in lines if x.startswith("  digits studies: ")]
        # a profile each: the UI keeps an experiment's last filter in the browser's storage
        first = browse(plain, tmp_path / "plain")
        studies = browse(link, tmp_path / "studies")
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # autoall ui stops the server and its children
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Training runs" in first and "Training runs" in studies, studies[:2000]
    shown = [name for name in PARENTS if f">{name}<" in first]
    assert shown == PARENTS[1:]  # the plain table: the first study is past the newest 100 runs
    for name in PARENTS:
        assert f">{name}<" in studies, f"{name} not on the studies link's first screen"
    assert "tags.&quot;autoall.role&quot; = 'study'" in studies  # the filter, in the search box
