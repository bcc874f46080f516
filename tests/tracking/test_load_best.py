"""`autoall.load_best` is safe and read-only, and its model behaves like a module.

In a real SQLite registry: a version logged as a pickle (whose unpickling would run code) and
one that brings code of its own are refused before anything of them is loaded; a version is
found by number, by `name@alias` or by `alias=`; `.eval()` works on the model `load_best`
gives (and says what plain `mlflow.pytorch.load_model` gives). In an empty folder, `load_best`
and `autoall study status` say where they looked and create nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pytorch
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from torch import nn

import autoall
from autoall.cli._main import main
from autoall.tracking._model_registry import (
    LoggedModel,
    ServingModel,
    evaluable,
    log_model,
    register,
)

NAME = "t-mlp-all"
DATA_TAGS = {"data.name": "digits", "data.val_fraction": "0.25", "data.split_seed": "0"}
PICKLE_MESSAGE = (
    f"'{NAME}' version 2 is not a torch.export (pt2) model; autoall loads no pickled model "
    "(loading one runs its code), nor one that brings code of its own."
)


class Trap(nn.Module):
    """A model whose unpickling makes the folder `marker`: proof that its code ran."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float().flatten(1))

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def _net() -> ServingModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return ServingModel(net, torch.full((1, 1, 1, 1), 4.0), torch.full((1, 1, 1, 1), 6.0))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Any:
    """t-mlp-all v1: a pt2 model as autoall logs it; v2: the same run's pickled Trap; and
    t-mlp-code v1: a pt2 model logged with code of its own. Every version has the data tags."""
    root = tmp_path_factory.mktemp("load-best")
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t")
    example = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    run = client.create_run(experiment).info.run_id
    logged = log_model(uri, run, _net(), example=example, num_classes=10)
    assert register(uri, client, name=NAME, logged=logged, run_id=run, tags=DATA_TAGS) == "1"
    marker = root / "pickle-ran"
    code = root / "helper.py"
    code.write_text("VALUE = 1\n")
    with _use_tracking_uri(uri):
        trap_run = client.create_run(experiment).info.run_id
        trap = mlflow.pytorch.log_model(
            Trap(marker),
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],  # no inference of requirements: it would load the model
            run_id=trap_run,
        )
        code_run = client.create_run(experiment).info.run_id
        coded = mlflow.pytorch.log_model(
            _net(),
            name="model",
            serialization_format="pt2",
            input_example=example,
            pip_requirements=["torch"],
            code_paths=[str(code)],
            run_id=code_run,
        )
    for name, info, run_id in ((NAME, trap, trap_run), ("t-mlp-code", coded, code_run)):
        model = LoggedModel(info.model_id, f"models:/{info.model_id}")
        register(uri, client, name=name, logged=model, run_id=run_id, tags=DATA_TAGS)
    assert not marker.exists()  # logging it ran nothing
    return {"uri": uri, "client": client, "marker": marker}


def test_a_pickled_version_is_refused_before_its_code_runs(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow would load it
    with pytest.raises(ValueError) as caught:
        autoall.load_best(NAME, tracking_uri=store["uri"])  # the latest: version 2
    assert str(caught.value) == PICKLE_MESSAGE
    assert not store["marker"].exists()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"  # the user's setting kept
    # the trap is real: plain MLflow, allowed to unpickle, runs its code
    with _use_tracking_uri(store["uri"]), pytest.raises(AttributeError):  # the trap gives None
        mlflow.pytorch.load_model(f"models:/{NAME}/2")
    assert store["marker"].is_dir()


class Sprung:
    """Unpickled, it makes the folder `marker` (a pt2 archive's sample inputs are unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def test_a_pt2_archive_with_a_pickled_record_is_refused_before_its_code_runs(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1's files with the archive's sample inputs replaced by a pickle that runs code,
    logged as t-mlp-crafted version 1."""
    client, uri, marker = store["client"], store["uri"], tmp_path / "sprung"
    with _use_tracking_uri(uri):
        folder = Path(
            mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "m"))
        )
    archive = folder / "data" / "model.pt2"
    payload = io.BytesIO()
    torch.save(Sprung(marker), payload)
    with zipfile.ZipFile(archive) as old:
        records = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(archive, "w") as new:
        for info, data in records:
            sample = info.filename.endswith("sample_inputs/model.pt")
            new.writestr(info, payload.getvalue() if sample else data)
    assert any(i.filename.endswith("sample_inputs/model.pt") for i, _ in records)
    run = client.create_run(client.get_experiment_by_name("t").experiment_id).info.run_id
    crafted = client.create_logged_model(client.get_experiment_by_name("t").experiment_id)
    client.log_model_artifacts(crafted.model_id, str(folder))
    client.finalize_logged_model(crafted.model_id, "READY")
    logged = LoggedModel(crafted.model_id, f"models:/{crafted.model_id}")
    register(uri, client, name="t-mlp-crafted", logged=logged, run_id=run, tags=DATA_TAGS)

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow would load it
    with pytest.raises(ValueError) as caught:
        autoall.load_best("t-mlp-crafted", tracking_uri=uri)
    assert str(caught.value) == (
        "'t-mlp-crafted' version 1 is a torch.export (pt2) archive with pickled records, which "
        "would run code when loaded; autoall loads no pickled model."
    )
    assert not marker.exists()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"


def test_a_version_that_brings_its_own_code_is_refused(store: Any) -> None:
    with pytest.raises(ValueError, match=r"^'t-mlp-code' version 1 is not a torch.export \(pt2"):
        autoall.load_best("t-mlp-code", tracking_uri=store["uri"])


def test_the_model_load_best_gives_has_eval_and_refuses_train(store: Any) -> None:
    best = autoall.load_best(NAME, tracking_uri=store["uri"], version="1")
    x = best.test_x[:16]
    assert best.model.eval() is best.model and best.model.train(False) is best.model
    assert best.model.training is False
    assert all(not m.training for m in best.model.modules())
    with torch.no_grad():
        assert torch.equal(best.model(x), _net()(x))  # the logged weights, eval mode or not
    with pytest.raises(NotImplementedError, match="traced in eval mode .* cannot be put in "):
        best.model.train()


def test_plain_mlflow_gives_a_module_whose_eval_raises_and_evaluable_fixes_it(store: Any) -> None:
    with _use_tracking_uri(store["uri"]):
        plain = mlflow.pytorch.load_model(f"models:/{NAME}/1")
    with pytest.raises(NotImplementedError, match=r"Calling eval\(\) is not supported yet\."):
        plain.eval()  # what registry's docstring says plain MLflow gives
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        before = plain(x)
        assert evaluable(plain).eval() is plain
        assert torch.equal(plain(x), before)


def test_a_version_by_alias_in_the_name_or_as_an_argument(store: Any) -> None:
    client, uri = store["client"], store["uri"]
    client.set_registered_model_alias(NAME, "champion", "1")
    assert autoall.load_best(f"{NAME}@champion", tracking_uri=uri).version == "1"
    assert autoall.load_best(NAME, tracking_uri=uri, alias="champion").version == "1"
    with _use_tracking_uri(uri):  # MLflow's own alias URI names the same version
        assert mlflow.pytorch.load_model(f"models:/{NAME}@champion") is not None
    with pytest.raises(ValueError) as caught:
        autoall.load_best(f"{NAME}@best", tracking_uri=uri)
    assert str(caught.value) == f"'{NAME}' has no alias 'best'; its aliases: champion (v1)."
    with pytest.raises(ValueError, match=r"^Pass version or alias, not both \(got '1' and 'x'\)"):
        autoall.load_best(f"{NAME}@x", tracking_uri=uri, version="1")
    with pytest.raises(ValueError, match=r"^alias='best' contradicts the name's alias 'champion'"):
        autoall.load_best(f"{NAME}@champion", tracking_uri=uri, alias="best")
    with pytest.raises(ValueError, match=r"^name must be <model> or <model>@<alias>, but got 'x@'"):
        autoall.load_best("x@", tracking_uri=uri)


def test_load_best_in_an_empty_folder_says_where_it_looked_and_creates_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    db = workdir.resolve() / "mlruns" / "mlflow.db"
    with pytest.raises(ValueError) as caught:
        autoall.load_best("digits-mlp-all")
    assert str(caught.value) == (
        f"No MLflow store at sqlite:///{db} (no file {db}); pass tracking_uri= (or set "
        "MLFLOW_TRACKING_URI) to the store `autoall report` wrote, e.g. "
        "sqlite:///<project>/mlruns/mlflow.db, or run from that project's folder."
    )
    assert list(workdir.iterdir()) == []


def test_a_registry_file_that_does_not_exist_is_not_created(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{registry}")
    with pytest.raises(ValueError, match=rf"^No MLflow model registry at sqlite:///{registry} "):
        autoall.load_best(NAME, tracking_uri=store["uri"])
    assert list(tmp_path.iterdir()) == []


def test_study_status_with_no_storage_file_says_what_to_pass_and_creates_nothing(
    workdir: Path,
) -> None:
    write_study(workdir / "x.yaml")
    result = CliRunner().invoke(main, ["study", "status", "x.yaml"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: No Optuna storage at sqlite:///autoall.db (no file autoall.db); pass --storage "
        "(or set AUTOALL_STORAGE) to the storage the studies were run with."
    )
    assert [p.name for p in workdir.iterdir()] == ["x.yaml"]
