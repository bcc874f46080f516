"""`autoall train`'s options and the one configuration they give.

Every setting a study file can set for one run has an option here (`train_options` declares
them for autoall/cli/_main.py). `resolve` merges them in one order: the architecture's baseline
settings (autoall/training/_baselines.py), then a `--study` file's data set, split and training settings,
then the options given on the command line; it checks the result with the study file's own
validators (`TrainConfig`, `ALLSpec`), the message naming the option, and refuses an option
that would change nothing (an ALL knob without `--all-hidden`, SGD's momentum with AdamW).
`TrainTracking` is the run's MLflow record (`--tracking`).

A light module: click at import; torch, MLflow and the study file's schema load when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import click

from autoall.config import DEFAULT_TRACKING_URI
from autoall.errors import InvalidValue, UserError

if TYPE_CHECKING:
    from torch import nn

    from autoall.config import StudyConfig
    from autoall.layer import ALLSpec
    from autoall.tracking import MlflowTrialRun
    from autoall.training import EpochStats, RunResult, TrainConfig

_OR_FILE = "[default: the baseline's (autoall/training/_baselines.py), or --study's]"


class NumberRange(click.FloatRange):
    """click's FloatRange that refuses NaN too, which passes every comparison of its bounds
    (`--target-acc nan` would be taken as a target no accuracy crosses)."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


# TrainConfig field -> its option and click's keywords: every key of a study file's `train:`
# section (autoall/config/_study_file.py), and all_lr and device. Flags are on/off pairs, None by default.
TRAIN_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "epochs": ("--epochs", {"type": int, "help": f"Training epochs {_OR_FILE}."}),
    "batch_size": ("--batch-size", {"type": int, "help": f"Training batch size {_OR_FILE}."}),
    "optimizer": ("--optimizer", {"help": f"adamw or sgd (momentum, Nesterov) {_OR_FILE}."}),
    "lr": ("--lr", {"type": float, "help": f"The base network's peak learning rate {_OR_FILE}."}),
    "all_lr": (
        "--all-lr",
        {
            "type": float,
            "help": "The ALL's own learning rate (needs --all-hidden) [default: --lr].",
        },
    ),
    "weight_decay": (
        "--weight-decay",
        {"type": float, "help": f"Weight decay (AdamW: decoupled; SGD: L2) {_OR_FILE}."},
    ),
    "momentum": ("--momentum", {"type": float, "help": f"SGD's momentum (sgd only) {_OR_FILE}."}),
    "nesterov": ("--nesterov/--no-nesterov", {"help": f"SGD's Nesterov momentum {_OR_FILE}."}),
    "warmup_epochs": (
        "--warmup-epochs",
        {"type": float, "help": f"Linear warm-up epochs before the cosine decay {_OR_FILE}."},
    ),
    "min_lr_ratio": (
        "--min-lr-ratio",
        {"type": float, "help": f"The cosine's floor, a fraction of the peak lr {_OR_FILE}."},
    ),
    "label_smoothing": (
        "--label-smoothing",
        {"type": float, "help": f"Label smoothing of the cross-entropy, in [0, 1) {_OR_FILE}."},
    ),
    "seed": (
        "--seed",
        {
            "type": int,
            "help": "Initialisation, batch order and augmentation [default: 0, or "
            "--study's train.seed].",
        },
    ),
    "amp": ("--amp/--no-amp", {"help": f"bf16 autocast (CUDA only) {_OR_FILE}."}),
    "channels_last": (
        "--channels-last/--no-channels-last",
        {"help": f"Channels-last memory (conv nets on CUDA only) {_OR_FILE}."},
    ),
    "compile": ("--compile/--no-compile", {"help": f"torch.compile the model {_OR_FILE}."}),
    "eval_batch_size": (
        "--eval-batch-size",
        {"type": int, "help": f"Batch size of validation and test {_OR_FILE}."},
    ),
    "target_acc": (
        "--target-acc",
        {
            "type": float,
            "help": "Validation accuracy in (0, 1] whose first epoch and time the "
            f"table shows {_OR_FILE}.",
        },
    ),
    "device": (
        "--device",
        {"help": "cpu, cuda, cuda:1, mps [default: cuda, then mps, then cpu]."},
    ),
}
ALL_FIELDS: dict[str, str] = {  # ALLSpec field -> its option
    "hidden_size": "--all-hidden",
    "aux_loss": "--aux-loss",
    "aux_weight": "--aux-weight",
    "activation": "--activation",
    "positions": "--positions",
}
_DATA: dict[str, tuple[str, str]] = {  # parameter -> its option, the study file's data key
    "dataset": ("--dataset", "name"),
    "data_root": ("--data-root", "root"),
    "val_fraction": ("--val-fraction", "val_fraction"),
    "split_seed": ("--split-seed", "split_seed"),
    "download": ("--download", "download"),
}
_DATA_DEFAULTS = {"dataset": "digits", "data_root": "data", "val_fraction": 0.1, "split_seed": 0}
_MAX_SEED = 2**32 - 1  # as the study file's split_seed


def train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every option of `autoall train`, applied to `command` (click lists them in this order)."""
    declared: list[tuple[str, dict[str, Any]]] = [
        ("--study", {"type": click.Path(dir_okay=False), "help": "A study file: its data set, "
         "split (val_fraction, split_seed, root), first architecture and that architecture's "
         "training settings and ALL activation, so the run compares with its trials; options "
         "given here override the file."}),
        ("--arch", {"help": "mlp, cnn, vgg16 or resnet18 [default: mlp, or --study's first]."}),
        ("--dataset", {"help": "digits, mnist, fashion-mnist or cifar10 [default: digits, or "
         "--study's data.name]."}),
        ("--all-hidden", {"type": int, "help": "ALL hidden size; without it the baseline "
         "trains (and the ALL options below are refused)."}),
        ("--aux-weight", {"type": float, "default": 0.1, "show_default": True,
         "help": "Weight of the ALL's custom loss (needs --all-hidden)."}),
        ("--aux-loss", {"default": "reconstruction", "show_default": True, "help":
         "reconstruction, sparsity, orthogonality or none (needs --all-hidden)."}),
        ("--positions", {"default": "head", "show_default": True, "help": "head: the ALL before "
         "the head only; blocks: after every block or stage too (needs --all-hidden)."}),
        ("--activation", {"help": "The ALL's activation, relu or gelu (needs --all-hidden) "
         "[default: relu, or --study's activation]."}),
        *[(option, kwargs) for field, (option, kwargs) in TRAIN_FIELDS.items() if field != "device"],
        ("--val-fraction", {"type": float, "help": "Share of the training split held out for "
         "validation, stratified [default: 0.1, or --study's data.val_fraction]."}),
        ("--split-seed", {"type": int, "help": "Fixes the train / validation split [default: 0, "
         "or --study's data.split_seed]."}),
        ("--data-root", {"help": "Where mnist / fashion-mnist / cifar10 files live [default: "
         "data, or --study's data.root]."}),
        ("--download", {"is_flag": True, "default": None, "help": "Download a missing data set "
         "(needs the internet) [default: off, or --study's data.download]."}),
        ("--device", TRAIN_FIELDS["device"][1]),
        ("--tracking", {"is_flag": True, "help": "Log the run to MLflow: its settings, per-epoch "
         "metrics, final validation and test figures (experiment: --study's name, else 'train')."}),
        ("--tracking-uri", {"help": "MLflow tracking URI (needs --tracking) [default: "
         f"$MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI}]."}),
    ]  # fmt: skip
    for option, kwargs in reversed(declared):
        command = click.option(option, **kwargs)(command)
    return command


def given_options(ctx: click.Context, options: Mapping[str, Any]) -> frozenset[str]:
    """The options the user gave (command line, environment), as opposed to their defaults."""
    from click.core import ParameterSource

    quiet = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return frozenset(name for name in options if ctx.get_parameter_source(name) not in quiet)


@dataclass(frozen=True)
class TrainSetup:
    """One `autoall train` run: what trains, on which split, and where each setting came from."""

    arch: str
    dataset: str
    spec: ALLSpec | None  # None: the plain network
    config: TrainConfig
    root: str
    val_fraction: float
    split_seed: int
    download: bool
    settings: str  # the settings actually used, and which option or file changed each
    split_source: str | None  # where val_fraction and split_seed came from; None: defaults
    study: str | None  # the --study file
    experiment: str  # MLflow experiment of --tracking

    @property
    def label(self) -> str:
        spec = self.spec
        if spec is None:
            return f"{self.arch} baseline"
        knobs = [f"h={spec.hidden_size}", spec.aux_loss, f"w={spec.aux_weight}", spec.positions]
        knobs += [spec.activation] if spec.activation != "relu" else []
        knobs += [f"all_lr={self.config.all_lr:g}"] if self.config.all_lr is not None else []
        return f"{self.arch} + ALL({', '.join(knobs)})"

    def params(self) -> dict[str, Any]:
        """What MLflow records as the run's parameters (flattened: `train.lr`, `all.aux_loss`)."""
        from autoall._provenance import code_version

        data = {"name": self.dataset, "root": self.root, "val_fraction": self.val_fraction}
        data |= {"split_seed": self.split_seed}
        return {
            "arch": self.arch,
            "study_file": self.study or "none",
            "data": data,
            "train": asdict(self.config),
            "all": asdict(self.spec) if self.spec else "none",
            "code": code_version(),
        }


def _renamed(exc: ValueError, names: Mapping[str, str]) -> ValueError:
    """`exc` ("lr must be ...") with its leading field named as the user gave it ("--lr must
    be ..."); unchanged when the field is not in `names`."""
    text = str(exc)
    field = text.split(" ", 1)[0]
    return InvalidValue(names[field] + text[len(field) :]) if field in names else exc


def _shown(field: str, value: Any, option: str | None) -> str:
    if option is None:
        return f"{field} {value!r}"
    if isinstance(value, bool):
        on, off = option.split("/") if "/" in option else (option, f"--no-{option[2:]}")
        return on if value else off
    return f"{option} {value}"


def resolve(options: Mapping[str, Any], given: frozenset[str]) -> TrainSetup:
    """The one configuration `options` ask for (`given`: the ones the user gave), checked
    before anything loads or trains: every problem is one `ValueError` or `UserError` (exit
    code 2) naming the option, or the study file and its key."""
    from autoall.config import load_study_file
    from autoall.layer import ALLSpec
    from autoall.training import baseline, recipe_text

    if "tracking_uri" in given and not options["tracking"]:
        raise UserError("--tracking-uri needs --tracking; without it nothing is logged to MLflow.")
    study: StudyConfig | None = load_study_file(options["study"]) if options["study"] else None
    if study is not None and "arch" in given and options["arch"] not in study.architectures:
        raise UserError(
            f"--arch {options['arch']}: {study.path} trains only {', '.join(study.architectures)}"
            "; leave --arch out for its first, or name one of them."
        )
    arch = options["arch"] or (study.architectures[0] if study else "mlp")

    def data(name: str) -> Any:
        if name in given or study is None:
            value = options[name]
            return _DATA_DEFAULTS.get(name, False) if value is None else value
        return getattr(study.data, _DATA[name][1])

    dataset = data("dataset")
    base = baseline(arch, dataset)  # an unknown architecture or data set, said as it is

    activation = options["activation"] or (study.activation if study else "relu")
    hidden = options["all_hidden"]
    knobs = {"aux_loss": options["aux_loss"], "aux_weight": options["aux_weight"]}
    knobs |= {"activation": activation, "positions": options["positions"]}
    try:  # checked even for the baseline, so a typo never goes unnoticed
        spec = ALLSpec(hidden_size=1 if hidden is None else hidden, **knobs)
    except ValueError as exc:
        raise _renamed(exc, ALL_FIELDS) from None
    if hidden is None:
        for name in ("all_lr", "aux_weight", "aux_loss", "positions", "activation"):
            if name in given:
                raise UserError(
                    f"--{name.replace('_', '-')} needs --all-hidden (the ALL's hidden size); "
                    "without it the plain baseline trains."
                )

    cli = {f: options[f] for f in TRAIN_FIELDS if f in given}
    if "seed" in cli and not 0 <= cli["seed"] <= _MAX_SEED:  # NumPy's and scikit-learn's range
        raise InvalidValue(
            f"--seed must be an integer between 0 and {_MAX_SEED}, but got {cli['seed']!r}."
        )
    from_file = {**study.train, **study.train_per_arch.get(arch, {})} if study else {}
    names = {f: TRAIN_FIELDS[f][0] for f in cli}
    names |= {f: f"{study.path}: train.{f}" for f in from_file if f not in cli} if study else {}
    try:
        config = replace(base.config, **{**from_file, **cli}, evaluate_test=True)
    except ValueError as exc:
        raise _renamed(exc, names) from None
    _refuse_unused(config, given, arch)

    val_fraction, split_seed = data("val_fraction"), data("split_seed")
    if isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise InvalidValue(f"--val-fraction must be in (0, 1), but got {val_fraction!r}.")
    if not 0 <= split_seed <= _MAX_SEED:
        raise InvalidValue(
            f"--split-seed must be an integer between 0 and {_MAX_SEED}, but got {split_seed!r}."
        )
    changes = [  # what differs from the baseline, said as the user gave it
        _shown(f, getattr(config, f), TRAIN_FIELDS[f][0] if f in cli else None)
        for f in TRAIN_FIELDS
        if f not in ("all_lr", "device") and getattr(config, f) != getattr(base.config, f)
    ]
    cli_changes = [c for c in changes if c.startswith("--")]
    file_changes = [c for c in changes if not c.startswith("--")]
    if study is not None and file_changes:
        cli_changes.append(f"{study.path}: {', '.join(file_changes)}")
    why = base.source.removeprefix(recipe_text(base.config)).strip(" ()")
    rest = f"the rest as the baseline: {why}" if cli_changes else f"the baseline: {why}"
    settings = f"{recipe_text(config)} ({'; '.join([*cli_changes, rest])})"

    split = {"val_fraction": val_fraction, "split_seed": split_seed}
    shown = [f"{_DATA[k][0]} {v}" for k, v in split.items() if k in given]
    from_study = [f"{k} {v}" for k, v in split.items() if k not in given]
    if study is not None and from_study:
        shown.append(f"{study.path}: {', '.join(from_study)}")
    elif from_study:
        shown += from_study
    return TrainSetup(
        arch=arch,
        dataset=dataset,
        spec=spec if hidden is not None else None,
        config=config,
        root=str(data("data_root")),
        val_fraction=float(val_fraction),
        split_seed=int(split_seed),
        download=bool(data("download")),
        settings=settings,
        split_source=", ".join(shown) if study or set(split) & given else None,
        study=study.path if study else None,
        experiment=study.name if study else "train",
    )


def _refuse_unused(config: TrainConfig, given: frozenset[str], arch: str) -> None:
    """An option given that this run would ignore is an error: SGD's settings with AdamW,
    CUDA's (`--amp`, `--channels-last`) elsewhere or on a network without convolutions."""
    from autoall.training import resolve_device

    if config.optimizer != "sgd":
        for name in ("momentum", "nesterov"):
            if name in given:
                raise UserError(
                    f"{TRAIN_FIELDS[name][0].split('/')[0]} needs --optimizer sgd; this run "
                    f"trains with {config.optimizer}, which has no such setting."
                )
    device = resolve_device(config.device)  # an unknown or missing device, said as it is
    for name in ("amp", "channels_last"):
        option = TRAIN_FIELDS[name][0].split("/")[0]
        if name in given and getattr(config, name) and device.type != "cuda":
            raise UserError(f"{option} works on CUDA only; this run trains on {device}.")
    if "channels_last" in given and config.channels_last and arch == "mlp":
        raise UserError("--channels-last applies to conv nets; mlp has no convolution.")


def result_rows(setup: TrainSetup, model: nn.Module, result: RunResult) -> list[tuple[str, str]]:
    """The result table of `autoall train`: what trained, where the ALL sits, the figures."""
    from autoall.layer import all_layers

    rows = [("model", setup.label)]
    if setup.spec is not None:
        layers = all_layers(model)
        heads = [f"{layer.in_front_of} ({layer.features} features)" for layer in layers
                 if layer.in_front_of]  # fmt: skip
        blocks = len(layers) - len(heads)
        after = f", and after {blocks} block{'' if blocks == 1 else 's'}" if blocks else ""
        site = ", ".join(heads) + after
        rows.append(("ALL in front of", site))
    rows += [
        ("validation accuracy (final)", f"{result.final_val_acc:.4f}"),
        ("validation accuracy (best)", f"{result.best_val_acc:.4f} (epoch {result.best_epoch})"),
        ("test accuracy", f"{result.test_acc:.4f}"),
    ]
    if result.target_acc is not None:
        reached = (
            f"epoch {result.target_epoch}, {result.target_seconds:.2f} s"
            if result.target_epoch is not None
            else "not reached"
        )
        rows.append((f"validation accuracy {result.target_acc:g}", reached))
    rows += [
        ("training time", f"{result.wall_seconds:.2f} s ({result.epochs_run} epochs)"),
        ("parameters", f"{result.params.total:,} (ALL: {result.params.all:,})"),
        ("device", result.device),
    ]
    return rows


class TrainTracking:
    """The MLflow run of `autoall train --tracking`, in the experiment `setup.experiment`: its
    parameters (`TrainSetup.params`) at the start, every epoch's metrics in one log_batch call,
    then the final validation and test figures and the learning curve, FINISHED; or FAILED
    with the reason. A logging call that fails after its retries is kept in `lost`."""

    def __init__(self, setup: TrainSetup, uri: str | None) -> None:
        from mlflow import MlflowClient

        from autoall._secrets import mask_secrets
        from autoall.errors import one_line
        from autoall.tracking import MlflowTrialRun, Tracker, TrackingError, client_uri, log_params

        tracker = Tracker.connect(uri, experiment=setup.experiment)  # a store that is down: exit 2
        self.uri, self.experiment = tracker.uri, setup.experiment
        self.client = client = MlflowClient(client_uri(tracker.uri))
        tags = {"autoall.role": "train", "arch": setup.arch, "dataset": setup.dataset}
        tags |= {"autoall.study_file": setup.study} if setup.study else {}
        try:
            created = tracker._retrying(
                client.create_run, tracker.experiment_id, tags=tags, run_name=f"train {setup.label}"
            )
            tracker._retrying(log_params, client, created.info.run_id, setup.params())
        except Exception as exc:
            raise TrackingError(
                f"Could not create the MLflow run in {mask_secrets(tracker.uri)}: {one_line(exc)}."
            ) from None
        self.run: MlflowTrialRun = MlflowTrialRun(client, created.info.run_id)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def lost(self) -> list[str]:
        return self.run.lost

    def log_epoch(self, stats: EpochStats) -> None:
        self.run.log_epoch(stats)

    def finish(self, result: RunResult) -> None:
        """The final figures (`final_val_acc`, `test_acc`, ...) at the last epoch's step, the
        learning curve, and the run FINISHED."""
        from autoall.tracking import final_metrics, metric_batch

        run, final = self.run, final_metrics(result)
        metrics = metric_batch(final, step=result.epochs_run)
        run._call("log final metrics", self.client.log_batch, run.run_id, metrics=metrics,
                  synchronous=True)  # fmt: skip
        run.log_curve(result.history)
        run._call("end run", self.client.set_terminated, run.run_id, "FINISHED")

    def fail(self, exc: BaseException) -> None:
        """The run FAILED, with the reason in its `fail_reason` tag."""
        from autoall.errors import one_line

        run = self.run
        run._call("tag fail_reason", self.client.set_tag, run.run_id, "fail_reason", one_line(exc))
        run._call("end run", self.client.set_terminated, run.run_id, "FAILED")
