"""A secret in a storage or tracking URL appears nowhere: not in any command's output, not in
the MLflow store (params, tags, artifacts), not in the Optuna storage, not in a report or an
exported table. Every form a user may put it in: the URL's user-info, its query string, the
user-info of an MLflow tracking server's URL."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import MlflowServer, PostgresCluster, write_study
from mlflow import MlflowClient

from autoall.cli._main import main


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _files_holding(root: Path, secret: str) -> list[str]:
    """Every file under `root` whose bytes hold `secret` (SQLite files and their WAL too)."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


def _runs_holding(client: MlflowClient, secret: str) -> list[str]:
    found = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            data = json.dumps([run.data.params, run.data.tags, run.info.run_name])
            if secret in data:
                found.append(run.info.run_id)
    return found


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("form", ["user-info", "query"])
def test_a_storage_password_appears_nowhere(
    form: str, workdir: Path, postgres: PostgresCluster, postgres_db: str
) -> None:
    secret = postgres.password
    if form == "user-info":
        url = postgres_db
        masked = postgres_db.replace(f":{secret}@", ":***@")
    else:  # the form, with the plain scheme
        url = (
            postgres_db.replace(f"autoall:{secret}@", "autoall@").replace(
                "postgresql+psycopg2://", "postgresql://"
            )
            + f"?password={secret}"
        )
        masked = url.replace(f"password={secret}", "password=***")
    path = write_study(
        workdir / "s.yaml", n_trials=2, train={"epochs": 3}, report={"tuning_trials": 1}
    )
    out = _invoke("study", "run", str(path), "--storage", url, "--checkpoint-every", "0")
    assert f"Optuna storage: {masked}" in out
    out += _invoke("study", "status", "t", "--storage", url)
    out += _invoke("study", "list", "--storage", url)
    out += _invoke("study", "export", "t", "--storage", url, "-o", "trials.csv")
    out += _invoke("study", "export", "t", "--storage", url, "--format", "json")
    out += _invoke(
        "report", str(path), "--storage", url, "--seeds", "2", "--selection-seeds", "1",
        "--top-k", "1",
    )  # fmt: skip
    assert secret not in out
    assert (workdir / "reports" / "t" / "report.md").is_file()
    assert (workdir / "trials.csv").is_file()
    assert _files_holding(workdir, secret) == []  # MLflow store, artifacts, report, exports

    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert _runs_holding(client, secret) == []
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    parents = client.search_runs(
        [experiment.experiment_id], "tags.\"autoall.role\" = 'study'", max_results=10
    )
    assert {p.data.params["storage"] for p in parents} == {masked}  # said, but masked

    storage = optuna.storages.RDBStorage(postgres_db)  # everything Optuna holds
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        held = json.dumps(
            [study.user_attrs, storage.get_study_system_attrs(study._study_id)]
            + [[t.user_attrs, t.system_attrs, t.params] for t in study.trials],
            default=str,
        )
        assert secret not in held


@pytest.mark.slow
def test_a_token_in_the_tracking_server_url_appears_nowhere(
    workdir: Path, mlflow_server: MlflowServer
) -> None:
    token = "Tok3n-Secr3t-Value"
    url = mlflow_server.url.replace("http://", f"http://bob:{token}@")
    path = write_study(
        workdir / "s.yaml",
        name="tokentest",
        n_trials=2,
        train={"epochs": 3},
        report={"tuning_trials": 1},
    )
    out = _invoke("study", "run", str(path), "--tracking-uri", url)
    out += _invoke(
        "report", str(path), "--tracking-uri", url, "--seeds", "2", "--selection-seeds", "1",
        "--top-k", "1",
    )  # fmt: skip
    assert token not in out
    assert "bob:***@127.0.0.1" in out  # the report says where its runs are, masked
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("tokentest")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 2 * 2 + 2  # the studies' parents and trials
    report = client.get_experiment_by_name("tokentest report")  # the report's runs
    assert len(client.search_runs([report.experiment_id], max_results=1000)) > 2 * 2
    assert _runs_holding(client, token) == []
    child = next(r for r in runs if r.data.tags.get("optuna.trial_number") is not None)
    config = Path(client.download_artifacts(child.info.run_id, "config.yaml", str(workdir)))
    assert token not in config.read_text()
    assert (workdir / "reports" / "tokentest" / "report.md").is_file()
    assert _files_holding(workdir, token) == []
