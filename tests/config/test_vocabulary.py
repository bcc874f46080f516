"""One vocabulary: the study kinds (`Kind`), the report's variant names (`VariantName`, the
reduced-data names), which variant registers which kind's model, and the samplers the study
file names, each declared once; what is stored under them stays the plain strings it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_study

from autoall.config import KINDS, Kind, StrEnum, load_study_file, trial_plan
from autoall.config._study_file import SAMPLERS
from autoall.report._names import (
    PUBLISHED,
    PUBLISHED_AS,
    VariantName,
    at_share,
    share_label,
    split_share,
)
from autoall.report._retune import FREED, REDUCED
from autoall.study._objective import resolved_config
from autoall.study._samplers import SAMPLER_FACTORIES, PerTrialSeed
from autoall.study._trials import WorkerContext, make_sampler
from autoall.tracking import registered_name, registered_suffix


def test_the_kinds_are_the_stored_strings_in_their_order() -> None:
    assert KINDS == (Kind.ALL, Kind.BASELINE) == tuple(Kind)
    assert [k.value for k in KINDS] == ["all", "baseline"]
    assert Kind("all") is Kind.ALL and Kind("baseline") is Kind.BASELINE
    for kind in KINDS:  # a stored or typed string is the member, and back
        assert kind == kind.value and hash(kind) == hash(kind.value)
        assert str(kind) == f"{kind}" == "-".join([kind]) == kind.value
        assert type(str(kind)) is str
        assert json.loads(json.dumps({"kind": kind})) == {"kind": kind.value}
    with pytest.raises(ValueError):
        Kind("tuned-baseline")  # a variant's (and the baseline study name's) word, not a kind


def test_a_string_enum_on_every_supported_python() -> None:
    class Colour(StrEnum):
        RED = "red"

    assert isinstance(Colour.RED, str) and f"{Colour.RED}/{Colour.RED:>4}" == "red/ red"


def test_study_names_and_spaces_are_the_same_for_a_kind_and_its_string(tmp_path: Path) -> None:
    cfg = load_study_file(write_study(tmp_path / "s.yaml", replicates=2))
    assert cfg.study_name("mlp") == cfg.study_name("mlp", Kind.ALL) == "t/mlp"
    assert cfg.study_name("mlp", Kind.BASELINE, 1) == "t/mlp/tuned-baseline/r1"
    assert cfg.study_name("mlp", "baseline", 1) == "t/mlp/tuned-baseline/r1"
    assert type(cfg.study_name("mlp", Kind.BASELINE)) is str
    assert cfg.space("mlp", "all").keys() == cfg.space("mlp", Kind.ALL).keys() > {"hidden_size"}
    assert set(cfg.space("mlp", "baseline")) == {"lr", "weight_decay"}
    assert cfg.studies(("baseline",)) == [("mlp", Kind.BASELINE, 0), ("mlp", Kind.BASELINE, 1)]
    assert [k for _, k, _ in cfg.studies()] == [Kind.ALL, Kind.BASELINE] * 2
    with pytest.raises(ValueError, match=r"^kind must be one of all, baseline, but got 'x'\.$"):
        cfg.study_name("mlp", "x")
    with pytest.raises(ValueError, match=r"^kind must be one of all, baseline, but got 'x'\.$"):
        trial_plan(cfg, "mlp", "x", {})
    params = {"lr": 0.01, "weight_decay": 0.0}
    assert trial_plan(cfg, "mlp", "baseline", params) == trial_plan(
        cfg, "mlp", Kind.BASELINE, params
    )
    assert trial_plan(cfg, "mlp", Kind.BASELINE, params).spec is None


def test_a_kind_s_registered_name_ends_in_its_value() -> None:
    assert (
        registered_name("d", "mlp", Kind.ALL) == registered_name("d", "mlp", "all") == "d-mlp-all"
    )
    assert registered_name("d/x", "a:b", "baseline") == "d-x-a-b-baseline"
    assert [registered_suffix(k) for k in KINDS] == ["-all", "-baseline"]
    with pytest.raises(ValueError, match=r"^kind must be one of all, baseline, but got 'tuned"):
        registered_name("d", "mlp", "tuned-baseline")


def test_each_kind_is_published_by_one_variant() -> None:
    assert PUBLISHED == {"all": "all", "tuned-baseline": "baseline"}
    assert list(PUBLISHED) == [VariantName.ALL, VariantName.TUNED_BASELINE]
    assert sorted(PUBLISHED.values()) == sorted(KINDS)
    assert all(type(kind) is Kind for kind in PUBLISHED.values())
    assert {PUBLISHED[v]: v for v in PUBLISHED} == PUBLISHED_AS


def test_variant_names_are_the_stored_strings() -> None:
    assert [v.value for v in VariantName] == [
        "tuned-baseline", "all", "hand-set", "param-matched", "all-shared-lr", "custom",
        "no-aux", "other-positions",
    ]  # fmt: skip
    assert not any("@" in v for v in VariantName)
    assert set(FREED) - {REDUCED} <= set(VariantName)


@pytest.mark.parametrize(
    ("fraction", "share"), [(0.1, "10%"), (0.3, "30%"), (0.05, "5%"), (0.125, "12.5%")]
)
def test_a_reduced_data_name_is_built_and_read_back(fraction: float, share: str) -> None:
    assert share_label(fraction) == share
    for variant in (VariantName.ALL, VariantName.TUNED_BASELINE):
        name = at_share(variant, share_label(fraction))
        assert name == f"{variant.value}@{share}" and type(name) is str
        assert split_share(name) == (variant, share)
    assert split_share("all") == ("all", None)
    assert split_share("tuned-baseline") == ("tuned-baseline", None)


def test_every_sampler_of_the_study_file_has_a_factory() -> None:
    """A sampler added to config's SAMPLERS without a factory (or the other way) fails here."""
    assert list(SAMPLER_FACTORIES) == list(SAMPLERS)


_MADE = {
    "tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
    "grid": "GridSampler", "nsgaii": "NSGAIISampler",
}  # fmt: skip


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_factory_makes_its_sampler(tmp_path: Path, name: str) -> None:
    over: dict[str, Any] = {"sampler": {"name": name}}
    if name == "grid":  # every knob of both studies as choices
        over["search"] = {"hidden_size": {"type": "categorical", "choices": [8, 16]}}
        over["search"] |= {"all_lr": 0.01, "aux_weight": 0.1, "aux_loss": "none"}
        over["baseline_search"] = {"lr": 0.001, "weight_decay": 0.0}
    sampler = make_sampler(load_study_file(write_study(tmp_path / "s.yaml", **over)))
    assert isinstance(sampler, PerTrialSeed) and type(sampler.sampler).__name__ == _MADE[name]


def test_a_trial_stores_its_kind_as_a_plain_string(tmp_path: Path) -> None:
    cfg = load_study_file(write_study(tmp_path / "s.yaml"))
    ctx = WorkerContext(cfg=cfg, arch="mlp", kind="baseline", data=None,  # type: ignore[arg-type]
                        device=None, tracker=None, parent_run_id=None,  # type: ignore[arg-type]
                        n_trials=2)  # fmt: skip
    assert ctx.kind is Kind.BASELINE and ctx.study_name == "t/mlp/tuned-baseline"
    params = {"lr": 0.01, "weight_decay": 0.0}
    tcfg = trial_plan(cfg, "mlp", ctx.kind, params).train
    config = resolved_config(ctx, params, tcfg)
    assert type(config["kind"]) is str and config["all"] is None
    assert "kind: baseline\n" in yaml.safe_dump(config, sort_keys=False)  # config.yaml
    with pytest.raises(yaml.representer.RepresenterError):  # why the value is stored
        yaml.safe_dump({"kind": Kind.BASELINE})
