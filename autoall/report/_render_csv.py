"""results.csv and claims.csv: the report's runs and claims as tables, at full precision.

results.csv has one row per run of the report, equal to its MLflow metrics, its `role` saying
what it was: `evaluation` (a variant on an evaluation seed, tested on the test split),
`selection` (a top-k trial retrained on a selection seed, validation only) or `tuning` (a
control's re-tuning candidate, validation only); the figures a run has not (a selection run's
test accuracy) are empty. An evaluation run that stands for two variants (the custom-loss ALL
when it is the ALL winner) has a row for each. claims.csv has one row per claim with every
figure the verdict rests on.
"""

from __future__ import annotations

import csv
from pathlib import Path

from autoall.report._types import Claim, Report, RunRecord

RUN_COLUMNS: tuple[str, ...] = (
    "arch", "role", "variant", "replicate", "seed", "arrangement", "test_acc", "final_val_acc", "train_eval_acc", "gap",
    "median_epoch_seconds", "wall_seconds", "target_epoch", "target_seconds", "params_total",
    "params_all", "mlflow_run_id",
)  # fmt: skip
CLAIM_COLUMNS: tuple[str, ...] = (
    "arch", "claim", "variant", "comparator", "metric", "direction", "replicates", "seeds",
    "unit", "df", "effect", "low", "high", "p", "test_noise_low", "test_noise_high",
    "p_test_noise", "margin", "p_difference", "p_equivalence", "adjusted_p",
    "adjusted_p_equivalence", "verdict", "reason", "untuned", "mde", "n_needed",
)  # fmt: skip


def write_csv(report: Report, folder: Path) -> None:
    """results.csv (one row per run: evaluation, then selection, then re-tuning; full
    precision, equal to the MLflow metrics) and claims.csv (one row per claim)."""
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        for rep in report.archs:
            names = [v.name for rp in rep.replicates for v in rp.variants]
            for name in dict.fromkeys(names):  # each variant once, in replicate 0's order first
                writer.writerows(_run_row(r, "evaluation") for r in rep.runs_of(name))
            for role, runs in (("selection", rep.selection_runs), ("tuning", rep.tuning_runs)):
                # a candidate picked twice (the ALL's and the custom-loss selection) is one run
                first: dict[str, RunRecord] = {}
                for run in runs:
                    first.setdefault(run.run_id, run)
                writer.writerows(_run_row(r, role) for r in first.values())
    with (folder / "claims.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CLAIM_COLUMNS)
        writer.writeheader()
        writer.writerows(_claim_csv(c) for c in report.claims)


def _run_row(r: RunRecord, role: str) -> dict[str, object]:
    m = r.metrics
    figures = ("test_acc", "final_val_acc", "train_eval_acc", "wall_seconds",
               "median_epoch_seconds")  # fmt: skip
    return {
        "arch": r.arch,
        "role": role,
        "variant": r.variant,
        "replicate": r.replicate,
        "seed": r.seed,
        "arrangement": r.arrangement,
        **{k: m.get(k, "") for k in figures},
        "gap": r.gap if "test_acc" in m and "train_eval_acc" in m else "",
        "target_epoch": r.target_epoch,  # None (not reached, or not evaluated): empty
        "target_seconds": r.target_seconds,
        "params_total": int(m["params_total"]),
        "params_all": int(m["params_all"]) if "params_all" in m else "",
        "mlflow_run_id": r.run_id,
    }


def _claim_csv(c: Claim) -> dict[str, object]:
    t = c.test
    est = t.estimate if t is not None else None
    boot = t.bootstrap if t is not None else None
    ci = est.ci if est is not None else None

    def value(x: object) -> object:
        return "" if x is None else x

    return {
        "arch": c.arch,
        "claim": c.key,
        "variant": c.variant,
        "comparator": c.comparator,
        "metric": c.metric,
        "direction": c.direction,
        "replicates": value(est.replicates if est else None),
        "seeds": value(est.seeds if est else None),
        "unit": value(est.unit if est else None),
        "df": value(est.df if est else None),
        "effect": value(est.mean if est else None),
        "low": value(ci[0] if ci else None),
        "high": value(ci[1] if ci else None),
        "p": value(est.p if est else None),
        "test_noise_low": value(boot.ci[0] if boot else None),
        "test_noise_high": value(boot.ci[1] if boot else None),
        "p_test_noise": value(boot.p if boot else None),
        "margin": value(t.margin if t else None),
        "p_difference": value(t.p_difference if t else None),
        "p_equivalence": value(t.p_equivalence if t else None),
        "adjusted_p": value(c.adjusted_p),
        "adjusted_p_equivalence": value(c.adjusted_p_equivalence),
        "verdict": c.verdict,
        "reason": c.reason,
        "untuned": value(t.untuned if t else None),
        "mde": value(c.mde),
        "n_needed": value(c.n_needed),
    }
