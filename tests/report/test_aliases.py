"""The registry's aliases follow the evidence: `champion` on the model the verdicts favour (the
rule, case by case), and in a real SQLite registry `best` and `champion` set, moved with one
line naming the old version, and held by exactly one of the two models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from autoall.report._aliases import Choice, Holder, choose, follow_verdicts, set_aliases
from autoall.report._conclusion import Cost
from autoall.report._models import Published
from autoall.report._types import ArchReport, Claim, Replicate, Report, RunRecord
from autoall.tracking._model_registry import ServingModel, log_model, register

ALL, BASE = "t-mlp-all", "t-mlp-baseline"
SMALL, BIG = Cost(1000, 2.0), Cost(1200, 1.0)


def test_supported_against_both_controls_makes_the_all_champion() -> None:
    assert choose("supported", "supported", BIG, SMALL) == Choice(
        "all", "the ALL beats the tuned baseline and the parameter-matched plain model"
    )


def test_equivalent_makes_the_cheaper_one_champion() -> None:
    assert choose("equivalent", "inconclusive", SMALL, BIG) == Choice(
        "all", "equivalent to the tuned baseline, and cheaper"
    )
    assert choose("equivalent", "supported", BIG, SMALL) == Choice(
        "baseline", "equivalent to the ALL, cheaper"
    )
    # as many parameters: fewer seconds decide
    assert choose("equivalent", "opposite", Cost(1000, 1.0), Cost(1000, 2.0)).kind == "all"
    assert choose("equivalent", "opposite", Cost(1000, 1.0), Cost(1000, 1.0)) == Choice(
        "baseline", "equivalent to the ALL, as cheap"
    )


def test_otherwise_the_baseline_is_champion() -> None:
    assert choose("supported", "equivalent", SMALL, BIG) == Choice(
        "baseline",
        "the ALL's gain is not shown to be more than size; parameters claim equivalent",
    )
    for verdict in ("opposite", "inconclusive", "undetermined"):
        assert choose(verdict, "supported", SMALL, BIG) == Choice(
            "baseline", f"the ALL is not shown better; accuracy claim {verdict}"
        )


@pytest.fixture
def registry(tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A SQLite store with t-mlp-all v1 and t-mlp-baseline v1 registered from runs that logged a
    tiny model; `add(name)` registers one more version from a new run."""
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model = ServingModel(net, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    example = np.zeros((2, 1, 8, 8), dtype=np.uint8)

    def add(name: str) -> str:
        run = client.create_run(experiment).info.run_id
        logged = log_model(uri, run, model, example=example, num_classes=10)
        return register(uri, client, name=name, logged=logged, run_id=run, tags={})

    assert (add(ALL), add(BASE)) == ("1", "1")
    return client, add


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_the_aliases_move_with_the_verdict_and_say_from_which_version(registry: Any) -> None:
    client, add = registry
    favour_base = Choice("baseline", "the ALL is not shown better; accuracy claim inconclusive")
    lines = set_aliases(
        client, all_model=Holder(ALL, "1"), baseline_model=Holder(BASE, "1"), choice=favour_base
    )
    assert lines == [
        f"best: {ALL} v1",
        f"best: {BASE} v1",
        f"champion: {BASE} v1 (the ALL is not shown better; accuracy claim inconclusive)",
    ]
    assert str(client.get_model_version_by_alias(BASE, "champion").version) == "1"

    assert add(ALL) == "2"  # a later report registers a new ALL winner, and now it wins
    favour_all = Choice("all", "the ALL beats the tuned baseline and the parameter-matched model")
    lines = set_aliases(
        client, all_model=Holder(ALL, "2"), baseline_model=Holder(BASE, "1"), choice=favour_all
    )
    assert lines == [
        f"best: {ALL} v1 -> {ALL} v2",
        f"champion: {BASE} v1 -> {ALL} v2 ({favour_all.reason})",
    ]
    assert _aliases(client, ALL) == {"best": "2", "champion": "2"}
    assert _aliases(client, BASE) == {"best": "1"}  # exactly one holds it

    again = set_aliases(  # nothing changed: only where the champion is
        client, all_model=Holder(ALL, "2"), baseline_model=Holder(BASE, "1"), choice=favour_all
    )
    assert again == [f"champion: {ALL} v2 ({favour_all.reason})"]

    # the favoured model was not registered this time: nobody holds champion
    gone = set_aliases(
        client, all_model=Holder(ALL, "2"), baseline_model=Holder(BASE, None), choice=favour_base
    )
    assert gone == [
        f"champion: none (the evidence favours {BASE}: {favour_base.reason}; but this report "
        "registered no version of it)"
    ]
    assert _aliases(client, ALL) == {"best": "2"}
    assert _aliases(client, BASE) == {"best": "1"}


def _claim(key: str, verdict: str) -> Claim:
    comparator = "param-matched" if key == "parameters" else "tuned-baseline"
    return Claim(key, "mlp", key, "all", comparator, "test_acc", +1, verdict=verdict)


def _report(verdicts: dict[str, str]) -> Report:
    def run(variant: str, params: int) -> RunRecord:
        metrics = {"params_total": float(params), "wall_seconds": 1.0, "test_acc": 0.9}
        return RunRecord("mlp", variant, 1000, f"run-{variant}", metrics, [], [], None, False)

    study = optuna.create_study()
    rep = ArchReport("mlp", [Replicate(0, study, study, 3, {})])
    rep.runs = [run("all", 1200), run("tuned-baseline", 1000)]
    rep.claims = [_claim(k, v) for k, v in verdicts.items()]
    return Report(
        name="t", path="t.yaml", data="digits", test_size=360, archs=[rep], seeds=(1000,),
        selection_seeds=((2000,),), top_k=1, alpha=0.05, tracking_uri="", parent_run_id="p",
    )  # fmt: skip


def test_the_report_sets_the_aliases_from_its_verdicts_and_notes_them(registry: Any) -> None:
    client, _ = registry
    published = [
        Published(ALL, "mlp", "all", "run-all", 3, version="1"),
        Published(BASE, "mlp", "tuned-baseline", "run-tuned-baseline", 5, version="1"),
    ]
    said: list[str] = []
    report = _report({"accuracy": "equivalent", "parameters": "inconclusive"})
    follow_verdicts(report, published, client, said.append)
    assert said == [
        f"mlp: best: {ALL} v1",
        f"mlp: best: {BASE} v1",
        f"mlp: champion: {BASE} v1 (equivalent to the ALL, cheaper)",  # 1,000 parameters
    ]
    assert report.archs[0].notes[-1] == (
        f"Registry alias champion: {BASE} v1 (equivalent to the ALL, cheaper)."
    )
    said.clear()
    report = _report({"accuracy": "supported", "parameters": "supported"})
    follow_verdicts(report, published, client, said.append)
    assert said == [
        f"mlp: champion: {BASE} v1 -> {ALL} v1 (the ALL beats the tuned baseline and the "
        "parameter-matched plain model)"
    ]


def test_a_registry_that_refuses_is_said_not_raised(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{blocked / 'r.db'}")
    published = [
        Published(ALL, "mlp", "all", "run-all", 3, version="1"),
        Published(BASE, "mlp", "tuned-baseline", "run-tuned-baseline", 5, version="1"),
    ]
    said: list[str] = []
    report = _report({"accuracy": "supported", "parameters": "supported"})
    follow_verdicts(report, published, client, said.append)
    (line,) = said
    assert line.startswith("mlp: the aliases best and champion were not set: "), line
    assert report.archs[0].notes == [f"Registry alias {line.removeprefix('mlp: ')}."]


def test_the_favoured_model_is_deployable_as_name_arch_at_champion(registry: Any) -> None:
    client, _ = registry
    uri = client.tracking_uri

    def published(name: str, variant: str) -> Published:
        v = client.get_model_version(name, "1")  # its source: models:/<model_id>
        model_id = v.source.removeprefix("models:/")
        return Published(name, "mlp", variant, v.run_id, 1, model_id=model_id, version="1")

    pubs = [published(ALL, "all"), published(BASE, "tuned-baseline")]
    said: list[str] = []
    follow_verdicts(_report({"accuracy": "inconclusive"}), pubs, client, said.append, uri)
    assert said[-1] == f"mlp: champion: t-mlp v1 (= {BASE} v1)"
    champion = client.get_model_version_by_alias("t-mlp", "champion")
    assert champion.source == f"models:/{pubs[1].model_id}" and champion.run_id == pubs[1].run_id
    assert champion.tags["autoall.champion_of"] == f"{BASE} v1"

    said.clear()  # the verdict changes: the deployable name follows, from which version it says
    verdicts = {"accuracy": "supported", "parameters": "supported"}
    follow_verdicts(_report(verdicts), pubs, client, said.append, uri)
    assert said[-1] == f"mlp: champion: t-mlp v1 -> t-mlp v2 (= {ALL} v1)"
    assert client.get_model_version_by_alias("t-mlp", "champion").run_id == pubs[0].run_id

    said.clear()  # the same evidence again: no new version, nothing moves
    follow_verdicts(_report(verdicts), pubs, client, said.append, uri)
    assert not any("t-mlp v" in line for line in said)
    assert len(client.search_model_versions("name = 't-mlp'")) == 2
