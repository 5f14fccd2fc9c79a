"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge
Distillation"): inputs that the teacher represents alike should be represented alike by the student.

For a layer's batch of activations flattened to ``(B, D)``, the ``B x B`` similarity matrix ``G = f f^T`` is
L2-normalised row by row; the loss is ``||G_t - G_s||_F^2 / B^2``. Only ``B x B`` matrices are compared, so
channel counts and spatial sizes may differ between the two networks: no adapter.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..feature_kd import FeatureDistiller, sum_terms
from ..train_kd import DISTILLERS


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """``G = f f^T`` of a batch flattened per sample, each row divided by its L2 norm: ``(B, B)``."""
    f = f.reshape(len(f), -1).float()
    return F.normalize(f @ f.T, p=2, dim=1)


def sp_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layer pairs of ``||G_t - G_s||_F^2 / B^2`` (RepDistiller's ``Similarity`` summed over its list)."""
    def term(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        if fs.shape[0] != ft.shape[0]:
            raise ValueError(f"SP needs the same samples on both sides: student {tuple(fs.shape)}, teacher "
                             f"{tuple(ft.shape)}")
        b = fs.shape[0]
        return (similarity_matrix(ft) - similarity_matrix(fs)).pow(2).sum() / (b * b)
    return sum_terms(term(fs, ft) for fs, ft in zip(student_feats, teacher_feats, strict=True))


class SP(FeatureDistiller):
    """Similarity-preserving KD: ``CE + beta * sp_loss`` on the last conv stage's feature maps (with
    ``alpha > 0`` also Hinton KD, FeatureDistiller's weighting).

    Defaults: ``beta=3000`` (RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill similarity -a 0 -b 3000``;
    mdistiller ``engine/cfg.py`` ``SP.LOSS.FEAT_WEIGHT=3000``, ``CE_WEIGHT=1``); the loss from RepDistiller
    ``distiller_zoo/SP.py`` (= mdistiller ``distillers/SP.py``). Layer: RepDistiller's ``feat[-2]`` and
    mdistiller's ``feats[-1]`` are the last conv block's post-ReLU map before global pooling (4x4 in their
    CIFAR VGGs, which skip one pooling); ours is ``stage5`` unpooled (post-ReLU, 2x2). The maps are not pooled,
    so the teacher runs online (no plan cache). No extra parameters.
    """
    term = "loss_sp"
    family = "sp"
    student_layers = ("stage5",)
    teacher_layers = ("stage5",)

    def __init__(self, student, teacher, *, beta: float = 3000.0, **kw):
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        return torch.nn.ModuleList()

    def feature_loss(self, s_feats, t_feats):
        return sp_loss(s_feats, t_feats)


DISTILLERS.update({"sp": SP})
