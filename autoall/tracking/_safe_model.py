"""Loading a registered model safely and read-only, as `autoall.load_best` does.

- **No store is created.** MLflow opens a SQLite URL by creating the file (an empty ~950 KB
  database) when it is not there; `check_stores_exist` refuses first, saying where it looked.
- **No code of the model's runs.** A version logged as a pickle runs whatever its author put in
  it when it is unpickled, and one logged with `code_paths` puts its own modules on `sys.path`.
  `load_pt2` accepts only what autoall logs: the `pytorch` flavour with a torch.export program
  (`data/model.pt2`) and nothing else, no code. A pt2 archive can still hold pickled records
  (`torch.export.load` unpickles its sample inputs); MLflow checks for them unless
  $MLFLOW_ALLOW_PICKLE_DESERIALIZATION is true, and here it checks whatever that says.
- **A module that behaves like one.** torch.export's module raises NotImplementedError on
  `.eval()` and `.train()`; `evaluable` makes `.eval()` work and `.train()` say why it cannot.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from autoall.errors import InvalidValue

_PICKLE_REFUSED = "Deserializing model using pickle is disallowed"  # MLflow's message, 3.x


def check_stores_exist(uri: str) -> None:
    """A ValueError when the tracking store `uri` or $MLFLOW_REGISTRY_URI is a SQLite file that
    does not exist (MLflow would create an empty database there), saying what to pass."""
    from mlflow.environment_variables import MLFLOW_REGISTRY_URI

    from autoall._secrets import mask_secrets, sqlite_file

    for what, url in (("MLflow store", uri), ("MLflow model registry", MLFLOW_REGISTRY_URI.get())):
        db = sqlite_file(url) if url else None
        if url and db is not None and not db.is_file():
            raise InvalidValue(
                f"No {what} at {mask_secrets(url)} (no file {db}); pass tracking_uri= (or set "
                "MLFLOW_TRACKING_URI) to the store `autoall report` wrote, e.g. "
                "sqlite:///<project>/mlruns/mlflow.db, or run from that project's folder."
            )


def load_pt2(local: Path, name: str, version: str) -> nn.Module:
    """The model downloaded into `local` (version `version` of `name`), `evaluable`; a
    ValueError naming the version when it is not a pt2 program free of pickles and code."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    flavor = Model.load(str(local / "MLmodel")).flavors.get("pytorch") or {}
    data = local / str(flavor.get("model_data", "data"))
    if (
        not flavor
        or flavor.get("code")
        or not (data / "model.pt2").is_file()
        or any(p.name != "model.pt2" for p in data.iterdir())  # a model.pth is loaded first
    ):
        raise InvalidValue(
            f"{name!r} version {version} is not a torch.export (pt2) model; autoall loads no "
            "pickled model (loading one runs its code), nor one that brings code of its own."
        )
    try:
        with _pickle_check_on():
            return evaluable(mlflow.pytorch.load_model(str(local)))
    except MlflowException as exc:
        if not str(exc).strip().startswith(_PICKLE_REFUSED):
            raise
        raise InvalidValue(
            f"{name!r} version {version} is a torch.export (pt2) archive with pickled records, "
            "which would run code when loaded; autoall loads no pickled model."
        ) from None


@contextlib.contextmanager
def _pickle_check_on() -> Iterator[None]:
    """$MLFLOW_ALLOW_PICKLE_DESERIALIZATION false for the block (MLflow reads it per call), the
    user's value restored afterwards."""
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def evaluable(model: nn.Module) -> nn.Module:
    """`model`, a torch.export program's module as `mlflow.pytorch.load_model` gives it (whose
    `.eval()` and `.train()` raise NotImplementedError), made to behave as an eval-mode module:
    `.eval()` and `.train(False)` return it (its graph was traced in eval mode), `.train()`
    raises NotImplementedError saying why, and `.training` is False throughout."""

    def eval_(self: nn.Module) -> nn.Module:
        return self

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        if mode:
            raise NotImplementedError(
                "This model is a torch.export program traced in eval mode (dropout off, batch "
                "norm statistics fixed): it is for inference and cannot be put in training "
                "mode. Train a new one with `autoall train` or a study."
            )
        return self

    for module in model.modules():
        module.training = False
    model.eval = types.MethodType(eval_, model)  # type: ignore[method-assign]
    model.train = types.MethodType(train, model)  # type: ignore[method-assign]
    return model
