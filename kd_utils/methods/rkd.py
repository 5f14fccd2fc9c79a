"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation"):
the student matches the geometry of the teacher's batch rather than its individual outputs.

* distance-wise: the pairwise Euclidean distances of the batch's vectors, each side divided by its mean
  non-zero distance, compared with the smooth L1 (Huber, delta 1) loss;
* angle-wise: for every triplet ``(a, b, c)`` the cosine of the angle at ``a`` between ``b - a`` and ``c - a``,
  compared with the smooth L1 loss.

Only the batch's relations are matched, so the two sides may have different widths: no projection head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..feature_kd import _PooledDistiller, pooled
from ..train_kd import DISTILLERS

PDIST_EPS = 1e-12  # squared distances are clamped here before the square root (RepDistiller, mdistiller)


def pairwise_distances(e: torch.Tensor, eps: float = PDIST_EPS) -> torch.Tensor:
    """``(N, N)`` Euclidean distances between the rows of ``e`` (flattened per sample), squared distances
    clamped at ``eps`` before the root, the diagonal set to 0."""
    e = e.reshape(len(e), -1).float()
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """``(N, N, N)``: entry ``[a, b, c]`` is the cosine of the angle at ``e_a`` between ``e_b - e_a`` and
    ``e_c - e_a`` (0 where ``b`` or ``c`` is ``a``)."""
    e = e.reshape(len(e), -1).float()
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # u[a, b] = unit(e_b - e_a)
    return torch.bmm(u, u.transpose(1, 2))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the mean-normalised pairwise distance matrices, averaged over all N^2 entries."""
    _check(student, teacher)
    with torch.no_grad():
        t = _normalised_distances(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), t)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the triplet-angle cosines, averaged over all N^3 entries."""
    _check(student, teacher)
    with torch.no_grad():
        t = triplet_cosines(teacher)
    return F.smooth_l1_loss(triplet_cosines(student), t)


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 2:
        raise ValueError(f"RKD needs the same N >= 2 samples on both sides, got student {tuple(student.shape)} and "
                         f"teacher {tuple(teacher.shape)}")


class RKD(_PooledDistiller):
    """RKD on pooled penultimate vectors: ``CE + beta * (w_d * distance loss + w_a * angle loss)``
    (with ``alpha > 0`` also Hinton KD, FeatureDistiller's weighting).

    Defaults: ``w_d=25``, ``w_a=50`` (RepDistiller ``distiller_zoo/RKD.py``; mdistiller ``engine/cfg.py``
    ``RKD.DISTANCE_WEIGHT=25``, ``ANGLE_WEIGHT=50``, ``PDIST.EPSILON=1e-12``, ``SQUARED=False``) and ``beta=1``
    (RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill rkd -a 0 -b 1``; mdistiller
    ``RKD.LOSS.FEAT_WEIGHT=1``, ``CE_WEIGHT=1``). The vectors are RepDistiller's ``feat[-1]`` / mdistiller's
    ``pooled_feat``: our pooled ``stage5``, which the teacher side may read from the plan cache. No extra
    parameters. The loss is written as in both references (diagonal entries included in the means, the
    teacher side without gradient). A batch of one sample has no pairs: its RKD term is 0.
    """
    term = "loss_rkd"
    family = "rkd"

    def __init__(self, student, teacher, *, beta: float = 1.0, w_d: float = 25.0, w_a: float = 50.0, **kw):
        for name, w in (("w_d", w_d), ("w_a", w_a)):
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} (RKD {'distance' if name == 'w_d' else 'angle'} weight) must be a finite "
                                 f"number >= 0, got {w}")
        super().__init__(student, teacher, beta=beta, **kw)
        self.w_d, self.w_a = float(w_d), float(w_a)

    def feature_loss(self, s_feats, t_feats):
        s, t = pooled(s_feats[0]), t_feats[0]
        if len(s) < 2:  # a ragged last batch of one: no relation to match
            return s.sum() * 0.0
        loss = s.new_zeros(())
        if self.w_d > 0:
            loss = loss + self.w_d * rkd_distance_loss(s, t)
        if self.w_a > 0:
            loss = loss + self.w_a * rkd_angle_loss(s, t)
        return loss

    def describe(self):
        return {**super().describe(), "w_d": self.w_d, "w_a": self.w_a}


DISTILLERS.update({"rkd": RKD})
