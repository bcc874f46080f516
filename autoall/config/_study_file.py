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

from autoall.config._options import KINDS, MAX_REPLICATES, REPORT_COUNTS, Kind
from autoall.config._space import DEFAULT_SEARCH, ParamSpec, check_grid, parse_space
from autoall.config._yaml import YamlProblem, load_yaml, read_text
from autoall.errors import InvalidValue
from autoall.layer import ACTIVATIONS
from autoall.training import ARCHITECTURES, DATASETS, TrainConfig, baseline

SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp", "grid", "nsgaii")
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")
KNOBS: tuple[str, ...] = ("hidden_size", "all_lr", "aux_weight", "aux_loss", "positions")
BASELINE_KNOBS: tuple[str, ...] = ("lr", "weight_decay")  # the tuned baseline's own knobs
# the baseline study of <name>/<arch> is <name>/<arch>/tuned-baseline
BASELINE_SUFFIX = "tuned-baseline"
SECOND_OBJECTIVES: tuple[str, ...] = ("params", "epoch_seconds")
_STUDY_TRAIN_KEYS = frozenset(TrainConfig.field_names()) - {"all_lr", "device", "evaluate_test"}


class StudyFileError(InvalidValue):
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
class ReportConfig:
    """The study file's `report:` section: how `autoall report` judges the studies."""

    margin: float | None = None  # equivalence margin, accuracy points; None: the report's default
    tuning_trials: int = 8  # re-tuning per control and reduced-data arm (0: untuned controls)
    seeds: int = 3  # evaluation runs per variant and replicate (2 or more: a spread)
    selection_seeds: int = 3  # seeds each top-k trial is re-evaluated on (validation)
    top_k: int = 3  # trials per study re-evaluated to pick its winner


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
    replicates: int = 1  # independent searches of each study, each with its own seeds
    report: ReportConfig = ReportConfig()

    def study_name(self, arch: str, kind: str = Kind.ALL, replicate: int = 0) -> str:
        """`<name>/<arch>` for the ALL study, `<name>/<arch>/tuned-baseline` for its baseline;
        replicate r >= 1 appends `/r<r>`. Replicate 0 keeps the names of a single search, so a
        study made before replicates existed is replicate 0."""
        if kind not in KINDS:
            raise InvalidValue(f"kind must be one of {_one_of(KINDS)}, but got {kind!r}.")
        if not _int_in(replicate, 0, MAX_REPLICATES - 1):
            raise InvalidValue(f"replicate must be an integer from 0 to 99, but got {replicate!r}.")
        name = f"{self.name}/{arch}"
        name = name if kind == Kind.ALL else f"{name}/{BASELINE_SUFFIX}"
        return f"{name}/r{replicate}" if replicate else name

    def space(self, arch: str, kind: str = Kind.ALL) -> dict[str, ParamSpec]:
        """The knobs a study of `kind` searches: the base network's lr and weight_decay, and for
        the ALL study the five ALL knobs too.

        Both studies search lr and weight_decay over the same ranges, so the ALL's knobs are not
        credited with what tuning the base network's own knobs gives (equal nuisance tuning).
        Defaults: lr log-uniform over [lr / 10, 10 lr] around the architecture's training lr,
        weight_decay log-uniform over [1e-6, 1e-2]; `baseline_search` overrides.
        """
        lr = self.train_config(arch).lr
        base = {
            "lr": ParamSpec("lr", "float", low=lr / 10, high=lr * 10, log=True),
            "weight_decay": ParamSpec("weight_decay", "float", low=1e-6, high=1e-2, log=True),
            **self.baseline_search,
        }
        return {**base, **self.search} if kind == Kind.ALL else base

    def studies(self, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, Kind, int]]:
        """(architecture, kind, replicate) of every study the file defines: per architecture,
        per replicate, the ALL study first; of `kinds` ("all" is `Kind.ALL`) only."""
        chosen = [k for k in KINDS if k in kinds]
        return [
            (a, k, r) for a in self.architectures for r in range(self.replicates) for k in chosen
        ]

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + (["minimize"] if self.second_objective else [])

    def train_config(self, arch: str, replicate: int = 0) -> TrainConfig:
        """The architecture's baseline settings (autoall/training/_baselines.py), then the file's overrides;
        replicate r's seed is `train.seed + r`, so each replicate is a search of its own."""
        cfg = baseline(arch, self.data.name).config
        cfg = replace(cfg, **{**self.train, **self.train_per_arch.get(arch, {})})
        return replace(cfg, seed=cfg.seed + replicate) if replicate else cfg

    def with_replicates(self, replicates: int) -> StudyConfig:
        """The file with `replicates` independent searches per study (--replicates)."""
        _check_replicates(self, replicates, what="--replicates")
        return replace(self, replicates=replicates)

    def with_architectures(self, archs: list[str]) -> StudyConfig:
        """The file restricted to `archs` (--architectures): each in the file, at least one,
        none twice."""
        listed = ", ".join(self.architectures)
        if not archs:
            problem = (
                "--architectures names no architecture; give a comma-separated subset of "
                f"{listed}, or leave the option out for all of them."
            )
        elif len(set(archs)) != len(archs):
            problem = f"--architectures names one twice: {','.join(archs)}."
        elif unknown := [a for a in archs if a not in self.architectures]:
            problem = (
                f"--architectures asks for {', '.join(unknown)}, but the file lists only {listed}."
            )
        else:
            return replace(self, architectures=tuple(archs))
        raise StudyFileError(self.path, "architectures", problem)


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
# A file name holds 255 bytes; the longest a name is part of is the report's figure (plots.py)
# optimisation_history_<name>_<arch>_tuned-baseline_r<r>.png (a checkpoint folder: 31 bytes more)
_LONGEST = f"optimisation_history__{max(ARCHITECTURES, key=len)}_{BASELINE_SUFFIX}_r99.png"
NAME_MAX_BYTES = 255 - len(_LONGEST)  # 202: 100 ASCII characters, 67 CJK ones (3 bytes each)
_NAME = re.compile(r"[^\W_][\w.\-]*")


def check_name(name: object, *, what: str = "name") -> str:
    """`name` if it can name the Optuna studies, the MLflow experiment and its runs, the report
    folder `reports/<name>`, its figures and checkpoint folders; else a ValueError saying why."""
    allowed = (
        f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
        f"{NAME_MAX_LENGTH} characters and {NAME_MAX_BYTES} bytes in UTF-8 (it names the Optuna "
        "studies, the MLflow experiment, the report folder and its files)"
    )
    if not isinstance(name, str):
        raise InvalidValue(f"{what} must be a string of {allowed}, but got {_short(name)}.")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidValue(f"{what} must have {allowed}, but got {len(name)} characters.")
    if not _NAME.fullmatch(name):
        raise InvalidValue(f"{what} must have {allowed}, but got {_short(name)}.")
    if len(name.encode()) > NAME_MAX_BYTES:
        raise InvalidValue(f"{what} must have {allowed}, but got {len(name.encode())} bytes.")
    if name.casefold() == "default":
        raise InvalidValue(
            f"{what} cannot be {name!r}: MLflow's own experiment is 'Default', and the runs of "
            "a study named so would land among whatever else is logged there; choose another."
        )
    return name


_PRUNER_LOWEST = {"n_startup_trials": 0, "n_warmup_steps": 0, "min_resource": 1,
                  "reduction_factor": 2}  # fmt: skip
_TOP_KEYS = {"name", "data", "architectures", "train", "search", "activation", "sampler",
             "pruner", "n_trials", "objective", "heartbeat", "baseline_search", "replicates",
             "report"}  # fmt: skip


def parse_study(raw: Any, *, file: str = "<study>") -> StudyConfig:
    v = _Validator(file)
    top = v.mapping(raw, "")
    v.keys(top, "", required=("name",), allowed=_TOP_KEYS)
    try:
        name = check_name(top["name"], what="the study name")
    except ValueError as exc:
        v.fail("name", str(exc))

    data = v.dataclass(DataConfig, top.get("data", {}), "data")
    v.choice("data.name", data.name, DATASETS, "data set")
    if not 0 < data.val_fraction < 1:
        v.fail("data.val_fraction", f"must be in (0, 1), but got {_short(data.val_fraction)}.")
    _check_range(v, "data.split_seed", data.split_seed, low=0, high=_MAX_SEED)

    archs = top.get("architectures", ["mlp"])
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not archs:
        v.fail("architectures", f"must be a non-empty list, but got {_short(archs)}.")
    for i, arch in enumerate(archs):
        v.choice(f"architectures[{i}]", arch, ARCHITECTURES, "architecture")
    if len(set(archs)) != len(archs):
        v.fail("architectures", f"lists an architecture twice: {_short(archs)}.")

    train, per_arch = _parse_train(v, top.get("train", {}), archs)
    activation = top.get("activation", "relu")
    if activation not in ACTIVATIONS:
        v.fail(
            "activation", f"must be one of {_one_of(ACTIVATIONS)}, but got {_short(activation)}."
        )

    sampler = v.dataclass(SamplerConfig, top.get("sampler", {}), "sampler")
    v.choice("sampler.name", sampler.name, SAMPLERS, "sampler")
    if sampler.seed is not None:
        _check_range(v, "sampler.seed", sampler.seed, low=0, high=_MAX_SEED)
    _check_range(v, "sampler.n_startup_trials", sampler.n_startup_trials, low=0)
    search = parse_space(top.get("search"), knobs=KNOBS, defaults=DEFAULT_SEARCH,
                         section="search", fail=v.fail, short=_short)  # fmt: skip
    baseline_search = parse_space(top.get("baseline_search"), knobs=BASELINE_KNOBS, defaults={},
                                  section="baseline_search", fail=v.fail, short=_short)  # fmt: skip
    if sampler.name == "grid":
        spaces = {"search": search, "baseline_search": baseline_search}
        check_grid(spaces, {"search": KNOBS, "baseline_search": BASELINE_KNOBS}, v.fail)

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
    v.choice("pruner.name", pruner.name, PRUNERS, "pruner")
    for field_name, low in _PRUNER_LOWEST.items():
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

    replicates = top.get("replicates", 1)
    report = _parse_report(v, top.get("report", {}))
    cfg = StudyConfig(
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
        report=report,
    )
    _check_replicates(cfg, replicates)
    _check_train_seeds(cfg)
    return replace(cfg, replicates=replicates)


def _check_replicates(cfg: StudyConfig, replicates: Any, *, what: str = "") -> None:
    """`replicates` is an integer from 1 to MAX_REPLICATES (`what`: the option giving it)."""
    if not _int_in(replicates, 1, MAX_REPLICATES):
        raise StudyFileError(
            cfg.path,
            "replicates",
            f"{what + ' ' if what else ''}must be an integer from 1 to {MAX_REPLICATES} "
            f"(independent searches per study), but got {_short(replicates)}.",
        )


def _check_train_seeds(cfg: StudyConfig) -> None:
    """Every architecture's `train.seed` leaves room for each seed derived from it (`SEED_SPAN`)."""
    for arch in cfg.architectures:
        if not _int_in(seed := cfg.train_config(arch).seed, 0, MAX_TRAIN_SEED):
            own = "seed" in cfg.train_per_arch.get(arch, {})
            raise StudyFileError(
                cfg.path,
                f"train.{arch}.seed" if own else "train.seed",
                f"must be an integer between 0 and {MAX_TRAIN_SEED} (the report trains with seeds "
                f"up to train.seed + {SEED_SPAN}; NumPy's and scikit-learn's end at {_MAX_SEED}), "
                f"but got {_short(seed)}.",
            )


def _parse_report(v: _Validator, raw: Any) -> ReportConfig:
    """The `report:` section: margin a number of accuracy points in (0, 100) or null,
    tuning_trials an integer from 0 to 1000, seeds, selection_seeds and top_k integers in
    `REPORT_COUNTS`' ranges."""
    given = v.mapping(raw, "report")
    v.keys(given, "report", allowed={f.name for f in fields(ReportConfig)})
    margin = given.get("margin")
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin < 100
    ):  # NaN fails `0 < margin < 100` too
        v.fail(
            "report.margin",
            "must be a number of accuracy points > 0 and < 100 (the equivalence margin), or "
            f"null for the report's default, but got {_short(margin)}.",
        )
    counts = {}
    for key, (low, high) in {"tuning_trials": (0, 1000), **REPORT_COUNTS}.items():
        counts[key] = given.get(key, getattr(ReportConfig, key))
        if not _int_in(counts[key], low, high):
            v.fail(f"report.{key}", f"must be an integer from {low} to {high}, but got "
                   f"{_short(counts[key])}.")  # fmt: skip
    return ReportConfig(margin=None if margin is None else float(margin), **counts)


def _int_in(value: Any, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


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

    def choice(self, key: str, value: Any, allowed: Any, what: str) -> None:
        if value not in allowed:
            self.fail(key, f"unknown {what} {_short(value)}; expected one of {_one_of(allowed)}.")

    def keys(self, raw: dict, key: str, *, allowed: set[str], required: tuple = ()) -> None:
        prefix = f"{key}." if key else ""
        for k in raw:
            if k not in allowed:
                self.fail(
                    f"{prefix}{k}", f"unknown key; expected one of {_one_of(sorted(allowed))}."
                )
        for k in sorted(set(required) - set(raw)):
            self.fail(f"{prefix}{k}", "is required.")

    def dataclass(self, cls: type, raw: Any, key: str) -> Any:
        given = self.mapping(raw, key)
        names = {f.name: f for f in fields(cls)}
        self.keys(given, key, allowed=set(names))
        defaults = cls()
        for k, val in given.items():
            _check_type(self, f"{key}.{k}", val, getattr(defaults, k), optional=k == "seed")
        return cls(**given)


_MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seeds are 32-bit
# The seeds derived from train.seed s0 (autoall/report/_arch.py): replicate r searches with s0 + r,
# evaluates on s0 + 1000 + i and selects on s0 + 2000 + 100 r + j (r, i, j < 100): s0 + 11999 at most
SEED_SPAN = 2000 + 100 * (MAX_REPLICATES - 1) + REPORT_COUNTS["selection_seeds"][1] - 1
MAX_TRAIN_SEED = _MAX_SEED - SEED_SPAN


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
