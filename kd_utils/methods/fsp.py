"""FSP: flow of solution procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation").

The FSP matrix of two layers ``a`` and ``b`` of one network is the Gram matrix of their channels over
the spatial positions, ``G[i, j] = sum_hw a_i(h, w) * b_j(h, w) / (H * W)``; the student matches the
teacher's FSP matrices of consecutive stage pairs in squared error. Both networks must have the same
channel counts at every matched layer (the matrices are compared entry by entry); RepDistiller refuses
other pairs, and so does :class:`FSPStage`.

As in RepDistiller, FSP is a pre-training stage only: :meth:`FSP.prepare` trains the student's
convolutional layers with the FSP loss alone for ``init_epochs``, then the main stage trains the student
with cross-entropy (plus Hinton KD when ``alpha > 0``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kd_utils.feature_kd import FeatureStage, InitStageMethod
from kd_utils.train_kd import DISTILLERS


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C_a, C_b) FSP matrices of two (N, C, H, W) maps of the same samples: the larger map is first
    average-pooled (adaptively) to the smaller one's spatial size, as RepDistiller does."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[0] != b.shape[0]:
        raise ValueError(f"FSP needs two (N, C, H, W) maps of the same N samples, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    a = F.adaptive_avg_pool2d(a.float(), (h, w)) if a.shape[2:] != (h, w) else a.float()
    b = F.adaptive_avg_pool2d(b.float(), (h, w)) if b.shape[2:] != (h, w) else b.float()
    return torch.einsum("nihw,njhw->nij", a, b) / (h * w)


def fsp_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive layer pairs of the mean squared difference of student and teacher FSP
    matrices (RepDistiller ``FSP``: per pair ``(G_s - G_t)^2.mean()``, summed in ``helper/pretrain.py``)."""
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise ValueError(f"FSP needs as many student as teacher maps, at least two (one pair), got "
                         f"{len(student_feats)} and {len(teacher_feats)}")
    total = 0.0
    for i in range(len(student_feats) - 1):
        g_s = fsp_matrix(student_feats[i], student_feats[i + 1])
        g_t = fsp_matrix(teacher_feats[i], teacher_feats[i + 1])
        if g_s.shape != g_t.shape:
            raise ValueError(f"FSP matrices of pair {i} differ in shape: student {tuple(g_s.shape)}, teacher "
                             f"{tuple(g_t.shape)}; channel counts must match")
        total = total + (g_s - g_t).pow(2).mean()
    return total


class FSPStage(FeatureStage):
    """The FSP pre-training stage: ``beta * fsp_loss`` alone (no labels, no KD) on post-ReLU stage outputs;
    gradients reach the student's layers up to the deepest matched one, never its classifier."""
    term = "loss_fsp"
    family = "fsp"
    student_layers = ("stage1", "stage2", "stage3", "stage4", "stage5")
    teacher_layers = ("stage1", "stage2", "stage3", "stage4", "stage5")

    def __init__(self, student, teacher, *, beta: float = 1.0, **kw):
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        if len(self.s_layers) < 2:
            raise ValueError(f"FSP needs at least two layers (one consecutive pair), got {list(self.s_layers)}")
        bad = self.unmatched_pairs(s_shapes, t_shapes, dim=0)
        if bad:
            raise ValueError("FSP compares student and teacher FSP matrices entry by entry, so every matched layer "
                             "must be a (C, H, W) map with the same channel count C in both networks (RepDistiller "
                             f"refuses the pair too); unmatched: {'; '.join(bad)}. Use a student of the teacher's "
                             "channel widths (e.g. vgg8 at the teacher vgg13's width) or layers whose channels match")
        return super().make_adapters(s_shapes, t_shapes)

    def feature_loss(self, s_feats, t_feats):
        return fsp_loss(s_feats, t_feats)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "FSPStage"}


class FSP(InitStageMethod):
    """FSP (Yim et al., CVPR 2017) as RepDistiller runs it: an init stage with the FSP loss, then CE (+ KD).

    Reference: HobbitLong/RepDistiller ``distiller_zoo/FSP.py`` (FSP matrix ``mean_hw(a_i * b_j)`` of
    consecutive layers, the larger map adaptively average-pooled to the smaller, loss ``mean((G_s-G_t)^2)``
    per pair; ``ValueError`` when any channel count differs), ``train_student.py`` (``fsp``: layers
    ``feat[:-1]``, the post-ReLU outputs of the five blocks = our ``stage1``..``stage5``; ``--init_epochs
    30``; main stage ``-a 0 -b 50`` with the FSP term 0, i.e. CE alone: ``scripts/run_cifar_distill.sh``,
    ``helper/loops.py``), ``helper/pretrain.py`` (the init stage trains only the student's feature modules,
    with the summed FSP losses, SGD at the run's lr, momentum and weight decay, constant lr).

    Here: the init stage is ``fit`` on :class:`FSPStage` with the run's optimiser settings, ``init_epochs``
    epochs and ``init_schedule`` ("constant" as RepDistiller; None keeps the run's schedule); the classifier
    gets no gradient there, so it is not trained (as RepDistiller). ``init_beta`` (1, as RepDistiller)
    scales the stage's loss. Main stage: ``alpha`` 0 (CE alone); ``alpha > 0`` mixes in Hinton KD at
    ``temperature`` (4, RepDistiller's ``--kd_T``). Channel counts must match at every layer: the suite's
    pair vgg13 w0.5 -> vgg8 w0.25 differs by 2x in width and is refused with a ``ValueError`` (run FSP with
    vgg8 at width 0.5, or pass ``student_layers``/``teacher_layers`` with matching channels). Our VGG's
    stage5 is at 2x2 (RepDistiller's CIFAR VGG keeps block4 at 4x4), so the last pair pools stage4 to 2x2.
    No extra parameters.
    """
    family = "fsp"
    stage_name = "FSP init stage"

    def __init__(self, student, teacher, *, init_epochs: int = 30, init_beta: float = 1.0, temperature: float = 4.0,
                 alpha: float = 0.0, init_schedule: str | None = "constant",
                 student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
                 input_shape: Sequence[int] = (3, 32, 32)):
        stage = FSPStage(student, teacher, beta=init_beta, student_layers=student_layers,
                         teacher_layers=teacher_layers, input_shape=input_shape)
        super().__init__(student, teacher, stage, init_epochs=init_epochs, init_schedule=init_schedule,
                         temperature=temperature, alpha=alpha)
        self.init_beta = stage.beta
        self.s_layers, self.t_layers = stage.s_layers, stage.t_layers

    def describe_stage(self) -> dict[str, Any]:
        return {**super().describe_stage(), "init_beta": self.init_beta, "student_layers": list(self.s_layers),
                "teacher_layers": list(self.t_layers)}


DISTILLERS.update({"fsp": FSP})
