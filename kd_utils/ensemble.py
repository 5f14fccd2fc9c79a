"""Several students at once: ensembles, students trained together in one loop, deep mutual learning,
and multi-teacher distillation.

- :class:`Ensemble` evaluates any list of models as one model (mean of logits, or mean of
  probabilities returned as log-probabilities so ``argmax``/``softmax`` work as for logits). As a
  teacher it is multi-teacher distillation: ``distill(student, Ensemble(teachers), ...)``.
- :class:`Cohort` holds several students; :class:`CohortDistiller` trains them in one loop on
  shared batches (and shared teacher outputs, cached or online). Each student's loss is
  ``(1 - alpha) * CE + alpha * KD(teacher) + beta * mean_j KL(p_j || p_i)`` over its peers ``j``
  (deep mutual learning, Zhang et al. 2018, with the peers' predictions detached: the simultaneous
  update most implementations use; ``peers="sum"`` sums the peers' terms as the paper does). With ``beta = 0`` and plain SGD the students do not interact,
  so training them together gives the same weights as training them one by one on the same batches.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CIFAR_KD
from .models import DEFAULT_COHORT as DEFAULT_MEMBERS, build_cohort  # noqa: F401 (re-exported)
from .models.ensembles import COMBINE, Cohort, Ensemble, ensemble_logits  # noqa: F401 (re-exported)
from .train_kd import DISTILLERS, Distiller, kd_loss


PEER_REDUCTIONS = ("mean", "sum")


def mutual_loss(logits: torch.Tensor, temperature: float = 1.0, peers: str = "mean") -> torch.Tensor:
    """Deep mutual learning term summed over students: for each student i, the mean (``peers="mean"``,
    ours) or the sum (``peers="sum"``, the paper's eq. 10 and its reference code) over peers j != i of
    ``T^2 * KL(p_j^T || p_i^T)`` with the peers detached; ``logits`` is (S, N, K), S >= 2. The two agree
    for two students; with S students the sum weighs the mutual term S - 1 times more."""
    if peers not in PEER_REDUCTIONS:
        raise ValueError(f"peers must be one of {PEER_REDUCTIONS}, got {peers!r}")
    s = logits.shape[0]
    if s < 2:
        raise ValueError("mutual learning needs at least two students")
    scale = 1.0 / (s - 1) if peers == "mean" else 1.0
    total = logits.new_zeros((), dtype=torch.float32)
    for i in range(s):
        for j in range(s):
            if i != j:
                total = total + kd_loss(logits[i], logits[j].detach(), temperature) * scale
    return total


class CohortDistiller(Distiller):
    """Train a :class:`Cohort` on shared batches: each student gets CE, optionally KD from the
    teacher (cached outputs or an online teacher, shared by all students) and optionally the mutual
    term. Loss terms are summed over students (so each student's gradient is its own loss's)."""

    def __init__(self, cohort: Cohort, teacher: nn.Module | None = None, *, temperature: float = CIFAR_KD.temperature,
                 alpha: float = 0.0, beta: float = 0.0, mutual_temperature: float = 1.0, peers: str = "mean"):
        if peers not in PEER_REDUCTIONS:
            raise ValueError(f"peers must be one of {PEER_REDUCTIONS}, got {peers!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if beta > 0 and len(cohort.students) < 2:
            raise ValueError("mutual learning (beta > 0) needs at least two students")
        super().__init__(cohort, teacher)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.mutual_temperature, self.peers = float(mutual_temperature), peers

    logits_only = True  # the teacher's logits are all it reads
    family = "ensemble"

    def forward(self, x, y, ctx=None):
        logits = self.student.all_logits(x)
        s = logits.shape[0]
        losses: dict[str, torch.Tensor] = {}
        if self.alpha < 1:
            losses["loss_ce"] = (1 - self.alpha) * sum(F.cross_entropy(logits[i].float(), y) for i in range(s))
        if self.alpha > 0:
            t = self.teacher_logits(x, ctx)
            losses["loss_kd"] = self.alpha * sum(kd_loss(logits[i], t, self.temperature) for i in range(s))
        if self.beta > 0:
            losses["loss_dml"] = self.beta * mutual_loss(logits.float(), self.mutual_temperature, self.peers)
        return logits.float().mean(0), losses

    def describe(self) -> dict[str, Any]:
        return {"method": "CohortDistiller", "students": len(self.student.students), "temperature": self.temperature,
                "alpha": self.alpha, "beta": self.beta, "mutual_temperature": self.mutual_temperature,
                **({"peers": self.peers} if self.peers != "mean" else {})}


DISTILLERS["cohort"] = CohortDistiller


def pairwise_disagreement(logits: Sequence[torch.Tensor]) -> float:
    """Mean over model pairs of the fraction of samples on which their top-1 predictions differ."""
    preds = [lg.argmax(1) for lg in logits]
    pairs = [(preds[i] != preds[j]).float().mean().item() for i in range(len(preds)) for j in range(i + 1, len(preds))]
    if not pairs:
        raise ValueError("need at least two models")
    return float(sum(pairs) / len(pairs))


def pairwise_kl(logits: Sequence[torch.Tensor]) -> float:
    """Mean over ordered model pairs (i, j), i != j, of KL(p_i || p_j) in nats (T = 1), averaged over samples."""
    from .metrics import kl_divergence
    pairs = [kl_divergence(logits[i], logits[j]) for i in range(len(logits)) for j in range(len(logits)) if i != j]
    if not pairs:
        raise ValueError("need at least two models")
    return float(sum(pairs) / len(pairs))


def ensemble_curve(logits: Sequence[torch.Tensor], labels: torch.Tensor, combine: str = "probs",
                   subsets: bool = False) -> list[float]:
    """Test accuracy of the ensemble of the first 1, 2, ..., k models; with ``subsets=True`` the
    mean accuracy over every subset of each size instead (independent of the members' order)."""
    from itertools import combinations
    acc = lambda idx: float((ensemble_logits([logits[i] for i in idx], combine).argmax(1) == labels).float().mean())
    n = len(logits)
    if not subsets:
        return [acc(range(k)) for k in range(1, n + 1)]
    out = []
    for k in range(1, n + 1):
        vals = [acc(c) for c in combinations(range(n), k)]
        out.append(sum(vals) / len(vals))
    return out


def disagreement_matrix(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """(M, M) fraction of samples on which models i and j differ in their top-1 prediction."""
    preds = torch.stack([lg.argmax(1) for lg in logits])
    return (preds[:, None, :] != preds[None, :, :]).float().mean(-1)
