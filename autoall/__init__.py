"""autoall: does an Auto-Learning Layer (ALL) make a network better? Optuna + MLflow + PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoall.registry import BestModel

__version__ = "0.1.0"


def load_best(name: str, *, tracking_uri: str | None = None, **kwargs: Any) -> BestModel:
    """The registered model `name` (`<study>-<arch>-all` or `-baseline`, as `autoall report`
    registers it) and the test split it is judged on, prepared as autoall prepares it:

        best = autoall.load_best("digits-mlp-all")
        best.accuracy()      # the test accuracy the report gave its run
        best.model(best.test_x[:8]).argmax(1)
        autoall.load_best("digits-mlp-all@champion")  # only if the verdicts favour the ALL

    See `autoall.registry.load_best` (torch and MLflow load only when this is called).
    """
    from autoall.registry import load_best as _load_best

    return _load_best(name, tracking_uri=tracking_uri, **kwargs)


__all__ = ["__version__", "load_best"]
