"""Replicates (independent searches of each study, each with its own seeds and sampler
streams), equal nuisance tuning (the ALL study searches the base network's lr and weight_decay
over the tuned baseline's ranges) and the study file's `report:` section, from the file and the
command line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from conftest import write_study

import autoall.cli._commands
import autoall.report
import autoall.training._plan
from autoall.cli._main import main
from autoall.config._study_file import StudyFileError, load_study_file
from autoall.config._trial_plan import trial_plan
from autoall.study._storage import make_storage
from autoall.study._summary import resolve_study_names
from autoall.study._trials import WorkerContext, create_studies, make_sampler

STORAGE = "sqlite:///autoall.db"
KNOBS = {"hidden_size", "all_lr", "aux_weight", "aux_loss", "positions"}


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_replicates_name_seed_and_order_the_studies(workdir: Path) -> None:
    path = write_study(
        workdir / "s.yaml", architectures=["mlp", "cnn"], replicates=2, train={"seed": 5}
    )
    cfg = load_study_file(path)
    assert cfg.replicates == 2
    assert cfg.studies() == [
        ("mlp", "all", 0), ("mlp", "baseline", 0), ("mlp", "all", 1), ("mlp", "baseline", 1),
        ("cnn", "all", 0), ("cnn", "baseline", 0), ("cnn", "all", 1), ("cnn", "baseline", 1),
    ]  # fmt: skip
    assert cfg.studies(("all",)) == [("mlp", "all", 0), ("mlp", "all", 1), ("cnn", "all", 0),
                                     ("cnn", "all", 1)]  # fmt: skip
    # replicate 0 keeps a single search's names: a study made before replicates is replicate 0
    assert cfg.study_name("mlp") == cfg.study_name("mlp", "all", 0) == "t/mlp"
    assert cfg.study_name("mlp", "baseline") == "t/mlp/tuned-baseline"
    assert cfg.study_name("mlp", "all", 1) == "t/mlp/r1"
    assert cfg.study_name("mlp", "baseline", 2) == "t/mlp/tuned-baseline/r2"
    assert [cfg.train_config("mlp", r).seed for r in range(3)] == [5, 6, 7]
    assert cfg.train_config("mlp").seed == 5
    assert cfg.with_replicates(3).replicates == 3 and cfg.replicates == 2
    assert load_study_file(write_study(workdir / "d.yaml")).replicates == 1  # the default
    for bad in (0, 101, True):
        with pytest.raises(StudyFileError, match=r"replicates: --replicates must be an integer"):
            cfg.with_replicates(bad)  # type: ignore[arg-type]
    top = load_study_file(write_study(workdir / "top.yaml", train={"seed": 2**32 - 12000}))
    assert top.with_replicates(100).train_config("mlp", 99).seed == 2**32 - 11901
    with pytest.raises(StudyFileError, match=r"train.seed: must be an integer between 0 and"):
        load_study_file(write_study(workdir / "over.yaml", train={"seed": 2**32 - 11999}))


def test_the_all_study_searches_the_baseline_s_lr_and_weight_decay(workdir: Path) -> None:
    cfg = load_study_file(write_study(workdir / "s.yaml"))
    space, baseline = cfg.space("mlp", "all"), cfg.space("mlp", "baseline")
    assert list(space) == ["lr", "weight_decay", *cfg.search]
    assert space["lr"] == baseline["lr"] and space["weight_decay"] == baseline["weight_decay"]
    assert set(baseline) == {"lr", "weight_decay"}
    lr = {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}
    tuned = load_study_file(write_study(workdir / "b.yaml", baseline_search={"lr": lr}))
    assert tuned.space("mlp", "all")["lr"] == tuned.space("mlp", "baseline")["lr"]
    assert (tuned.space("mlp", "all")["lr"].low, tuned.space("mlp", "all")["lr"].high) == (
        1e-4,
        1e-3,
    )


def test_the_grid_sampler_needs_and_gets_lr_and_weight_decay_choices(workdir: Path) -> None:
    search = {"hidden_size": 8, "all_lr": 0.001, "aux_weight": 0.1, "aux_loss": "none"}
    result = _invoke("study", "run", str(write_study(
        workdir / "g.yaml", sampler={"name": "grid"}, search={**search, "positions": "head"}
    )))  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "baseline_search.lr: the grid sampler needs 'choices'" in result.output
    assert "the ALL study and the tuned baseline both search lr and weight_decay" in result.output
    base = {"lr": {"type": "categorical", "choices": [0.001, 0.01]}, "weight_decay": 0.0}
    path = write_study(workdir / "ok.yaml", sampler={"name": "grid"},
                       search={**search, "positions": "head"}, baseline_search=base)  # fmt: skip
    grid = make_sampler(load_study_file(path)).sampler  # type: ignore[attr-defined]
    assert set(grid._search_space) == KNOBS | {"lr", "weight_decay"}


def test_an_all_trial_trains_with_its_lr_and_weight_decay(workdir: Path) -> None:
    cfg = load_study_file(write_study(workdir / "s.yaml", train={"seed": 3}))
    knobs = {"hidden_size": 8, "all_lr": 0.01, "aux_weight": 0.1, "aux_loss": "none"}
    plan = trial_plan(cfg, "mlp", "all", {**knobs, "lr": 0.02, "weight_decay": 1e-3})
    assert (plan.train.lr, plan.train.weight_decay, plan.train.all_lr) == (0.02, 1e-3, 0.01)
    old = trial_plan(cfg, "mlp", "all", knobs)  # stored before the ALL study searched them
    file = cfg.train_config("mlp")
    assert (old.train.lr, old.train.weight_decay) == (file.lr, file.weight_decay)
    assert old.train.seed == 3
    assert trial_plan(cfg, "mlp", "all", knobs, replicate=2).train.seed == 5
    base = trial_plan(cfg, "mlp", "baseline", {"lr": 0.02, "weight_decay": 0.0}, replicate=1)
    assert (base.train.lr, base.train.seed, base.spec) == (0.02, 4, None)


def test_study_run_with_replicates_runs_every_study_of_every_replicate(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds: list[int] = []
    real_train = autoall.training._plan.train

    def recording_train(model, data, cfg, on_epoch=None, **kw):  # type: ignore[no-untyped-def]
        seeds.append(cfg.seed)
        return real_train(model, data, cfg, on_epoch=on_epoch, **kw)

    monkeypatch.setattr(autoall.training._plan, "train", recording_train)
    path = write_study(workdir / "s.yaml", n_trials=2, train={"epochs": 2, "seed": 7})
    result = _invoke("study", "run", str(path), "--replicates", "2", "--no-tracking")
    assert result.exit_code == 0, result.output
    assert seeds == [7] * 4 + [8] * 4  # replicate 1 trains with seed + 1, both of its studies
    names = ["t/mlp", "t/mlp/tuned-baseline", "t/mlp/r1", "t/mlp/tuned-baseline/r1"]
    for name in names:
        assert f"{name}: 2 complete, 0 pruned, 0 failed" in result.output
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(STORAGE)}
    assert sorted(summaries) == sorted(names)
    for name in names:
        attrs = summaries[name].user_attrs
        replicate = 1 if name.endswith("/r1") else 0
        assert (attrs["replicate"], attrs["train_seed"]) == (replicate, 7 + replicate)
    cfg = load_study_file(path)
    lr = cfg.space("mlp", "baseline")["lr"]
    drawn = {}
    for name in ("t/mlp", "t/mlp/r1"):
        trials = optuna.load_study(study_name=name, storage=STORAGE).trials
        for t in trials:  # the ALL study's trials carry the base network's knobs too
            assert set(t.params) == KNOBS | {"lr", "weight_decay"}
            assert lr.low <= t.params["lr"] <= lr.high  # type: ignore[operator]
            assert t.user_attrs["sampler_phase"] == "startup"  # 3 start-up trials
        drawn[name] = [t.params for t in trials]
    assert not [p for p in drawn["t/mlp"] if p in drawn["t/mlp/r1"]]  # independent searches

    status = _invoke("study", "status", "t")
    assert status.exit_code == 0, status.output
    shown = [line for line in status.output.splitlines() if line.startswith("t/")]
    assert shown == names  # per replicate, the ALL study first
    assert [s for s in resolve_study_names("t", replicates=1)[1]] == names[:2]
    by_file = _invoke("study", "status", str(path), "--replicates", "2")
    assert [line for line in by_file.output.splitlines() if line.startswith("t/")] == names
    again = _invoke("study", "run", str(path), "--replicates", "2", "--no-tracking")
    assert again.exit_code == 0 and "Target met" in again.output


def test_study_create_creates_every_replicate(workdir: Path) -> None:
    path = write_study(workdir / "s.yaml", replicates=2)
    result = _invoke("study", "create", str(path), "--replicates", "3")
    assert result.exit_code == 0, result.output
    assert "t/mlp/r2, t/mlp/tuned-baseline/r2 ready" in result.output
    assert len(optuna.get_all_study_names(STORAGE)) == 6
    cfg = load_study_file(path)  # the file's 2 replicates: nothing new
    studies = create_studies(cfg, make_storage(STORAGE, cfg), n_trials=4)
    assert list(studies) == ["t/mlp", "t/mlp/tuned-baseline", "t/mlp/r1", "t/mlp/tuned-baseline/r1"]
    assert studies["t/mlp/tuned-baseline/r1"].user_attrs["replicate"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["study", "run", "s.yaml", "--replicates", "0"],
        ["study", "run", "s.yaml", "--replicates", "101"],
        ["study", "create", "s.yaml", "--replicates", "0"],
        ["study", "status", "s.yaml", "--replicates", "x"],
        ["report", "s.yaml", "--replicates", "101"],
        ["report", "s.yaml", "--margin", "0"],
        ["report", "s.yaml", "--margin", "-1"],
        ["report", "s.yaml", "--margin", "100"],
        ["report", "s.yaml", "--margin", "abc"],
        ["report", "s.yaml", "--tuning-trials", "-1"],
        ["report", "s.yaml", "--tuning-trials", "1001"],
    ],
)
def test_a_bad_option_is_a_usage_error_and_creates_nothing(workdir: Path, args: list[str]) -> None:
    write_study(workdir / "s.yaml")
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[-2]}'" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"replicates": 0}, "replicates"),
        ({"report": {"margin": "abc"}}, "report.margin"),
        ({"report": {"margin": 0}}, "report.margin"),
        ({"report": {"tuning_trials": -1}}, "report.tuning_trials"),
    ],
)
@pytest.mark.parametrize("command", [["study", "create"], ["report"]])
def test_a_bad_study_file_key_is_one_line_in_create_and_report(
    workdir: Path, overrides: dict[str, Any], key: str, command: list[str]
) -> None:
    path = write_study(workdir / "bad.yaml", **overrides)
    result = _invoke(*command, str(path))
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert f"{path}: {key}: " in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml"]


def test_report_options_override_the_study_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Any, Any]] = []

    def fake_report(cfg: Any, opts: Any, *, echo: Any = None) -> Any:
        seen.append((cfg, opts))
        return SimpleNamespace(out=workdir / "reports" / cfg.name)

    monkeypatch.setattr(autoall.report, "check_studies", lambda cfg, url: {})
    monkeypatch.setattr(autoall.report, "run_report", fake_report)
    path = write_study(workdir / "s.yaml", replicates=3,
                       report={"margin": 1.5, "tuning_trials": 4})  # fmt: skip
    assert _invoke("report", str(path)).exit_code == 0
    cfg, opts = seen[-1]
    assert (cfg.replicates, cfg.report.margin, cfg.report.tuning_trials) == (3, 1.5, 4)
    assert (opts.replicates, opts.margin, opts.tuning_trials) == (None, None, None)
    args = ["--replicates", "2", "--margin", "0.5", "--tuning-trials", "0"]
    result = _invoke("report", str(path), *args)
    assert result.exit_code == 0, result.output
    cfg, opts = seen[-1]
    assert (cfg.replicates, cfg.report.margin, cfg.report.tuning_trials) == (2, 0.5, 0)
    assert (opts.replicates, opts.margin, opts.tuning_trials) == (2, 0.5, 0)
    default = load_study_file(write_study(workdir / "d.yaml")).report
    assert (default.margin, default.tuning_trials) == (None, 8)


def test_the_demo_runs_studies_demo_yaml_whose_report_reruns_as_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict[str, dict[str, Any]] = {}
    for name in ("study_run", "study_status", "report"):
        monkeypatch.setattr(
            autoall.cli._commands, name, lambda name=name, **kw: calls.__setitem__(name, kw)
        )
    result = _invoke("demo")
    assert result.exit_code == 0, result.output
    demo_file = Path(calls["study_run"]["file"])
    assert demo_file.name == "demo.yaml"
    assert calls["study_status"]["target"] == calls["study_run"]["file"]
    assert calls["report"]["targets"] == (calls["study_run"]["file"],)
    # nothing overridden: what ran is the file, so the printed rerun reuses every run
    assert calls["study_run"]["n_trials"] is None and calls["report"]["seeds"] is None
    cfg = load_study_file(demo_file)
    assert (cfg.name, cfg.replicates, cfg.n_trials, cfg.architectures) == ("demo", 2, 12, ("mlp",))
    assert (cfg.report.seeds, cfg.report.top_k, cfg.report.selection_seeds) == (3, 2, 2)
    assert cfg.report.tuning_trials == 4
    lines = result.output.splitlines()
    nxt = lines[lines.index(next(x for x in lines if x.startswith("demo finished in"))) + 1 :]
    assert [x.split()[:2] for x in nxt[:2]] == [["autoall", "ui"], ["autoall", "report"]]
    assert nxt[1].split()[2] == calls["study_run"]["file"]
    assert "autoall.load_best('demo-mlp@champion')" in nxt[2]


def test_report_counts_come_from_the_file_unless_an_option_says_otherwise(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def fake_report(cfg: Any, opts: Any, *, echo: Any = None) -> Any:
        seen.append(opts.resolved(cfg.report))  # as run_report resolves them
        return SimpleNamespace(out=workdir / "reports" / cfg.name)

    monkeypatch.setattr(autoall.report, "check_studies", lambda cfg, url: {})
    monkeypatch.setattr(autoall.report, "run_report", fake_report)
    path = write_study(workdir / "c.yaml", report={"seeds": 5, "top_k": 2})
    assert _invoke("report", str(path)).exit_code == 0
    assert (seen[-1].seeds, seen[-1].top_k, seen[-1].selection_seeds) == (5, 2, 3)
    assert _invoke("report", str(path), "--seeds", "4", "--selection-seeds", "1").exit_code == 0
    assert (seen[-1].seeds, seen[-1].top_k, seen[-1].selection_seeds) == (4, 2, 1)
    result = _invoke("report", str(path), "--seeds", "3000")
    assert (
        result.exit_code == 2 and "'--seeds': 3000 is not in the range 2<=x<=100" in result.output
    )


def test_a_replicate_s_checkpoints_have_their_own_folder(tmp_path: Path) -> None:
    cfg = load_study_file(write_study(tmp_path / "s.yaml"))
    ctx = WorkerContext(cfg=cfg, arch="mlp", kind="baseline", data=None,  # type: ignore[arg-type]
                        device=None, tracker=None, parent_run_id=None,  # type: ignore[arg-type]
                        n_trials=2, checkpoint_dir=tmp_path, replicate=2)  # fmt: skip
    assert ctx.study_name == "t/mlp/tuned-baseline/r2"
    assert ctx.checkpoint_folder == tmp_path / "t__mlp__tuned-baseline__r2"
