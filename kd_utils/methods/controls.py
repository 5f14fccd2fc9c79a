"""Controls for "what in the teacher's logits does the work": three methods that each keep one part of
what Hinton KD hands the student and remove another.

* ``"label_smoothing"`` (Szegedy et al., CVPR 2016, "Rethinking the Inception Architecture", sec. 7):
  no teacher at all, the one-hot target mixed with the uniform distribution. With smoothing ``eps``
  over ``K`` classes the target class gets ``1 - eps + eps / K`` and every other class ``eps / K``: the
  wrong classes share the mass ``(K - 1) eps / K`` *uniformly*. :func:`matched_smoothing` picks the
  ``eps`` whose wrong-class mass equals the teacher's mean, so the control gives the same amount of
  "softness" with none of the teacher's structure (the question of Yuan et al., CVPR 2020, "Revisiting
  Knowledge Distillation via Label Smoothing Regularization", and Müller et al., NeurIPS 2019).
* ``"kd_permuted"``: Hinton KD against teacher targets whose *non-target* entries are shuffled per
  image: the target-class probability (how hard the image is) is kept exactly, and so is the multiset
  of wrong-class probabilities (how peaked the rest is), but which wrong classes are close is destroyed.
* ``"pseudo_label"``: hard distillation (as DeiT's hard-label distillation, Touvron et al., ICML 2021,
  without its ground-truth half): cross-entropy against the teacher's top-1 class only, no ground truth:
  what the teacher's decisions alone teach.

DKD's two halves (Zhao et al., CVPR 2022) are the other controls of this set, as configurations of
``"dkd"``: ``beta=0`` (target-class term only) and ``alpha=0`` (non-target term only).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.config import CIFAR_KD
from kd_utils.train_kd import DISTILLERS, Distiller, HintonKD, StepContext

_SEED_LIMIT = 2 ** 31
_BLOCK = 4096  # sample indices per block of precomputed permutations


# ------------------------------------------------------------ label smoothing ----
def _check_epsilon(epsilon) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 1:  # rejects NaN too
        raise ValueError(f"epsilon must be a number in [0, 1), got {epsilon!r}")
    return float(epsilon)


def matched_smoothing(teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                      decimals: int | None = 4) -> float:
    """The label-smoothing ``eps`` whose wrong-class mass equals the teacher's mean wrong-class mass.

    The teacher's wrong-class mass on image ``i`` is ``1 - p_i[y_i]`` with ``p_i = softmax(z_i / T)`` and
    ``y_i`` the *ground-truth* label (an image the teacher gets wrong counts with its whole misplaced
    mass); ``m`` is its mean over the images. Smoothing ``eps`` over ``K`` classes gives the target
    ``1 - eps + eps / K``, i.e. the wrong classes ``(K - 1) eps / K``, so ``eps = K m / (K - 1)``.
    Computed in float64. A teacher whose mean target probability is at most ``1 / K`` has no match in
    ``[0, 1)`` and raises. ``decimals``: rounded (default 4 places), because epsilon becomes part of a run's
    key and the last digits of a float64 mean differ between CPUs and thread counts; None keeps them."""
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2 or teacher_logits.shape[1] < 2:
        raise ValueError(f"teacher_logits must be an (N, K) tensor with K >= 2, got "
                         f"{getattr(teacher_logits, 'shape', type(teacher_logits).__name__)}")
    n, k = teacher_logits.shape
    if n == 0:
        raise ValueError("teacher_logits hold no samples")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{int(labels.min())}, {int(labels.max())}]")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    p = torch.softmax(teacher_logits.detach().double() / temperature, dim=1)
    wrong_mass = float((1 - p.gather(1, labels.long().view(-1, 1).to(p.device))).mean())
    eps = k * wrong_mass / (k - 1)
    if eps >= 1:
        raise ValueError(f"the teacher's mean wrong-class mass is {wrong_mass:.4f}, at least (K - 1) / K = "
                         f"{(k - 1) / k:.4f}: no smoothing epsilon in [0, 1) matches it (eps would be {eps:.4f})")
    return eps if decimals is None else round(eps, decimals)


class LabelSmoothingCE(Distiller):
    """Cross-entropy with label smoothing ``epsilon`` (Szegedy et al., CVPR 2016, sec. 7): the target is
    ``(1 - epsilon) * one_hot + epsilon / K``, as ``torch.nn.functional.cross_entropy(label_smoothing=...)``
    defines it; loss term ``loss_ce``. Default ``epsilon = 0.1``, the paper's ImageNet value.

    Teacher-free (``teacher_free``): a teacher passed in is not kept, and ``run_experiment`` keys and
    records the run without one (as plain ``"ce"``). ``epsilon`` is this method's own argument
    (``TrainConfig.label_smoothing`` is plain CE's), so a sweep over it, e.g. at
    :func:`matched_smoothing`'s value, is a sweep over method arguments."""
    family = "controls"
    teacher_free = True
    extra_parameters = 0

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, epsilon: float = 0.1):
        eps = _check_epsilon(epsilon)
        super().__init__(student, None)  # the teacher is never used: do not hold (or freeze) it
        self.epsilon = eps

    def forward(self, x, y, ctx=None):
        logits = self.student(x)
        return logits, {"loss_ce": F.cross_entropy(logits.float(), y, label_smoothing=self.epsilon)}

    def describe(self):
        return {"method": "LabelSmoothingCE", "epsilon": self.epsilon}


# ------------------------------------------------------- permuted non-target KD ----
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be a whole number in [0, 2**31), got {seed!r}")
    return seed


def _permutation_block(seed: int, block: int, size: int) -> torch.Tensor:
    """(``_BLOCK``, size) permutations of ``range(size)`` for the sample indices of ``block``: the
    argsort of uniform keys from a generator seeded with (seed, block) alone. The CPU generator keeps
    32 bits of its seed, so the pair is hashed to 32 bits (sha256) rather than packed into 64."""
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{block}".encode()).digest()[:4], "little"))
    keys = torch.rand(_BLOCK, size, generator=g, dtype=torch.float64)
    return keys.argsort(dim=1, stable=True)


def non_target_permutations(index: torch.Tensor, num_classes: int, seed: int = 0,
                            cache: dict | None = None) -> torch.Tensor:
    """(N, K - 1) int64 on the CPU: for each sample index, a permutation of the K - 1 non-target
    positions. A fixed function of ``(seed, index, num_classes)``: the same sample gets the same
    permutation in every epoch, run and process (the permutations are made in blocks of
    ``_BLOCK`` indices, each from its own seeded generator). ``cache``: a dict to keep the blocks in."""
    _check_seed(seed)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be a whole number >= 2, got {num_classes!r}")
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point():
        raise ValueError(f"index must be a 1-d integer tensor of sample indices, got "
                         f"{getattr(index, 'shape', type(index).__name__)}")
    index = index.detach().cpu().long()
    if index.numel() and int(index.min()) < 0:
        raise ValueError(f"sample indices must be >= 0, got {int(index.min())}")
    cache = {} if cache is None else cache
    blocks, offsets = index // _BLOCK, index % _BLOCK
    out = torch.empty(len(index), num_classes - 1, dtype=torch.long)
    for b in blocks.unique().tolist():
        key = (seed, num_classes, b)
        if key not in cache:
            cache[key] = _permutation_block(seed, b, num_classes - 1)
        rows = blocks == b
        out[rows] = cache[key][offsets[rows]]
    return out


def permute_non_target(logits: torch.Tensor, target: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``logits`` with each row's non-target entries rearranged by ``perm`` (N, K - 1): the j-th
    non-target position (in class order) receives the row's ``perm[i, j]``-th non-target value; the
    target column is untouched. Because softmax is permutation-equivariant with a symmetric normaliser,
    ``softmax(permute(z) / T) = permute(softmax(z / T))`` at every ``T``: permuting logits *is* permuting
    probabilities, with the target probability and the multiset of non-target probabilities kept."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got {tuple(logits.shape)}")
    n, k = logits.shape
    if target.shape != (n,):
        raise ValueError(f"targets of shape {tuple(target.shape)} do not match {n} samples")
    if perm.shape != (n, k - 1):
        raise ValueError(f"perm must have shape ({n}, {k - 1}), got {tuple(perm.shape)}")
    is_target = F.one_hot(target.long(), k).bool()
    others = logits[~is_target].view(n, k - 1)
    out = logits.clone()
    out[~is_target] = others.gather(1, perm.to(logits.device)).reshape(-1)
    return out


class PermutedKD(HintonKD):
    """Hinton KD (the project's ``"kd"``: the same loss, :func:`kd_utils.train_kd.kd_loss`, and defaults
    ``T = 4``, ``alpha = 0.9``; loss terms ``loss_ce``, ``loss_kd``) against the teacher's outputs with
    their non-target entries permuted per image (:func:`permute_non_target`). A control in the spirit
    of Yuan et al. (CVPR 2020) and Müller et al. (2019): it keeps how confident the teacher is on the
    right class and how peaked its wrong-class mass is, and destroys which classes it finds alike.

    The permutation is applied to the teacher's *logits*, which for the softmax at the distillation
    temperature is the same as permuting its probabilities (and needs no re-normalisation). It is a
    fixed function of the image's sample index (``ctx.index``, which the training loop gives every
    batch, with cached plan logits or an online teacher alike) and ``seed``
    (:func:`non_target_permutations`): each image keeps one permutation across epochs, and runs are
    reproducible. The target class is the ground-truth label ``y``. ``standardize`` is ``"kd"``'s
    (z-scoring commutes with the permutation).

    Reads only the teacher's logits (``logits_only``): they may come from the cache. No extra parameters."""
    family = "controls"
    extra_parameters = 0

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 temperature: float = CIFAR_KD.temperature, alpha: float = CIFAR_KD.alpha, standardize: bool = False,
                 *, seed: int = 0):
        seed = _check_seed(seed)
        super().__init__(student, teacher, temperature=temperature, alpha=alpha, standardize=standardize)
        self.seed = seed
        self._blocks: dict = {}  # the permutations in use, recomputed after a resume (a pure function)

    def forward(self, x, y, ctx: StepContext | None = None):
        if self.alpha == 0:  # CE only: the teacher is not read
            return super().forward(x, y, ctx)
        if ctx is None or ctx.index is None:
            raise ValueError("PermutedKD needs the batch's sample indices (ctx.index), which fit gives every "
                             "batch: call it through fit/distill/run_experiment, or pass "
                             "StepContext(index=...)")
        t_logits = self.teacher_logits(x, ctx)
        perm = non_target_permutations(ctx.index, t_logits.shape[1], self.seed, self._blocks)
        permuted = permute_non_target(t_logits, y, perm)
        return super().forward(x, y, dataclasses.replace(ctx, teacher={**ctx.teacher, "logits": permuted}))

    def describe(self):
        return {**super().describe(), "method": "PermutedKD", "seed": self.seed}


# ------------------------------------------------------------- pseudo-labels ----
class PseudoLabelKD(Distiller):
    """Hard distillation: cross-entropy against the teacher's top-1 class, ``CE(s, argmax t)``, and
    nothing else (no ground-truth term, no soft targets); loss term ``loss_pseudo``. DeiT's
    hard-label distillation (Touvron et al., ICML 2021) is ``0.5 * CE(s, y) + 0.5 * CE(s, argmax t)``;
    this is its teacher half alone. Ties in the teacher's logits (possible in the float16 cache) go to
    the lowest class index (``argmax``). The history's ``train_acc`` is still against the ground truth.

    Reads only the teacher's logits (``logits_only``): they may come from the cache. No arguments, no
    extra parameters."""
    logits_only = True
    family = "controls"
    extra_parameters = 0

    def forward(self, x, y, ctx=None):
        logits = self.student(x)
        pseudo = self.teacher_logits(x, ctx).argmax(dim=1)
        return logits, {"loss_pseudo": F.cross_entropy(logits.float(), pseudo)}

    def describe(self):
        return {"method": "PseudoLabelKD"}


DISTILLERS.update({"label_smoothing": LabelSmoothingCE, "kd_permuted": PermutedKD, "pseudo_label": PseudoLabelKD})
