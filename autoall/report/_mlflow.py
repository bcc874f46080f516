"""The report as the MLflow UI shows it: its runs in an experiment of their own, linked both ways
to the studies' experiment, and its verdict as the report run's metrics and tags.

Experiments: a study file `<name>`'s studies (their parent runs and trial runs) are experiment
`<name>` (its runs table filtered to the study parents, `tracking_store.studies_link`, shows every
study's parent run on the first screen however many trials are newer); the report's parent
run `<name> report` and the runs it trains (evaluation, selection, re-tuning) are experiment
`<name> report` (`report_experiment`). The links are the MLflow UI's own addresses, as URL
fragments (`#/experiments/<id>/runs/<run id>`, `run_link`): the report run's tag
`autoall.studies` and its description name the studies' experiment and each study's parent run;
each study parent's tag `autoall.report_run` and its description name the report run; each
experiment's description names the other experiment. A description someone else wrote is kept.

The report run's figures (`run_figures`), per architecture, metrics at step 0 and tags:

- per claim: `<arch>.<claim>.effect` (the mean paired difference), `.ci_low`, `.ci_high` (its
  95 % interval), `.p_difference`, `.p_equivalence`, `.p_adj` (the difference test adjusted over
  the whole report), `.p_adj_equivalence`, `.margin`, `.mde`; tags `<arch>.<claim>.verdict` and
  `.reason`. A figure the data could not give (an untestable claim) is left out.
- per variant: `<arch>.<variant>.acc_mean` and `.acc_sd` (test accuracy over every run, seeds and
  replicates), `.acc_ci_low` and `.acc_ci_high` (the 95 % t interval of the mean with the claims'
  unit: the replicates' means, or the seeds with one replicate) and `.n` (runs).
- as before: `<arch>.all.test_acc_mean`, `<arch>.tuned-baseline.test_acc_mean` and
  `<arch>.accuracy.holm_p`.

Keys are valid MLflow keys (`metric_key`): '@' becomes '_at_', '%' 'pct', and any character
MLflow refuses or that differs between systems (spaces, ':') '_'; so `all@10%` is `all_at_10pct`.
"""

from __future__ import annotations

import math
import re

from autoall.report import _decision as decision
from autoall.report import _stats as stats
from autoall.report._names import VariantName
from autoall.report._types import Claim, Report
from autoall.tracking import studies_link

NOTE = "mlflow.note.content"  # the description of a run or an experiment in the MLflow UI
_OURS = "**autoall"  # how the descriptions autoall writes begin (others' are kept)


def report_experiment(name: str) -> str:
    """The experiment of the report of study file `name`: `<name> report`."""
    return f"{name} report"


def run_link(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's address of an experiment's runs table, or of one run, as a URL fragment."""
    return f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")


def ours(note: str | None) -> bool:
    """Whether a description may be (re)written: there is none, or autoall wrote it."""
    return not note or note.startswith(_OURS)


def report_note(study_experiment: tuple[str, str], parents: list[tuple[str, str]]) -> str:
    """The report run's description: the studies' experiment (name, id) and each study's
    parent run (study name, run id), as links."""
    name, eid = study_experiment
    studies = ", ".join(f"[{study}]({run_link(eid, run)})" for study, run in parents) or "none"
    return (
        f"{_OURS} report** of the studies in experiment [{name}]({run_link(eid)}): {studies}. "
        "The runs it trained (evaluation, selection, re-tuning) are nested below it; its "
        "verdicts are its tags `<arch>.<claim>.verdict`, its figures its metrics."
    )


_CONCLUSION = "\n\n**Conclusion**"  # where the report run's description gives its conclusions


def with_conclusions(note: str, conclusions: dict[str, str]) -> str:
    """The report run's description `note` with the conclusion of each architecture (arch ->
    sentence) after it, in place of the ones an earlier run of the report wrote."""
    lines = "".join(f"\n\n*{arch}*: {text}" for arch, text in conclusions.items())
    return note.split(_CONCLUSION, 1)[0] + _CONCLUSION + lines


def study_note(study: str, experiment: tuple[str, str], report_run: str) -> str:
    """A study parent's description: the report run and the report's experiment (name, id)."""
    name, eid = experiment
    return (
        f"{_OURS} study** {study}; its report: run [{name}]({run_link(eid, report_run)}) in "
        f"experiment [{name}]({run_link(eid)}), with every run the report trained."
    )


def study_experiment_note(path: str, report: tuple[str, str], studies_id: str) -> str:
    """The studies' experiment's description: the report's experiment (name, id), and this
    experiment (id `studies_id`) filtered to its study parents (`tracking_store.studies_link`)."""
    name, eid = report
    return (
        f"{_OURS} studies** of {path}; their report: experiment [{name}]({run_link(eid)}) (the "
        "report run and every run it trained). Here: one parent run per study, its trials "
        f"nested below it; [every study, without its trials]({studies_link(studies_id)})."
    )


def report_experiment_note(studies: tuple[str, str]) -> str:
    """The report's experiment's description: the studies' experiment (name, id)."""
    name, eid = studies
    return (
        f"{_OURS} report** of the studies in experiment [{name}]({run_link(eid)}) ([every "
        f"study, without its trials]({studies_link(eid)})): the report run and, nested below "
        "it, every run it trained."
    )


def metric_key(*parts: str) -> str:
    """`parts` joined by '.', each made a valid MLflow key on every system."""
    cleaned = (p.replace("@", "_at_").replace("%", "pct") for p in parts)
    return ".".join(re.sub(r"[^\w.\-/]", "_", p) for p in cleaned)


def run_figures(report: Report) -> tuple[dict[str, float], dict[str, str]]:
    """The report run's metrics and tags (see the module doc)."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for rep in report.archs:
        names = [v.name for rp in rep.replicates for v in rp.variants]
        for variant in dict.fromkeys(names):
            runs = rep.runs_of(variant)
            if not runs:
                continue
            accs = [r.metrics["test_acc"] for r in runs]
            mean, sd = stats.mean_std(accs)
            key = metric_key(rep.arch, variant)
            metrics |= {f"{key}.acc_mean": mean, f"{key}.acc_sd": sd, f"{key}.n": len(accs)}
            by_replicate: dict[int, list[float]] = {}
            for run in runs:
                by_replicate.setdefault(run.replicate, []).append(run.metrics["test_acc"])
            try:
                ci = decision.mixed_effect(list(by_replicate.values())).ci
            except ValueError:  # seeds missing in a replicate: no balanced interval
                ci = None
            if ci is not None:
                metrics |= {f"{key}.acc_ci_low": ci[0], f"{key}.acc_ci_high": ci[1]}
            if variant in (VariantName.ALL, VariantName.TUNED_BASELINE):
                metrics[f"{key}.test_acc_mean"] = mean
        for claim in rep.claims:
            claim_metrics, claim_tags = claim_figures(claim)
            metrics |= claim_metrics
            tags |= claim_tags
            if claim.key == "accuracy" and claim.adjusted_p is not None:
                metrics[metric_key(rep.arch, "accuracy", "holm_p")] = claim.adjusted_p
    finite = {k: float(v) for k, v in metrics.items() if not math.isnan(v)}
    return finite, tags


def claim_figures(claim: Claim) -> tuple[dict[str, float], dict[str, str]]:
    """One claim's metrics and tags, keyed `<arch>.<claim>.<figure>` (see the module doc)."""
    key = metric_key(claim.arch, claim.key)
    test = claim.test
    est = test.estimate if test is not None else None
    values: dict[str, float | None] = {
        "effect": est.mean if est is not None else None,
        "ci_low": est.ci[0] if est is not None and est.ci is not None else None,
        "ci_high": est.ci[1] if est is not None and est.ci is not None else None,
        "p_difference": test.p_difference if test is not None else None,
        "p_equivalence": test.p_equivalence if test is not None else None,
        "p_adj": claim.adjusted_p,
        "p_adj_equivalence": claim.adjusted_p_equivalence,
        "margin": test.margin if test is not None else None,
        "mde": claim.mde,
    }
    metrics = {f"{key}.{k}": float(v) for k, v in values.items() if v is not None}
    tags = {f"{key}.verdict": claim.verdict, f"{key}.reason": claim.reason or "-"}
    return metrics, tags
