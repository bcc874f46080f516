"""Shared fixtures: a fast digits study file, and a scratch working directory per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

# Two cores on CI: tests in one process should not fight over threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def write_study(path: Path, **overrides: Any) -> Path:
    """A digits study that runs a trial in well under a second on one CPU core."""
    study: dict[str, Any] = {
        "name": "t",
        "data": {"name": "digits"},
        "architectures": ["mlp"],
        "train": {"epochs": 3, "batch_size": 128, "warmup_epochs": 0},
        "search": {
            "hidden_size": {"type": "int", "low": 8, "high": 32, "log": True},
            "all_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "aux_weight": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "aux_loss": {"type": "categorical", "choices": ["reconstruction", "none"]},
        },
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "none"},
        "n_trials": 4,
        "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so autoall.db and mlruns/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def study_file(workdir: Path) -> Path:
    return write_study(workdir / "study.yaml")
