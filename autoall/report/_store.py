"""The report's runs in MLflow: one parent run per report, one child per trained run, reused.

They are experiment `<name> report`, apart from the studies' experiment `<name>`, and linked to
it both ways (`RunStore.link_studies`, autoall/report/_mlflow.py). Each child is tagged with its
role, variant, arm ("all": the network has an ALL; "baseline": it has none), replicate and seed
(`autoall.role`, `autoall.variant`, `autoall.arm`, `autoall.replicate`, `autoall.seed`; and as
before `variant`, `arch`, `replicate`, `seed`), so the UI's "Group by" gives per-variant figures.

A child is keyed by the SHA-256 of everything that determines it (architecture, the plan with
its seed, the data split, whether the test split is evaluated) and of the code that trained it
(autoall's version, the git commit, a digest of autoall's sources, torch's version). A FINISHED
child with the same key is read back instead of trained, so a rerun costs nothing and an
interrupted report continues where it stopped, while a code change trains everything again.
Runs that evaluate the test split keep the predicted class of every test example as the
artifact `test_predictions.npy` (the statistics of the test set's own noise need them).

Every MLflow call goes through the tracker's retry (`autoall.tracking._store.RetryingCalls`): a
transient error is tried again, any other is raised; but an artifact that cannot be stored (a
full or read-only artifact folder) is lost logging, which never stops the report: `finish`
records it in the report run's tag `autoall.lost_logging`. Params and the tags set later are
masked, and params and tags go in batches of MLflow's 100 a call. Reading a run back downloads its
predictions without MLflow's progress bars (`MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`, unless set).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.exceptions import MlflowException

from autoall._provenance import code_version
from autoall.errors import one_line
from autoall.report._mlflow import (
    NOTE,
    ours,
    report_experiment,
    report_experiment_note,
    report_note,
    run_link,
    study_experiment_note,
    study_note,
    with_conclusions,
)
from autoall.report._types import FINAL_METRICS, SELECTION_METRICS, RunRecord
from autoall.tracking import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_LENGTH,
    RetryingCalls,
    Tracker,
    client_uri,
    final_metrics,
    log_params,
    masked,
    metric_batch,
    no_artifact_progress_bars,
)
from autoall.training import DeviceData, RunPlan, RunResult, fit
from autoall.training.cohort import Outcome, fit_cohort, group_plans

if TYPE_CHECKING:
    from torch import nn

# called with (run id, trained model, result) while the run is still RUNNING
OnTrained = Callable[[str, "nn.Module", RunResult], None]
_PREDICTIONS = "test_predictions.npy"


def run_settings(
    plan: RunPlan,
    data: DeviceData,
    *,
    split: dict[str, Any],
    evaluate_test: bool,
    alone: bool = False,
) -> dict[str, Any]:
    """Everything that determines one run: its MLflow params; its hash decides reuse.

    `alone`: the run must have trained by itself (its seconds are its own, for the report's
    time claims), so a run trained in a cohort is not reused for it."""
    train = asdict(plan.train)
    train["device"] = data.device.type  # cuda:0 and cuda:1 give the same runs
    train["evaluate_test"] = evaluate_test
    settings = {
        "arch": plan.arch,
        "seed": plan.train.seed,
        "data": split,
        "all": asdict(plan.spec) if plan.spec else None,
        "head_width": plan.head_width,
        "train_fraction": plan.train_fraction,
        "train": train,
        "code": code_version(),
    }
    if alone:
        settings["arrangement"] = "alone"
    return settings


def config_hash(settings: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunStore(RetryingCalls):
    """A report's parent run and its children, in experiment `<name> report` (`experiment_id`;
    the studies' experiment `<name>` is `study_experiment_id`): find a finished run, or train
    and log one."""

    def __init__(self, name: str, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        # Tracker.connect checks that the store answers and gets or creates the experiment
        tracker = Tracker.connect(tracking_uri, experiment=name)
        self.uri, self.name, self.study_experiment_id = tracker.uri, name, tracker.experiment_id
        self.experiment = report_experiment(name)
        self.experiment_id = Tracker.connect(tracker.uri, experiment=self.experiment).experiment_id
        self.retries, self.retry_wait = tracker.retries, tracker.retry_wait
        self.client = MlflowClient(client_uri(tracker.uri))
        no_artifact_progress_bars()  # a rerun reads every run's predictions back
        report = f"tags.\"autoall.report\" = '{name}' and tags.\"autoall.role\" = 'report'"
        parents = self._search(report)
        if parents:
            oldest = min(parents, key=lambda r: (r.info.start_time, r.info.run_id))
            self.parent_id = oldest.info.run_id
            self._retrying(self.client.update_run, self.parent_id, status="RUNNING")
        else:
            tags = {"autoall.report": name, "autoall.role": "report"}
            run = self._retrying(
                self.client.create_run, self.experiment_id, tags=tags, run_name=f"{name} report"
            )
            self.parent_id = run.info.run_id
        self.children: dict[str, list[Any]] = {}
        self.fresh: dict[str, RunRecord] = {}  # runs trained by this report, by key
        self.created: dict[str, dict[str, str]] = {}  # the tags of the runs it created, by id
        self.lost: list[str] = []  # artifacts that could not be logged, one line each
        for run in self._search(f"tags.\"mlflow.parentRunId\" = '{self.parent_id}'"):
            self.children.setdefault(run.data.tags.get("config_hash", ""), []).append(run)

    def _search(self, filter_string: str, experiment_id: str | None = None) -> list[Any]:
        runs, token = [], None
        experiments = [experiment_id or self.experiment_id]
        while True:
            page = self._retrying(
                self.client.search_runs, experiments, filter_string, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def link_studies(self, studies: Sequence[str], path: str) -> None:
        """Link the report run and the parent runs of `studies` (Optuna study names) both ways,
        and the studies' experiment (of study file `path`) and the report's, by tags and
        descriptions (autoall/report/_mlflow.py); a description someone else wrote is kept."""
        found = self._search("tags.\"autoall.role\" = 'study'", self.study_experiment_id)
        order = {study: i for i, study in enumerate(studies)}
        parents = sorted(
            (r for r in found if r.data.tags.get("autoall.study") in order),
            key=lambda r: (order[r.data.tags["autoall.study"]], r.info.start_time),
        )
        here = (self.experiment, self.experiment_id)
        for run in parents:
            tags = {"autoall.report_run": run_link(self.experiment_id, self.parent_id)}
            tags["autoall.report_experiment"] = self.experiment
            if ours(run.data.tags.get(NOTE)):
                tags[NOTE] = study_note(run.data.tags["autoall.study"], here, self.parent_id)
            self.set_tags(run.info.run_id, tags)
        studies_at = (self.name, self.study_experiment_id)
        mine = self._retrying(self.client.get_run, self.parent_id).data.tags
        tags = {"autoall.studies": run_link(self.study_experiment_id)}
        tags["autoall.study_experiment"] = self.name
        if ours(mine.get(NOTE)):
            named = [(r.data.tags["autoall.study"], r.info.run_id) for r in parents]
            tags[NOTE] = report_note(studies_at, named)
        self.set_tags(self.parent_id, tags)
        notes = {
            self.study_experiment_id: study_experiment_note(path, here, self.study_experiment_id),
            self.experiment_id: report_experiment_note(studies_at),
        }
        for experiment_id, note in notes.items():
            held = self._retrying(self.client.get_experiment, experiment_id).tags
            if ours(held.get(NOTE)):
                self._retrying(self.client.set_experiment_tag, experiment_id, NOTE, note)

    def get_or_train(
        self,
        variant: str,
        plan: RunPlan,
        data: DeviceData,
        *,
        split: dict[str, Any],
        evaluate_test: bool,
        on_trained: OnTrained | None = None,
        replicate: int = 0,
        alone: bool = False,
    ) -> RunRecord:
        """The finished run of `plan` (its seed included), or a new one trained now.

        `evaluate_test=False` is a selection run: `data` must then hold no test split, and the
        run reads validation only. `on_trained(run_id, model, result)` is called for a run trained
        now, after its metrics are logged and before it ends (e.g. to log its model into it).
        `replicate` tags the run with the search it came from; `alone`: see `run_settings`.
        """
        if on_trained is None:
            return self.get_or_train_seeds(
                variant,
                [plan],
                data,
                split=split,
                evaluate_test=evaluate_test,
                replicate=replicate,
                alone=alone,
            )[0]
        if not evaluate_test and data.test_y.numel():
            raise AssertionError("a selection run must not be given the test split")
        settings = run_settings(plan, data, split=split, evaluate_test=evaluate_test, alone=alone)
        chash = config_hash(settings)
        found = self._finished(variant, plan, chash, evaluate_test=evaluate_test)
        if found is not None:
            found.replicate = replicate
            return found
        keyed = [(0, settings, chash)]
        return self._train(
            variant,
            [plan],
            keyed,
            data,
            evaluate_test=evaluate_test,
            on_trained=on_trained,
            replicate=replicate,
            alone=True,
        )[0]

    def get_or_train_seeds(
        self,
        variant: str,
        plans: Sequence[RunPlan],
        data: DeviceData,
        *,
        split: dict[str, Any],
        evaluate_test: bool,
        cohort: bool = True,
        replicate: int = 0,
        alone: bool = False,
    ) -> list[RunRecord]:
        """`get_or_train` of each plan (a variant on several seeds), in order: the finished runs
        are read back, and the missing ones train together as one cohort (autoall/training/cohort/_cohort.py)
        unless `cohort` is False or `alone` is set; each is its own child run, logged as soon as
        it ends.

        A run trained in a cohort equals the run trained alone within float tolerance, so it is
        keyed (and reused) the same; its tag `cohort_size` says how many trained together, and
        its record's `arrangement` too. `alone` runs (the report's timed arms) are keyed apart:
        only a run that trained by itself is reused for them.
        """
        if not evaluate_test and data.test_y.numel():
            raise AssertionError("a selection run must not be given the test split")
        records: list[RunRecord | None] = []
        missing: list[tuple[int, dict[str, Any], str]] = []
        for i, plan in enumerate(plans):
            settings = run_settings(
                plan, data, split=split, evaluate_test=evaluate_test, alone=alone
            )
            chash = config_hash(settings)
            found = self._finished(variant, plan, chash, evaluate_test=evaluate_test)
            if found is not None:
                found.replicate = replicate
            records.append(found)
            if found is None:
                missing.append((i, settings, chash))
        together = cohort and not alone
        groups = group_plans([plans[i] for i, _, _ in missing]) if together else None
        for group in groups or [[j] for j in range(len(missing))]:
            todo = [missing[j] for j in group]
            trained = self._train(variant, [plans[i] for i, _, _ in todo], todo, data,
                                  evaluate_test=evaluate_test, replicate=replicate,
                                  alone=alone)  # fmt: skip
            for (i, _, _), record in zip(todo, trained, strict=True):
                records[i] = record
        return [r for r in records if r is not None]

    def _finished(
        self, variant: str, plan: RunPlan, chash: str, *, evaluate_test: bool
    ) -> RunRecord | None:
        """A FINISHED run with key `chash` read back; runs left RUNNING by a killed report end
        KILLED."""
        wanted = FINAL_METRICS if evaluate_test else SELECTION_METRICS
        if chash in self.fresh:  # trained earlier in this report (e.g. a candidate picked twice)
            return replace(self.fresh[chash], variant=variant, reused=True)
        earlier = self.children.get(chash, [])
        for run in earlier:
            if run.info.status == "FINISHED" and set(wanted) <= set(run.data.metrics):
                try:
                    return self._read(plan, variant, run, evaluate_test=evaluate_test)
                except (OSError, MlflowException):  # its predictions are gone: train it again
                    continue
        for run in earlier:  # left RUNNING by a report that was killed
            if run.info.status == "RUNNING":
                self._retrying(self.client.set_terminated, run.info.run_id, "KILLED")
        return None

    def _train(
        self,
        variant: str,
        plans: list[RunPlan],
        keyed: list[tuple[int, dict[str, Any], str]],
        data: DeviceData,
        *,
        evaluate_test: bool,
        on_trained: OnTrained | None = None,
        replicate: int = 0,
        alone: bool = False,
    ) -> list[RunRecord]:
        """Train `plans` (one cohort, or one plan), each its own child run, ended as soon as
        its training ends; a run whose training failed ends FAILED and its error is raised.
        `on_trained` (one plan only) gets the trained model before its run ends; `alone` (one
        plan only) trains it by itself, outside any cohort."""
        assert len(plans) == 1 or not (alone or on_trained), "alone trains one plan at a time"
        role = "report-run" if evaluate_test else "selection-run"
        if variant.startswith("tune-"):  # a control's re-tuning candidate (validation only)
            role = "tuning-run"
        wanted = FINAL_METRICS if evaluate_test else SELECTION_METRICS
        run_ids = []
        for plan, (_, settings, chash) in zip(plans, keyed, strict=True):
            seed = plan.train.seed
            tags = {"mlflow.parentRunId": self.parent_id, "autoall.report": self.name}
            tags |= {"autoall.role": role, "arch": plan.arch, "variant": variant}
            tags |= {"seed": str(seed), "config_hash": chash, "cohort_size": str(len(plans))}
            tags |= {"replicate": str(replicate), "autoall.variant": variant}
            tags |= {"autoall.arm": "baseline" if plan.spec is None else "all"}
            tags |= {"autoall.replicate": str(replicate), "autoall.seed": str(seed)}
            created = self._retrying(
                self.client.create_run,
                self.experiment_id,
                tags=tags,
                run_name=f"{plan.arch}/{variant}/seed{seed}",
            )
            run_ids.append(created.info.run_id)
            self.created[created.info.run_id] = tags
            self._retrying(log_params, self.client, run_ids[-1], settings)
        records: list[RunRecord | None] = [None] * len(plans)
        kept: list[nn.Module] = []
        failures: list[Exception] = []
        ended: set[int] = set()

        def on_end(j: int, outcome: Outcome) -> None:
            ended.add(j)
            if not isinstance(outcome, RunResult):
                self._retrying(self.client.set_terminated, run_ids[j], "FAILED")
                failures.append(outcome)
                return
            self._log_result(run_ids[j], outcome)
            if on_trained is not None and kept:
                on_trained(run_ids[j], kept.pop(), outcome)
            self._retrying(self.client.set_terminated, run_ids[j], "FINISHED")
            metrics = {k: float(v) for k, v in final_metrics(outcome).items() if k in wanted}
            records[j] = record = RunRecord(
                arch=plans[j].arch,
                variant=variant,
                seed=plans[j].train.seed,
                run_id=run_ids[j],
                metrics=metrics,
                val_acc=[s.val_acc for s in outcome.history],
                epoch_seconds=[s.epoch_seconds for s in outcome.history],
                test_predictions=outcome.test_predictions,
                reused=False,
                replicate=replicate,
                arrangement=_arrangement(len(plans)),
            )
            self.fresh[keyed[j][2]] = record

        try:
            if on_trained is None and not alone:
                fit_cohort(plans, data, evaluate_test=evaluate_test, on_end=on_end)
            else:  # one run by itself (timed), or whose model is kept (a member is not a module)
                keep = kept.append if on_trained is not None else None
                on_end(0, fit(plans[0], data, evaluate_test=evaluate_test, on_trained=keep))
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            for j, run_id in enumerate(run_ids):
                if j not in ended:
                    self._retrying(self.client.set_terminated, run_id, status)
            raise
        if failures:
            raise failures[0]
        return [r for r in records if r is not None]

    def _log_result(self, run_id: str, result: RunResult) -> None:
        """Per-epoch metrics (step = epoch), the final ones, and the test predictions."""
        metrics = [m for s in result.history for m in metric_batch(s.metrics(), step=s.epoch)]
        self._log_metrics(
            run_id, metrics + metric_batch(final_metrics(result), step=result.epochs_run)
        )
        if result.test_predictions is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / _PREDICTIONS
                np.save(path, result.test_predictions)
                if why := self._artifact(run_id, path):
                    self.lost.append(f"run {run_id}'s {_PREDICTIONS} not logged ({why})")

    def _log_metrics(self, run_id: str, metrics: list[Any]) -> None:
        """`metrics` in batches of MLflow's most per call."""
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[i : i + MAX_METRICS_PER_BATCH]
            self._retrying(self.client.log_batch, run_id, metrics=batch, synchronous=True)

    def _read(self, plan: RunPlan, variant: str, run: Any, *, evaluate_test: bool) -> RunRecord:
        """A finished run read back: final metrics, per-epoch history, test predictions."""
        run_id = run.info.run_id

        def history(key: str) -> list[float]:
            found = self._retrying(self.client.get_metric_history, run_id, key)
            points = sorted(found, key=lambda m: m.step)
            return [m.value for m in points]

        predictions = None
        if evaluate_test:
            with tempfile.TemporaryDirectory() as tmp:
                path = self._retrying(self.client.download_artifacts, run_id, _PREDICTIONS, tmp)
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
            arrangement=_arrangement(int(run.data.tags.get("cohort_size", "1"))),
        )

    def run_data(self, run_id: str) -> Any:
        """A run's params, metrics and tags (`mlflow.entities.RunData`), read with the retry."""
        return self._retrying(self.client.get_run, run_id).data

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in masked(tags, MAX_TAG_LENGTH).items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            batch = items[i : i + MAX_PARAMS_PER_BATCH]
            self._retrying(self.client.log_batch, run_id, tags=batch, synchronous=True)

    def _artifact(self, run_id: str, path: Path) -> str | None:
        """Log file `path` into run `run_id`; why it could not be (lost logging), or None."""
        try:
            self._retrying(self.client.log_artifact, run_id, str(path))
        except Exception as exc:  # a full or read-only artifact store
            return one_line(exc)
        return None

    def finish(
        self,
        files: Sequence[Path],
        *,
        tags: dict[str, str],
        metrics: Mapping[str, float] | None = None,
    ) -> list[str]:
        """The report's headline `metrics` and `tags` on the parent run (a tag
        `<arch>.conclusion` is also added to the run's description), each of `files` (the
        report's outputs) as its artifact; then it ends FINISHED. Returns what could not be
        logged (artifacts), which is added to the tag `autoall.lost_logging`."""
        why = {p.name: self._artifact(self.parent_id, p) for p in files}
        if failed := [name for name, w in why.items() if w]:
            self.lost.append(f"report files {', '.join(failed)} not logged ({why[failed[0]]})")
        if self.lost:  # after the models' losses, if any
            held = [t for t in [tags.get("autoall.lost_logging", "none")] if t != "none"]
            tags = {**tags, "autoall.lost_logging": " ".join(held + self.lost)}
        said = {
            k.removesuffix(".conclusion"): v for k, v in tags.items() if k.endswith(".conclusion")
        }
        note = self._retrying(self.client.get_run, self.parent_id).data.tags.get(NOTE)
        if said and ours(note):
            tags = {**tags, NOTE: with_conclusions(note or "", said)}
        self.set_tags(self.parent_id, tags)
        if metrics:
            self._log_metrics(self.parent_id, metric_batch(metrics, step=0))
        self.end_parent("FINISHED")
        return list(self.lost)

    def end_parent(self, status: str) -> None:
        self._retrying(self.client.set_terminated, self.parent_id, status)


def _arrangement(size: int) -> str:
    return "alone" if size == 1 else f"cohort of {size}"
