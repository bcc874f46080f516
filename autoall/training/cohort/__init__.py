"""A cohort: K trials whose plans share one architecture and shape, trained as one batched
model (`torch.func` over stacked weights) so a small network keeps a GPU busy. Each member keeps
its own seed, batches, optimizer, pruning and checkpoint, and ends as it would alone.
"""

from __future__ import annotations

from autoall.training.cohort._cohort import cohort_blocker, fit_cohort, group_plans
from autoall.training.cohort._loop import Outcome

__all__ = ["Outcome", "cohort_blocker", "fit_cohort", "group_plans"]
