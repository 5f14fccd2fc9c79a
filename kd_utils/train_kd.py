"""Distillers: one small class per method, in the pattern of mdistiller.

A distiller is an ``nn.Module`` holding a student and (optionally) a frozen teacher. Its training
forward takes a batch ``(x, y, ctx)`` and returns ``(student_logits, {"loss_ce": ..., ...})``; the
trainer sums the dict and logs every term, so a new method never touches the trainer. ``ctx`` is a
:class:`StepContext`: where the run is in its schedule (epoch, step, totals), the batch's sample
indices, and named teacher outputs served from a cache (``ctx.teacher["logits"]``, ``["embedding"]``;
:mod:`kd_utils.experiments` and :mod:`kd_utils.plans`). A distiller may keep state across batches in
buffers (a memory bank indexed by ``ctx.index``): it is saved with the training state and resumes
exactly. This module sits below the training loop: it imports nothing from ``train_eval``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import CIFAR_KD, KDConfig


@dataclass
class StepContext:
    """What a distiller may know about the batch it trains on, besides ``(x, y)``.

    ``epoch`` counts from 1, ``step`` (the optimiser steps taken before this one) from 0; ``index`` holds
    the batch's sample indices in the training split; ``teacher`` the teacher's outputs for these
    samples by name, when they come from a cache (empty: run the teacher)."""
    epoch: int = 1
    step: int = 0
    epochs: int = 1
    steps_per_epoch: int = 1
    index: torch.Tensor | None = None
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """The fraction of the run's steps taken before this one, in [0, 1)."""
        return self.step / self.total_steps


# ------------------------------------------------------------------ losses ----
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient scale roughly independent of ``T`` (Hinton et al. 2015, sec. 2).
    Computed in float32 even under autocast: softmax at high T is sensitive to rounding.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each sample's logits over the classes (Sun et al., CVPR 2024, "Logit Standardization in
    Knowledge Distillation"): ``(z - mean(z)) / (std(z) + eps)`` along the last axis, in float32.

    As the reference (``sunshangquan/logit-standardization-KD``, ``mdistiller/distillers/KD.py::normalize``):
    the std is the unbiased one (Bessel's correction, ``torch.std``'s default) and ``eps = 1e-7`` is added
    to the std, not under the square root (the paper's Algorithm 1 writes the 1/K std; the two differ by a
    factor sqrt(K / (K - 1)), about 5% at 10 classes, absorbed by the base temperature). The standardised logits have zero mean and unit std per
    sample, so a temperature ``T`` applied after them is a *base* temperature: the effective one is
    ``T * std(z)``. The paper therefore uses a smaller T than plain KD with it: the reference's
    ``--base-temp`` defaults to 2 (3 for KD on VGG13 -> VGG8, 2 for DKD on VGG13 -> VGG8), with the KD
    weight raised to 9 (``--kd-weight``, CE weight 0.1)."""
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"standardising needs at least 2 classes on the last axis, got shape {tuple(logits.shape)}")
    z = logits.float()
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching (Ba & Caruana 2014): mean squared error between raw logits."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    return F.mse_loss(student_logits.float(), teacher_logits.float())


# -------------------------------------------------------------- distillers ----
class Distiller(nn.Module):
    """Base class: a student, a frozen teacher (or none), and any extra learnable parts.

    ``logits_only``: the method reads nothing of the teacher but its logits, so they may come from
    a cache (``ctx.teacher["logits"]``) instead of a teacher forward pass.
    ``family``: the method family whose numerics version keys its runs (:mod:`kd_utils.numerics`);
    None for plain cross-entropy, which only the loop's version covers."""
    logits_only = False
    family: str | None = None

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            s_k, t_k = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
            if s_k is not None and t_k is not None and s_k != t_k:
                raise ValueError(f"teacher predicts {t_k} classes but student predicts {s_k}; they must match")
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        """Switch the student (and extras) to train mode; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student parameters plus the distiller's own (adapters); never the teacher's."""
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return (p for p in self.parameters() if id(p) not in teacher_ids and p.requires_grad)

    def teacher_logits(self, x: torch.Tensor, ctx: StepContext | None = None) -> torch.Tensor:
        """Cached logits when the context has them, else a fresh no-grad teacher pass."""
        cached = None if ctx is None else ctx.teacher.get("logits")
        if cached is not None:
            return cached.float()  # caches store float16
        if self.teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher or cached teacher logits")
        with torch.no_grad():
            return self.teacher(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters, for logs and checkpoints."""
        return {"method": type(self).__name__}


class Vanilla(Distiller):
    """Plain cross-entropy training (no teacher): the baseline every method is compared with."""

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0):
        super().__init__(student, None)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, x, y, ctx=None):
        logits = self.student(x)
        return logits, {"loss_ce": F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)}


class SoftTargetDistiller(Distiller):
    """``alpha * soft_loss(student, teacher) + (1 - alpha) * CE``; subclasses define ``soft_loss``
    and the name of its term. alpha=1 is soft-only, alpha=0 hard-only."""
    term = "loss_soft"
    logits_only = True
    family = "logit"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, alpha: float = CIFAR_KD.alpha):
        if not 0 <= alpha <= 1:  # also rejects NaN
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(student, teacher)
        self.alpha = float(alpha)

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, y, ctx=None):
        logits = self.student(x)
        losses = {}
        if self.alpha < 1:
            losses["loss_ce"] = (1 - self.alpha) * F.cross_entropy(logits.float(), y)
        if self.alpha > 0:
            t_logits = self.teacher_logits(x, ctx)
            losses[self.term] = self.alpha * self.soft_loss(logits, t_logits)
        return logits, losses


class HintonKD(SoftTargetDistiller):
    """``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE``; alpha=1 is soft-only, alpha=0 hard-only.

    ``standardize=True``: logit standardisation (Sun et al., CVPR 2024): both sides' logits are
    z-scored per sample (:func:`standardize_logits`) before the division by ``T`` inside the softened
    KL; the CE term still sees the raw logits. ``T`` then acts as a base temperature on unit-std logits,
    so the paper uses a smaller one (reference ``--base-temp 2``; 3 for VGG13 -> VGG8) than the default
    4 here. Its loss weights are KD 9 and CE 0.1, which this convex ``alpha`` form can only give up to a
    common factor (``alpha = 9 / 9.1``, the whole loss 9.1 times smaller). Off by default (the plain
    ``kd_loss`` path, unchanged)."""
    term = "loss_kd"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 temperature: float = CIFAR_KD.temperature, alpha: float = CIFAR_KD.alpha, standardize: bool = False):
        KDConfig(temperature, alpha)  # validates
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}")
        super().__init__(student, teacher, alpha)
        self.temperature = float(temperature)
        self.standardize = standardize

    def soft_loss(self, student_logits, teacher_logits):
        if self.standardize:
            return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits), self.temperature)
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def describe(self):
        out = {"method": "HintonKD", "temperature": self.temperature, "alpha": self.alpha}
        if self.standardize:
            out["standardize"] = True
        return out


class LogitMatching(SoftTargetDistiller):
    """``alpha * MSE(s, t) + (1 - alpha) * CE``: regress the teacher's logits directly."""
    term = "loss_mse"

    def soft_loss(self, student_logits, teacher_logits):
        return logit_mse_loss(student_logits, teacher_logits)

    def describe(self):
        return {"method": "LogitMatching", "alpha": self.alpha}


# name -> distiller class; kd_utils.ensemble ("cohort") and kd_utils.feature_kd (its methods) add
# theirs when imported, which the package's __init__ does.
DISTILLERS: dict[str, type[Distiller]] = {"ce": Vanilla, "kd": HintonKD, "mse": LogitMatching}


def build_distiller(method: str, student: nn.Module, teacher: nn.Module | None = None, **kwargs: Any) -> Distiller:
    """``build_distiller("kd", student, teacher, temperature=4, alpha=0.9)``."""
    if method not in DISTILLERS:
        raise ValueError(f"unknown distillation method {method!r}; known: {', '.join(DISTILLERS)}")
    if method == "ce":
        return Vanilla(student, **kwargs)
    return DISTILLERS[method](student, teacher, **kwargs)
