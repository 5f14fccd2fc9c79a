"""Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

The softened KL of Hinton KD splits into two parts that DKD weights separately:

* TCKD (target-class KD): the KL between the teacher's and the student's *binary* distributions
  ``[p(target), 1 - p(target)]`` at temperature ``T``;
* NCKD (non-target-class KD): the KL between their distributions over the non-target classes only,
  renormalised with the target class removed.

``loss = ce_weight * CE + w(epoch) * (alpha * T^2 * TCKD + beta * T^2 * NCKD)`` with the linear
warm-up ``w(epoch) = min(epoch / warmup, 1)``, epochs counted from 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kd_utils.train_kd import DISTILLERS, Distiller, StepContext, standardize_logits


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"DKD needs (N, K) student and teacher logits of one shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if student_logits.shape[1] < 2:
        raise ValueError(f"DKD needs at least 2 classes (it separates the target from the rest), got "
                         f"{student_logits.shape[1]}")
    if target.shape != (student_logits.shape[0],):
        raise ValueError(f"targets of shape {tuple(target.shape)} do not match {student_logits.shape[0]} samples")


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)``, each ``T^2`` times a batch-mean KL(teacher || student), unweighted.

    Computed in float32 in log space: the binary log-probabilities are the target's log-softmax and
    the log-sum-exp of the other classes' log-softmax, and the non-target distribution is a softmax
    over the non-target logits alone (the target column removed, where the reference subtracts 1000
    from it: the same numbers in float32)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    _check_logits(student_logits, teacher_logits, target)
    n, k = student_logits.shape
    is_target = F.one_hot(target, k).bool()
    zs, zt = student_logits.float() / temperature, teacher_logits.float() / temperature

    def binary(z: torch.Tensor) -> torch.Tensor:  # (N, 2): log p(target), log (1 - p(target))
        log_p = F.log_softmax(z, dim=1)
        return torch.stack([log_p[is_target], log_p[~is_target].view(n, k - 1).logsumexp(dim=1)], dim=1)

    def others(z: torch.Tensor) -> torch.Tensor:  # (N, K-1): log-softmax among the non-target classes
        return F.log_softmax(z[~is_target].view(n, k - 1), dim=1)

    scale = temperature ** 2
    tckd = F.kl_div(binary(zs), binary(zt), reduction="batchmean", log_target=True) * scale
    nckd = F.kl_div(others(zs), others(zt), reduction="batchmean", log_target=True) * scale
    return tckd, nckd


class DKD(Distiller):
    """Decoupled KD: ``ce_weight * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)`` (each KL
    times ``T^2``); loss terms ``loss_ce``, ``loss_tckd``, ``loss_nckd``.

    Defaults from mdistiller (``megvii-research/mdistiller``): ``configs/cifar100/dkd/vgg13_vgg8.yaml``
    sets ``DKD.BETA = 6.0``, the rest from ``mdistiller/engine/cfg.py``: ``CE_WEIGHT = 1.0``,
    ``ALPHA = 1.0``, ``T = 4.0``, ``WARMUP = 20``. The loss is that of ``mdistiller/distillers/DKD.py``; its
    warm-up is ``min(epoch / WARMUP, 1)`` with the trainer's epoch counted from 1 (``engine/trainer.py``),
    as ``ctx.epoch`` is here (``ctx=None``: epoch 1). ``warmup=0`` disables the warm-up.

    The warm-up is in epochs of a 240-epoch schedule; a much shorter run that keeps ``warmup=20`` never
    reaches the full weight (pass e.g. ``warmup = max(1, epochs // 12)`` for the same fraction).

    ``standardize=True``: logit standardisation (Sun et al., CVPR 2024; ``kd_utils.train_kd.standardize_logits``)
    of both sides' logits before the temperature, as ``sunshangquan/logit-standardization-KD``
    (``mdistiller/distillers/DKD.py``) does; CE sees the raw logits. That reference then uses base
    temperature 2 and multiplies ``alpha`` and ``beta`` by its KD weight (VGG13 -> VGG8: ``T = 2``, weight
    15, ``BETA = 2``, i.e. ``alpha = 15``, ``beta = 30``); the defaults here stay DKD's, pass those explicitly.

    Reads only the teacher's logits (``logits_only``): they may come from the cache. No extra parameters.
    """
    logits_only = True
    family = "dkd"
    extra_parameters = 0

    def __init__(self, student, teacher=None, *, ce_weight: float = 1.0, alpha: float = 1.0, beta: float = 6.0,
                 temperature: float = 4.0, warmup: int = 20, standardize: bool = False):
        for name, v in (("ce_weight", ce_weight), ("alpha", alpha), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a whole number of epochs >= 0 (0: no warm-up), got {warmup!r}")
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}")
        super().__init__(student, teacher)
        self.ce_weight, self.alpha, self.beta = float(ce_weight), float(alpha), float(beta)
        self.temperature, self.warmup, self.standardize = float(temperature), warmup, standardize

    def warmup_weight(self, ctx: StepContext | None) -> float:
        """``min(epoch / warmup, 1)``; epoch 1 without a context; 1 when ``warmup = 0``."""
        epoch = 1 if ctx is None else ctx.epoch
        return 1.0 if self.warmup == 0 else min(epoch / self.warmup, 1.0)

    def forward(self, x, y, ctx=None):
        logits = self.student(x)
        t_logits = self.teacher_logits(x, ctx)
        s_in, t_in = (standardize_logits(logits), standardize_logits(t_logits)) if self.standardize else (logits, t_logits)
        tckd, nckd = dkd_terms(s_in, t_in, y, self.temperature)
        w = self.warmup_weight(ctx)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits.float(), y),
                        "loss_tckd": w * self.alpha * tckd, "loss_nckd": w * self.beta * nckd}

    def describe(self):
        out = {"method": "DKD", "ce_weight": self.ce_weight, "alpha": self.alpha, "beta": self.beta,
               "temperature": self.temperature, "warmup": self.warmup}
        if self.standardize:
            out["standardize"] = True
        return out


DISTILLERS.update({"dkd": DKD})
