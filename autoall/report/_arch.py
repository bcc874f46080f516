"""One architecture of a report: each replicate's winners, its variants (re-tuned where a
change frees knobs) and their evaluation runs, then the claims.

Replicate r is one independent search of each arm. Its winners are picked on validation with
its own selection seeds; its variants train on the shared evaluation seeds, so every run pairs
with the other arm's run of the same (replicate, seed). The ALL and the tuned baseline train
alone (their seconds are their own); the other variants' seeds train as cohorts. The replicate
whose winner scored best on validation registers its model (first evaluation seed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna

from autoall.config import KINDS, Kind, ParamSpec, ReportOptions, StudyConfig
from autoall.errors import UserError
from autoall.report import _claims as claims
from autoall.report._budget import arm_budget, boundary_notes, budget_notes, default_margin
from autoall.report._models import Publisher
from autoall.report._names import PUBLISHED, VariantName, split_share
from autoall.report._retune import FREED, REDUCED, retune
from autoall.report._selection import finished_trials, select
from autoall.report._stats import time_to_target
from autoall.report._store import RunStore
from autoall.report._types import ArchReport, Replicate, RunRecord, Selection, Variant
from autoall.report._variants import arch_variants
from autoall.study import count_trials
from autoall.training import DeviceData, without_test

EVAL_SEED_OFFSET = 1000  # evaluation seed i is search seed + 1000 + i
SELECTION_SEED_OFFSET = 2000  # replicate r's selection seed j is s0 + 2000 + 100 r + j
SELECTION_SEED_STRIDE = 100  # selection seeds per replicate at most
TARGET_FRACTION = 0.99  # efficiency target: 99 % of the weaker winner's mean selection val acc


class ReportError(UserError, RuntimeError):
    """A report cannot start: a missing study file or study, or one without COMPLETE trials."""


def eval_seeds(search_seed: int, k: int) -> tuple[int, ...]:
    return tuple(search_seed + EVAL_SEED_OFFSET + i for i in range(k))


def selection_seeds(search_seed: int, k: int, replicate: int = 0) -> tuple[int, ...]:
    """Replicate `replicate`'s own selection seeds (k <= SELECTION_SEED_STRIDE)."""
    first = search_seed + SELECTION_SEED_OFFSET + SELECTION_SEED_STRIDE * replicate
    return tuple(first + j for j in range(k))


@dataclass
class ArchRun:
    """What one architecture's report needs while it trains."""

    cfg: StudyConfig
    opts: ReportOptions
    arch: str
    data: DeviceData
    store: RunStore
    publisher: Publisher
    say: Callable[[str], None]
    device: str
    tuning_trials: int

    def __post_init__(self) -> None:
        self.split = {k: getattr(self.cfg.data, k) for k in ("name", "val_fraction", "split_seed")}
        self.no_test = without_test(self.data)
        self.s0 = self.cfg.train_config(self.arch).seed

    def report(self, pairs: list[tuple[optuna.Study, optuna.Study]]) -> ArchReport:
        """Select every replicate's winners, train every variant, test the claims."""
        rep = ArchReport(arch=self.arch, replicates=[])
        for r, (study, base_study) in enumerate(pairs):
            rep.replicates.append(self._select(rep, r, study, base_study))
        accs = [rp.selections[Kind.BASELINE].winner.mean_val_acc for rp in rep.replicates]
        test_size = int(self.data.test_y.numel())
        if self.cfg.report.margin is not None:
            rep.margin = self.cfg.report.margin / 100
            rep.margin_source = "the study file's report.margin"
        else:
            rep.margin = default_margin(sum(accs) / len(accs), test_size)
            rep.margin_source = (
                "one standard error of a test accuracy at the tuned baseline's validation "
                f"accuracy ({100 * sum(accs) / len(accs):.1f} %) on {test_size:,} test images"
            )
        publish = {
            variant: max(
                rep.replicates, key=lambda rp: (rp.selections[kind].winner.mean_val_acc, -rp.index)
            ).index
            for variant, kind in PUBLISHED.items()
        }
        for rp in rep.replicates:
            variants, notes = arch_variants(
                self.cfg, self.arch, rp.selections, device=self.device, data=self.data,
                fractions=self.opts.fractions, replicate=rp.index,
            )  # fmt: skip
            rep.notes += notes
            rp.variants = [self._retuned(rep, rp, v) for v in variants]
            for variant in rp.variants:
                rep.runs += self._evaluate(rep, rp, variant, carries=publish.get(variant.name))
        set_target(rep, self.opts.target_acc)
        rep.claims = claims.arch_claims(rep, test_y=self.data.test_y.cpu().numpy())
        return rep

    def _select(
        self, rep: ArchReport, r: int, study: optuna.Study, base_study: optuna.Study
    ) -> Replicate:
        budget = min(len(finished_trials(study)), len(finished_trials(base_study)))
        rp = Replicate(r, study, base_study, budget, {})
        self._pick(rep, rp, Kind.ALL, Kind.ALL, study)
        self._pick(rep, rp, Kind.BASELINE, Kind.BASELINE, base_study)
        if any(kind not in rp.selections for kind in KINDS):
            raise ReportError(
                f"{self.arch}: a study of replicate {r} has no COMPLETE trial within its first "
                f"{budget}."
            )
        if rp.selections[Kind.ALL].winner.params.get("aux_loss") == "none":
            accept = lambda p: p.get("aux_loss") != "none"  # noqa: E731
            custom = VariantName.CUSTOM  # the custom-loss ALL's trial, when not the winner
            if not self._pick(rep, rp, custom, Kind.ALL, study, accept=accept, label="custom-loss"):
                rep.notes.append(
                    f"Replicate {r}: no trial of the ALL study used a custom loss (aux_loss other "
                    "than none): the custom-loss claim cannot be tested there."
                )
        rp.arms = {
            Kind.ALL: arm_budget(study, budget, self.cfg.sampler),
            Kind.BASELINE: arm_budget(base_study, budget, self.cfg.sampler),
        }
        if budget < count_trials(study.get_trials(deepcopy=False)).done:
            rep.notes.append(
                f"{study.study_name} holds more finished trials than its tuned baseline; both "
                f"are judged on their first {budget}."
            )
        rep.notes += [n for s in rp.selections.values() for n in s.notes]
        rep.notes += budget_notes(study, base_study)
        rep.notes += boundary_notes(self.cfg, self.arch, rp)
        return rp

    def _pick(
        self,
        rep: ArchReport,
        rp: Replicate,
        key: str,
        kind: Kind,
        study: optuna.Study,
        **extra: Any,
    ) -> Selection | None:
        found = select(
            self.cfg,
            self.arch,
            kind,
            study,
            budget=rp.budget,
            k=self.opts.count("top_k"),
            seeds=selection_seeds(self.s0, self.opts.count("selection_seeds"), rp.index),
            data=self.no_test,
            store=self.store,
            split=self.split,
            device=self.device,
            cohort=self.opts.cohorts,
            replicate=rp.index,
            **extra,
        )
        if found is None:
            return None
        rp.selections[key], runs = found
        rep.selection_runs += runs
        w = rp.selections[key].winner
        self.say(
            f"{self.arch} r{rp.index}: {key} winner trial #{w.trial} (val acc "
            f"{w.mean_val_acc:.4f} over {len(w.val_acc)} selection seeds, "
            f"{len(rp.selections[key].ranked)} candidates)"
        )
        return rp.selections[key]

    def _retuned(self, rep: ArchReport, rp: Replicate, variant: Variant) -> Variant:
        """`variant` re-tuned on what its change frees (report_retune.FREED), or labelled
        untuned when there is no budget or nothing to free."""
        _, share = split_share(variant.name)
        key = variant.name if share is None else REDUCED
        if key not in FREED:
            return variant
        ranges: dict[str, ParamSpec] = {**self.cfg.space(self.arch, Kind.BASELINE)}
        if "all_lr" in self.cfg.search:
            ranges["all_lr"] = self.cfg.search["all_lr"]
        space = {
            k: ranges[k]
            for k in FREED[key]
            if k in ranges and not (ranges[k].type == "categorical" and len(ranges[k].choices) < 2)
        }
        if self.tuning_trials == 0 or not space:
            why = (
                "tuning_trials is 0" if self.tuning_trials == 0 else "the knobs it frees are fixed"
            )
            return replace(
                variant, untuned=f"{variant.label}: {why}, so it keeps the winner's knobs"
            )
        plan, summary, runs = retune(
            self.store,
            name=variant.name,
            plan=variant.plan,
            space=space,
            trials=self.tuning_trials,
            seed=self.s0,
            data=self.no_test,
            split=self.split,
            replicate=rp.index,
            cohort=self.opts.cohorts,
        )
        rp.retuned.append(summary)
        rep.tuning_runs += runs
        knobs = ", ".join(f"{k}={v:.4g}" for k, v in summary.best.items())
        return replace(
            variant,
            plan=plan,
            note=f"{variant.note}; re-tuned ({', '.join(summary.knobs)}; {summary.trials} "
            f"candidates on validation): {knobs}",
        )

    def _evaluate(
        self, rep: ArchReport, rp: Replicate, variant: Variant, *, carries: int | None
    ) -> list[RunRecord]:
        """`variant` on every evaluation seed: the timed arms alone, the others as cohorts; the
        published replicate's winner logs its model on the first seed."""
        arch, r, store = self.arch, rp.index, self.store
        seeds = eval_seeds(self.s0, self.opts.count("seeds"))
        plans = [variant.plan.with_seed(seed) for seed in seeds]
        chosen = rp.selections[PUBLISHED[variant.name]] if carries == r else None
        common: dict[str, Any] = dict(split=self.split, evaluate_test=True, replicate=r)
        first: list[RunRecord] = []
        if chosen is not None:
            hook = self.publisher.hook(arch, variant.name, chosen)
            first = [
                store.get_or_train(variant.name, plans[0], self.data, on_trained=hook,
                                   alone=variant.timed, **common)
            ]  # fmt: skip
        runs = first + store.get_or_train_seeds(
            variant.name, plans[len(first):], self.data, cohort=self.opts.cohorts,
            alone=variant.timed, **common,
        )  # fmt: skip
        for seed, run in zip(seeds, runs, strict=True):
            reused = " (reused)" if run.reused else ""
            acc = run.metrics["test_acc"]
            self.say(f"{arch} r{r} {variant.name} seed {seed}: test_acc {acc:.4f}{reused}")
            if chosen is not None and seed == seeds[0]:  # the run that carries the model
                published = self.publisher.settle(arch, variant.name, chosen, run)
                self.say(f"{arch}: {published.line()}")
                rep.notes.append(published.line())
        return runs


def set_target(rep: ArchReport, target: float | None) -> None:
    """The efficiency target (validation, never test), then each run's epochs and seconds to it."""
    if target is None:
        means = [
            sum(rp.selections[k].winner.mean_val_acc for rp in rep.replicates) / len(rep.replicates)
            for k in KINDS
        ]
        target = TARGET_FRACTION * min(means)
        rep.target_source = (
            f"{100 * TARGET_FRACTION:g} % of the weaker winner's mean final validation accuracy "
            "on the selection seeds"
        )
    else:
        rep.target_source = "--target-acc"
    rep.target_acc = target
    for run in rep.runs:
        run.target_epoch, run.target_seconds = time_to_target(
            run.val_acc, run.epoch_seconds, target
        )
