"""What a report trains per architecture and replicate (`arch_variants`): each variant's plan,
label and note, with the knobs it inherits from a winner.

From one replicate's two winners (`picked[Kind.ALL]`, `picked[Kind.BASELINE]`, and
`picked[VariantName.CUSTOM]` when the ALL winner has no custom loss) come the variants
(autoall/report/_names.py names them):

- the tuned baseline (the comparator) and the ALL; the hand-set baseline (a reference row, in
  replicate 0 only: it does not depend on a search);
- the controls: the tuned baseline with the layer before the head widened to within
  `MATCH_TOLERANCE` of the ALL model's parameters (left out, with a note, when no width is that
  close), the ALL at `all_lr = lr`, the custom-loss ALL (the winner, or the best custom-loss
  trial when the winner has none) and it with `aux_weight = 0`, the
  ALL at the other `positions`;
- the tuned baseline and the ALL on each share of the train split, at the full-data run's
  optimizer steps (`report_retune.equal_steps`).

Controls and reduced-data arms start from the winner's knobs; the report then re-tunes what
each change frees (autoall/report/_retune.py). The ALL and the tuned baseline train alone
(`timed`), so that their seconds are their own.
"""

from __future__ import annotations

from dataclasses import replace

from autoall.config import Kind, StudyConfig, trial_plan
from autoall.report._names import VariantName, at_share, share_label
from autoall.report._retune import equal_steps
from autoall.report._types import Selection, Variant
from autoall.training import (
    DeviceData,
    RunPlan,
    baseline,
    build_model,
    count_parameters,
    parameter_matched_width,
)

MATCH_TOLERANCE = 0.02  # the parameter-matched control is within 2 % of the ALL model


def arch_variants(
    cfg: StudyConfig,
    arch: str,
    picked: dict[str, Selection],
    *,
    device: str,
    data: DeviceData,
    fractions: tuple[float, ...],
    replicate: int = 0,
) -> tuple[list[Variant], list[str]]:
    """The evaluated variants (winners, hand-set reference, controls, reduced-data runs), and
    notes on any control that could not be built."""
    notes: list[str] = []
    win_all, win_base = picked[Kind.ALL].winner, picked[Kind.BASELINE].winner
    all_plan = trial_plan(cfg, arch, Kind.ALL, win_all.params, device=device, replicate=replicate)
    base_plan = trial_plan(
        cfg, arch, Kind.BASELINE, win_base.params, device=device, replicate=replicate
    )
    hand = baseline(arch, cfg.data.name)
    hand_plan = RunPlan(arch, replace(cfg.train_config(arch), device=device))
    assert all_plan.spec is not None
    variants = [
        Variant(
            VariantName.TUNED_BASELINE,
            "tuned baseline",
            base_plan,
            f"{picked[Kind.BASELINE].study} trial #{win_base.trial}: {_knobs(win_base.params)}",
            timed=True,
        ),
        Variant(
            VariantName.ALL,
            "ALL",
            all_plan,
            f"{picked[Kind.ALL].study} trial #{win_all.trial}: {_knobs(win_all.params)}",
            timed=True,
        ),
    ]
    if replicate == 0:
        variants.insert(
            1,
            Variant(
                VariantName.HAND_SET,
                "hand-set baseline",
                hand_plan,
                f"{hand.label_for(hand_plan.train)}; {hand.source} (a reference row, no claim)",
            ),
        )
    target = count_parameters(
        build_model(
            arch, in_shape=data.in_shape, num_classes=data.num_classes, all_spec=all_plan.spec
        )
    ).total
    width = parameter_matched_width(
        arch, in_shape=data.in_shape, num_classes=data.num_classes, target_params=target
    )
    matched = count_parameters(
        build_model(arch, in_shape=data.in_shape, num_classes=data.num_classes, head_width=width)
    ).total
    if abs(matched - target) <= MATCH_TOLERANCE * target:
        variants.append(
            Variant(
                VariantName.PARAM_MATCHED,
                "parameter-matched",
                replace(base_plan, head_width=width),
                f"the tuned baseline with the layer before the head {width} wide: "
                f"{matched:,} parameters, the ALL model {target:,}",
            )
        )
    else:
        notes.append(
            f"No parameter-matched control: the closest width ({width}) gives {matched:,} "
            f"parameters, not within {100 * MATCH_TOLERANCE:g} % of the ALL model's {target:,}."
        )
    shared = replace(all_plan, train=replace(all_plan.train, all_lr=None))
    variants.append(
        Variant(
            VariantName.ALL_SHARED_LR,
            "ALL, all_lr = lr",
            shared,
            "the ALL trained at the base lr",
        )
    )
    custom_pick = picked.get(VariantName.CUSTOM)
    if custom_pick is not None:
        win = custom_pick.winner
        custom_plan = trial_plan(
            cfg, arch, Kind.ALL, win.params, device=device, replicate=replicate
        )
        custom = Variant(
            VariantName.CUSTOM,
            "ALL with custom loss",
            custom_plan,
            f"best custom-loss trial #{win.trial}: {_knobs(win.params)}",
        )
    else:  # the winner has a custom loss: it is the custom-loss ALL (its runs are reused)
        custom_plan = all_plan
        custom = Variant(
            VariantName.CUSTOM,
            "ALL with custom loss",
            all_plan,
            "the ALL winner itself",
            timed=True,
        )
    if custom_plan.spec is not None and custom_plan.spec.aux_loss != "none":
        variants.append(custom)
        no_aux = replace(custom_plan, spec=replace(custom_plan.spec, aux_weight=0.0))
        variants.append(
            Variant(
                VariantName.NO_AUX,
                "ALL, aux_weight = 0",
                no_aux,
                "the custom-loss ALL without L(W, a)",
            )
        )
    flipped = "head" if all_plan.spec.positions == "blocks" else "blocks"
    variants.append(
        Variant(
            VariantName.OTHER_POSITIONS,
            f"ALL, positions = {flipped}",
            replace(all_plan, spec=replace(all_plan.spec, positions=flipped)),
            f"the ALL winner with positions: {flipped}",
        )
    )
    for fraction in fractions:
        pct = share_label(fraction)
        for name, label, plan in (
            (VariantName.TUNED_BASELINE, "tuned baseline", base_plan),
            (VariantName.ALL, "ALL", all_plan),
        ):
            variants.append(
                Variant(
                    at_share(name, pct),
                    f"{label} on {pct} of train",
                    reduced := equal_steps(plan, data, fraction),
                    f"trained on a stratified {pct} of the train split (drawn per seed) for "
                    f"{reduced.train.epochs} epochs: the full-data run's optimizer steps",
                )
            )
    return variants, notes


def _knobs(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())  # fmt: skip
