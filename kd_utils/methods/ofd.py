"""OFD: "A Comprehensive Overhaul of Feature Distillation" (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019).

Distils *pre-ReLU* features, where the teacher's negative responses still carry information, but
only as much of it as survives a ReLU should matter: the teacher's map is clipped from below at a
per-channel margin (the mean of its negative responses, from the Gaussian its BatchNorm output
follows), and the "partial" L2 distance ignores positions where both the target is negative and the
student is already below it. A 1x1 conv + BN connector maps the student's channels onto the teacher's.

:func:`capture_pre_relu` reads the pre-ReLU output of a stage (its last BatchNorm, cloned before the
in-place ReLU that follows overwrites it).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.feature_kd import FeatureDistiller, layer_names
from kd_utils.train_kd import DISTILLERS, StepContext, kd_loss

_BN = nn.modules.batchnorm._BatchNorm


# --------------------------------------------------------- pre-ReLU features ----
def pre_relu_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """For each named layer, the dotted name of the BatchNorm whose output is its pre-ReLU feature:
    the layer itself when it is a BatchNorm, else the last BatchNorm inside it (``"stage3"`` of a
    VGG13 -> ``"stage3.4"``)."""
    modules = dict(model.named_modules())
    out = []
    for name in layers:
        if not name or name not in modules:
            known = layer_names(model)
            shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
            raise ValueError(f"{type(model).__name__} has no layer {name!r}; known layers: {shown}")
        mod = modules[name]
        if isinstance(mod, _BN):
            out.append(name)
            continue
        bns = [f"{name}.{sub}" for sub, m in mod.named_modules() if sub and isinstance(m, _BN)]
        if not bns:
            raise ValueError(f"layer {name!r} of {type(model).__name__} holds no BatchNorm, so it has no pre-ReLU "
                             "output to read; name a stage ending in conv-BN-ReLU or a BatchNorm layer")
        out.append(bns[-1])
    return out


def capture_pre_relu(model: nn.Module, x: torch.Tensor, layers: Sequence[str]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(x)``; return ``(output, {layer: pre-ReLU feature})``, each feature a clone of the
    output of the layer's last BatchNorm (:func:`pre_relu_layers`), taken before any in-place ReLU."""
    bn_names = pre_relu_layers(model, layers)
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}

    def hook_for(layer: str):
        def hook(module, inputs, output):
            store[layer] = output.clone()
        return hook

    handles = [modules[bn].register_forward_hook(hook_for(layer)) for layer, bn in zip(layers, bn_names)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, {layer: store[layer] for layer in layers}


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
    networks (:func:`capture_pre_relu`; ``student_layers``/``teacher_layers`` name stages or BN layers).
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
    student_layers = ("stage2", "stage3", "stage4", "stage5")
    teacher_layers = ("stage2", "stage3", "stage4", "stage5")

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
        conns = []
        for n_s, n_t, s, t in zip(self.s_layers, self.t_layers, s_shapes, t_shapes):
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ValueError(f"OFD: student layer {n_s!r} has shape {s} and teacher layer {n_t!r} has shape {t}; "
                                 "both must be (C, H, W) with equal H and W")
            conns.append(_connector(s[0], t[0]))
        return nn.ModuleList(conns)

    @property
    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(len(self.t_layers))]

    def teacher_features(self, x: torch.Tensor, ctx: StepContext | None):
        cached = {} if ctx is None else ctx.teacher
        mode = _batch_statistics(self.teacher) if self.teacher_batch_stats else contextlib.nullcontext()
        with torch.no_grad(), mode:
            out, feats = capture_pre_relu(self.teacher, x, self.t_layers)
        t_logits = cached["logits"].float() if "logits" in cached else out
        return t_logits, [feats[n] for n in self.t_layers]

    def feature_loss(self, s_feats, t_feats):
        total = None
        for conn, w, m, fs, ft in zip(self.adapters, self.layer_weights, self.margins, s_feats, t_feats, strict=True):
            if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
                raise ValueError(f"OFD needs equal spatial sizes: student feature {tuple(fs.shape)}, "
                                 f"teacher feature {tuple(ft.shape)}")
            term = w * ofd_partial_l2(conn(fs), ft, m)
            total = term if total is None else total + term
        return total

    def forward(self, x, y, ctx=None):
        logits, s = capture_pre_relu(self.student, x, self.s_layers)
        t_logits, t_feats = self.teacher_features(x, ctx)
        losses = {}
        if self.alpha < 1:
            losses["loss_ce"] = (1 - self.alpha) * F.cross_entropy(logits.float(), y)
        if self.alpha > 0:
            losses["loss_kd"] = self.alpha * kd_loss(logits, t_logits, self.temperature)
        if self.beta > 0:
            losses[self.term] = self.beta * self.feature_loss([s[n] for n in self.s_layers], t_feats)
        return logits, losses

    def describe(self):
        return {**super().describe(), "layer_weights": list(self.layer_weights),
                "teacher_batch_stats": self.teacher_batch_stats, "student_bn": list(self.s_bn),
                "teacher_bn": list(self.t_bn)}


DISTILLERS.update({"ofd": OFD})
