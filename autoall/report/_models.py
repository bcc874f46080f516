"""The report's winners in the Model Registry: `<study>-<arch>-all` and `<study>-<arch>-baseline`.

Per architecture, the run of the first evaluation seed of the ALL winner (variant "all") and of
the tuned baseline (variant "tuned-baseline") logs its model when it is trained, as part of that
run (autoall/tracking/_model_registry.py), in the studies' experiment `<study>` (the report's runs are in
`<study> report`) and named for what it is, `<study>-<arch>-all-r<replicate>-seed<seed>` (or
`-baseline-`); each such run becomes one version of its registered model, tagged
with the trial it came from (number and parameters), its validation and test figures, the data
split and the report run. A rerun that reuses the run registers nothing new: the version is a tag
of the run (and the registry is asked by run id before a version is made).

Nothing here fails the report: a model that cannot be logged or registered (no registry, no
permission, a store that is down) is said on the terminal, noted in the report and recorded on
the report run (tag `autoall.lost_logging`), with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from autoall.config import StudyConfig
from autoall.errors import one_line
from autoall.report._names import PUBLISHED, VariantName
from autoall.report._store import OnTrained, RunStore
from autoall.report._types import RunRecord, Selection
from autoall.tracking import (
    LoggedModel,
    accuracy,
    final_metrics,
    log_model,
    logged_model_name,
    register,
    registered_name,
    serving_copy,
    version_tags,
)
from autoall.training import DeviceData, RunResult

_EXAMPLE_IMAGES = 2  # input example: two train images (a batch dimension that stays dynamic)
_VERSION_METRICS = ("test_acc", "test_loss", "final_val_acc", "best_val_acc", "final_val_loss")


@dataclass
class Published:
    """One registered (or not) model of the report."""

    name: str  # registered model name
    arch: str
    variant: str  # VariantName.ALL or VariantName.TUNED_BASELINE (a key of PUBLISHED)
    run_id: str
    trial: int
    test_acc: float | None = None  # the run's, as reported
    model_test_acc: float | None = None  # the logged float32 model's, on the same test split
    model_id: str | None = None
    version: str | None = None
    problem: str | None = None  # why it was not logged or not registered

    def line(self) -> str:
        """One sentence for the report and the terminal."""
        if self.problem is not None:
            return f"The {self.variant} model of {self.arch} was not registered as {self.name}: {self.problem}."
        same = (
            "reproduced by the logged model"
            if self.model_test_acc == self.test_acc
            else f"the logged float32 model: {_pct(self.model_test_acc)}"
        )
        return (
            f"Registered model {self.name} version {self.version}: trial #{self.trial}, run "
            f"{self.run_id}, test accuracy {_pct(self.test_acc)} ({same}); load it with "
            f'`autoall.load_best("{self.name}")`.'
        )


class Publisher:
    """Logs and registers the report's winners through a `RunStore`."""

    def __init__(self, *, store: RunStore, cfg: StudyConfig, data: DeviceData) -> None:
        self.store, self.cfg, self.data = store, cfg, data
        self._done: dict[str, Published] = {}  # by run id, for runs trained in this report
        self.published: list[Published] = []  # every settled model of the report, in order

    def hook(self, arch: str, variant: str, selection: Selection) -> OnTrained:
        """The `on_trained` of the run that carries the model of `variant` (see module doc)."""

        def on_trained(run_id: str, model: nn.Module, result: RunResult) -> None:
            self._done[run_id] = self._publish(arch, variant, selection, run_id, model, result)

        return on_trained

    def settle(self, arch: str, variant: str, selection: Selection, run: RunRecord) -> Published:
        """What became of the model of `run`: published as it trained, or (a reused run) read
        from its tags and registered if an earlier report could not."""
        if run.run_id in self._done:
            pub = self._done.pop(run.run_id)
        else:
            pub = self._reused(arch, variant, selection, run)
        self.published.append(pub)
        return pub

    def _reused(self, arch: str, variant: str, selection: Selection, run: RunRecord) -> Published:
        pub = self._new(arch, variant, selection, run.run_id, run.metrics.get("test_acc"))
        try:
            found = self.store.run_data(run.run_id)
        except Exception as exc:
            pub.problem = f"its run could not be read: {one_line(exc, 400)}"
            return pub
        tags = found.tags
        if "autoall.model_id" not in tags:
            pub.problem = (
                "its run (reused, not retrained) holds no logged model: it was trained before "
                "models were logged, or logging failed then"
            )
            return pub
        pub.model_id = tags["autoall.model_id"]
        if "autoall.model_test_acc" in tags:
            pub.model_test_acc = float(tags["autoall.model_test_acc"])
        if "autoall.registered_version" in tags:  # registered by the report that trained it
            pub.version = tags["autoall.registered_version"]
            return pub
        self._register(pub, selection, found.metrics)
        return pub

    def _new(
        self, arch: str, variant: str, selection: Selection, run_id: str, test_acc: float | None
    ) -> Published:
        name = registered_name(self.cfg.name, arch, PUBLISHED[variant])
        trial = selection.winner.trial
        return Published(name, arch, variant, run_id, trial, test_acc=test_acc)

    def _publish(
        self,
        arch: str,
        variant: str,
        selection: Selection,
        run_id: str,
        model: nn.Module,
        result: RunResult,
    ) -> Published:
        pub = self._new(arch, variant, selection, run_id, result.test_acc)
        data = self.data
        made = self.store.created.get(run_id, {})  # the run's tags: its replicate and seed
        kind, replicate, seed = PUBLISHED[variant], made.get("replicate", "0"), made.get("seed", "")
        try:
            serving = serving_copy(model, data)
            pub.model_test_acc = accuracy(serving, data.test_x.cpu(), data.test_y.cpu())
            example = data.train_x[:_EXAMPLE_IMAGES].cpu().numpy()
            logged = log_model(
                self.store.uri,
                run_id,
                serving,
                example=example,
                num_classes=data.num_classes,
                tags={"autoall.registered_model": pub.name, "autoall.trial": str(pub.trial)},
                name=logged_model_name(self.cfg.name, arch, kind, f"r{replicate}", f"seed{seed}"),
                experiment_id=self.store.study_experiment_id,
            )
            pub.model_id = logged.model_id
            self.store.set_tags(
                run_id,
                {
                    "autoall.model_id": logged.model_id,
                    "autoall.model_test_acc": repr(pub.model_test_acc),
                },
            )
        except Exception as exc:
            pub.problem = f"logging it failed: {one_line(exc, 400)}"
            return pub
        self._register(pub, selection, final_metrics(result))
        return pub

    def _register(self, pub: Published, selection: Selection, metrics: dict[str, float]) -> None:
        assert pub.model_id is not None
        winner, cfg = selection.winner, self.cfg
        figures = {k: metrics[k] for k in _VERSION_METRICS if k in metrics}
        figures["selection_val_acc"] = winner.mean_val_acc  # mean over the selection seeds
        figures["search_val_acc"] = winner.value  # the trial's own, on the search seed
        if pub.model_test_acc is not None:
            figures["model_test_acc"] = pub.model_test_acc
        root = cfg.data.root
        tags = version_tags(
            data={
                "name": cfg.data.name,
                "root": str(Path(root).resolve()) if root else "",
                "val_fraction": cfg.data.val_fraction,
                "split_seed": cfg.data.split_seed,
            },
            params=winner.params,
            metrics=figures,
            extra={
                "autoall.study": selection.study,
                "autoall.trial": winner.trial,
                "autoall.arch": pub.arch,
                "autoall.variant": pub.variant,
                "autoall.run": pub.run_id,
                "autoall.report_run": self.store.parent_id,
            },
        )
        what = "ALL winner" if pub.variant == VariantName.ALL else "tuned-baseline winner"
        try:
            pub.version = register(
                self.store.uri,
                self.store.client,
                name=pub.name,
                logged=LoggedModel(pub.model_id, f"models:/{pub.model_id}"),
                run_id=pub.run_id,
                tags=tags,
                description=(
                    f"The {what} of {selection.study} ({cfg.path}), retrained by `autoall "
                    f'report` on its first evaluation seed. `autoall.load_best("{pub.name}")` '
                    "loads it with its test split."
                ),
            )
            self.store.set_tags(
                pub.run_id,
                {"autoall.registered_model": pub.name, "autoall.registered_version": pub.version},
            )
        except Exception as exc:
            pub.problem = f"registering it failed: {one_line(exc, 400)}"


def report_tags(published: list[Published]) -> dict[str, str]:
    """The report run's tags: `registered.<name>` = version, and `autoall.lost_logging`: what
    could not be logged or registered, with the reasons ("none" when nothing was lost)."""
    tags: dict[str, str] = {}
    lost = []
    for pub in published:
        if pub.problem is not None:
            lost.append(pub.line())
        elif pub.version is not None:
            tags[f"registered.{pub.name}"] = pub.version
    # the report run is reused by reruns: a rerun that lost nothing says so
    tags["autoall.lost_logging"] = " ".join(lost) if lost else "none"
    return tags


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
