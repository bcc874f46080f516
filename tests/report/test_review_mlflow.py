"""The report as an MLflow user meets it: the studies on the first screen of their experiment and
the report's runs in an experiment of its own, linked both ways; every claim's and variant's
figure on the report run; evaluation runs tagged for the UI's "Group by"; logged models in the
study's experiment under telling names; a quiet rerun; results.csv with every run of the report.

One tiny digits study (mlp, 3 epochs, 3 trials per study, `--log-models`), one report (2
evaluation seeds, top-1 selection on one seed, 1 re-tuning candidate) and its rerun, built once.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import browse, chromium, start_ui
from click.testing import CliRunner
from conftest import free_port, write_study
from mlflow import MlflowClient
from scipy import stats as scipy_stats

import autoall
from autoall.cli._main import main
from autoall.report._mlflow import metric_key

ROLES = {"evaluation": "report-run", "selection": "selection-run", "tuning": "tuning-run"}
BASELINE_ARM = ("tuned-baseline", "hand-set", "param-matched")  # no ALL in the network


@dataclass
class Built:
    root: Path
    study_output: str
    first: Any  # the report
    rerun: Any  # the report again: every run reused
    rows: list[dict[str, str]]  # results.csv
    claims: list[dict[str, str]]  # claims.csv

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def experiments(self) -> tuple[str, str]:
        """The ids of the studies' experiment `t` and the report's `t report`."""
        client = self.client()
        return (
            client.get_experiment_by_name("t").experiment_id,
            client.get_experiment_by_name("t report").experiment_id,
        )

    def report_run(self) -> Any:
        client = self.client()
        (run,) = client.search_runs([self.experiments()[1]], "tags.\"autoall.role\" = 'report'")
        return run

    def of(self, role: str) -> list[dict[str, str]]:
        return [r for r in self.rows if r["role"] == role]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy machine
    root = tmp_path_factory.mktemp("review-mlflow")
    options = ["--seeds", "2", "--top-k", "1", "--selection-seeds", "1"]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
                mp.delenv(name, raising=False)
            write_study(
                root / "study.yaml", train={"epochs": 3}, n_trials=3, report={"tuning_trials": 1}
            )
            ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--log-models"])
            assert ran.exit_code == 0, ran.output
            first = CliRunner().invoke(main, ["report", "study.yaml", *options])
            assert first.exit_code == 0, first.output
            # as in a fresh terminal: nothing but autoall turns MLflow's progress bars off
            mp.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
            rerun = CliRunner().invoke(main, ["report", "study.yaml", *options])
        out = root / "reports" / "t"
        with (out / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        with (out / "claims.csv").open() as f:
            claims = list(csv.DictReader(f))
    finally:
        torch.set_num_threads(threads)
    return Built(root, ran.output, first, rerun, rows, claims)


# -- 1. the studies on the first screen, the report one click away ---------------------------


def test_the_report_s_runs_are_an_experiment_of_their_own_linked_both_ways(built: Built) -> None:
    client = built.client()
    studies, reports = built.experiments()
    in_studies = client.search_runs([studies], max_results=1000)
    trials = [r for r in in_studies if "optuna.trial_number" in r.data.tags]
    parents = {r.info.run_name: r for r in in_studies if r.data.tags.get("autoall.role") == "study"}
    assert len(trials) == 2 * 3 and len(in_studies) == len(trials) + 2  # nothing of the report
    assert set(parents) == {"t/mlp", "t/mlp/tuned-baseline"}

    report = built.report_run()
    assert report.info.run_name == "t report" and report.info.status == "FINISHED"
    children = client.search_runs([reports], "tags.\"autoall.role\" != 'report'", max_results=1000)
    assert children and {r.data.tags["mlflow.parentRunId"] for r in children} == {
        report.info.run_id
    }
    here = f"#/experiments/{reports}/runs/{report.info.run_id}"
    for name, parent in parents.items():
        assert parent.data.tags["autoall.report_run"] == here, name
        assert parent.data.tags["autoall.report_experiment"] == "t report"
        assert f"]({here})" in parent.data.tags["mlflow.note.content"]  # its description links
    tags = report.data.tags
    assert tags["autoall.studies"] == f"#/experiments/{studies}/runs"
    for name, parent in parents.items():
        link = f"[{name}](#/experiments/{studies}/runs/{parent.info.run_id})"
        assert link in tags["mlflow.note.content"], name
    described = {
        e: client.get_experiment(e).tags["mlflow.note.content"] for e in (studies, reports)
    }
    assert f"[t report](#/experiments/{reports}/runs)" in described[studies]
    assert f"[t](#/experiments/{studies}/runs)" in described[reports]
    said = next(x for x in built.first.output.splitlines() if x.startswith("MLflow: "))
    assert f"report run {report.info.run_id} in experiment 't report'" in said


def test_autoall_ui_links_the_report_experiment_too(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoall.cli._servers import mlflow_ui

    monkeypatch.chdir(built.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    studies, reports = built.experiments()
    lines = mlflow_ui(port, None).lines
    assert f"  t: http://127.0.0.1:{port}/#/experiments/{studies}/runs" in lines
    assert f"  t report: http://127.0.0.1:{port}/#/experiments/{reports}/runs" in lines


@pytest.mark.slow
def test_the_study_experiment_s_first_screen_shows_every_study_parent_in_chromium(
    built: Built, tmp_path: Path
) -> None:
    browser = chromium()  # skips (or fails on CI) before a server starts
    assert browser
    port = free_port()
    proc = start_ui(built.root, port)
    base = f"http://127.0.0.1:{port}"
    studies, reports = built.experiments()
    try:
        first = browse(f"{base}/#/experiments/{studies}/runs", tmp_path / "profile")
        report = browse(f"{base}/#/experiments/{reports}/runs", tmp_path / "profile")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: autoall ui stops the server and its children
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert "Training runs" in first, first[:2000]
    for name in ("t/mlp", "t/mlp/tuned-baseline"):  # every study's parent, on the first screen
        assert f">{name}<" in first, f"{name} not in the study experiment's runs table"
    report_id = built.report_run().info.run_id
    assert report_id not in first  # the report's runs are not in the way ...
    assert f'href="#/experiments/{reports}/runs">t report</a>' in first  # ... but one click away
    assert ">t report<" in report and f"/runs/{report_id}" in report  # there, in its own
    assert f"t report: {base}/#/experiments/{reports}/runs" in out


# -- 2. the verdict in MLflow -------------------------------------------------------------------


def test_the_report_run_holds_every_claim_s_figures_and_verdict(built: Built) -> None:
    run = built.report_run()
    metrics, tags = run.data.metrics, run.data.tags
    columns = {
        "effect": "effect",
        "ci_low": "low",
        "ci_high": "high",
        "p_adj": "adjusted_p",
        "p_adj_equivalence": "adjusted_p_equivalence",
        "p_difference": "p_difference",
        "p_equivalence": "p_equivalence",
        "margin": "margin",
    }
    assert len(built.claims) >= 8
    tested = 0
    for claim in built.claims:
        key = metric_key(claim["arch"], claim["claim"])
        assert tags[f"{key}.verdict"] == claim["verdict"], key
        for figure, column in columns.items():
            if claim[column] == "":
                assert f"{key}.{figure}" not in metrics, (key, figure)
            else:
                assert metrics[f"{key}.{figure}"] == pytest.approx(float(claim[column])), (
                    key,
                    figure,
                )
        tested += claim["effect"] != ""
    assert tested >= 4  # the accuracy, gap and reduced-data claims at least
    assert "mlp.data-10pct.effect" in metrics  # 'data-10%': an MLflow key without '%'
    accuracy = next(c for c in built.claims if c["claim"] == "accuracy")
    assert tags["mlp.accuracy.verdict"] == accuracy["verdict"] != ""
    # the conclusion the report opens with, as a tag and in the run's description, once
    markdown = (built.root / "reports" / "t" / "report.md").read_text()
    assert tags["mlp.conclusion"] and tags["mlp.conclusion"] in markdown
    assert tags["mlflow.note.content"].count(tags["mlp.conclusion"]) == 1
    assert tags["mlflow.note.content"].count("**Conclusion**") == 1  # the rerun replaced it


def test_the_report_run_holds_every_variant_s_accuracy_over_seeds_and_replicates(
    built: Built,
) -> None:
    metrics = built.report_run().data.metrics
    by_variant: dict[str, list[float]] = {}
    for row in built.of("evaluation"):
        by_variant.setdefault(row["variant"], []).append(float(row["test_acc"]))
    assert {"all", "tuned-baseline", "hand-set", "all@10%"} <= set(by_variant)
    for variant, accs in by_variant.items():
        key = metric_key("mlp", variant)
        assert metrics[f"{key}.n"] == len(accs) == 2, variant  # one replicate, two seeds
        assert metrics[f"{key}.acc_mean"] == pytest.approx(statistics.fmean(accs)), variant
        if accs[0] == accs[1]:  # no spread: no interval
            assert f"{key}.acc_ci_low" not in metrics, variant
            continue
        assert metrics[f"{key}.acc_sd"] == pytest.approx(statistics.stdev(accs)), variant
        half = scipy_stats.t.ppf(0.975, 1) * statistics.stdev(accs) / math.sqrt(2)
        assert metrics[f"{key}.acc_ci_low"] == pytest.approx(statistics.fmean(accs) - half)
        assert metrics[f"{key}.acc_ci_high"] == pytest.approx(statistics.fmean(accs) + half)
    assert "mlp.all_at_10pct.acc_mean" in metrics  # 'all@10%' as a valid MLflow key


def test_each_run_is_tagged_with_its_variant_arm_replicate_and_seed(built: Built) -> None:
    client = built.client()
    uses = Counter(r["mlflow_run_id"] for r in built.rows)
    once = [r for r in built.rows if uses[r["mlflow_run_id"]] == 1]
    assert len(once) >= len(built.rows) - 4  # only the custom-loss ALL's runs may stand twice
    for row in once:
        tags = client.get_run(row["mlflow_run_id"]).data.tags
        assert tags["autoall.role"] == ROLES[row["role"]]
        assert tags["autoall.variant"] == tags["variant"] == row["variant"]
        assert tags["autoall.replicate"] == tags["replicate"] == row["replicate"]
        assert tags["autoall.seed"] == tags["seed"] == row["seed"]
        study = row["variant"].removeprefix("select-").removeprefix("tune-").split("@")[0]
        arm = "baseline" if study in BASELINE_ARM or study.startswith("baseline-") else "all"
        assert tags["autoall.arm"] == arm, row["variant"]
        if row["params_all"]:  # an evaluation run: the arm is whether its network has an ALL
            assert (int(row["params_all"]) > 0) == (arm == "all"), row["variant"]


# -- 3. logged models in the study's experiment, under telling names ---------------------------


def test_every_logged_model_is_in_the_study_experiment_under_a_telling_name(built: Built) -> None:
    import mlflow.pytorch

    client = built.client()
    studies, reports = built.experiments()
    everywhere = [e.experiment_id for e in client.search_experiments()]
    models = client.search_logged_models(experiment_ids=everywhere)
    assert {m.experiment_id for m in models} == {studies}
    assert client.search_logged_models(experiment_ids=["0"]) == []
    assert not (built.root / "mlruns" / "0").exists()  # nothing in the Default experiment
    trials = [r for r in client.search_runs([studies]) if "optuna.trial_number" in r.data.tags]
    logged = {  # --log-models: each new best trial of each study
        f"{r.data.tags['autoall.study'].replace('/', '-')}-trial{r.data.tags['optuna.trial_number']}"
        for r in trials
        if "autoall.model_id" in r.data.tags
    }
    assert {"t-mlp-trial0", "t-mlp-tuned-baseline-trial0"} <= logged
    winners = {"t-mlp-all-r0-seed1000", "t-mlp-baseline-r0-seed1000"}
    assert sorted(m.name for m in models) == sorted(logged | winners)
    for run in trials:
        if "autoall.model_id" in run.data.tags:
            model = client.get_logged_model(run.data.tags["autoall.model_id"])
            assert model.source_run_id == run.info.run_id and model.status.name == "READY"
    for name, variant in (("t-mlp-all", "all"), ("t-mlp-baseline", "tuned-baseline")):
        (version,) = client.search_model_versions(f"name = '{name}'")
        model = client.get_logged_model(version.source.removeprefix("models:/"))
        (row,) = [
            r for r in built.of("evaluation") if (r["variant"], r["seed"]) == (variant, "1000")
        ]
        assert (model.name, model.experiment_id) == (f"{name}-r0-seed1000", studies)
        assert model.source_run_id == row["mlflow_run_id"]
        assert client.get_run(row["mlflow_run_id"]).info.experiment_id == reports
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", built.uri)
        plain = mlflow.pytorch.load_model("models:/t-mlp-all/1")
    best = autoall.load_best("t-mlp-all", tracking_uri=built.uri)
    (row,) = [r for r in built.of("evaluation") if (r["variant"], r["seed"]) == ("all", "1000")]
    with torch.no_grad():
        found = (plain(best.test_x).argmax(1) == best.test_y).float().mean().item()
    assert abs(found - float(row["test_acc"])) <= 1e-6
    assert abs(best.accuracy() - float(row["test_acc"])) <= 1e-6


# -- 4. a quiet rerun ---------------------------------------------------------------------------


def test_a_rerun_reads_every_run_back_without_progress_bars(built: Built) -> None:
    out = built.rerun.output
    assert built.rerun.exit_code == 0, out
    assert out.count("(reused)") == len(built.of("evaluation"))  # every prediction read back
    assert "Downloading artifacts" not in out and "%|" not in out, out[:3000]
    assert "Traceback" not in out


# -- 5. results.csv: one row per run ------------------------------------------------------------


def test_results_csv_has_a_row_for_every_run_of_the_report_with_its_role(built: Built) -> None:
    client = built.client()
    report = built.report_run()
    children = client.search_runs(
        [built.experiments()[1]],
        f"tags.\"mlflow.parentRunId\" = '{report.info.run_id}'",
        max_results=1000,
    )
    assert {r.info.status for r in children} == {"FINISHED"}
    by_role: dict[str, set[str]] = {}
    for run in children:
        by_role.setdefault(run.data.tags["autoall.role"], set()).add(run.info.run_id)
    for role, tag in ROLES.items():
        ids = [r["mlflow_run_id"] for r in built.of(role)]
        assert set(ids) == by_role[tag], role
        if role != "evaluation":  # one row per run; an evaluation run may stand for two variants
            assert len(ids) == len(by_role[tag]), role
    assert len(built.rows) == sum(len(built.of(role)) for role in ROLES)
    assert built.of("selection") and built.of("tuning")
    assert {r["mlflow_run_id"] for r in built.rows} == {r.info.run_id for r in children}
    for row in built.of("selection") + built.of("tuning"):
        metrics = client.get_run(row["mlflow_run_id"]).data.metrics
        assert float(row["final_val_acc"]) == metrics["final_val_acc"]
        assert row["test_acc"] == "" and "test_acc" not in metrics  # validation only
