"""Online distillation without a pretrained teacher: KDCL (Guo et al., CVPR 2020, "Online Knowledge
Distillation via Collaborative Learning").

Several peers (a :class:`~kd_utils.models.Cohort`) train together from scratch. On every batch their
logits are combined into one soft target ``z_t``, and each peer ``i`` is trained with

    ``ce_weight * CE(z_i, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_i / T))``

with ``z_t`` detached (a target, not a path for gradients); the terms are summed over the peers (each
peer's gradient is its own loss's), logged as ``loss_ce`` and ``loss_kdcl``.

The soft target (``ensemble``):

* ``"minlogit"`` (default; the paper's KDCL-MinLogit): each peer's logits are shifted so that the
  target class sits at zero, ``z_i - z_i[y]`` (which leaves that peer's softmax unchanged), and the
  target takes, class by class, the smallest shifted logit over the peers:
  ``z_t[k] = min_i (z_i[k] - z_i[y])``. Every wrong class then gets the lowest logit any peer gives it
  relative to the right one, so the target's cross-entropy is at most the best peer's on every image.
* ``"mean"``: the peers' mean logits, a plain-ensemble baseline to compare MinLogit with (not one of
  the paper's variants).

The paper's other variants are not implemented: KDCL-Naive (the lowest-loss peer's logits), KDCL-Linear
(logit weights fitted per batch) and KDCL-General (weights from each peer's error on held-out data).

Defaults: ``T = 4`` (the project's CIFAR temperature, ``config.CIFAR_KD``, and that of the public
re-implementation ``shaoeric/Online-Knowledge-Distillation-via-Collaborative-Learning``, ``--T 4``: the
paper's own value could not be read here, so set ``temperature`` explicitly to reproduce it); CE and KL
unweighted (``ce_weight = kd_weight = 1``: the re-implementation's ``(1 - 0.5) CE + 0.5 KL`` up to a factor
of two). The paper also feeds each peer differently distorted images; ``plans="own"`` gives every peer
its own batch order and augmentation (:class:`kd_utils.ensemble.PeerPlans`), the target for peer ``i``
then being built from every peer's logits on peer ``i``'s own batch.

Teacher-free (``teacher_free``): a teacher passed in is not kept, and ``run_experiment`` keys and
records the run without one. No official code was found; the MinLogit target was checked against public
re-implementations (shift by the target logit, element-wise minimum over the peers, KL at ``T`` from the
detached target to every peer).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.config import CIFAR_KD
from kd_utils.ensemble import Cohort, OwnPlansMixin
from kd_utils.train_kd import DISTILLERS, Distiller, kd_loss

ENSEMBLES = ("minlogit", "mean")


def minlogit_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KDCL-MinLogit's soft target from the peers' logits ``(S, N, K)`` and labels ``(N,)``:
    ``min_i (z_i - z_i[y])`` class by class, (N, K) float32; its target-class entry is 0."""
    _check(logits, target)
    z = logits.float()
    index = target.view(1, -1, 1).expand(z.shape[0], -1, 1)
    return (z - z.gather(2, index)).min(dim=0).values


def kdcl_target(logits: torch.Tensor, target: torch.Tensor, ensemble: str = "minlogit") -> torch.Tensor:
    """The soft target's logits (N, K), float32, detached: ``"minlogit"`` (:func:`minlogit_target`) or
    ``"mean"`` (the peers' mean logits)."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    _check(logits, target)
    z = logits.detach().float()
    return minlogit_target(z, target) if ensemble == "minlogit" else z.mean(dim=0)


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape[0] < 1 or logits.shape[2] < 2:
        raise ValueError(f"peers' logits must be (S, N, K) with S >= 1 and K >= 2, got {tuple(logits.shape)}")
    if target.shape != (logits.shape[1],):
        raise ValueError(f"labels of shape {tuple(target.shape)} do not match {logits.shape[1]} samples")


class KDCL(OwnPlansMixin, Distiller):
    """KDCL: every peer of a :class:`~kd_utils.models.Cohort` learns from CE and from the peers' combined
    soft target (``ensemble``: ``"minlogit"`` or ``"mean"``); loss terms ``loss_ce`` and ``loss_kdcl``,
    each summed over the peers. ``plans``: ``"shared"`` (one batch for all peers) or ``"own"`` (each peer
    its own plan; call :meth:`prepare` with the data before training). In eval mode the cohort predicts
    as the ensemble of its peers (mean probability); each peer is ``cohort.students[i]``."""
    family = "kdcl"
    teacher_free = True
    logits_only = False
    extra_parameters = 0

    def __init__(self, cohort: nn.Module, teacher: nn.Module | None = None, *, ensemble: str = "minlogit",
                 temperature: float = CIFAR_KD.temperature, ce_weight: float = 1.0, kd_weight: float = 1.0,
                 plans: str = "shared"):
        if not isinstance(cohort, Cohort):
            raise ValueError(f"KDCL trains a cohort of peers, got a {type(cohort).__name__}: use the student spec "
                             "{'name': 'cohort', 'members': [{'name': 'vgg8', 'width': 0.25}, ...]} (at least two)")
        if len(cohort.students) < 2:
            raise ValueError(f"KDCL needs at least two peers, got a cohort of {len(cohort.students)}")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        for name, v in (("ce_weight", ce_weight), ("kd_weight", kd_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        super().__init__(cohort, None)  # teacher-free: a teacher passed in is neither kept nor frozen
        self.ensemble, self.temperature = ensemble, float(temperature)
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)
        self._init_plans(plans)

    def _terms(self, logits: torch.Tensor, soft: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One peer's CE on its labels and its ``T^2 * KL`` to the soft target ``soft`` (N, K), unweighted."""
        return F.cross_entropy(logits.float(), y), kd_loss(logits, soft, self.temperature)

    def forward(self, x, y, ctx=None):
        if self.plans == "own":
            batches, own, views = self.own_step(x, y, ctx, views=True)
            terms = [self._terms(own[i], kdcl_target(views[i], yb, self.ensemble), yb)
                     for i, (_, yb) in enumerate(batches)]
            out = own[0].float()
        else:
            logits = self.student.all_logits(x)
            soft = kdcl_target(logits, y, self.ensemble)
            terms = [self._terms(logits[i], soft, y) for i in range(logits.shape[0])]
            out = logits.float().mean(0)
        return out, {"loss_ce": self.ce_weight * sum(ce for ce, _ in terms),
                     "loss_kdcl": self.kd_weight * sum(kd for _, kd in terms)}

    def describe(self) -> dict[str, Any]:
        return {"method": "KDCL", "students": len(self.student.students), "ensemble": self.ensemble,
                "temperature": self.temperature, "ce_weight": self.ce_weight, "kd_weight": self.kd_weight,
                **({"plans": self.plans} if self.plans != "shared" else {})}


DISTILLERS.update({"kdcl": KDCL})
