"""The report's variant names, declared once: what each model and recipe the report trains is
called wherever it is stored or shown (its runs' tags `variant` and `autoall.variant`, their run
names `<arch>/<variant>/seed<seed>`, results.csv and claims.csv, the report run's metrics
`<arch>.<variant>.*`, the registered versions' tag `autoall.variant`).

A variant is not a study kind (`config.Kind`), though two share a value: the variant "all" is
the ALL study's winner re-trained, "tuned-baseline" the baseline study's; `PUBLISHED` says which
kind's model each of those two registers. A variant on a share of the train split is named
`<variant>@<share>`, the share a percentage (`all@10%`, `tuned-baseline@30%`): `at_share`
builds that name and `split_share` reads it back.
"""

from __future__ import annotations

from autoall.config import Kind, StrEnum


class VariantName(StrEnum):
    """The variants of every replicate, by the names they are stored under."""

    TUNED_BASELINE = "tuned-baseline"  # the tuned-baseline study's winner: the comparator
    ALL = "all"  # the ALL study's winner
    HAND_SET = "hand-set"  # the hand-set baseline: a reference row (replicate 0), no claim
    PARAM_MATCHED = "param-matched"  # the tuned baseline as wide as the ALL model is large
    ALL_SHARED_LR = "all-shared-lr"  # the ALL winner trained at all_lr = lr
    CUSTOM = "custom"  # the custom-loss ALL: the winner, or the best custom-loss trial
    NO_AUX = "no-aux"  # the custom-loss ALL with aux_weight = 0
    OTHER_POSITIONS = "other-positions"  # the ALL winner at the other `positions`


# The variants whose model the report registers, and the study kind whose winner each is: its
# registered name ends in the kind (`tracking.registered_name`: `<study>-<arch>-all`, `-baseline`).
PUBLISHED: dict[str, Kind] = {
    VariantName.ALL: Kind.ALL,
    VariantName.TUNED_BASELINE: Kind.BASELINE,
}
PUBLISHED_AS: dict[Kind, str] = {kind: variant for variant, kind in PUBLISHED.items()}


def share_label(fraction: float) -> str:
    """A share of the train split as the variant names and the claims say it: 0.1 -> "10%"."""
    return f"{100 * fraction:g}%"


def at_share(variant: str, share: str) -> str:
    """The name of `variant` trained on `share` (`share_label`): ("all", "10%") -> "all@10%"."""
    return f"{variant}@{share}"


def split_share(name: str) -> tuple[str, str | None]:
    """`at_share` read back: "all@10%" -> ("all", "10%"); a full-data variant's name -> (name,
    None)."""
    variant, at, share = name.partition("@")
    return (variant, share) if at else (name, None)
