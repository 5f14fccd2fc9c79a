"""OFD: "A Comprehensive Overhaul of Feature Distillation" (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019).

Distils *pre-ReLU* features, where the teacher's negative responses still carry information, but
only as much of it as survives a ReLU should matter: the teacher's map is clipped from below at a
per-channel margin (the mean of its negative responses, from the Gaussian its BatchNorm output
follows), and the "partial" L2 distance ignores positions where both the target is negative and the
student is already below it. A 1x1 conv + BN connector maps the student's channels onto the teacher's.

The pre-ReLU output of a stage is its last BatchNorm's (:func:`kd_utils.feature_kd.pre_relu_layers`),
cloned in the hook (``capture(..., clone=True)``) before the in-place ReLU that follows overwrites it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from kd_utils.feature_kd import (_BN, REFERENCE_LAYERS, FeatureDistiller, capture, check_same_size, pre_relu_layers,
                                 sum_terms)
from kd_utils.train_kd import DISTILLERS, StepContext


# ------------------------------------------------------------------- losses ----
def bn_margin(bn: nn.Module) -> torch.Tensor:
    """Per channel, ``E[x | x < 0]`` for ``x ~ N(beta, |gamma|^2)`` (the BN's bias and weight):
    ``beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|)``; where ``Phi(-beta/|gamma|) <= 0.001``
    (hardly any negative responses) ``-3 |gamma|`` instead, as the reference's ``get_margin_from_BN``."""
    s = bn.weight.detach().double().abs().clamp_min(1e-12)
    m = bn.bias.detach().double()
    z = m / s
    p_neg = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = torch.where(p_neg > 1e-3, m - s * pdf / p_neg.clamp_min(1e-3), -3 * s)
    return margin.float()


def ofd_partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """``sum over (c, h, w) and images of (s - t')^2 * [s > t' or t' > 0] / N`` with ``t' = max(t, margin)``
    (``margin`` per channel, shape (C,) or broadcastable): the partial L2 of OFD, divided by the batch
    size (mdistiller's ``feat_loss``: mean over dim 0, sum over the rest)."""
    if student.shape != teacher.shape:
        raise ValueError(f"OFD: connected student feature {tuple(student.shape)} and teacher feature "
                         f"{tuple(teacher.shape)} differ in shape")
    s, t = student.float(), teacher.float()
    m = margin.float()
    if m.dim() == 1:
        m = m.view(1, -1, *([1] * (s.dim() - 2)))
    target = torch.maximum(t, m)
    keep = (s > target) | (target > 0)
    return ((s - target).pow(2) * keep).sum() / s.shape[0]


def _connector(s_channels: int, t_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(s_channels, t_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))  # as the reference: N(0, 2 / (k*k*out))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


@contextlib.contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside: every BatchNorm of ``model`` normalises with the batch's statistics and leaves its
    running statistics (and counters) untouched."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    try:
        for m in bns:
            m.training, m.track_running_stats = True, False
        yield
    finally:
        for m, (tr, track) in zip(bns, saved):
            m.training, m.track_running_stats = tr, track


# --------------------------------------------------------------- distiller ----
class OFD(FeatureDistiller):
    """Overhaul of feature distillation: ``CE + beta * sum_i w_i * partial_L2(connector_i(s_i), max(t_i, m_i))``.

    Defaults, from megvii-research/mdistiller (``mdistiller/distillers/OFD.py``; ``mdistiller/engine/cfg.py``:
    ``OFD.LOSS.CE_WEIGHT 1.0``, ``OFD.LOSS.FEAT_WEIGHT 0.001``, ``OFD.CONNECTOR.KERNEL_SIZE 1``;
    ``configs/cifar100/ofd.yaml``): ``beta = 0.001``, ``alpha = 0`` (CE weight 1, no KD term); layer
    weights ``w_i = 1 / 2^(L-1-i)`` (1/8, 1/4, 1/2, 1 for the four layers, the deepest weighted 1);
    each layer's loss summed over (C, H, W) and averaged over the batch; connector 1x1 conv (no bias,
    weights N(0, 2/out)) + BN (weight 1, bias 0); margins from the teacher's BN weight/bias at
    construction (registered buffers ``margin_<i>``).

    Layers: mdistiller's ``preact_feats[1:]`` of its VGG are the pre-ReLU outputs of blocks 1-4 (the
    BN that ends each of ``block1``..``block4``), here the last BN of ``stage2``..``stage5`` of both
    networks (:func:`~kd_utils.feature_kd.pre_relu_layers`; ``student_layers``/``teacher_layers`` name stages or
    BN layers).
    Online teacher (whole pre-ReLU maps). ``extra_parameters``: the connectors (conv + BN affine).

    Deviations: mdistiller runs the teacher in train mode (its ``OFD.train`` switches every child),
    so the teacher's BN uses batch statistics; here the teacher stays in eval mode (running
    statistics), and ``teacher_batch_stats=True`` gives the reference's batch-statistics teacher
    (without touching the teacher's stored statistics). mdistiller average-pools the teacher map to
    the student's size; here unequal spatial sizes are an error (never the case for VGG pairs at the
    same stages).
    """
    term = "loss_ofd"
    family = "ofd"
    clone_features = True
    student_layers = REFERENCE_LAYERS
    teacher_layers = REFERENCE_LAYERS

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float = 1e-3,
                 layer_weights: Sequence[float] | None = None, teacher_batch_stats: bool = False, **kw: Any):
        super().__init__(student, teacher, beta=beta, **kw)
        n = len(self.t_layers)
        if layer_weights is None:
            layer_weights = [1.0 / 2 ** (n - 1 - i) for i in range(n)]
        layer_weights = [float(w) for w in layer_weights]
        if len(layer_weights) != n or not all(math.isfinite(w) and w >= 0 for w in layer_weights):
            raise ValueError(f"layer_weights must be {n} finite numbers >= 0 (one per layer pair), got {layer_weights}")
        self.layer_weights = layer_weights
        self.teacher_batch_stats = bool(teacher_batch_stats)
        self.s_bn = pre_relu_layers(student, self.s_layers)
        self.t_bn = pre_relu_layers(teacher, self.t_layers)
        t_modules = dict(teacher.named_modules())
        for i, name in enumerate(self.t_bn):
            self.register_buffer(f"margin_{i}", bn_margin(t_modules[name]).view(1, -1, 1, 1))

    def make_adapters(self, s_shapes, t_shapes):
        self.check_maps(s_shapes, t_shapes, "OFD")
        return nn.ModuleList([_connector(s[0], t[0]) for s, t in zip(s_shapes, t_shapes)])

    @property
    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(len(self.t_layers))]

    def student_features(self, x: torch.Tensor):
        logits, feats = capture(self.student, x, self.s_bn, clone=self.clone_features)
        return logits, [feats[n] for n in self.s_bn]

    def teacher_features(self, x: torch.Tensor, ctx: StepContext | None):
        mode = _batch_statistics(self.teacher) if self.teacher_batch_stats else contextlib.nullcontext()
        with mode:
            t_logits, feats = self._teacher_capture(x, ctx, self.t_bn)
        return t_logits, [feats[n] for n in self.t_bn]

    def feature_loss(self, s_feats, t_feats):
        def term(conn, w, m, fs, ft):
            check_same_size("OFD", fs, ft)
            return w * ofd_partial_l2(conn(fs), ft, m)
        return sum_terms(term(*args) for args in zip(self.adapters, self.layer_weights, self.margins, s_feats, t_feats,
                                                      strict=True))

    def describe(self):
        return {**super().describe(), "layer_weights": list(self.layer_weights),
                "teacher_batch_stats": self.teacher_batch_stats, "student_bn": list(self.s_bn),
                "teacher_bn": list(self.t_bn)}


DISTILLERS.update({"ofd": OFD})
