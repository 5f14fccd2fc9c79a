"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation
Distillation"): the student's penultimate representation is trained to be recognised, among many others, as the
teacher's representation of the same image.

Both pooled penultimate vectors go through an embedding head (linear layer, then L2 normalisation). Two memory
banks of ``n_data x feat_dim`` hold a slowly moving embedding of every training sample, one for the student and
one for the teacher, addressed by the sample's index in the training split (``ctx.index``). For every anchor
(a sample's embedding on one side) the bank of the other side supplies its positive (the same sample's row) and
``nce_k`` negatives (other samples' rows); the score of a row ``m`` is ``exp(m . v / nce_t) / Z`` and the NCE
loss separates the positive from the noise distribution (``1 / n_data`` per sample). ``Z`` is estimated once,
on the first batch, as ``n_data`` times the mean score, and kept. After the loss, the rows of the batch are moved
towards the new embeddings: ``normalise(nce_m * row + (1 - nce_m) * v)``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..feature_kd import _PooledDistiller, pooled
from ..train_kd import DISTILLERS, StepContext

NCE_EPS = 1e-7  # as RepDistiller's crd/criterion.py


def nce_loss(scores: torch.Tensor, n_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """The NCE loss of CRD (eq. 18 of the paper) on normalised scores ``(B, 1 + K)``, column 0 the positive.

    With ``K`` negatives drawn from a uniform noise distribution over ``n_data`` samples, the posterior that a
    pair with score ``p`` comes from the data is ``p / (p + K / n_data)``; the loss is minus the sum over the
    batch of the log posterior of the positive plus the log complement of every negative, divided by ``B``."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"NCE scores must be (batch, 1 + K) with K >= 1, got shape {tuple(scores.shape)}")
    noise = (scores.shape[1] - 1) / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_pos = torch.log(pos / (pos + noise + eps))
    log_neg = torch.log(noise / (neg + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


class CRD(_PooledDistiller):
    """Contrastive representation distillation: ``CE + beta * (NCE(student anchor) + NCE(teacher anchor))``
    (with ``alpha > 0`` also Hinton KD, as FeatureDistiller weighs it: ``(1 - alpha) CE + alpha KD``).

    Defaults from RepDistiller (HobbitLong/RepDistiller): ``train_student.py`` (``feat_dim=128``,
    ``nce_k=16384``, ``nce_t=0.07``, ``nce_m=0.5``, ``mode="exact"``) and ``scripts/run_cifar_distill.sh``
    (``-a 0 -b 0.8``: CE weight 1, ``beta=0.8``); the loss, embedding head and banks from ``crd/criterion.py`` and
    ``crd/memory.py``. mdistiller (``mdistiller/engine/cfg.py``: ``CRD.FEAT.DIM=128``, ``NCE.K=16384``,
    ``NCE.TEMPERATURE=0.07``, ``NCE.MOMENTUM=0.5``, ``LOSS.FEAT_WEIGHT=0.8``, ``CE_WEIGHT=1``;
    ``mdistiller/distillers/CRD.py``) has the same loss; it counts the banks among its "extra parameters",
    we count only the two heads (``extra_parameters``; the banks are buffers, not trained by the optimiser).

    * Layers: the globally pooled ``stage5`` of both networks (RepDistiller's ``feat[-1]``, the vector before the
      classifier); the teacher side may come from the plan cache (``cached_layer = "stage5"``).
    * Heads: ``Linear(d, feat_dim)`` with bias, then L2 normalisation, one per side; trained with the student.
    * Banks: buffers ``memory_s``, ``memory_t`` (``n_data x feat_dim``, initialised uniformly in
      ``[-s, s]``, ``s = 1 / sqrt(feat_dim / 3)``, as ``crd/memory.py``) and ``nce_z`` (the two normalisation
      constants, -1 until the first batch sets them). They are saved with the training state and resumed.
      :meth:`prepare` (called by :func:`kd_utils.experiments.distill`) allocates them for ``len(data.y_train)``
      samples with the run's seed; direct use gives ``n_data`` (and ``labels``) to the constructor.
    * Negatives (``negatives``): ``"other_class"`` (default; RepDistiller's CIFAR loader,
      ``CIFAR100InstanceSample`` in ``exact`` mode): for each anchor ``nce_k`` samples of other classes, without
      replacement (with replacement when the other classes hold fewer than ``nce_k`` samples), so it needs the
      training labels. ``"uniform"``: ``ContrastMemory``'s own fallback, ``nce_k`` per anchor uniformly over all
      samples with replacement. Draws use torch's global generator on the banks' device, which the training loop
      seeds (``cfg.seed``) and saves with its state: a seed reproduces, a resumed run continues the same stream.
    * ``shared_negatives=True`` (not in the reference; a cheaper option): one set of ``nce_k`` indices per batch,
      uniform over the training set without replacement, shared by every anchor: the scores are one
      ``(B, D) @ (D, K)`` product instead of ``B x (K + 1)`` gathered rows (``B * K * D`` floats per bank: 0.5 GB
      at the reference setting). Measured here (one CPU thread, B=64, n_data=45000, K=16384, feat_dim=128): about
      9 s per step for the contrast term per anchor, 0.23 s shared. An anchor's own row or rows of its class may
      then be among the negatives (rarely, for ``nce_k << n_data``).

    Deviations: the positive is always the sample itself (RepDistiller's ``exact`` mode; ``relax`` is not
    offered); scores are computed in float32 outside autocast. Single-process only: under DDP each process
    would update its own copy of the banks.
    """
    term = "loss_crd"
    family = "crd"
    NEGATIVES = ("other_class", "uniform")

    def __init__(self, student, teacher, *, beta: float = 0.8, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, n_data: int | None = None,
                 labels: torch.Tensor | None = None, negatives: str | None = None, shared_negatives: bool = False,
                 **kw):
        if not (isinstance(feat_dim, int) and feat_dim >= 1):
            raise ValueError(f"feat_dim must be an int >= 1, got {feat_dim!r}")
        if not (isinstance(nce_k, int) and nce_k >= 1):
            raise ValueError(f"nce_k (negatives per anchor) must be an int >= 1, got {nce_k!r}")
        if not (math.isfinite(nce_t) and nce_t > 0):
            raise ValueError(f"nce_t (temperature) must be a finite number > 0, got {nce_t}")
        if not 0 <= nce_m < 1:  # also rejects NaN
            raise ValueError(f"nce_m (bank momentum) must be in [0, 1), got {nce_m}")
        if not isinstance(shared_negatives, bool):
            raise ValueError(f"shared_negatives must be True or False, got {shared_negatives!r}")
        if negatives is None:
            negatives = "uniform" if shared_negatives else "other_class"
        if negatives not in self.NEGATIVES:
            raise ValueError(f"negatives must be one of {self.NEGATIVES}, got {negatives!r}")
        if shared_negatives and negatives != "uniform":
            raise ValueError("shared_negatives=True draws one uniform set of negatives for the whole batch; "
                             f"negatives={negatives!r} needs per-anchor draws (use shared_negatives=False)")
        self.feat_dim = feat_dim
        super().__init__(student, teacher, beta=beta, **kw)
        self.nce_k, self.nce_t, self.nce_m = nce_k, float(nce_t), float(nce_m)
        self.negatives, self.shared_negatives = negatives, shared_negatives
        self.register_buffer("memory_s", torch.zeros(0, feat_dim))
        self.register_buffer("memory_t", torch.zeros(0, feat_dim))
        self.register_buffer("nce_z", torch.full((2,), -1.0))  # (student anchor, teacher anchor)
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long), persistent=False)  # data, not state
        self._rows_without_replacement: bool | None = None  # all / none / mixed (None) for other_class draws
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.dim() != 1 or labels.is_floating_point() or len(labels) == 0:
                raise ValueError(f"labels must be a non-empty 1-D integer tensor (the training labels), got "
                                 f"{labels.dtype} of shape {tuple(labels.shape)}")
            if n_data is not None and n_data != len(labels):
                raise ValueError(f"n_data={n_data} but labels holds {len(labels)} samples")
            n_data = len(labels)
        if n_data is not None:
            if not (isinstance(n_data, int) and n_data >= 1):
                raise ValueError(f"n_data (training-set size) must be an int >= 1, got {n_data!r}")
            self.allocate(n_data, labels)

    def make_adapters(self, s_shapes, t_shapes):
        (s,), (t,) = s_shapes, t_shapes
        return nn.ModuleList([nn.Linear(s[0], self.feat_dim), nn.Linear(t[0], self.feat_dim)])

    # ------------------------------------------------------------ banks ----
    @property
    def n_data(self) -> int:
        """The number of samples the banks hold (0 before they are allocated)."""
        return int(self.memory_s.shape[0])

    def allocate(self, n_data: int, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        """(Re)initialise both banks for ``n_data`` samples (uniform in ``[-s, s]``, ``s = 1/sqrt(feat_dim/3)``,
        from ``generator`` or torch's global one), reset the normalisation constants, keep ``labels``."""
        if self.negatives == "other_class" and labels is None:
            raise ValueError("negatives='other_class' draws negatives from other classes and needs the training "
                             "labels: pass labels=... (or train through distill, whose prepare gives them), or use "
                             "negatives='uniform'")
        device = self.memory_s.device
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = ((torch.rand(n_data, self.feat_dim, generator=generator) * 2 - 1) * stdv).to(device)
        self.memory_t = ((torch.rand(n_data, self.feat_dim, generator=generator) * 2 - 1) * stdv).to(device)
        self.nce_z = torch.full((2,), -1.0, device=device)
        self.labels = (torch.zeros(0, dtype=torch.long) if labels is None else labels.long()).to(device)
        self._rows_without_replacement = None
        if labels is not None and self.negatives == "other_class":
            counts = torch.bincount(self.labels)
            counts = counts[counts > 0]
            others_min, others_max = n_data - int(counts.max()), n_data - int(counts.min())
            if others_min == 0:
                raise ValueError("negatives='other_class' needs at least two classes in the training labels; "
                                 "use negatives='uniform'")
            if others_min >= self.nce_k:
                self._rows_without_replacement = True
            elif others_max < self.nce_k:
                self._rows_without_replacement = False

    def prepare(self, data, cfg, progress: bool = True) -> None:
        """Allocate the banks for the training split of ``data`` (seeded from ``cfg.seed``; a resumed run then
        restores the saved banks over them)."""
        labels = torch.as_tensor(data.y_train)
        if self.n_data and self.n_data != len(labels):
            raise ValueError(f"CRD was built with n_data={self.n_data} but the training split holds {len(labels)} "
                             "samples")
        self.allocate(len(labels), labels, generator=torch.Generator().manual_seed(cfg.seed))

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """Negative sample indices: ``(B, nce_k)`` per anchor, or ``(nce_k,)`` with ``shared_negatives``."""
        n, k, device = self.n_data, self.nce_k, self.memory_s.device
        if self.shared_negatives:
            return torch.randperm(n, device=device)[:k] if k <= n else torch.randint(n, (k,), device=device)
        if self.negatives == "uniform":
            return torch.randint(n, (len(index), k), device=device)
        allowed = (self.labels.unsqueeze(0) != self.labels[index].unsqueeze(1)).float()  # (B, n)
        if self._rows_without_replacement is not None:
            return torch.multinomial(allowed, k, replacement=not self._rows_without_replacement)
        enough = allowed.sum(1) >= k  # class sizes straddle nce_k: decide per anchor, as the reference loader
        out = torch.empty(len(index), k, dtype=torch.long, device=device)
        if enough.any():
            out[enough] = torch.multinomial(allowed[enough], k, replacement=False)
        if not enough.all():
            out[~enough] = torch.multinomial(allowed[~enough], k, replacement=True)
        return out

    def _scores(self, anchor: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, neg: torch.Tensor
                ) -> torch.Tensor:
        """``exp(row . anchor / nce_t)`` for the positive row (column 0) and the negative rows: ``(B, 1 + K)``."""
        pos = (bank[index] * anchor).sum(1, keepdim=True)
        if neg.dim() == 1:
            negs = anchor @ bank[neg].T
        else:
            negs = torch.bmm(bank[neg], anchor.unsqueeze(2)).squeeze(2)
        return torch.exp(torch.cat([pos, negs], 1) / self.nce_t)

    def contrast_loss(self, s_vec: torch.Tensor, t_vec: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Both NCE terms for pooled student and teacher vectors of the samples ``index``; then the banks'
        rows at ``index`` move towards the new embeddings (and ``Z`` is fixed on the first call)."""
        with torch.autocast(device_type=s_vec.device.type, enabled=False):
            v_s = F.normalize(self.adapters[0](s_vec.float()), dim=1)
            v_t = F.normalize(self.adapters[1](t_vec.float()), dim=1)
            neg = self.draw_negatives(index)
            e_s = self._scores(v_s, self.memory_t, index, neg)  # student anchor, teacher bank
            e_t = self._scores(v_t, self.memory_s, index, neg)  # teacher anchor, student bank
            with torch.no_grad():  # Z = n_data * mean score, set once (no host sync: a masked copy)
                first = torch.stack([e_s.mean(), e_t.mean()]) * self.n_data
                self.nce_z.copy_(torch.where(self.nce_z < 0, first, self.nce_z))
                z = self.nce_z.clone()  # a constant of this step's graph (the buffer may change later)
            loss = nce_loss(e_s / z[0], self.n_data) + nce_loss(e_t / z[1], self.n_data)
            with torch.no_grad():
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    moved = bank[index] * self.nce_m + v.detach() * (1 - self.nce_m)
                    bank.index_copy_(0, index, F.normalize(moved, dim=1))
        return loss

    def _index(self, ctx: StepContext | None, batch: int) -> torch.Tensor:
        if ctx is None or ctx.index is None:
            raise ValueError("CRD needs the batch's sample indices (ctx.index) to address its memory banks: train it "
                             "with kd_utils.experiments.distill / train_eval.fit, or pass StepContext(index=...)")
        if not self.n_data:
            raise ValueError("CRD's memory banks are not allocated: pass n_data= (and labels=) to the constructor, "
                             "or call prepare(data, cfg) (distill does)")
        index = ctx.index
        if index.shape != (batch,) or index.is_floating_point():
            raise ValueError(f"ctx.index must hold one integer index per sample, shape ({batch},), got "
                             f"{index.dtype} of shape {tuple(index.shape)}")
        if index.device.type == "cpu" and (index.min() < 0 or index.max() >= self.n_data):  # no host sync on GPUs
            raise ValueError(f"ctx.index must lie in [0, {self.n_data}) (the training-set size), got values in "
                             f"[{int(index.min())}, {int(index.max())}]")
        return index.to(self.memory_s.device).long()

    def forward(self, x, y, ctx=None):
        index = self._index(ctx, x.shape[0])
        logits, (s_feat,) = self.student_features(x)
        t_logits, (t_vec,) = self.teacher_features(x, ctx)
        return logits, self._losses(logits, y, t_logits, lambda: self.contrast_loss(pooled(s_feat), t_vec, index), ctx)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "feat_dim": self.feat_dim, "nce_k": self.nce_k, "nce_t": self.nce_t,
                "nce_m": self.nce_m, "negatives": self.negatives, "shared_negatives": self.shared_negatives,
                "n_data": self.n_data}


DISTILLERS.update({"crd": CRD})
