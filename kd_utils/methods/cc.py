"""Correlation congruence (Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang, ICCV 2019, "Correlation Congruence for
Knowledge Distillation"): besides instance-level agreement, the correlations between the instances of a batch
should agree between teacher and student.

Two correlation terms are offered (``kernel``):

* ``"repdistiller"`` (default): RepDistiller's ``distiller_zoo/CC.py`` ``Correlation``, which its author
  restructured from the CC authors' code. Both pooled vectors are embedded by a linear head (``LinearEmbed``:
  ``Linear(d, feat_dim)`` with bias, no normalisation); with ``delta_i = |e_s,i - e_t,i|`` (elementwise) the
  loss is the mean over consecutive pairs of the batch of ``sum_d delta_i,d * delta_{i+1},d``. It forms no
  correlation matrix and no kernel: a product of the embedding gaps of neighbouring samples.
* ``"rbf_taylor"``: the paper's correlation matrices. Vectors are L2-normalised, ``S = f f^T`` (cosines), and
  the Gaussian RBF kernel ``exp(-2 gamma (1 - S))`` is replaced by its Taylor expansion of order ``P``:
  ``sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * S^p`` (elementwise powers); the loss is the mean squared
  difference of the two ``B x B`` matrices (``||C_t - C_s||_F^2 / B^2``). As AberHu/Knowledge-Distillation-Zoo
  ``kd_losses/cc.py`` implements it (``gamma=0.4``, ``P_order=2``, ``--lambda_kd 100`` in its
  ``example_train_script.sh``), on the pooled vectors directly: no head, no extra parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..feature_kd import _PooledDistiller, pooled
from ..train_kd import DISTILLERS


def cc_repdistiller_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """RepDistiller's correlation term on embedded vectors ``(B, D)`` of equal shape: the mean over
    ``i = 0 .. B-2`` of ``sum_d |e_s - e_t|_{i,d} * |e_s - e_t|_{i+1,d}``."""
    if e_s.shape != e_t.shape or e_s.dim() != 2 or e_s.shape[0] < 2:
        raise ValueError(f"CC needs (B, D) embeddings of equal shape with B >= 2, got student {tuple(e_s.shape)} "
                         f"and teacher {tuple(e_t.shape)}")
    delta = (e_s.float() - e_t.float()).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def rbf_taylor_correlation(f: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """``(B, B)`` correlation matrix: the order-``order`` Taylor expansion of the Gaussian RBF kernel of the
    L2-normalised rows, ``sum_p exp(-2 gamma) (2 gamma)^p / p! * (f_i . f_j)^p``."""
    f = F.normalize(f.reshape(len(f), -1).float(), p=2, dim=1)
    s = f @ f.T
    out = torch.zeros_like(s)
    for p in range(order + 1):
        out = out + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s.pow(p)
    return out


def cc_rbf_loss(f_s: torch.Tensor, f_t: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """Mean squared difference of the two RBF-Taylor correlation matrices (the sides' widths may differ)."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"CC needs the same samples on both sides: student {tuple(f_s.shape)}, teacher "
                         f"{tuple(f_t.shape)}")
    return F.mse_loss(rbf_taylor_correlation(f_s, gamma, order), rbf_taylor_correlation(f_t, gamma, order))


class CC(_PooledDistiller):
    """Correlation congruence on pooled penultimate vectors: ``CE + beta * correlation term`` (with
    ``alpha > 0`` also Hinton KD, FeatureDistiller's weighting).

    Defaults (``kernel="repdistiller"``): ``beta=0.02`` (RepDistiller ``scripts/run_cifar_distill.sh``:
    ``--distill correlation -a 0 -b 0.02``), ``feat_dim=128`` (``train_student.py --feat_dim``), heads on
    ``feat[-1]`` (``train_student.py``: ``LinearEmbed`` for student and teacher, both trained); the term from
    ``distiller_zoo/CC.py``. ``kernel="rbf_taylor"``: ``beta=100``, ``gamma=0.4``, ``order=2``
    (AberHu/Knowledge-Distillation-Zoo ``train_kd.py`` and ``example_train_script.sh``), no heads. mdistiller has
    no CC. The teacher's pooled ``stage5`` may come from the plan cache. A batch of one sample has no pairs: its
    CC term is 0.
    """
    term = "loss_cc"
    family = "cc"
    KERNELS = {"repdistiller": 0.02, "rbf_taylor": 100.0}  # kernel -> its reference beta

    def __init__(self, student, teacher, *, beta: float | None = None, kernel: str = "repdistiller",
                 feat_dim: int = 128, gamma: float = 0.4, order: int = 2, **kw):
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {sorted(self.KERNELS)}, got {kernel!r}")
        if not (isinstance(feat_dim, int) and feat_dim >= 1):
            raise ValueError(f"feat_dim must be an int >= 1, got {feat_dim!r}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma (RBF kernel width) must be a finite number > 0, got {gamma}")
        if not (isinstance(order, int) and order >= 1):
            raise ValueError(f"order (of the Taylor expansion) must be an int >= 1, got {order!r}")
        self.kernel, self.feat_dim, self.gamma, self.order = kernel, feat_dim, float(gamma), order
        super().__init__(student, teacher, beta=self.KERNELS[kernel] if beta is None else beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        if self.kernel != "repdistiller":
            return nn.ModuleList()
        (s,), (t,) = s_shapes, t_shapes
        return nn.ModuleList([nn.Linear(s[0], self.feat_dim), nn.Linear(t[0], self.feat_dim)])

    def feature_loss(self, s_feats, t_feats):
        s, t = pooled(s_feats[0]), t_feats[0].float()
        if len(s) < 2:  # a ragged last batch of one: no correlation to match
            return s.sum() * 0.0
        if self.kernel == "repdistiller":
            return cc_repdistiller_loss(self.adapters[0](s), self.adapters[1](t))
        return cc_rbf_loss(s, t, self.gamma, self.order)

    def describe(self):
        d = {**super().describe(), "kernel": self.kernel}
        if self.kernel == "repdistiller":
            d["feat_dim"] = self.feat_dim
        else:
            d.update(gamma=self.gamma, order=self.order)
        return d


DISTILLERS.update({"cc": CC})
