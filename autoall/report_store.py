"""The report's runs in MLflow: one parent run per report, one child per trained run, reused.

A child is keyed by the SHA-256 of everything that determines it (architecture, the plan with
its seed, the data split, whether the test split is evaluated) and of the code that trained it
(autoall's version, the git commit, a digest of autoall's sources, torch's version). A FINISHED
child with the same key is read back instead of trained, so a rerun costs nothing and an
interrupted report continues where it stopped, while a code change trains everything again.
Runs that evaluate the test split keep the predicted class of every test example as the
artifact `test_predictions.npy` (the statistics of the test set's own noise need them).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.exceptions import MlflowException

from autoall.data import DeviceData
from autoall.plan import RunPlan, fit
from autoall.report_types import FINAL_METRICS, SELECTION_METRICS, Report, RunRecord
from autoall.tracking import Tracker, client_uri, final_metrics, flatten, mask_secrets
from autoall.train import RunResult
from autoall.version import code_version

if TYPE_CHECKING:
    from torch import nn

# called with (run id, trained model, result) while the run is still RUNNING
OnTrained = Callable[[str, "nn.Module", RunResult], None]
_BATCH = 1000  # mlflow.utils.validation.MAX_ENTITIES_PER_BATCH (metrics)
_PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch
_PREDICTIONS = "test_predictions.npy"


def run_settings(
    plan: RunPlan, data: DeviceData, *, split: dict[str, Any], evaluate_test: bool
) -> dict[str, Any]:
    """Everything that determines one run: its MLflow params; its hash decides reuse."""
    train = asdict(plan.train)
    train["device"] = data.device.type  # cuda:0 and cuda:1 give the same runs
    train["evaluate_test"] = evaluate_test
    return {
        "arch": plan.arch,
        "seed": plan.train.seed,
        "data": split,
        "all": asdict(plan.spec) if plan.spec else None,
        "head_width": plan.head_width,
        "train_fraction": plan.train_fraction,
        "train": train,
        "code": code_version(),
    }


def config_hash(settings: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunStore:
    """A report's parent run and its children: find a finished run, or train and log one."""

    def __init__(self, name: str, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        # Tracker.connect checks that the store answers and gets or creates the experiment
        tracker = Tracker.connect(tracking_uri, experiment=name)
        self.uri, self.name, self.experiment_id = tracker.uri, name, tracker.experiment_id
        self.client = MlflowClient(client_uri(tracker.uri))
        report = f"tags.\"autoall.report\" = '{name}' and tags.\"autoall.role\" = 'report'"
        parents = self._search(report)
        if parents:
            oldest = min(parents, key=lambda r: (r.info.start_time, r.info.run_id))
            self.parent_id = oldest.info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            tags = {"autoall.report": name, "autoall.role": "report"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{name} report")
            self.parent_id = run.info.run_id
        self.children: dict[str, list[Any]] = {}
        for run in self._search(f"tags.\"mlflow.parentRunId\" = '{self.parent_id}'"):
            self.children.setdefault(run.data.tags.get("config_hash", ""), []).append(run)

    def _search(self, filter_string: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def get_or_train(
        self,
        variant: str,
        plan: RunPlan,
        data: DeviceData,
        *,
        split: dict[str, Any],
        evaluate_test: bool,
        on_trained: OnTrained | None = None,
    ) -> RunRecord:
        """The finished run of `plan` (its seed included), or a new one trained now.

        `evaluate_test=False` is a selection run: `data` must then hold no test split, and the
        run reads validation only. `on_trained(run_id, model, result)` is called for a run trained
        now, after its metrics are logged and before it ends (e.g. to log its model into it).
        """
        if not evaluate_test and data.test_y.numel():
            raise AssertionError("a selection run must not be given the test split")
        settings = run_settings(plan, data, split=split, evaluate_test=evaluate_test)
        chash = config_hash(settings)
        wanted = FINAL_METRICS if evaluate_test else SELECTION_METRICS
        earlier = self.children.get(chash, [])
        for run in earlier:
            if run.info.status == "FINISHED" and set(wanted) <= set(run.data.metrics):
                try:
                    return self._read(plan, variant, run, evaluate_test=evaluate_test)
                except (OSError, MlflowException):  # its predictions are gone: train it again
                    continue
        for run in earlier:  # left RUNNING by a report that was killed
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        seed = plan.train.seed
        role = "report-run" if evaluate_test else "selection-run"
        tags = {"mlflow.parentRunId": self.parent_id, "autoall.report": self.name}
        tags |= {"autoall.role": role, "arch": plan.arch, "variant": variant}
        tags |= {"seed": str(seed), "config_hash": chash}
        run_id = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"{plan.arch}/{variant}/seed{seed}"
        ).info.run_id
        trained: list[nn.Module] = []
        try:
            self._log_params(run_id, flatten(settings))
            keep = trained.append if on_trained is not None else None
            result = fit(plan, data, evaluate_test=evaluate_test, on_trained=keep)
            self._log_result(run_id, result)
            if on_trained is not None and trained:
                on_trained(run_id, trained.pop(), result)
            self.client.set_terminated(run_id, "FINISHED")
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.client.set_terminated(run_id, status)
            raise
        metrics = {k: float(v) for k, v in final_metrics(result).items() if k in wanted}
        return RunRecord(
            arch=plan.arch,
            variant=variant,
            seed=seed,
            run_id=run_id,
            metrics=metrics,
            val_acc=[s.val_acc for s in result.history],
            epoch_seconds=[s.epoch_seconds for s in result.history],
            test_predictions=result.test_predictions,
            reused=False,
        )

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, mask_secrets(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            batch = items[i : i + _PARAMS_PER_BATCH]
            self.client.log_batch(run_id, params=batch, synchronous=True)

    def _log_result(self, run_id: str, result: RunResult) -> None:
        """Per-epoch metrics (step = epoch), the final ones, and the test predictions."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, v, now, s.epoch) for s in result.history for k, v in s.metrics().items()
        ]
        final = final_metrics(result)
        metrics += [Metric(k, float(v), now, result.epochs_run) for k, v in final.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH], synchronous=True)
        if result.test_predictions is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / _PREDICTIONS
                np.save(path, result.test_predictions)
                self.client.log_artifact(run_id, str(path))

    def _read(self, plan: RunPlan, variant: str, run: Any, *, evaluate_test: bool) -> RunRecord:
        """A finished run read back: final metrics, per-epoch history, test predictions."""
        run_id = run.info.run_id

        def history(key: str) -> list[float]:
            points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
            return [m.value for m in points]

        predictions = None
        if evaluate_test:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.client.download_artifacts(run_id, _PREDICTIONS, tmp)
                predictions = np.load(path)
        wanted = FINAL_METRICS if evaluate_test else SELECTION_METRICS
        return RunRecord(
            arch=plan.arch,
            variant=variant,
            seed=plan.train.seed,
            run_id=run_id,
            metrics={k: float(run.data.metrics[k]) for k in wanted},
            val_acc=history("val_acc"),
            epoch_seconds=history("epoch_seconds"),
            test_predictions=predictions,
            reused=True,
        )

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, mask_secrets(str(v))[:8000]) for k, v in tags.items()]
        self.client.log_batch(run_id, tags=items, synchronous=True)

    def finish(
        self, out: Path, *, tags: dict[str, str], metrics: Mapping[str, float] | None = None
    ) -> None:
        """The report's headline `metrics` and `tags` on the parent run, every output file as its
        artifact (report.html among them); then it ends FINISHED."""
        from mlflow.entities import Metric

        self.set_tags(self.parent_id, tags)
        if metrics:
            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
            for i in range(0, len(batch), _BATCH):
                self.client.log_batch(
                    self.parent_id, metrics=batch[i : i + _BATCH], synchronous=True
                )
        self.client.log_artifacts(self.parent_id, str(out))
        self.end_parent("FINISHED")

    def end_parent(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status)


def headline(report: Report) -> dict[str, float]:
    """The report run's metrics, per architecture: mean test accuracy of the ALL winner and of
    the tuned baseline over the evaluation seeds, and the accuracy claim's effect (mean paired
    difference) and Holm-adjusted p."""
    figures: dict[str, float] = {}
    for rep in report.archs:
        for variant in ("all", "tuned-baseline"):
            accs = [r.metrics["test_acc"] for r in rep.runs_of(variant)]
            if accs:
                figures[f"{rep.arch}.{variant}.test_acc_mean"] = sum(accs) / len(accs)
        claim = next((c for c in rep.claims if c.key == "accuracy"), None)
        if claim is not None and claim.test is not None:
            figures[f"{rep.arch}.accuracy.effect"] = claim.test.mean
            if claim.adjusted_p is not None:
                figures[f"{rep.arch}.accuracy.holm_p"] = claim.adjusted_p
    return figures
