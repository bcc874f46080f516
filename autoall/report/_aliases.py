"""The Model Registry's aliases follow the report's evidence: `best` and `champion`.

After a report has registered each architecture's winners (autoall/report/_models.py):

- `best` on `<name>-<arch>-all` and on `<name>-<arch>-baseline` names the version this report
  registered (or reused) for it;
- `champion` names the model the verdicts favour, on exactly one of the two (`choose`): the ALL
  when its accuracy claim is supported against the tuned baseline and against the
  parameter-matched plain model; the cheaper of the two (fewer parameters, then fewer seconds of
  training) when the ALL and the tuned baseline are equivalent; the tuned baseline otherwise.

The model to deploy has a name of its own: `<name>-<arch>`, whose version made from the favoured
winner's logged model (one per run, as every registered version) holds `champion`. An alias that
pointed elsewhere is moved, with one line saying from which version to which
("champion: digits-mlp-baseline v1 -> digits-mlp-all v2 (...)"). So

    mlflow.pytorch.load_model("models:/digits-mlp@champion")   # whichever the evidence favours
    autoall.load_best("digits-mlp@champion")
    autoall.load_best("digits-mlp-all@champion")               # fails unless it is the ALL

load the favoured model. Setting the aliases
never fails the report: a registry that refuses is said, like a model it could not register.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoall.config import Kind
from autoall.errors import one_line
from autoall.report._conclusion import Cost, cheaper, cost_of
from autoall.report._names import PUBLISHED, PUBLISHED_AS
from autoall.report._types import Report, RunRecord

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autoall.report._models import Published

BEST = "best"
CHAMPION = "champion"
_VARIANTS = tuple(PUBLISHED)  # the report's variants registered as -all, -baseline, in order


@dataclass(frozen=True)
class Choice:
    """Which registered model of an architecture is `champion`, and why (a few words)."""

    kind: Kind
    reason: str


def choose(accuracy: str, parameters: str, all_cost: Cost, baseline_cost: Cost) -> Choice:
    """The champion from the verdicts of the accuracy claim (ALL vs tuned baseline) and the
    parameters claim (ALL vs parameter-matched plain model) and the two models' costs."""
    if accuracy == "supported" and parameters == "supported":
        return Choice(
            Kind.ALL, "the ALL beats the tuned baseline and the parameter-matched plain model"
        )
    if accuracy == "equivalent":
        if cheaper(all_cost, baseline_cost) < 0:
            return Choice(Kind.ALL, "equivalent to the tuned baseline, and cheaper")
        same = cheaper(all_cost, baseline_cost) == 0
        return Choice(
            Kind.BASELINE, "equivalent to the ALL" + (", as cheap" if same else ", cheaper")
        )
    if accuracy == "supported":
        return Choice(
            Kind.BASELINE,
            f"the ALL's gain is not shown to be more than size; parameters claim {parameters}",
        )
    return Choice(Kind.BASELINE, f"the ALL is not shown better; accuracy claim {accuracy}")


@dataclass(frozen=True)
class Holder:
    """A registered model and the version this report registered for it (None: none)."""

    name: str
    version: str | None


def set_aliases(
    client: MlflowClient, *, all_model: Holder, baseline_model: Holder, choice: Choice
) -> list[str]:
    """Point `best` of each model at its version and `champion` at the chosen one, removing
    `champion` from the other; the lines to show (moves, and where `champion` is now)."""
    pair = (all_model, baseline_model)
    before = {h.name: _aliases(client, h.name) for h in pair}
    lines = []
    for h in pair:
        old = before[h.name].get(BEST)
        if h.version is not None and old != h.version:
            client.set_registered_model_alias(h.name, BEST, h.version)
            moved = f"{_at(h.name, old)} -> " if old else ""
            lines.append(f"{BEST}: {moved}{_at(h.name, h.version)}")
    winner = all_model if choice.kind == Kind.ALL else baseline_model
    held = [(h.name, before[h.name][CHAMPION]) for h in pair if CHAMPION in before[h.name]]
    for h in pair:  # exactly one holds it afterwards: set below, or none when unregistered
        if CHAMPION in before[h.name] and (h is not winner or winner.version is None):
            client.delete_registered_model_alias(h.name, CHAMPION)
    if winner.version is None:
        lines.append(
            f"{CHAMPION}: none (the evidence favours {winner.name}: {choice.reason}; but this "
            "report registered no version of it)"
        )
        return lines
    client.set_registered_model_alias(winner.name, CHAMPION, winner.version)
    now = _at(winner.name, winner.version)
    moved_from = [_at(n, v) for n, v in held if (n, v) != (winner.name, winner.version)]
    was = f"{', '.join(moved_from)} -> " if moved_from else ""
    lines.append(f"{CHAMPION}: {was}{now} ({choice.reason})")
    return lines


def promote(uri: str, client: MlflowClient, winner: Published) -> list[str]:
    """Register `winner`'s logged model as a version of `<name>-<arch>` (one per run) carrying
    the winner version's tags, and point that model's `champion` at it; the line to show."""
    from autoall.tracking import LoggedModel, register, registered_suffix

    assert winner.version is not None and winner.model_id is not None
    name = winner.name.removesuffix(registered_suffix(PUBLISHED[winner.variant]))
    tags = dict(client.get_model_version(winner.name, winner.version).tags)
    tags["autoall.champion_of"] = _at(winner.name, winner.version)
    logged = LoggedModel(model_id=winner.model_id, model_uri=f"models:/{winner.model_id}")
    version = register(uri, client, name=name, logged=logged, run_id=winner.run_id, tags=tags,
                       description="The model the report's verdicts favour (alias champion).")  # fmt: skip
    old = _aliases(client, name).get(CHAMPION)
    if old == version:
        return []
    client.set_registered_model_alias(name, CHAMPION, version)
    was = f"{_at(name, old)} -> " if old else ""
    return [f"{CHAMPION}: {was}{_at(name, version)} (= {tags['autoall.champion_of']})"]


def follow_verdicts(
    report: Report,
    published: Sequence[Published],
    client: MlflowClient,
    say: Callable[[str], None],
    uri: str | None = None,
) -> None:
    """Set each architecture's aliases from its verdicts (`choose`, `set_aliases`) and, with the
    store's `uri`, register the favoured model as `<name>-<arch>@champion` (`promote`); say each
    line and note it in the report; a registry that refuses is said and noted, never raised."""
    for rep in report.archs:
        pubs = {p.variant: p for p in published if p.arch == rep.arch}
        if any(v not in pubs for v in _VARIANTS):
            continue
        verdicts = {c.key: c.verdict for c in rep.claims}
        costs = [_cost(rep.runs, pubs[v].run_id, rep.runs_of(v)) for v in _VARIANTS]
        choice = choose(
            verdicts.get("accuracy", "undetermined"),
            verdicts.get("parameters", "undetermined"),
            *costs,
        )
        ours, theirs = (Holder(pubs[v].name, pubs[v].version) for v in _VARIANTS)
        winner = pubs[PUBLISHED_AS[choice.kind]]
        try:
            lines = set_aliases(client, all_model=ours, baseline_model=theirs, choice=choice)
            if uri is not None and winner.version is not None and winner.model_id is not None:
                lines += promote(uri, client, winner)
        except Exception as exc:
            lines = [f"the aliases {BEST} and {CHAMPION} were not set: {one_line(exc, 400)}"]
        for line in lines:
            say(f"{rep.arch}: {line}")
            rep.notes.append(f"Registry alias {line}.")


def _cost(runs: Sequence[RunRecord], run_id: str, arm: Sequence[RunRecord]) -> Cost:
    """The registered run's own cost, else its arm's mean (else nothing known: zero)."""
    return cost_of([r for r in runs if r.run_id == run_id]) or cost_of(arm) or Cost(0.0, 0.0)


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """The aliases of registered model `name` (none when it does not exist)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {str(k): str(v) for k, v in model.aliases.items()}


def _at(name: str, version: str) -> str:
    return f"{name} v{version}"
