"""autoall: does an Auto-Learning Layer (ALL) make a network better? Optuna + MLflow + PyTorch.

The public API, importable from here (torch and MLflow load on first use, so `import autoall`
stays light):

    from autoall import ALLSpec, insert_all, auxiliary_loss, param_groups   # the layer
    from autoall import build_model, fit_cohort                              # training
    best = autoall.load_best("digits-mlp-all")                               # the registry

The packages, each depending only on those below it:

    cli        the `autoall` command
    report     the verdict: selection, re-training, claims, statistics, rendering
    study      Optuna: storage, trials, the objective, workers
    tracking   MLflow: runs, the writer process, the model registry
    config     the study file, its search space, shared options
    training   data, models, `fit`, the training loop, cohorts
    (root)     the layer, errors, secrets masking, timing, provenance
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoall.layer import ALLSpec, AutoLearningLayer, auxiliary_loss, insert_all, param_groups
    from autoall.tracking import BestModel
    from autoall.training import build_model, fit_cohort

__version__ = "0.1.0"

_PUBLIC = {  # name -> the package that defines it
    "ALLSpec": "autoall.layer",
    "AutoLearningLayer": "autoall.layer",
    "insert_all": "autoall.layer",
    "auxiliary_loss": "autoall.layer",
    "param_groups": "autoall.layer",
    "build_model": "autoall.training",
    "fit_cohort": "autoall.training",
    "BestModel": "autoall.tracking",
}


def load_best(name: str, *, tracking_uri: str | None = None, **kwargs: Any) -> BestModel:
    """The registered model `name` (`<study>-<arch>-all` or `-baseline`, as `autoall report`
    registers it) and the test split it is judged on, prepared as autoall prepares it:

        best = autoall.load_best("digits-mlp-all")
        best.accuracy()      # the test accuracy the report gave its run
        best.model(best.test_x[:8]).argmax(1)
        autoall.load_best("digits-mlp-all@champion")  # only if the verdicts favour the ALL

    See `autoall.tracking.load_best` (torch and MLflow load only when this is called).
    """
    from autoall.tracking import load_best as _load_best

    return _load_best(name, tracking_uri=tracking_uri, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'autoall' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "ALLSpec",
    "AutoLearningLayer",
    "BestModel",
    "__version__",
    "auxiliary_loss",
    "build_model",
    "fit_cohort",
    "insert_all",
    "load_best",
    "param_groups",
]
