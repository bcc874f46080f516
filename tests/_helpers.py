"""Set-up shared by several test files that is not a fixture: trial counts, study files that
diverge or prune, patches that lose a stored end or make vmap fail, workers started at once,
the chromium binary."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study
from optuna.trial import FrozenTrial, TrialState


def trial_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """How many of `trials` are in each state, by the state's name."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished_and_running(
    trials: list[FrozenTrial], epochs: int
) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The COMPLETE or PRUNED trials, and the RUNNING ones with at least `epochs` reported."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = [
        t for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epochs
    ]
    return finished, running


def write_diverging_study(folder: Path, n_trials: int) -> Path:
    """folder/diverge.yaml: SGD with a learning rate of 1e4 to 1e5, every trial's loss non-finite."""
    return write_study(
        folder / "diverge.yaml",
        train={"epochs": 3, "optimizer": "sgd", "warmup_epochs": 0},
        search={"all_lr": {"type": "float", "low": 1e4, "high": 1e5, "log": True}},
        n_trials=n_trials,
    )


def write_pruning_study(folder: Path, **overrides: Any) -> Path:
    """folder/prune.yaml: 8 random trials of 6 epochs over a wide learning rate, median pruner."""
    return write_study(
        folder / "prune.yaml",
        train={"epochs": 6, "warmup_epochs": 0},
        search={"all_lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        sampler={"name": "random", "seed": 3},
        n_trials=8,
        **overrides,
    )


def lose_first_complete(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Optuna's storage loses the first COMPLETE it is told (the trial ids it lost, at most one)."""
    store = optuna.storages.RDBStorage.set_trial_state_values
    lost: list[int] = []

    def lost_once(self: object, trial_id: int, state: TrialState, values: object = None) -> bool:
        if state == TrialState.COMPLETE and not lost:
            lost.append(trial_id)
            raise optuna.exceptions.StorageInternalError("connection lost")
        return store(self, trial_id, state, values)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", lost_once)
    return lost


def make_vmap_unbatchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cohort's vmapped loss raises "Batching rule not implemented"; nothing known yet."""
    import autoall.training.cohort._cohort
    import autoall.training.cohort._loop

    def unbatchable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Batching rule not implemented for aten::something")

    monkeypatch.setattr(autoall.training.cohort._loop.CohortLoop, "_member_loss", unbatchable)
    monkeypatch.setattr(autoall.training.cohort._cohort, "_cannot_batch", {})
    monkeypatch.setattr(autoall.training.cohort._cohort, "_said", set())


# Imports everything, then waits for the go file: the processes reach the study within
# milliseconds of each other, as workers started by one `srun` or an ssh loop do.
_AT_ONCE = """
import pathlib, sys, time
import {imports}
import autoall.cli._main, autoall.study._trials, autoall.study._workers
go = pathlib.Path(sys.argv[1])
pathlib.Path(f"{{go}}.{{sys.argv[2]}}").touch()
while not go.exists():
    time.sleep(0.002)
sys.argv = ["autoall", *sys.argv[3:]]
autoall.cli._main.main()
"""


def at_once(go: Path, index: int, imports: str = "optuna, torch") -> list[str]:
    """A Python command that imports `imports`, touches go.INDEX, waits for `go`, then runs
    `autoall ARGS` (its ARGS follow)."""
    return [sys.executable, "-c", _AT_ONCE.format(imports=imports), str(go), str(index)]


def chromium() -> str:
    """The chromium binary; a failure on CI without one, else a skip."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing; `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return found


def browse(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The DOM of `url` after MLflow's single-page app has rendered in headless chromium (20 s
    of virtual time), and with `screenshot`, a picture of it."""
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,900",
    ]  # fmt: skip
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=300
    ).stdout
    if screenshot is not None:
        subprocess.run(
            [chromium(), *flags, f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=300,
        )
    return dom


def start_ui(cwd: Path, port: int, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """`autoall ui --port PORT` in `cwd`, in its own process group, without the caller's MLflow
    environment (it must find the project's store itself), once it answers /health; killed with
    its children when it does not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoall.cli", "ui", "--port", str(port)],
        cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, "autoall ui exited early"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as ok:
                    if ok.status == 200:
                        return proc
            except OSError:
                pass
            assert time.monotonic() < deadline, "autoall ui did not answer in 120 s"
            time.sleep(0.5)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its children
        raise
