"""Models made of models: :class:`Ensemble` (several models evaluated as one) and :class:`Cohort`
(several students trained together, :class:`kd_utils.ensemble.CohortDistiller`). Build a cohort by name
with ``build_model("cohort", members=[...])``; the methods and statistics live in :mod:`kd_utils.ensemble`."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

COMBINE = ("logits", "probs")


class Ensemble(nn.Module):
    """Models evaluated as one: ``combine="logits"`` averages logits; ``"probs"`` averages softmax
    probabilities and returns their log (a valid logit vector for the averaged distribution)."""

    def __init__(self, models: Sequence[nn.Module], combine: str = "probs"):
        super().__init__()
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one model")
        if combine not in COMBINE:
            raise ValueError(f"unknown combine {combine!r}; allowed: {', '.join(COMBINE)}")
        ks = {getattr(m, "num_classes", None) for m in models} - {None}
        if len(ks) > 1:
            raise ValueError(f"ensemble members predict different numbers of classes: {sorted(ks)}")
        self.members = nn.ModuleList(models)
        self.combine = combine
        self.num_classes = ks.pop() if ks else None
        # Take the members' mode (trained models are usually in eval): a later .train(self.training), as
        # helpers do to restore a module's mode, must not flip eval-mode members into training mode.
        self.training = all(m.training for m in models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_logits([m(x) for m in self.members], self.combine)


class Cohort(nn.Module):
    """Several students trained together; ``forward`` returns every student's logits stacked
    (S, N, K) in training, and the ensemble's (mean probability) log-probabilities in eval mode, so
    ``fit`` validates the ensemble."""

    def __init__(self, students: Sequence[nn.Module]):
        super().__init__()
        if len(students) < 1:
            raise ValueError("a cohort needs at least one student")
        self.students = nn.ModuleList(students)
        self.num_classes = getattr(students[0], "num_classes", None)

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([s(x) for s in self.students])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.all_logits(x).float().mean(0)
        return ensemble_logits([s(x) for s in self.students], "probs")


def ensemble_logits(logits: Sequence[torch.Tensor], combine: str = "probs") -> torch.Tensor:
    """What :class:`Ensemble` computes, from precomputed logits of its members."""
    outs = torch.stack([lg.float() for lg in logits])
    if combine == "logits":
        return outs.mean(0)
    if combine != "probs":
        raise ValueError(f"unknown combine {combine!r}; allowed: {', '.join(COMBINE)}")
    return torch.logsumexp(F.log_softmax(outs, -1), 0) - torch.log(torch.tensor(float(len(outs))))
