"""autoall: does an Auto-Learning Layer (ALL) make a network better? Optuna + MLflow + PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
