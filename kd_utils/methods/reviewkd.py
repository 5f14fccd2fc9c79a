"""ReviewKD: "Distilling Knowledge via Knowledge Review" (Chen, Liu, Zhao & Jia, CVPR 2021).

The student's stage features are *reviewed* from deep to shallow: each level's feature goes through
an attention-based fusion (ABF) module that merges it with the fused feature of the level below it
(deeper in the network), and the result, mapped to the teacher's channels and size, is matched with
the teacher's feature of the same level. So a shallow teacher feature is learnt from the student's
shallow *and* deeper features. The distance is the hierarchical context loss (HCL): an MSE at full
resolution plus MSEs of the adaptively average-pooled maps at 4x4, 2x2 and 1x1, with halving weights.

Levels, shallow to deep, for our VGGs (as the authors map VGG8: its blocks 1-4 and the pooled
feature): ``stage2`` .. ``stage5`` and the globally pooled output of ``stage5`` as a 1x1 map. The
teacher's stage features are read before their last ReLU (its last BatchNorm, cloned before the
in-place ReLU overwrites it), its pooled feature after, as the references do.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.feature_kd import REFERENCE_LAYERS, FeatureDistiller, capture, pre_relu_layers, probe_shapes
from kd_utils.train_kd import DISTILLERS, StepContext


# ------------------------------------------------------------------- loss ----
def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
             levels: Sequence[int] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss, summed over the feature pairs. Per pair of (N, C, H, W) maps:
    ``(MSE + sum_k w_k MSE(pool_k(s), pool_k(t))) / (1 + sum_k w_k)``, where ``pool_k`` is adaptive
    average pooling to ``k x k`` for each ``k`` in ``levels`` smaller than H (the others are
    skipped), and the weights halve per pooled level actually used: 1/2, 1/4, 1/8."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"HCL needs as many student as teacher features (at least one), got {len(student_feats)} "
                         f"and {len(teacher_feats)}")
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        if fs.dim() != 4 or fs.shape != ft.shape:
            raise ValueError(f"HCL compares (N, C, H, W) maps of equal shape, got student {tuple(fs.shape)} and "
                             f"teacher {tuple(ft.shape)}")
        fs, ft = fs.float(), ft.float()
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for k in levels:
            if k >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, (k, k)), F.adaptive_avg_pool2d(ft, (k, k)))
            norm += weight
        total = total + loss / norm
    return total


# --------------------------------------------------------------------- ABF ----
class ABF(nn.Module):
    """Attention-based fusion of one review level.

    ``conv1`` (1x1 conv + BN) maps the student feature to ``mid_channels``; with ``fuse`` the fused
    feature of the deeper level (the residual) is upsampled (nearest) to this level's size and two
    attention maps ``z = sigmoid(1x1 conv([x, residual]))`` (independent sigmoids, not a softmax:
    they need not sum to 1) weight the sum ``x * z[0] + residual * z[1]``; the result is resized
    (nearest) to ``out_size`` when given and differing, and ``conv2`` (3x3 conv + BN) maps it to
    ``out_channels``. Returns ``(output, fused)``: the fused map is the next (shallower) level's
    residual. Initialisation as the references: Kaiming-uniform (a=1) for both convs."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("mid_channels", mid_channels), ("out_channels", out_channels)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"ABF {name} must be an int >= 1, got {v!r}")
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    @property
    def fuse(self) -> bool:
        return self.att_conv is not None

    def attention(self, x_mid: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The two (N, 2, H, W) attention maps for the transformed feature and the upsampled residual."""
        if self.att_conv is None:
            raise ValueError("this ABF level does not fuse (the deepest level has no residual)")
        return self.att_conv(torch.cat([x_mid, residual], dim=1))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out_size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF level needs the residual of the deeper level")
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            z = self.attention(x, residual)
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


# ---------------------------------------------------------------- features ----
def _pre_relu(model: nn.Module, names: Sequence[str], side: str) -> list[str]:
    """Each layer's last BatchNorm (:func:`~kd_utils.feature_kd.pre_relu_layers`), for ``<side>_preact``."""
    try:
        return pre_relu_layers(model, names)
    except ValueError as e:
        raise ValueError(f"{side}_preact: {e} (or pass {side}_preact=False to read the layer's output)") from None


def _as_map(pooled: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> its global average as an (N, C, 1, 1) map."""
    return pooled.mean(dim=(2, 3), keepdim=True)


# -------------------------------------------------------------- distiller ----
class ReviewKD(FeatureDistiller):
    """ReviewKD (Chen et al., CVPR 2021): ``CE + beta * min(epoch / warmup_epochs, 1) * sum_levels
    HCL(ABF review of the student's features, the teacher's features)`` (+ ``alpha`` Hinton KD).

    Defaults and their sources:

    * ``beta = 5.0``: ``REVIEWKD.REVIEWKD_WEIGHT`` of mdistiller ``configs/cifar100/reviewkd.yaml`` (the
      one CIFAR-100 ReviewKD config mdistiller ships; ``mdistiller/engine/cfg.py`` defaults to 1.0, as
      does the authors' ``--kd-loss-weight`` in dvlab-research/ReviewKD ``CIFAR-100/train.py``);
    * CE weight 1 (``REVIEWKD.CE_WEIGHT``, cfg.py) -- here ``alpha = 0``; no logit KD in the reference;
    * ``warmup_epochs = 20`` (``REVIEWKD.WARMUP_EPOCHS``, cfg.py): the weight ``min(epoch / 20, 1)`` with
      epochs counted from 1 (mdistiller's trainer; ``ctx.epoch`` here; the authors count from 0);
    * mid channels ``min(512, C)`` with ``C`` the student's channels at the deepest level (the pooled
      feature), ``MAX_MID_CHANNEL = 512`` (mdistiller ``distillers/ReviewKD.py``);
    * levels: for a VGG student the authors' ``build_review_kd`` (dvlab-research/ReviewKD
      ``CIFAR-100/model/reviewkd.py``) uses ``in_channels = [128, 256, 512, 512, 512]``: blocks 1-4 and
      the pooled feature (block 0 is dropped); mdistiller reads the student's post-ReLU ``feats``
      (``STU_PREACT = False``) and the teacher's ``preact_feats[1:]`` plus its (post-ReLU) pooled
      feature. Our VGG's ``stage2`` .. ``stage5`` are those blocks; ``pooled_layer = "stage5"`` adds
      the pooled level. (The references' CIFAR VGG skips the pool before its last block, so their
      last two levels are both 4x4; ours are 4x4 and 2x2. Sizes come from probing, not constants.)
    * HCL pooled levels 4, 2, 1 with weights 1/2, 1/4, 1/8 (``hcl_loss``, both references);
    * ABF: 1x1 conv + BN to mid channels, nearest upsampling of the residual, 2-map sigmoid attention
      from a 1x1 conv (with bias) over the concatenation, 3x3 conv + BN to the teacher's channels.

    Training recipe of the reference (not set here: :class:`~kd_utils.config.TrainConfig`): SGD lr 0.05,
    momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x0.1 at 150/180/210.

    ``teacher_preact`` / ``student_preact``: read a stage layer at its last BatchNorm (pre-ReLU) instead
    of its output. The ABF modules are the extra parameters (``extra_parameters``). The teacher runs
    online (its multi-level maps cannot come from the pooled-feature cache).
    """
    term = "loss_reviewkd"
    family = "reviewkd"
    clone_features = True  # every level is read as a copy (the pre-ReLU ones must be)
    student_layers = REFERENCE_LAYERS
    teacher_layers = REFERENCE_LAYERS

    def __init__(self, student, teacher, *, beta: float = 5.0, warmup_epochs: int = 20,
                 pooled_layer: str | None = "stage5", mid_channels: int | None = None, max_mid_channels: int = 512,
                 teacher_preact: bool = True, student_preact: bool = False, alpha: float = 0.0,
                 student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
                 input_shape: Sequence[int] = (3, 32, 32), **kw):
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0 (0: no warm-up), got {warmup_epochs!r}")
        for name, v in (("mid_channels", mid_channels), ("max_mid_channels", max_mid_channels)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1{' or None' if name == 'mid_channels' else ''}, got {v!r}")
        if pooled_layer is not None and not isinstance(pooled_layer, str):
            raise ValueError(f"pooled_layer must be a layer name or None, got {pooled_layer!r}")
        if teacher is None:
            raise ValueError("ReviewKD needs the teacher network (its layers define the targets)")
        self.warmup_epochs = warmup_epochs
        self.pooled_layer = pooled_layer
        self.max_mid_channels = max_mid_channels
        self.mid_channels = mid_channels
        self.teacher_preact, self.student_preact = bool(teacher_preact), bool(student_preact)
        self._input_shape = tuple(input_shape)
        s_names = list(student_layers or self.student_layers)
        t_names = list(teacher_layers or self.teacher_layers)
        if self.student_preact:
            s_names = _pre_relu(student, s_names, "student")
        if self.teacher_preact:
            t_names = _pre_relu(teacher, t_names, "teacher")
        super().__init__(student, teacher, beta=beta, alpha=alpha, student_layers=s_names, teacher_layers=t_names,
                         input_shape=input_shape, **kw)

    # -- construction
    def make_adapters(self, s_shapes, t_shapes):
        self.check_maps(s_shapes, t_shapes, "ReviewKD", same_size=False, need="every level must be a (C, H, W) map")
        s_shapes, t_shapes = list(s_shapes), list(t_shapes)
        if self.pooled_layer is not None:
            (ps,) = probe_shapes(self.student, [self.pooled_layer], self._input_shape)
            (pt,) = probe_shapes(self.teacher, [self.pooled_layer], self._input_shape)
            if len(ps) != 3 or len(pt) != 3:
                raise ValueError(f"ReviewKD: pooled_layer {self.pooled_layer!r} has shape {ps} in the student and {pt} "
                                 "in the teacher; it must be a (C, H, W) map to pool")
            s_shapes.append((ps[0], 1, 1))
            t_shapes.append((pt[0], 1, 1))
        if self.mid_channels is None:
            self.mid_channels = min(self.max_mid_channels, s_shapes[-1][0])
        self.t_sizes = [tuple(t[1:]) for t in t_shapes]
        n = len(s_shapes)
        return nn.ModuleList([ABF(s[0], self.mid_channels, t[0], fuse=i < n - 1)
                              for i, (s, t) in enumerate(zip(s_shapes, t_shapes))])

    # -- schedule
    def warmup_factor(self, ctx: StepContext | None) -> float:
        """``min(epoch / warmup_epochs, 1)`` (epoch 1 when there is no context); 1 without warm-up."""
        epoch = 1 if ctx is None else ctx.epoch
        return 1.0 if self.warmup_epochs == 0 else min(epoch / self.warmup_epochs, 1.0)

    def loss_weight(self, ctx: StepContext | None) -> float:
        """The review loss's weight this step: ``beta * warmup_factor``."""
        return self.beta * self.warmup_factor(ctx)

    # -- features
    def _levels(self, feats: dict[str, torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
        out = [feats[n] for n in names]
        if self.pooled_layer is not None:
            out.append(_as_map(feats[self.pooled_layer]))
        return out

    def _hooked(self, names: Sequence[str]) -> list[str]:
        return list(dict.fromkeys([*names, *([self.pooled_layer] if self.pooled_layer is not None else [])]))

    def student_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, feats = capture(self.student, x, self._hooked(self.s_layers), clone=self.clone_features)
        return logits, self._levels(feats, self.s_layers)

    def teacher_features(self, x: torch.Tensor, ctx: StepContext | None):
        t_logits, feats = self._teacher_capture(x, ctx, self._hooked(self.t_layers))
        return t_logits, self._levels(feats, self.t_layers)

    def review(self, s_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, from the student's level features (shallow to deep): the
        deepest level first, each shallower one fused with the one below it."""
        if len(s_feats) != len(self.adapters):
            raise ValueError(f"ReviewKD has {len(self.adapters)} levels, got {len(s_feats)} features")
        out, residual = self.adapters[-1](s_feats[-1], out_size=self.t_sizes[-1])
        results = [out]
        for i in range(len(self.adapters) - 2, -1, -1):
            out, residual = self.adapters[i](s_feats[i], residual, out_size=self.t_sizes[i])
            results.insert(0, out)
        return results

    def feature_loss(self, s_feats, t_feats):
        return hcl_loss(self.review(s_feats), t_feats)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "warmup_epochs": self.warmup_epochs, "pooled_layer": self.pooled_layer,
                "mid_channels": self.mid_channels, "teacher_preact": self.teacher_preact,
                "student_preact": self.student_preact}


DISTILLERS.update({"reviewkd": ReviewKD})
