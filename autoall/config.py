"""Study files (YAML): schema, validation and defaults.

Every key is declared here; an unknown key, a wrong type or an impossible range is a
`StudyFileError` that names the file, the key path and what is allowed, raised before any
storage is touched or any training starts. A complete annotated example: `studies/digits.yaml`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from autoall.baselines import baseline
from autoall.data import DATASETS
from autoall.layer import ACTIVATIONS, AUX_LOSSES, POSITIONS
from autoall.models import ARCHITECTURES
from autoall.train import TrainConfig

SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp", "grid", "nsgaii")
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
KNOBS: tuple[str, ...] = ("hidden_size", "all_lr", "aux_weight", "aux_loss", "positions")
BASELINE_KNOBS: tuple[str, ...] = ("lr", "weight_decay")  # the tuned baseline's own knobs
KINDS: tuple[str, ...] = ("all", "baseline")  # the ALL study; the equal-budget tuned baseline
BASELINE_SUFFIX = (
    "tuned-baseline"  # the baseline study of <name>/<arch> is <name>/<arch>/tuned-baseline
)
SECOND_OBJECTIVES: tuple[str, ...] = ("params", "epoch_seconds")
_STUDY_TRAIN_KEYS = frozenset(TrainConfig.field_names()) - {"all_lr", "device", "evaluate_test"}


class StudyFileError(ValueError):
    """A study file is invalid: `file`, `key` (dotted path) and what was expected."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file, self.key = file, key
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = "data"  # --data-root; unused by digits
    val_fraction: float = 0.1  # of the training set, stratified
    split_seed: int = 0
    download: bool = False  # torchvision download when files are missing (needs the internet)


@dataclass(frozen=True)
class ParamSpec:
    """One searched knob: `int`/`float` with low, high, log (and step), or `categorical`."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "tpe"
    seed: int | None = 0  # fixed by default so a study is reproducible
    n_startup_trials: int = 10  # tpe/gp/nsgaii: random trials before the model kicks in


@dataclass(frozen=True)
class PrunerConfig:
    name: str = "median"
    n_startup_trials: int = 5  # median: trials that finish before any is pruned
    n_warmup_steps: int = 3  # median: epochs before a trial may be pruned
    min_resource: int = 1  # hyperband: epochs of the smallest bracket
    reduction_factor: int = 3  # hyperband


@dataclass(frozen=True)
class HeartbeatConfig:
    interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 30  # seconds without a heartbeat before a trial is failed as stale
    max_retry: int = 2  # reruns of a stale trial, with the same parameters


@dataclass(frozen=True)
class StudyConfig:
    name: str
    path: str  # the study file, for messages
    data: DataConfig
    architectures: tuple[str, ...]
    search: dict[str, ParamSpec]
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the baselines
    train_per_arch: dict[str, dict[str, Any]] = field(default_factory=dict)
    activation: str = "relu"
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    n_trials: int = 20  # per architecture, across all workers and restarts
    second_objective: str | None = None  # minimised next to validation accuracy
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    baseline_search: dict[str, ParamSpec] = field(default_factory=dict)  # the rest: space()

    def study_name(self, arch: str, kind: str = "all") -> str:
        """`<name>/<arch>` for the ALL study, `<name>/<arch>/tuned-baseline` for its baseline."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {_one_of(KINDS)}, but got {kind!r}.")
        return f"{self.name}/{arch}" if kind == "all" else f"{self.name}/{arch}/{BASELINE_SUFFIX}"

    def space(self, arch: str, kind: str = "all") -> dict[str, ParamSpec]:
        """The knobs a study of `kind` searches: the ALL's, or the baseline's lr and weight_decay.

        The baseline's defaults: lr log-uniform over [lr / 10, 10 lr] around the architecture's
        training lr, weight_decay log-uniform over [1e-6, 1e-2]; `baseline_search` overrides.
        """
        if kind == "all":
            return self.search
        lr = self.train_config(arch).lr
        defaults = {
            "lr": ParamSpec("lr", "float", low=lr / 10, high=lr * 10, log=True),
            "weight_decay": ParamSpec("weight_decay", "float", low=1e-6, high=1e-2, log=True),
        }
        return {**defaults, **self.baseline_search}

    def studies(self, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str]]:
        """(architecture, kind) of every study the file defines, ALL study first per architecture."""
        return [(arch, kind) for arch in self.architectures for kind in KINDS if kind in kinds]

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + (["minimize"] if self.second_objective else [])

    def train_config(self, arch: str) -> TrainConfig:
        """The architecture's baseline settings (autoall/baselines.py), then the file's overrides."""
        cfg = baseline(arch, self.data.name).config
        return replace(cfg, **{**self.train, **self.train_per_arch.get(arch, {})})

    def with_architectures(self, archs: list[str]) -> StudyConfig:
        unknown = [a for a in archs if a not in self.architectures]
        if unknown:
            raise StudyFileError(
                self.path,
                "architectures",
                f"--architectures asks for {', '.join(unknown)}, but the file lists only "
                f"{', '.join(self.architectures)}.",
            )
        return replace(self, architectures=tuple(archs))


def load_study_file(path: str | Path) -> StudyConfig:
    """Read and validate a study file; every problem is a `StudyFileError`."""
    p = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise StudyFileError(p, "", "no such study file.") from None
    except yaml.YAMLError as exc:
        raise StudyFileError(p, "", f"is not valid YAML: {exc}") from None
    return parse_study(raw, file=p)


def parse_study(raw: Any, *, file: str = "<study>") -> StudyConfig:
    v = _Validator(file)
    top = v.mapping(raw, "")
    v.keys(
        top,
        "",
        required={"name"},
        allowed={
            "name",
            "data",
            "architectures",
            "train",
            "search",
            "activation",
            "sampler",
            "pruner",
            "n_trials",
            "objective",
            "heartbeat",
            "baseline_search",
        },
    )
    name = v.string(top["name"], "name")
    if not name or "/" in name:
        v.fail("name", f"must be a non-empty name without '/', but got {name!r}.")

    data = v.dataclass(DataConfig, top.get("data", {}), "data")
    if data.name not in DATASETS:
        v.fail("data.name", f"unknown data set {data.name!r}; expected one of {_one_of(DATASETS)}.")
    if not 0 < data.val_fraction < 1:
        v.fail("data.val_fraction", f"must be in (0, 1), but got {data.val_fraction!r}.")

    archs = top.get("architectures", ["mlp"])
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not archs:
        v.fail("architectures", f"must be a non-empty list, but got {archs!r}.")
    for i, arch in enumerate(archs):
        if arch not in ARCHITECTURES:
            v.fail(
                f"architectures[{i}]",
                f"unknown architecture {arch!r}; expected one of {_one_of(ARCHITECTURES)}.",
            )
    if len(set(archs)) != len(archs):
        v.fail("architectures", f"lists an architecture twice: {archs!r}.")

    train, per_arch = _parse_train(v, top.get("train", {}), archs)
    activation = top.get("activation", "relu")
    if activation not in ACTIVATIONS:
        v.fail("activation", f"must be one of {_one_of(ACTIVATIONS)}, but got {activation!r}.")

    sampler = v.dataclass(SamplerConfig, top.get("sampler", {}), "sampler")
    if sampler.name not in SAMPLERS:
        v.fail(
            "sampler.name",
            f"unknown sampler {sampler.name!r}; expected one of {_one_of(SAMPLERS)}.",
        )
    grid = sampler.name == "grid"
    search = _parse_search(v, top.get("search", {}), knobs=KNOBS, defaults=_DEFAULT_SEARCH)
    baseline_search = _parse_search(
        v, top.get("baseline_search", {}), knobs=BASELINE_KNOBS, defaults={}, key="baseline_search"
    )
    if grid:
        for key, specs, knobs in (
            ("search", search, KNOBS),
            ("baseline_search", baseline_search, BASELINE_KNOBS),
        ):
            for knob in knobs:
                spec = specs.get(knob)
                if spec is None or spec.type != "categorical":
                    v.fail(
                        f"{key}.{knob}",
                        "the grid sampler needs 'choices' for every knob"
                        + (
                            " (the tuned-baseline study uses the same sampler)."
                            if key == "baseline_search"
                            else "."
                        ),
                    )

    objective = v.mapping(top.get("objective", {}), "objective")
    v.keys(objective, "objective", allowed={"metric", "second"})
    if objective.get("metric", "val_acc") != "val_acc":
        v.fail(
            "objective.metric",
            f"only 'val_acc' (maximised) is supported, but got {objective['metric']!r}.",
        )
    second = objective.get("second")
    if second is not None and second not in SECOND_OBJECTIVES:
        v.fail(
            "objective.second",
            f"must be one of {_one_of(SECOND_OBJECTIVES)} or null, but got {second!r}.",
        )

    pruner_raw = top.get("pruner", {"name": "none"} if second else {})
    pruner = v.dataclass(PrunerConfig, pruner_raw, "pruner")
    if pruner.name not in PRUNERS:
        v.fail(
            "pruner.name", f"unknown pruner {pruner.name!r}; expected one of {_one_of(PRUNERS)}."
        )
    if second and pruner.name != "none":
        v.fail(
            "pruner.name",
            "Optuna cannot prune a multi-objective study; use 'none' with objective.second.",
        )

    n_trials = top.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials <= 0:
        v.fail("n_trials", f"must be a positive integer, but got {n_trials!r}.")
    heartbeat = v.dataclass(HeartbeatConfig, top.get("heartbeat", {}), "heartbeat")
    if heartbeat.interval <= 0 or heartbeat.grace_period <= heartbeat.interval:
        v.fail("heartbeat", "needs interval > 0 and grace_period > interval (seconds).")
    if heartbeat.max_retry < 0:
        v.fail("heartbeat.max_retry", f"must be >= 0, but got {heartbeat.max_retry!r}.")

    return StudyConfig(
        name=name,
        path=file,
        data=data,
        architectures=tuple(archs),
        search=search,
        train=train,
        train_per_arch=per_arch,
        activation=activation,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        second_objective=second,
        heartbeat=heartbeat,
        baseline_search=baseline_search,
    )


_DEFAULT_SEARCH: dict[str, dict[str, Any]] = {
    "hidden_size": {"type": "int", "low": 8, "high": 256, "log": True},
    "all_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "aux_weight": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "aux_loss": {"type": "categorical", "choices": list(AUX_LOSSES)},
    "positions": {"type": "categorical", "choices": list(POSITIONS)},
}


def _parse_search(
    v: _Validator,
    raw: Any,
    *,
    knobs: tuple[str, ...],
    defaults: dict[str, dict[str, Any]],
    key: str = "search",
) -> dict[str, ParamSpec]:
    """The given knobs, validated; a knob neither given nor in `defaults` is left out."""
    section = key
    given = v.mapping(raw, section)
    v.keys(given, section, allowed=set(knobs))
    specs = {}
    for knob in knobs:
        key = f"{section}.{knob}"
        if knob not in given and knob not in defaults:
            continue
        entry = given.get(knob, defaults.get(knob))
        if not isinstance(entry, dict):  # a fixed value: a one-choice categorical
            entry = {"type": "categorical", "choices": [entry]}
        v.keys(
            entry, key, required={"type"}, allowed={"type", "low", "high", "log", "step", "choices"}
        )
        kind = entry["type"]
        if kind == "categorical":
            choices = entry.get("choices")
            if not isinstance(choices, list) or not choices:
                v.fail(f"{key}.choices", f"must be a non-empty list, but got {choices!r}.")
            extra = set(entry) - {"type", "choices"}
            if extra:
                v.fail(key, f"a categorical takes only 'choices', but also got {sorted(extra)}.")
            for i, c in enumerate(choices):
                _check_knob_value(v, knob, c, f"{key}.choices[{i}]")
            specs[knob] = ParamSpec(knob, "categorical", choices=tuple(choices))
            continue
        if kind not in ("int", "float"):
            v.fail(f"{key}.type", f"must be one of int, float, categorical, but got {kind!r}.")
        if knob in ("aux_loss", "positions"):
            v.fail(f"{key}.type", f"{knob} is categorical: give 'choices'.")
        if knob == "hidden_size" and kind != "int":
            v.fail(f"{key}.type", "hidden_size is an integer: use type 'int'.")
        if "choices" in entry:
            v.fail(key, f"'choices' belongs to type categorical, not {kind!r}.")
        for bound in ("low", "high"):
            if bound not in entry:
                v.fail(f"{key}.{bound}", f"is required for type {kind!r}.")
            if isinstance(entry[bound], bool) or not isinstance(entry[bound], (int, float)):
                v.fail(f"{key}.{bound}", f"must be a number, but got {entry[bound]!r}.")
            if kind == "int" and not isinstance(entry[bound], int):
                v.fail(
                    f"{key}.{bound}",
                    f"must be an integer for type 'int', but got {entry[bound]!r}.",
                )
        low, high, log = entry["low"], entry["high"], entry.get("log", False)
        if not isinstance(log, bool):
            v.fail(f"{key}.log", f"must be true or false, but got {log!r}.")
        if low > high:
            v.fail(key, f"low ({low}) must not exceed high ({high}).")
        if log and low <= 0:
            v.fail(f"{key}.low", f"must be > 0 on a log scale, but got {low!r}.")
        if log and entry.get("step") is not None:
            v.fail(f"{key}.step", "cannot be combined with log: true (Optuna's rule).")
        for bound in (low, high):
            _check_knob_value(v, knob, bound, key)
        specs[knob] = ParamSpec(knob, kind, low=low, high=high, log=log, step=entry.get("step"))
    return specs


def _check_knob_value(v: _Validator, knob: str, value: Any, key: str) -> None:
    if knob == "aux_loss":
        if value not in AUX_LOSSES:
            v.fail(key, f"must be one of {_one_of(AUX_LOSSES)}, but got {value!r}.")
    elif knob == "positions":
        if value not in POSITIONS:
            v.fail(key, f"must be one of {_one_of(POSITIONS)}, but got {value!r}.")
    elif knob == "hidden_size":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            v.fail(key, f"hidden_size must be a positive integer, but got {value!r}.")
    elif knob in ("all_lr", "lr"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            v.fail(key, f"{knob} must be a positive number, but got {value!r}.")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        v.fail(key, f"{knob} must be a non-negative number, but got {value!r}.")


def _parse_train(
    v: _Validator, raw: Any, archs: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    given = v.mapping(raw, "train")
    common = {k: val for k, val in given.items() if k not in ARCHITECTURES}
    per_arch = {k: v.mapping(val, f"train.{k}") for k, val in given.items() if k in ARCHITECTURES}
    for key, values in [("train", common)] + [(f"train.{a}", d) for a, d in per_arch.items()]:
        unknown = set(values) - _STUDY_TRAIN_KEYS
        if unknown:
            v.fail(
                f"{key}.{sorted(unknown)[0]}",
                f"unknown training setting; expected one of {_one_of(sorted(_STUDY_TRAIN_KEYS))} "
                f"(or an architecture name holding its own overrides).",
            )
    defaults = TrainConfig()
    for arch in archs:
        merged = {**common, **per_arch.get(arch, {})}
        for k, val in merged.items():
            _check_type(v, f"train.{k}", val, getattr(defaults, k), optional=k == "target_acc")
        try:
            replace(baseline(arch, "digits").config, **merged)
        except ValueError as exc:
            v.fail("train", f"{exc} (for architecture {arch})")
    return common, per_arch


class _Validator:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> NoReturn:
        raise StudyFileError(self.file, key, message)

    def mapping(self, raw: Any, key: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(
                key or "(top level)", f"must be a mapping, but got {type(raw).__name__} {raw!r}."
            )
        return raw

    def keys(
        self,
        raw: dict,
        key: str,
        *,
        allowed: set[str],
        required: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        prefix = f"{key}." if key else ""
        for k in raw:
            if k not in allowed:
                self.fail(
                    f"{prefix}{k}", f"unknown key; expected one of {_one_of(sorted(allowed))}."
                )
        for k in sorted(required - set(raw)):
            self.fail(f"{prefix}{k}", "is required.")

    def string(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str):
            self.fail(key, f"must be a string, but got {raw!r}.")
        return raw

    def dataclass(self, cls: type, raw: Any, key: str) -> Any:
        given = self.mapping(raw, key)
        names = {f.name: f for f in fields(cls)}
        self.keys(given, key, allowed=set(names))
        defaults = cls()
        for k, val in given.items():
            _check_type(self, f"{key}.{k}", val, getattr(defaults, k), optional=k == "seed")
        return cls(**given)


def _check_type(
    v: _Validator, key: str, value: Any, default: Any, *, optional: bool = False
) -> None:
    """The value must have the default's type (an int is accepted where a float is expected)."""
    if value is None and (optional or default is None):
        return
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float) or default is None:
        expected = (int, float)
    else:
        expected = (type(default),)
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        names = " or ".join("number" if t is float else t.__name__ for t in expected)
        v.fail(key, f"must be {names}, but got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        v.fail(key, f"must be finite, but got {value!r}.")


def _one_of(items: Any) -> str:
    return ", ".join(str(i) for i in items)
