"""`autoall report A.yaml B.yaml`: the summary across study files, from small fixed reports."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from autoall.report import _render as render
from autoall.report._across import document
from autoall.report._claims import arch_claims
from autoall.report._types import ArchReport, Replicate, Report, Variant


def _report(name: str, target_acc: float, epochs_verdict: str) -> Report:
    """A report of one mlp task whose claims are the real ones (titles as claims.py writes
    them), untested but for the epochs claim's verdict; its efficiency target `target_acc`."""
    plan: Any = SimpleNamespace(spec=None)  # the only part of a plan the claims read
    variants = [Variant(name="all", label="ALL", plan=plan, note="")]
    replicate = Replicate(0, None, None, 0, {}, variants)  # type: ignore[arg-type]
    rep = ArchReport(arch="mlp", replicates=[replicate], target_acc=target_acc)
    rep.claims = arch_claims(rep, test_y=np.array([]))
    next(c for c in rep.claims if c.key == "epochs").verdict = epochs_verdict
    return Report(name=name, path=f"{name}.yaml", data="digits", test_size=360, archs=[rep],
                  seeds=(0,), selection_seeds=((0,),), top_k=1, alpha=0.05, tracking_uri="",
                  parent_run_id="")  # fmt: skip


def test_each_task_s_efficiency_verdict_names_its_own_target() -> None:
    first, second = _report("a", 0.9123, "supported"), _report("b", 0.8456, "opposite")
    assert "0.9123" in next(c.title for c in first.claims if c.key == "epochs")  # as claims.py
    table = next(b for b in document([first, second]) if isinstance(b, render.Table))
    assert table.header == ("claim", "a: digits/mlp", "b: digits/mlp")
    rows = {row[0]: row[1:] for row in table.rows}
    epochs = "Efficiency: the ALL needs fewer epochs to reach the task's target validation accuracy"
    seconds = epochs.replace("epochs", "seconds of training")
    assert rows[epochs] == ("**supported** (to 0.9123)", "**opposite** (to 0.8456)")
    assert rows[seconds] == ("**undetermined** (to 0.9123)", "**undetermined** (to 0.8456)")
    accuracy = "Accuracy (FAQ 3): the tuned ALL beats the equal-budget tuned baseline"
    assert rows[accuracy] == ("**undetermined**", "**undetermined**")  # no target there
    assert not [title for title in rows if "0.9123" in title or "0.8456" in title]
