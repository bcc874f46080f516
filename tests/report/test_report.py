"""`autoall report`: the equal-budget tuned baseline, independent replicates, selection on
validation only, re-tuned controls, paired seeds, claims adjusted together, files equal to the
MLflow runs, reuse, the HTML page in a real browser, and the errors that must leave nothing
behind.

One tiny digits report (mlp, 3 epochs, 3 trials, 2 replicates, 2 evaluation seeds, top-4
selection on one seed, 2 re-tuning candidates) is built once for the module from the ALL
studies alone, so the report runs the missing tuned baselines itself; its first attempt is
interrupted on purpose, so continuing is tested too.
"""

from __future__ import annotations

import base64
import csv
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _helpers import chromium
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient

import autoall.report._store
from autoall._provenance import code_version
from autoall.cli._main import main
from autoall.report import _decision as decision
from autoall.report import _stats_across as stats_across
from autoall.report._out import MANIFEST
from autoall.report._store import config_hash, run_settings
from autoall.report._types import FINAL_METRICS

SEEDS = 2
REPLICATES = 2
EPOCHS = 3  # 10 steps an epoch at batch 128: the 10 % and 30 % shares train 30 and 10 epochs
TOP_K = 4  # more than the study's 3 trials: the report says so and uses what exists
FIGURES = [
    "learning_curves_mlp",
    "test_acc_mlp",
    "paired_differences_mlp",
    "optimisation_history_t_mlp",
    "optimisation_history_t_mlp_tuned-baseline",
    "optimisation_history_t_mlp_r1",
    "optimisation_history_t_mlp_tuned-baseline_r1",
    "param_importances_mlp",
    "budget_curves_mlp",
]
EPOCHS_OF = {"@10%": 30, "@30%": 10}  # equal optimizer steps on a share of the train split


@dataclass
class Built:
    root: Path
    out: Path
    first_exit: int  # the interrupted attempt
    first_trained: int
    trained: int  # report runs trained by the attempt that finished
    selection_runs: int  # selection and re-tuning runs (validation only)
    first_output: str
    output: str
    rows: list[dict[str, str]]
    claims: list[dict[str, str]]
    calls: list[tuple[bool, int]] = field(default_factory=list)  # (evaluate_test, test images)
    cohorts: list[tuple[bool, int]] = field(default_factory=list)  # (evaluate_test, runs)

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}")  # absolute path

    def storage(self) -> str:
        return f"sqlite:///{self.root / 'autoall.db'}"


def _report(*args: str, target: str = "study.yaml") -> Any:
    options = ["--seeds", str(SEEDS), "--top-k", str(TOP_K), "--selection-seeds", "1"]
    return CliRunner().invoke(main, ["report", target, *options, *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread is fastest on a busy machine
    try:
        return _build(tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)


def _build(root: Path) -> Built:
    """The ALL study alone, a report interrupted by Ctrl-C at its 6th training run, then the
    report that finishes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_study(
            root / "study.yaml",
            train={"epochs": EPOCHS},
            n_trials=3,
            replicates=REPLICATES,
            report={"tuning_trials": 2},
        )
        ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--no-baseline"])
        assert ran.exit_code == 0, ran.output

        real_fit, calls, seen, cohorts = autoall.report._store.fit_cohort, [], [], []

        def interrupting(plans: Any, data: Any, **kwargs: Any) -> Any:
            logged = kwargs["on_end"]

            def on_end(i: int, outcome: Any) -> None:
                calls.append(1)
                if len(calls) == 6:  # 5 runs finished, then Ctrl-C
                    raise KeyboardInterrupt
                logged(i, outcome)

            return real_fit(plans, data, **{**kwargs, "on_end": on_end})

        real_alone = autoall.report._store.fit  # a published winner's first seed trains alone

        def interrupting_alone(plan: Any, data: Any, **kwargs: Any) -> Any:
            result = real_alone(plan, data, **kwargs)
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
            return result

        mp.setattr(autoall.report._store, "fit_cohort", interrupting)
        mp.setattr(autoall.report._store, "fit", interrupting_alone)
        first = _report()
        assert not (root / "reports").exists()  # nothing written half-way

        def counting(plans: Any, data: Any, **kwargs: Any) -> Any:
            evaluate_test = bool(kwargs.get("evaluate_test"))
            seen.extend((evaluate_test, int(data.test_y.numel())) for _ in plans)
            cohorts.append((evaluate_test, len(plans)))
            return real_fit(plans, data, **kwargs)

        def counting_alone(plan: Any, data: Any, **kwargs: Any) -> Any:
            seen.append((bool(kwargs.get("evaluate_test")), int(data.test_y.numel())))
            cohorts.append((bool(kwargs.get("evaluate_test")), 1))
            return real_alone(plan, data, **kwargs)

        mp.setattr(autoall.report._store, "fit_cohort", counting)
        mp.setattr(autoall.report._store, "fit", counting_alone)
        result = _report()
        assert result.exit_code == 0, result.output
        out = root / "reports" / "t"
        with (out / "results.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["role"] == "evaluation"]
        with (out / "claims.csv").open() as f:
            claims = list(csv.DictReader(f))
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t report")  # the report's runs
    selection = [
        run
        for role in ("selection-run", "tuning-run")
        for run in client.search_runs(
            [experiment.experiment_id], f"tags.\"autoall.role\" = '{role}'", max_results=5000
        )
    ]
    return Built(
        root=root,
        out=out,
        first_exit=first.exit_code,
        first_trained=len(calls) - 1,
        trained=len(seen),
        selection_runs=sum(1 for r in selection if r.info.status == "FINISHED"),
        first_output=first.output,
        output=result.output,
        rows=rows,
        claims=claims,
        calls=seen,
        cohorts=cohorts,
    )


def test_an_interrupted_report_writes_nothing_and_the_rerun_continues(built: Built) -> None:
    assert built.first_exit == 130
    assert built.first_trained == 5
    # every run exactly once over both attempts: the 5 finished before Ctrl-C were reused
    assert built.trained == len(built.rows) + built.selection_runs - 5


def test_the_report_ran_the_missing_tuned_baseline_with_the_same_budget(built: Built) -> None:
    assert (
        "t/mlp/tuned-baseline holds 0 of 3, t/mlp/tuned-baseline/r1 holds 0 of 3 finished "
        "trials; running the rest (equal budget)"
    ) in built.first_output
    for suffix in ("", "/r1"):
        ours = optuna.load_study(study_name=f"t/mlp{suffix}", storage=built.storage())
        theirs = optuna.load_study(
            study_name=f"t/mlp/tuned-baseline{suffix}", storage=built.storage()
        )
        states = {"COMPLETE", "PRUNED"}
        assert len([t for t in theirs.trials if t.state.name in states]) == 3
        assert len([t for t in ours.trials if t.state.name in states]) == 3
        assert ours.user_attrs["budget"] == theirs.user_attrs["budget"]  # epochs, sampler, ...
        assert ours.user_attrs["budget"]["epochs"] == EPOCHS
        assert {t.user_attrs["epochs"] for t in theirs.trials} == {EPOCHS}
        assert set(theirs.trials[0].params) == {"lr", "weight_decay"}
        assert {"lr", "weight_decay"} < set(ours.trials[0].params)  # equal nuisance tuning
        assert theirs.user_attrs["kind"] == "baseline" and ours.user_attrs["kind"] == "all"
    md = (built.out / "report.md").read_text()
    assert "| t/mlp/r1 | 3 | 3 | 0 | 9 |" in md  # the search budgets: trials, start-up, epochs


def test_every_file_is_written(built: Built) -> None:
    values = {
        t.value for t in optuna.load_study(study_name="t/mlp", storage=built.storage()).trials
    }
    figures = [f for f in FIGURES if f != "param_importances_mlp" or len(values) > 1]
    expected = {"report.md", "report.html", "results.csv", "claims.csv"}
    expected |= {f"{f}.png" for f in figures}
    assert {p.name for p in built.out.iterdir()} == expected | {MANIFEST}  # and no lock left
    assert all((built.out / name).stat().st_size > 0 for name in expected)
    assert [p.name for p in built.out.parent.iterdir()] == ["t"]  # no temporary folder left
    variants = list(dict.fromkeys(r["variant"] for r in built.rows))
    assert variants[:3] == ["tuned-baseline", "hand-set", "all"]
    assert {"param-matched", "all-shared-lr", "no-aux", "other-positions"} <= set(variants)
    assert {"all@10%", "tuned-baseline@10%", "all@30%", "tuned-baseline@30%"} <= set(variants)
    cells = [(r["variant"], r["replicate"], r["seed"]) for r in built.rows]
    assert [c for c in cells if c[0] != "hand-set"] == [
        (v, str(r), str(s))
        for v in variants
        if v != "hand-set"
        for r in range(REPLICATES)
        for s in (1000, 1001)
    ]
    assert [c for c in cells if c[0] == "hand-set"] == [("hand-set", "0", "1000"),
                                                        ("hand-set", "0", "1001")]  # fmt: skip


def test_selection_reads_validation_only_and_seeds_are_disjoint(built: Built) -> None:
    selection = [n for evaluate_test, n in built.calls if not evaluate_test]
    evaluation = [n for evaluate_test, n in built.calls if evaluate_test]
    assert selection and all(n == 0 for n in selection)  # the test split was not in memory
    assert evaluation and all(n == 360 for n in evaluation)
    client = built.client()
    experiment = client.get_experiment_by_name("t report")
    runs = client.search_runs([experiment.experiment_id], "tags.\"autoall.report\" = 't'")
    seeds: dict[str, set[int]] = {}
    for run in runs:
        if run.data.tags["autoall.role"] == "report":
            continue
        seeds.setdefault(run.data.tags["autoall.role"], set()).add(int(run.data.tags["seed"]))
    assert seeds["selection-run"] == {2000, 2100}  # each replicate's own
    assert seeds["report-run"] == {1000, 1001}
    assert seeds["tuning-run"] == {0, 1}  # re-tuning searches at each replicate's search seed
    assert not {0, 1} & (seeds["selection-run"] | seeds["report-run"])  # the search seeds
    md = (built.out / "report.md").read_text()
    assert "only 3 COMPLETE trial(s) in the budget of 3, fewer than top-k 4" in md


def test_results_csv_equals_the_mlflow_runs(built: Built) -> None:
    client = built.client()
    experiment = client.get_experiment_by_name("t report")
    parents = client.search_runs([experiment.experiment_id], "tags.\"autoall.role\" = 'report'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert artifacts == {p.name for p in built.out.iterdir()} - {MANIFEST}  # the outputs only
    md = (built.out / "report.md").read_text()
    target = float(re.search(r"Target validation accuracy (\d\.\d+)", md).group(1))  # type: ignore[union-attr]
    for row in built.rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert (tags["arch"], tags["seed"]) == (row["arch"], row["seed"])
        assert len(tags["config_hash"]) == 16
        for key in ("test_acc", "final_val_acc", "train_eval_acc", "wall_seconds"):
            assert float(row[key]) == run.data.metrics[key], key
        params = run.data.params
        assert params["code.autoall"] == code_version()["autoall"]
        assert params["code.torch"] == torch.__version__
        assert params["code.source"] == code_version()["source"]
        assert params["seed"] == row["seed"] and params["train.seed"] == row["seed"]
        assert set(FINAL_METRICS) <= set(run.data.metrics)
        val_acc = _history(client, run.info.run_id, "val_acc")
        share = next((k for k in EPOCHS_OF if row["variant"].endswith(k)), None)
        assert len(val_acc) == (EPOCHS_OF[share] if share else EPOCHS)  # a point per epoch
        timed = row["variant"] in ("all", "tuned-baseline")  # the time claims' arms
        assert (row["arrangement"] == "alone") == (timed or tags["cohort_size"] == "1")
        assert tags["replicate"] == row["replicate"] or row["variant"] == "hand-set"
        reached = [e for e, acc in enumerate(val_acc, start=1) if acc >= round(target, 4) - 1e-4]
        if row["target_epoch"]:
            assert int(row["target_epoch"]) in reached[:1] or reached[0] <= int(row["target_epoch"])
        predictions = client.download_artifacts(
            run.info.run_id, "test_predictions.npy", str(built.root / "dl")
        )
        assert Path(predictions).stat().st_size > 360  # one class per test image


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_claims_are_tested_paired_and_adjusted_together(built: Built) -> None:
    tested = [c for c in built.claims if c["p_difference"]]
    assert {c["claim"] for c in tested} >= {
        "accuracy", "parameters", "custom-loss", "own-lr", "more-layers", "gap",
        "data-10%", "data-30%", "tuning-cost",
    }  # fmt: skip
    adj_d, adj_e = decision.holm_shaffer(
        [float(c["p_difference"]) for c in tested], [float(c["p_equivalence"]) for c in tested]
    )
    assert [float(c["adjusted_p"]) for c in tested] == pytest.approx(list(adj_d))
    assert [float(c["adjusted_p_equivalence"]) for c in tested] == pytest.approx(list(adj_e))
    cells: dict[str, dict[tuple[str, str], float]] = {}
    for row in built.rows:
        cells.setdefault(row["variant"], {})[(row["replicate"], row["seed"])] = float(
            row["test_acc"]
        )
    accuracy = next(c for c in tested if c["claim"] == "accuracy")
    d = [[cells["all"][(str(r), str(s))] - cells["tuned-baseline"][(str(r), str(s))]
          for s in (1000, 1001)] for r in range(REPLICATES)]  # fmt: skip
    est = decision.mixed_effect(d)
    assert float(accuracy["effect"]) == pytest.approx(est.mean)
    assert float(accuracy["p"]) == pytest.approx(est.p)
    assert (accuracy["replicates"], accuracy["seeds"], accuracy["unit"], accuracy["df"]) == (
        "2", "2", "replicates", "1",
    )  # fmt: skip
    assert float(accuracy["margin"]) > 0 and accuracy["test_noise_low"]
    for c in tested:  # 2 replicates: df = 1, no accuracy claim can be decided; each says why
        if c["claim"] == "seconds":  # wall time: the ALL's extra layer can be that consistent
            continue
        assert c["verdict"] in ("inconclusive", "undetermined"), c
        if c["verdict"] == "inconclusive":
            assert "minimum detectable effect" in c["reason"] and c["n_needed"], c
    md = (built.out / "report.md").read_text()
    assert "**Before training:**" in md and "2 replicates (df = 1)" in md
    assert "Tuning cost" in md


def test_the_parameter_matched_control_is_within_two_percent(built: Built) -> None:
    for replicate in map(str, range(REPLICATES)):
        rows = [r for r in built.rows if r["replicate"] == replicate]
        params = {r["variant"]: int(r["params_total"]) for r in rows}
        assert params["param-matched"] != params["tuned-baseline"]
        assert abs(params["param-matched"] - params["all"]) <= 0.02 * params["all"]
        assert int(next(r for r in rows if r["variant"] == "param-matched")["params_all"]) == 0


def test_cache_keys_hold_the_code_version() -> None:
    from autoall.training._data import load_data
    from autoall.training._loop import TrainConfig
    from autoall.training._plan import RunPlan

    data = load_data("digits")
    plan = RunPlan("mlp", TrainConfig(seed=1000))
    split = {"name": "digits", "val_fraction": 0.1, "split_seed": 0}
    settings = run_settings(plan, data, split=split, evaluate_test=True)
    assert settings["code"] == code_version()
    assert set(settings["code"]) == {"autoall", "git_commit", "source", "torch"}
    changed = {**settings, "code": {**settings["code"], "source": "0" * 16}}
    assert config_hash(changed) != config_hash(settings)
    assert config_hash(
        run_settings(plan.with_seed(1001), data, split=split, evaluate_test=True)
    ) != (config_hash(settings))


def test_a_rerun_reuses_every_run_and_gives_the_same_results(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained although every run was finished")

    monkeypatch.chdir(built.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(autoall.report._store, "fit_cohort", no_training)
    before = (built.out / "results.csv").read_text()
    result = _report()
    assert result.exit_code == 0, result.output
    assert result.output.count("(reused)") == len(built.rows)
    assert (built.out / "results.csv").read_text() == before

    result = _report("--target-acc", "0.01", "--out", "elsewhere")
    assert result.exit_code == 0, result.output
    with (built.root / "elsewhere" / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["role"] == "evaluation"]
    assert [r["mlflow_run_id"] for r in rows] == [r["mlflow_run_id"] for r in built.rows]
    assert {r["target_epoch"] for r in rows} == {"1"}  # any model beats 1 % after one epoch

    (built.root / "mine").mkdir()
    (built.root / "mine" / "report.md").write_text("my notes")
    result = _report("--out", "mine")  # a file autoall did not write is never replaced
    assert result.exit_code == 2 and "that autoall did not write there" in result.output
    assert (built.root / "mine" / "report.md").read_text() == "my notes"


def test_a_variant_s_seeds_train_as_one_cohort_and_equal_the_runs_alone(
    built: Built, empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report trains a variant's missing seeds together (default); --no-cohorts trains
    them one by one, into a fresh MLflow store, and gives the same results."""
    sizes = {n for evaluate_test, n in built.cohorts if evaluate_test}
    assert max(sizes) == SEEDS  # whole variants, after the interrupted attempt's 5 runs
    client = built.client()
    for row in built.rows:
        assert client.get_run(row["mlflow_run_id"]).data.tags["cohort_size"] in {"1", "2"}

    shutil.copyfile(built.root / "study.yaml", tmp_path / "study.yaml")
    with (
        sqlite3.connect(built.root / "autoall.db") as src,
        sqlite3.connect(tmp_path / "autoall.db") as dst,
    ):
        src.backup(dst)  # the studies, write-ahead log included
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real_fit, real_alone, runs = autoall.report._store.fit_cohort, autoall.report._store.fit, []

    def one_by_one(plans: Any, data: Any, **kwargs: Any) -> Any:
        runs.append(len(plans))
        return real_fit(plans, data, **kwargs)

    def alone(plan: Any, data: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real_alone(plan, data, **kwargs)

    monkeypatch.setattr(autoall.report._store, "fit_cohort", one_by_one)
    monkeypatch.setattr(autoall.report._store, "fit", alone)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _report("--no-cohorts")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert set(runs) == {1} and len(runs) == len(built.rows) + built.selection_runs
    with (tmp_path / "reports" / "t" / "results.csv").open() as f:
        alone = [r for r in csv.DictReader(f) if r["role"] == "evaluation"]
    assert [(r["variant"], r["replicate"], r["seed"]) for r in alone] == [
        (r["variant"], r["replicate"], r["seed"]) for r in built.rows
    ]
    for a, c in zip(alone, built.rows, strict=True):
        for key in ("test_acc", "final_val_acc", "train_eval_acc", "params_total", "params_all"):
            assert float(c[key]) == float(a[key]), (c["variant"], c["seed"], key)
    with (tmp_path / "reports" / "t" / "claims.csv").open() as f:
        claims = list(csv.DictReader(f))
    assert [(c["claim"], c["verdict"]) for c in claims if c["claim"] != "seconds"] == [
        (c["claim"], c["verdict"]) for c in built.claims if c["claim"] != "seconds"
    ]  # the seconds are this run's own wall time


_PROBE = (
    '<script>window.addEventListener("load", () => { document.title = "W:" + '
    'Array.from(document.images, i => i.naturalWidth).join(","); });</script>'
)


def test_report_html_opens_in_chromium_with_every_image_loaded(
    built: Built, tmp_path: Path
) -> None:
    page = (built.out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) >= 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page  # self-contained
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in sources)
    assert embedded == sorted(p.read_bytes() for p in built.out.glob("*.png"))  # whole files
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    title = re.search(r"<title>W:([0-9,]*)</title>", dom)
    assert title is not None, dom[:500]
    widths = [int(w) for w in title.group(1).split(",")]
    assert len(widths) == len(sources) and all(w > 0 for w in widths), widths


def _nothing_written(root: Path) -> None:
    assert not (root / "reports").exists()
    assert not (root / "mlruns").exists()


def test_a_missing_study_is_a_clear_error_and_writes_nothing(workdir: Path) -> None:
    write_study(workdir / "study.yaml")
    result = _report()
    assert result.exit_code == 2  # the user's to fix
    assert "No Optuna storage at sqlite:///autoall.db" in result.output
    assert "autoall study run study.yaml" in result.output
    assert not (workdir / "autoall.db").exists()
    _nothing_written(workdir)

    optuna.create_study(study_name="other/mlp", storage="sqlite:///autoall.db")
    result = _report()
    assert result.exit_code == 2
    assert "No study 't/mlp' in sqlite:///autoall.db (studies there: other/mlp)" in result.output
    _nothing_written(workdir)

    result = CliRunner().invoke(main, ["report", "nosuch"])
    assert result.exit_code == 2 and "studies/nosuch.yaml" in result.output


def test_a_study_without_complete_trials_is_a_clear_error_and_writes_nothing(
    workdir: Path,
) -> None:
    (workdir / "studies").mkdir()
    write_study(workdir / "studies" / "t.yaml")
    study = optuna.create_study(study_name="t/mlp", storage="sqlite:///autoall.db")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    result = CliRunner().invoke(main, ["report", "t"])  # a name, with studies/t.yaml here
    assert result.exit_code == 2
    assert "Study 't/mlp' in sqlite:///autoall.db has no COMPLETE trial" in result.output
    assert "1 failed" in result.output and "autoall study run studies/t.yaml" in result.output
    _nothing_written(workdir)


def test_without_run_baseline_a_short_tuned_baseline_is_one_line_with_the_command(
    workdir: Path,
) -> None:
    write_study(workdir / "study.yaml", train={"epochs": EPOCHS}, n_trials=2, replicates=2)
    ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--no-baseline", "--no-tracking"])
    assert ran.exit_code == 0, ran.output
    result = _report("--no-run-baseline")
    assert result.exit_code == 2
    assert (
        "Tuned-baseline studies with fewer finished trials than their ALL study: "
        "t/mlp/tuned-baseline holds 0 of 2, t/mlp/tuned-baseline/r1 holds 0 of 2" in result.output
    )
    command = "`autoall study run study.yaml --architectures mlp --replicates 2 --n-trials 2`"
    assert command in result.output
    _nothing_written(workdir)
    names = optuna.get_all_study_names(storage="sqlite:///autoall.db")
    assert sorted(names) == ["t/mlp", "t/mlp/r1"]  # no baseline study was created either

    result = _report("--no-run-baseline", "--replicates", "3")  # a replicate never searched
    assert result.exit_code == 2
    assert "No study 't/mlp/r2'" in result.output
    assert "`autoall study run study.yaml --replicates 3`" in result.output
    _nothing_written(workdir)


def test_a_share_of_the_data_whose_steps_cannot_match_is_one_line_and_trains_nothing(
    workdir: Path,
) -> None:
    """One epoch of 10 steps: the 30 % share's 3 steps an epoch cannot make 10 in whole epochs."""
    write_study(workdir / "study.yaml", train={"epochs": 1}, n_trials=2)
    ran = CliRunner().invoke(main, ["study", "run", "study.yaml", "--no-baseline", "--no-tracking"])
    assert ran.exit_code == 0, ran.output
    result = _report()
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1 and "--fractions: 0.3 of the train split is 388 images" in lines[0]
    _nothing_written(workdir)
    assert optuna.get_all_study_names(storage="sqlite:///autoall.db") == ["t/mlp"]


@pytest.mark.slow
def test_several_study_files_get_one_summary_across_tasks(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(built.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_study(built.root / "u.yaml", name="u", train={"epochs": EPOCHS}, n_trials=2)
    ran = CliRunner().invoke(main, ["study", "run", "u.yaml", "--no-tracking"])
    assert ran.exit_code == 0, ran.output
    result = CliRunner().invoke(
        main,
        ["report", "study.yaml", "u.yaml", "--seeds", str(SEEDS), "--top-k", str(TOP_K),
         "--selection-seeds", "1", "--out", "summary"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Summary: summary/summary.html" in result.output
    assert (built.root / "reports" / "u" / "report.html").is_file()
    md = (built.root / "summary" / "summary.md").read_text()
    assert "| claim | t: digits/mlp | u: digits/mlp |" in md
    rows: dict[str, dict[str, list[float]]] = {}
    for name in ("t", "u"):
        with (built.root / "reports" / name / "results.csv").open() as f:
            for row in (r for r in csv.DictReader(f) if r["role"] == "evaluation"):
                rows.setdefault(name, {}).setdefault(row["variant"], []).append(
                    float(row["test_acc"])
                )
    poi = stats_across.probability_of_improvement(
        {n: rows[n]["all"] for n in rows}, {n: rows[n]["tuned-baseline"] for n in rows}
    )
    line = next(x for x in md.splitlines() if x.startswith("| Accuracy (FAQ 3)") and "[" in x)
    assert f"| 2 | {poi:.2f} [" in line
