"""Study files (YAML): schema, validation and defaults.

Every key is declared here; an unknown key, a wrong type or an impossible range is a
`StudyFileError` that names the file, the key path and what is allowed, raised before any
storage is touched or any training starts. A complete annotated example: `studies/digits.yaml`.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from autoall.baselines import baseline
from autoall.data import DATASETS
from autoall.layer import ACTIVATIONS, AUX_LOSSES, POSITIONS
from autoall.models import ARCHITECTURES
from autoall.options import KINDS
from autoall.safe_yaml import YamlProblem, load_yaml, read_text
from autoall.search_space import ParamSpec, parse_space
from autoall.train import TrainConfig

SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp", "grid", "nsgaii")
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
KNOBS: tuple[str, ...] = ("hidden_size", "all_lr", "aux_weight", "aux_loss", "positions")
BASELINE_KNOBS: tuple[str, ...] = ("lr", "weight_decay")  # the tuned baseline's own knobs
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
        """The file restricted to `archs` (--architectures): each in the file, at least one,
        none twice."""
        if not archs:
            raise StudyFileError(
                self.path,
                "architectures",
                "--architectures names no architecture; give a comma-separated subset of "
                f"{', '.join(self.architectures)}, or leave the option out for all of them.",
            )
        if len(set(archs)) != len(archs):
            raise StudyFileError(
                self.path, "architectures", f"--architectures names one twice: {','.join(archs)}."
            )
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
    """Read and validate a study file; every problem is a `StudyFileError`.

    The YAML is read by `autoall.safe_yaml`: UTF-8, at most 1 MiB, no key given twice, at most
    10,000 values once aliases are expanded.
    """
    p = str(path)
    try:
        raw = load_yaml(read_text(Path(path)))
    except YamlProblem as exc:
        raise StudyFileError(p, exc.key, str(exc)) from None
    return parse_study(raw, file=p)


NAME_MAX_LENGTH = 100  # MLflow keeps 250 characters of a run name: <name>/<arch>/tuned-baseline#n
_NAME = re.compile(r"[^\W_][\w.\-]*")


def check_name(name: object, *, what: str = "name") -> str:
    """`name` if it can name the Optuna studies `<name>/<arch>[/tuned-baseline]`, the MLflow
    experiment and its runs, the report folder `reports/<name>` and checkpoint folders; else a
    ValueError saying what is allowed."""
    allowed = (
        f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
        f"{NAME_MAX_LENGTH} characters (it names the Optuna studies, the MLflow experiment and "
        "the report folder)"
    )
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string of {allowed}, but got {_short(name)}.")
    if len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"{what} must have {allowed}, but got {len(name)} characters.")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} must have {allowed}, but got {_short(name)}.")
    return name


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
    try:
        name = check_name(top["name"], what="the study name")
    except ValueError as exc:
        v.fail("name", str(exc))

    data = v.dataclass(DataConfig, top.get("data", {}), "data")
    if data.name not in DATASETS:
        v.fail(
            "data.name",
            f"unknown data set {_short(data.name)}; expected one of {_one_of(DATASETS)}.",
        )
    if not 0 < data.val_fraction < 1:
        v.fail("data.val_fraction", f"must be in (0, 1), but got {_short(data.val_fraction)}.")
    _check_range(v, "data.split_seed", data.split_seed, low=0, high=_MAX_SEED)

    archs = top.get("architectures", ["mlp"])
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not archs:
        v.fail("architectures", f"must be a non-empty list, but got {_short(archs)}.")
    for i, arch in enumerate(archs):
        if arch not in ARCHITECTURES:
            v.fail(
                f"architectures[{i}]",
                f"unknown architecture {_short(arch)}; expected one of {_one_of(ARCHITECTURES)}.",
            )
    if len(set(archs)) != len(archs):
        v.fail("architectures", f"lists an architecture twice: {_short(archs)}.")

    train, per_arch = _parse_train(v, top.get("train", {}), archs)
    activation = top.get("activation", "relu")
    if activation not in ACTIVATIONS:
        v.fail(
            "activation", f"must be one of {_one_of(ACTIVATIONS)}, but got {_short(activation)}."
        )

    sampler = v.dataclass(SamplerConfig, top.get("sampler", {}), "sampler")
    if sampler.name not in SAMPLERS:
        v.fail(
            "sampler.name",
            f"unknown sampler {_short(sampler.name)}; expected one of {_one_of(SAMPLERS)}.",
        )
    if sampler.seed is not None:
        _check_range(v, "sampler.seed", sampler.seed, low=0, high=_MAX_SEED)
    _check_range(v, "sampler.n_startup_trials", sampler.n_startup_trials, low=0)
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
            f"only 'val_acc' (maximised) is supported, but got {_short(objective['metric'])}.",
        )
    second = objective.get("second")
    if second is not None and second not in SECOND_OBJECTIVES:
        v.fail(
            "objective.second",
            f"must be one of {_one_of(SECOND_OBJECTIVES)} or null, but got {_short(second)}.",
        )

    pruner_raw = top.get("pruner", {"name": "none"} if second else {})
    pruner = v.dataclass(PrunerConfig, pruner_raw, "pruner")
    if pruner.name not in PRUNERS:
        v.fail(
            "pruner.name",
            f"unknown pruner {_short(pruner.name)}; expected one of {_one_of(PRUNERS)}.",
        )
    for field_name, low in (
        ("n_startup_trials", 0),
        ("n_warmup_steps", 0),
        ("min_resource", 1),
        ("reduction_factor", 2),
    ):
        _check_range(v, f"pruner.{field_name}", getattr(pruner, field_name), low=low)
    if second and pruner.name != "none":
        v.fail(
            "pruner.name",
            "Optuna cannot prune a multi-objective study; use 'none' with objective.second.",
        )

    n_trials = top.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials <= 0:
        v.fail("n_trials", f"must be a positive integer, but got {_short(n_trials)}.")
    heartbeat = v.dataclass(HeartbeatConfig, top.get("heartbeat", {}), "heartbeat")
    if heartbeat.interval <= 0 or heartbeat.grace_period <= heartbeat.interval:
        v.fail("heartbeat", "needs interval > 0 and grace_period > interval (seconds).")
    if heartbeat.max_retry < 0:
        v.fail("heartbeat.max_retry", f"must be >= 0, but got {_short(heartbeat.max_retry)}.")

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
    """The given knobs, validated (autoall/search_space.py); a knob neither given nor in
    `defaults` is left out."""
    given = v.mapping(raw, key)
    v.keys(given, key, allowed=set(knobs))
    for knob, entry in given.items():
        if isinstance(entry, dict):
            v.mapping(entry, f"{key}.{knob}")
    return parse_space(
        given, knobs=knobs, defaults=defaults, section=key, fail=v.fail, short=_short
    )


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
                key or "(top level)",
                f"must be a mapping, but got {type(raw).__name__} {_short(raw)}.",
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
            self.fail(key, f"must be a string, but got {_short(raw)}.")
        return raw

    def dataclass(self, cls: type, raw: Any, key: str) -> Any:
        given = self.mapping(raw, key)
        names = {f.name: f for f in fields(cls)}
        self.keys(given, key, allowed=set(names))
        defaults = cls()
        for k, val in given.items():
            _check_type(self, f"{key}.{k}", val, getattr(defaults, k), optional=k == "seed")
        return cls(**given)


_MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seeds are 32-bit


def _check_range(v: _Validator, key: str, value: int, *, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        v.fail(key, f"must be an integer {bounds}, but got {_short(value)}.")


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
        v.fail(key, f"must be {names}, but got {_short(value)}.")
    if isinstance(value, float) and not math.isfinite(value):
        v.fail(key, f"must be finite, but got {_short(value)}.")


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 8, 8, 3


def _short(value: Any) -> str:
    """`repr(value)`, bounded: a message stays one readable line whatever a file holds."""
    return _REPR.repr(value)


def _one_of(items: Any) -> str:
    return ", ".join(str(i) for i in items)
