"""VID: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019).

The student maximises a variational lower bound on the mutual information between its features and
the teacher's: per matched layer, a small 1x1-conv network reads the student's feature map and
predicts the mean of a Gaussian over the teacher's feature map, with one learnable variance per
teacher channel; the loss is that Gaussian's negative log-likelihood of the teacher's map (up to the
constant ``0.5 log 2 pi``), averaged over every element, summed over the matched layers.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.feature_kd import REFERENCE_LAYERS, FeatureDistiller, check_same_size, sum_terms
from kd_utils.train_kd import DISTILLERS


def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over elements of 0.5 * (log var + (target - mean)^2 / var)``; ``variance`` broadcasts
    against ``mean`` (one value per channel: shape (C,) is read as (1, C, 1, 1))."""
    if mean.shape != target.shape:
        raise ValueError(f"VID: predicted mean {tuple(mean.shape)} and teacher feature {tuple(target.shape)} "
                         "differ in shape")
    var = variance.float()
    if var.dim() == 1:
        var = var.view(1, -1, *([1] * (mean.dim() - 2)))
    diff = target.float() - mean.float()
    return (0.5 * (torch.log(var) + diff.pow(2) / var)).mean()


class VIDRegressor(nn.Module):
    """Predicts the teacher feature's mean from the student's (1x1 conv - ReLU - 1x1 conv - ReLU -
    1x1 conv, no biases) and holds the per-channel variance ``softplus(log_scale) + eps``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float = 5.0,
                 eps: float = 1e-5):
        super().__init__()
        self.mean = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(mid_channels, out_channels, 1, bias=False))
        self.eps = float(eps)
        # the inverse softplus of (init_pred_var - eps): the variance starts at exactly init_pred_var
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_pred_var - eps))))

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, student_feature: torch.Tensor) -> torch.Tensor:
        return self.mean(student_feature)


class VID(FeatureDistiller):
    """Variational information distillation: ``CE + beta * sum_layers NLL``.

    Defaults, from HobbitLong/RepDistiller (``train_student.py``, ``distiller_zoo/VID.py``,
    ``scripts/run_cifar_distill.sh``: ``--distill vid -a 0 -b 1``, gamma (CE weight) 1), the same as
    megvii-research/mdistiller (``mdistiller/engine/cfg.py``: ``VID.LOSS.CE_WEIGHT 1.0``,
    ``FEAT_WEIGHT 1.0``, ``INIT_PRED_VAR 5.0``, ``EPS 1e-5``; ``mdistiller/distillers/VID.py``):
    ``beta = 1``, ``alpha = 0`` (no KD term), ``init_pred_var = 5``, ``eps = 1e-5``; regressor
    mid-channels = the teacher layer's channels (``VIDLoss(s, t, t)``).

    Layers: RepDistiller matches ``feat[1:-1]`` of both VGGs, the post-ReLU outputs of blocks 1-4
    (``block0``..``block4`` are its five stages): here ``stage2``..``stage5``. Our VGG pools after
    stage4, so ``stage5`` is 2x2 where RepDistiller's CIFAR VGG (which skips that pool) has 4x4.

    The regressors and the per-channel log-scales are trained with the student (``extra_parameters``
    counts both; mdistiller keeps its log-scales in a plain list, so there they are neither trained
    nor counted; RepDistiller trains them, as here). Online teacher (whole feature maps).

    Deviation: the references average-pool the larger map when a pair's spatial sizes differ; here
    unequal sizes are an error (never the case for VGG pairs at the same stages).
    """
    term = "loss_vid"
    family = "vid"
    student_layers = REFERENCE_LAYERS
    teacher_layers = REFERENCE_LAYERS

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 1.0, init_pred_var: float = 5.0,
                 eps: float = 1e-5, mid_channels: int | Sequence[int] | None = None, **kw: Any):
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if not (math.isfinite(init_pred_var) and init_pred_var > eps):
            raise ValueError(f"init_pred_var must be a finite number > eps ({eps}), got {init_pred_var}")
        self.init_pred_var, self.eps, self.mid_channels = float(init_pred_var), float(eps), mid_channels
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        mids = self.mid_channels
        if mids is None:
            mids = [t[0] for t in t_shapes]
        elif isinstance(mids, int):
            mids = [mids] * len(t_shapes)
        mids = list(mids)
        if len(mids) != len(t_shapes) or not all(isinstance(m, int) and m >= 1 for m in mids):
            raise ValueError(f"mid_channels must be None, an int >= 1 or one int >= 1 per layer pair "
                             f"({len(t_shapes)}), got {self.mid_channels!r}")
        self.check_maps(s_shapes, t_shapes, "VID")
        return nn.ModuleList([VIDRegressor(s[0], mid, t[0], self.init_pred_var, self.eps)
                              for s, t, mid in zip(s_shapes, t_shapes, mids)])

    def feature_loss(self, s_feats, t_feats):
        def term(reg, fs, ft):
            check_same_size("VID", fs, ft)
            return gaussian_nll(reg(fs), reg.variance(), ft)
        return sum_terms(term(reg, fs, ft) for reg, fs, ft in zip(self.adapters, s_feats, t_feats, strict=True))

    def describe(self):
        return {**super().describe(), "init_pred_var": self.init_pred_var, "eps": self.eps,
                "mid_channels": [reg.mean[0].out_channels for reg in self.adapters]}


DISTILLERS.update({"vid": VID})
