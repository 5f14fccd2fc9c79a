"""NST: neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer").

Each channel of a (N, C, H, W) feature map is read as one sample of where that neuron fires over the
H*W positions; after L2-normalising each channel's flattened map, the student's set of channels is
matched to the teacher's set by the squared maximum mean discrepancy with the polynomial kernel
``k(a, b) = (a . b)^2`` (degree 2, no constant), per image, averaged over the images.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.feature_kd import REFERENCE_LAYERS, FeatureDistiller, sum_terms
from kd_utils.train_kd import DISTILLERS


def _channel_distributions(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.float().flatten(2), dim=2)  # (N, C, H*W), unit norm per channel


def _poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over images and over all (channel of a, channel of b) pairs of ``(a_i . b_j)^2``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """``mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`` over the normalised channel maps (each mean over
    the images and all channel pairs of the two sides), as RepDistiller's ``NSTLoss`` with its full
    loss; the teacher-only term is constant (no gradient) but kept so the value is the MMD^2 itself.
    Channel counts may differ; batch and spatial sizes must match."""
    fs, ft = student_feature, teacher_feature
    if fs.dim() != 4 or ft.dim() != 4 or fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ValueError(f"NST needs (N, C, H, W) features with equal N, H and W: student feature {tuple(fs.shape)}, "
                         f"teacher feature {tuple(ft.shape)}")
    s, t = _channel_distributions(fs), _channel_distributions(ft)
    return _poly_kernel_mean(t, t).detach() + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


class NST(FeatureDistiller):
    """Neuron selectivity transfer: ``CE + beta * sum_layers MMD^2_poly``. No extra parameters.

    Defaults, from HobbitLong/RepDistiller (``distiller_zoo/NST.py``; ``train_student.py`` and
    ``helper/loops.py``: layers ``feat[1:-1]``; ``scripts/run_cifar_distill.sh``: ``--distill nst
    -a 0 -b 50``, CE weight 1), the same as megvii-research/mdistiller (``mdistiller/engine/cfg.py``:
    ``NST.LOSS.CE_WEIGHT 1.0``, ``FEAT_WEIGHT 50.0``): ``beta = 50``, ``alpha = 0``.

    Layers: RepDistiller's ``feat[1:-1]`` are the post-ReLU outputs of VGG blocks 1-4 (of
    ``block0``..``block4``), here ``stage2``..``stage5``. Online teacher (whole feature maps).

    Deviation: the reference average-pools the larger map when a pair's spatial sizes differ; here
    unequal sizes are an error (never the case for VGG pairs at the same stages).
    """
    term = "loss_nst"
    family = "nst"
    student_layers = REFERENCE_LAYERS
    teacher_layers = REFERENCE_LAYERS

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 50.0, **kw: Any):
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes: Sequence[tuple[int, ...]], t_shapes: Sequence[tuple[int, ...]]) -> nn.ModuleList:
        self.check_maps(s_shapes, t_shapes, "NST")
        return nn.ModuleList()

    def feature_loss(self, s_feats, t_feats):
        return sum_terms(nst_loss(fs, ft) for fs, ft in zip(s_feats, t_feats, strict=True))


DISTILLERS.update({"nst": NST})
