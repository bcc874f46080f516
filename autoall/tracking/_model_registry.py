"""Trained models in MLflow: logged self-contained, registered once per run, loaded in one call.

A logged model takes a data set's images exactly as autoall holds them and returns logits:

    x: uint8 (B, C, H, W), the data set's own units (0..255; digits 0..16)
    logits = net((x.float() - mean) / std)        # float32 (B, classes)

with `mean` and `std` (1, C, 1, 1) the train split's, kept inside as buffers (`ServingModel`).
It is a float32 CPU copy in eval mode, saved by `mlflow.pytorch.log_model` (MLflow 3's logged
models) as a `torch.export` program ("pt2": a traced graph, no pickle, nothing of autoall needed
to load it), with a signature and an input example. So

    model = mlflow.pytorch.load_model("models:/<name>/latest")
    accuracy = (model(test_x).argmax(1) == test_y).float().mean()

reproduces the test accuracy of the run that trained it, with `test_x, test_y` the test split as
`autoall.training._data.load_data` gives it; `load_best(name)` does both. (A run trained on CUDA under bf16
autocast was evaluated in bf16; its float32 copy can differ by a few test images, and says so in
its version tag `model_test_acc`.)

What `mlflow.pytorch.load_model` gives for such a model is torch.export's module of the program
(a `torch.fx.GraphModule`, already in eval mode: the graph was traced so), whose `.eval()` and
`.train()` raise `NotImplementedError: Calling eval() is not supported yet.` That comes from
torch at load time, whatever was logged. `load_best` returns it through `evaluable`, which makes
`.eval()` return the model and `.train()` say why it cannot train; `evaluable(model)` does the
same for a model loaded with plain MLflow.

The report sets two aliases on each registered model (autoall/report/_aliases.py): `best`, the version it
registered, and `champion`, on whichever of `-all` and `-baseline` the verdicts favour, and on
`<name>-<arch>`, the name to deploy: `models:/<name>-<arch>@champion` loads the favoured model,
`models:/<name>-<arch>-all@champion` only when the evidence favours the ALL, and
`load_best("<name>-<arch>@champion")` or `load_best(name, alias="champion")` likewise.
`load_best` loads only what autoall logs: a pt2 program with no code of its own (a pickled
version is refused before anything of it runs), and it never creates a store.

Registered names: `<study file name>-<arch>-all` for the ALL winner, `-baseline` for the tuned
baseline (`registered_name`). `register` makes at most one version per run, whatever the reruns.
"""

from __future__ import annotations

import contextlib
import copy
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autoall.config import KINDS, Kind
from autoall.errors import InvalidValue
from autoall.tracking._safe_model import check_stores_exist, load_pt2
from autoall.tracking._safe_model import (
    evaluable as evaluable,  # for a model loaded with plain MLflow
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autoall.training import DeviceData

ARTIFACT_NAME = "model"  # the logged model's name within its run
_EVAL_BATCH = 2048  # as TrainConfig.eval_batch_size: the same float sums as the run's evaluation


class ServingModel(nn.Module):
    """`net` with the data set's normalisation in front: uint8 images in, logits out.

    forward(x): x uint8 (B, C, H, W) -> net((x.float() - mean) / std), float32 (B, classes);
    `mean`, `std` float32 (1, C, 1, 1), the train split's (`DeviceData.mean`, `.std`).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().float().cpu().clone())
        self.register_buffer("std", std.detach().float().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)  # type: ignore[no-any-return]


def serving_copy(model: nn.Module, data: DeviceData) -> ServingModel:
    """A float32 CPU copy of the trained `model` in eval mode, behind `data`'s normalisation."""
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    net = net.to(memory_format=torch.contiguous_format)  # channels_last on CUDA: plain on CPU
    return ServingModel(net, data.mean, data.std).eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of `x` (uint8 (N, C, H, W)) whose arg-max logit is `y` (int64 (N,)), in batches
    of 2,048 like the report's evaluation."""
    correct = 0
    with torch.no_grad():
        for i in range(0, int(y.shape[0]), _EVAL_BATCH):
            logits = model(x[i : i + _EVAL_BATCH])
            correct += int((logits.argmax(dim=1) == y[i : i + _EVAL_BATCH]).sum())
    return correct / max(int(y.shape[0]), 1)


def registered_suffix(kind: str) -> str:
    """What the registered name of a study `kind`'s model ends in: `-` and the kind's value,
    `-all` (`Kind.ALL`) or `-baseline` (`Kind.BASELINE`)."""
    if kind not in KINDS:
        raise InvalidValue(f"kind must be one of {', '.join(KINDS)}, but got {kind!r}.")
    return f"-{Kind(kind).value}"


def registered_name(study: str, arch: str, kind: str) -> str:
    """`<study>-<arch>-all` (kind "all") or `<study>-<arch>-baseline` (kind "baseline");
    '/' and ':' (a factory path) become '-'."""
    name = f"{study}-{arch}{registered_suffix(kind)}"
    return name.replace("/", "-").replace(":", "-")


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent calls (log_model, models:/ URIs) against `uri`, restored afterwards.

    `log_model` and the registry's resolution of `models:/<model_id>` read the process-wide
    tracking URI; this sets it for the call only (MLflow's own helper for the purpose). A
    SQLite path is made absolute first: MLflow keeps one store per URI in a process, so the
    default relative `sqlite:///mlruns/mlflow.db` would reach the database of the folder it was
    first used in.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from autoall.tracking._store import client_uri

    with _use_tracking_uri(client_uri(uri)):
        yield


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    model_uri: str  # models:/<model_id>


def logged_model_name(*parts: str) -> str:
    """A logged model's name from `parts` joined by '-', every character MLflow refuses in one
    ('/', ':', '.', '%', quotes, spaces, ...) made '-': `("digits/mlp/r1", "trial3")` gives
    `digits-mlp-r1-trial3`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-") or ARTIFACT_NAME


def log_model(
    uri: str,
    run_id: str,
    model: ServingModel,
    *,
    example: np.ndarray,
    num_classes: int,
    tags: Mapping[str, str] | None = None,
    name: str = ARTIFACT_NAME,
    experiment_id: str | None = None,
) -> LoggedModel:
    """Log `model` as a logged model `name` (`logged_model_name`) of run `run_id` (store `uri`)
    in experiment `experiment_id` (default: the run's): a pt2 program with a signature (uint8
    (-1, C, H, W) -> float32 (-1, num_classes)), `example` (uint8 (n, C, H, W), n >= 2 so the
    batch dimension stays dynamic) as its input example, the run's params and `tags`.

    The model is made first (`mlflow.initialize_logged_model`), in its experiment: left to
    `mlflow.pytorch.log_model`, a run given by id and no active run put it in the Default
    experiment whatever the run's. A model whose logging fails ends FAILED."""
    import mlflow
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if example.dtype != np.uint8 or example.ndim != 4 or example.shape[0] < 2:
        raise InvalidValue(
            f"example must be uint8 images (n >= 2, C, H, W), but got {example.dtype} "
            f"{example.shape}."
        )
    shape = (-1, *example.shape[1:])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    requirement = f"torch=={torch.__version__.split('+')[0]}"  # no local tag (+cu130)
    with _tracking(uri), warnings.catch_warnings():
        run = mlflow.MlflowClient().get_run(run_id)
        logged = mlflow.initialize_logged_model(
            name=name,
            source_run_id=run_id,
            tags=dict(tags or {}),
            params={k: str(v) for k, v in run.data.params.items()},
            experiment_id=experiment_id or run.info.experiment_id,
        )
        # the ALL keeps its custom loss as an attribute; export warns, though it is no output
        warnings.filterwarnings("ignore", message=".*assigned during export.*")
        try:
            mlflow.pytorch.log_model(
                model.eval(),
                name=name,
                model_id=logged.model_id,
                signature=signature,
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[requirement],
                run_id=run_id,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                mlflow.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
    return LoggedModel(model_id=logged.model_id, model_uri=f"models:/{logged.model_id}")


def register(
    uri: str,
    client: MlflowClient,
    *,
    name: str,
    logged: LoggedModel,
    run_id: str,
    tags: Mapping[str, str],
    description: str = "",
) -> str:
    """The version of `name` made from run `run_id`'s logged model: an existing one (a rerun, or
    an earlier attempt cut short after creating it) or a new one with `tags`."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    quoted = name.replace("'", "\\'")
    with _tracking(uri):
        existing = client.search_model_versions(f"name = '{quoted}' and run_id = '{run_id}'")
        if existing:
            return str(min(int(v.version) for v in existing))
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        version = client.create_model_version(
            name,
            source=logged.model_uri,
            run_id=run_id,
            tags={k: str(v)[:5000] for k, v in tags.items()},
            model_id=logged.model_id,
        )
    return str(version.version)


@dataclass
class BestModel:
    """A registered model loaded back, with the test split it is judged on.

    `model(x)`: uint8 (B, C, H, W) -> logits (B, classes); `test_x` uint8 (N, C, H, W) and
    `test_y` int64 (N,) on the CPU, as `autoall.training._data.load_data` gives them.
    """

    name: str
    version: str
    model: nn.Module
    test_x: torch.Tensor
    test_y: torch.Tensor
    tags: dict[str, str]

    def accuracy(self) -> float:
        """Test accuracy of the model: what the report reported for its run (tag test_acc)."""
        return accuracy(self.model, self.test_x, self.test_y)


def load_best(
    name: str,
    *,
    tracking_uri: str | None = None,
    version: str | None = None,
    alias: str | None = None,
    data_root: str | None = None,
) -> BestModel:
    """The model of `<name>/<version>` (default: the latest version) or of `<name>@<alias>`
    (`name="digits-mlp-all@champion"` or `alias="champion"`; autoall/report/_aliases.py sets `best` and
    `champion`), and the test split of the data set it was trained on, prepared as autoall
    prepares it. Its `.eval()` works and `.train()` says it cannot (`evaluable`).

    Read-only and safe: a tracking store (or $MLFLOW_REGISTRY_URI) that is a SQLite file which
    does not exist is a ValueError saying where it looked, never a new empty database; a
    version is loaded only if it is a torch.export (pt2) program that brings no code of its
    own, else refused before anything of it is loaded (a pickled model runs its code when
    loaded), and its pt2 archive is checked for pickled records (MLflow's own check, whatever
    $MLFLOW_ALLOW_PICKLE_DESERIALIZATION says; autoall/tracking/_safe_model.py).

    The data set and its split come from the version's tags (`data.name`, `data.root`,
    `data.val_fraction`, `data.split_seed`); `data_root` overrides the stored root.
    """
    from mlflow import MlflowClient

    from autoall.tracking._store import client_uri, quiet_mlflow, resolve_tracking_uri
    from autoall.training import load_data

    quiet_mlflow()  # no INFO lines, no "Downloading artifacts" bars in the user's output

    name, alias = _split_alias(name, alias, version)
    uri = client_uri(resolve_tracking_uri(tracking_uri, create=False))
    check_stores_exist(uri)
    client = MlflowClient(uri)
    chosen = _version(client, uri, name, version, alias)
    tags = dict(chosen.tags)
    missing = [k for k in ("data.name", "data.val_fraction", "data.split_seed") if k not in tags]
    if missing:
        raise InvalidValue(
            f"{name!r} version {chosen.version} lacks the tags {', '.join(missing)}: it was not "
            "registered by autoall, so its test split is unknown."
        )
    with tempfile.TemporaryDirectory(prefix="autoall-model-") as tmp:
        model = _load_pt2(uri, name, str(chosen.version), tmp)
    data = load_data(
        tags["data.name"],
        root=data_root or tags.get("data.root") or None,
        val_fraction=float(tags["data.val_fraction"]),
        split_seed=int(tags["data.split_seed"]),
        device="cpu",
    )
    return BestModel(
        name=name,
        version=str(chosen.version),
        model=model,
        test_x=data.test_x,
        test_y=data.test_y,
        tags=tags,
    )


def _split_alias(name: str, alias: str | None, version: str | None) -> tuple[str, str | None]:
    """`"model@alias"` -> ("model", "alias"); an alias given twice, or with a version, is a
    ValueError."""
    if "@" in name:
        model, _, named = name.rpartition("@")
        if not model or not named:
            raise InvalidValue(f"name must be <model> or <model>@<alias>, but got {name!r}.")
        name = model
        if alias is not None and alias != named:
            raise InvalidValue(f"alias={alias!r} contradicts the name's alias {named!r}.")
        alias = named
    if alias is not None and version is not None:
        raise InvalidValue(f"Pass version or alias, not both (got {version!r} and {alias!r}).")
    return name, alias


def _version(
    client: MlflowClient, uri: str, name: str, version: str | None, alias: str | None
) -> Any:
    """The ModelVersion of `name` asked for: by alias, by number, or the latest."""
    from mlflow.exceptions import MlflowException

    from autoall._secrets import mask_secrets

    quoted = name.replace("'", "\\'")
    with _tracking(uri):
        versions = client.search_model_versions(f"name = '{quoted}'")
    if not versions:
        names = sorted(m.name for m in client.search_registered_models())
        there = ", ".join(names) if names else "none"
        raise InvalidValue(
            f"No registered model {name!r} with a version in {mask_secrets(uri)} (registered "
            f"there: {there}); `autoall report` registers <study>-<arch>-all and -baseline."
        )
    if alias is not None:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException:
            held = client.get_registered_model(name).aliases
            have = ", ".join(f"{a} (v{v})" for a, v in sorted(held.items())) or "none"
            raise InvalidValue(f"{name!r} has no alias {alias!r}; its aliases: {have}.") from None
    if version is None:
        return max(versions, key=lambda v: int(v.version))
    found = [v for v in versions if str(v.version) == str(version)]
    if not found:
        have = ", ".join(sorted((str(v.version) for v in versions), key=int))
        raise InvalidValue(f"{name!r} has no version {version!r}; it has {have}.")
    return found[0]


def _load_pt2(uri: str, name: str, version: str, folder: str) -> nn.Module:
    """Version `version` of `name`, downloaded into `folder`, loaded by `safe_model.load_pt2`:
    a pt2 program with no code of its own, else a ValueError naming the version."""
    import mlflow.artifacts

    with _tracking(uri):
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=folder)
    return load_pt2(Path(local), name, version)


def version_tags(
    *,
    data: Mapping[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    extra: Mapping[str, Any],
) -> dict[str, str]:
    """A version's tags: `data.*` (for load_best), `param.<knob>`, the run's figures, `extra`."""
    tags = {f"data.{k}": str(v) for k, v in data.items()}
    tags |= {f"param.{k}": str(v) for k, v in params.items()}
    tags |= {k: repr(float(v)) for k, v in metrics.items()}
    tags |= {k: str(v) for k, v in extra.items()}
    return tags
