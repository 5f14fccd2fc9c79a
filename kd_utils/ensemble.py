"""Several students at once: ensembles, students trained together in one loop, deep mutual learning,
and multi-teacher distillation.

- :class:`Ensemble` evaluates any list of models as one model (mean of logits, or mean of
  probabilities returned as log-probabilities so ``argmax``/``softmax`` work as for logits). As a
  teacher it is multi-teacher distillation: ``distill(student, Ensemble(teachers), ...)``.
- :class:`Cohort` holds several students; :class:`CohortDistiller` trains them in one loop on
  shared batches (and shared teacher outputs, cached or online). Each student's loss is
  ``(1 - alpha) * CE + alpha * KD(teacher) + beta * mean_j KL(p_j || p_i)`` over its peers ``j``
  (deep mutual learning, Zhang et al. 2018, with the peers' predictions detached: the simultaneous
  update most implementations use; ``peers="sum"`` sums the peers' terms as the authors' code does). With ``beta = 0`` and plain SGD the students do not interact,
  so training them together gives the same weights as training them one by one on the same batches.
- ``plans="own"`` (:class:`PeerPlans`): each peer trains on its own independently seeded batch order and
  augmentation instead of the run's shared plan; peer 0 keeps the run's plan. The mutual term then
  compares the peers on each peer's own batch (the other peers evaluated on it without gradients and
  without touching their BatchNorm statistics), so every KL is still between predictions for one image.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CIFAR_KD
from .models import DEFAULT_COHORT as DEFAULT_MEMBERS, build_cohort  # noqa: F401 (re-exported)
from .models.ensembles import COMBINE, Cohort, Ensemble, ensemble_logits  # noqa: F401 (re-exported)
from .train_kd import DISTILLERS, Distiller, kd_loss


PEER_REDUCTIONS = ("mean", "sum")
PLANS = ("shared", "own")


def mutual_loss(logits: torch.Tensor, temperature: float = 1.0, peers: str = "mean") -> torch.Tensor:
    """Deep mutual learning term summed over students: for each student i, the mean (``peers="mean"``,
    ours) or the sum (``peers="sum"``, the authors' TensorFlow code, ``train_models.py``) over peers j != i of
    ``T^2 * KL(p_j^T || p_i^T)`` with the peers detached; ``logits`` is (S, N, K), S >= 2. The two agree
    for two students; with S students the sum weighs the mutual term S - 1 times more."""
    if peers not in PEER_REDUCTIONS:
        raise ValueError(f"peers must be one of {PEER_REDUCTIONS}, got {peers!r}")
    s = logits.shape[0]
    if s < 2:
        raise ValueError("mutual learning needs at least two students")
    scale = 1.0 / (s - 1) if peers == "mean" else 1.0
    total = logits.new_zeros((), dtype=torch.float32)
    for i in range(s):
        for j in range(s):
            if i != j:
                total = total + kd_loss(logits[i], logits[j].detach(), temperature) * scale
    return total


# ------------------------------------------------------------ own plans ----
def peer_plan_seed(plan_seed: int, peer: int) -> int:
    """The plan seed of peer ``peer`` of a cohort trained on ``plans="own"``: the run's own ``plan_seed``
    for peer 0, else a seed derived by hashing (plan seed, peer), far from the small seeds runs use, so a
    peer's plan is never another run's (the loader's streams never overlap across seeds either)."""
    if isinstance(peer, bool) or not isinstance(peer, int) or peer < 0:
        raise ValueError(f"peer must be an int >= 0, got {peer!r}")
    if isinstance(plan_seed, bool) or not isinstance(plan_seed, int):
        raise ValueError(f"plan_seed must be an int, got {plan_seed!r}")
    if peer == 0:
        return plan_seed
    digest = hashlib.sha256(f"kd_utils/peer-plan/{plan_seed}/{peer}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2 ** 31 - 2 ** 20) + 2 ** 20


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@contextlib.contextmanager
def _kept_buffers(module: nn.Module) -> Iterator[None]:
    """Run ``module`` (in training mode) without changing its buffers: BatchNorm's running statistics and
    batch counter are put back afterwards."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(module.buffers(), saved):
                b.copy_(v)


class PeerPlans:
    """Each peer's own batches for a cohort trained with ``plans="own"``.

    Peer 0 trains on the batches the training loop draws (the run's plan, ``cfg.plan_seed``); peer
    ``k >= 1`` on the batches of its own :class:`~kd_utils.data.BatchLoader` over the same training split
    with the same batch size and augmentation, seeded :func:`peer_plan_seed` ``(cfg.plan_seed, k)``: its own
    sample order and its own crops and flips, exactly what a lone run with ``data_seed`` set to that seed
    would see. The loaders advance in step with the loop (the context's epoch and step), so a run resumed
    at an epoch boundary draws the same batches. :meth:`bind` hands over the data (a distiller's
    ``prepare``); the loaders are built on the first batch, on its device."""

    def __init__(self, n_peers: int):
        if isinstance(n_peers, bool) or not isinstance(n_peers, int) or n_peers < 1:
            raise ValueError(f"n_peers must be an int >= 1, got {n_peers!r}")
        self.n_peers = n_peers
        self._source: tuple | None = None
        self._loaders: list | None = None
        self._iters: list | None = None
        self._next: tuple[int, int] | None = None  # (epoch, position) the iterators yield next

    @property
    def bound(self) -> bool:
        return self._source is not None

    def bind(self, data, cfg) -> None:
        """Draw the peers' batches from ``data``'s training split with ``cfg``'s batch size, augmentation
        and plan seed (the run's own ones: the loop draws peer 0's with them)."""
        if not hasattr(data, "loader") or not hasattr(data, "y_train"):
            raise TypeError(f"own plans need a DataBundle (with .loader and .y_train), got {type(data).__name__}")
        self._source = (data, int(cfg.batch_size), cfg.augment, int(cfg.plan_seed))
        self._loaders = self._iters = self._next = None

    def seeds(self) -> list[int]:
        """The plan seed of every peer (peer 0's is the run's)."""
        if self._source is None:
            raise RuntimeError("PeerPlans.seeds: not bound to any data yet (bind(data, cfg))")
        return [peer_plan_seed(self._source[3], k) for k in range(self.n_peers)]

    def _build(self, device: torch.device) -> None:
        from . import distributed as D
        data, batch_size, augment, _ = self._source
        self._loaders = [data.loader("train", batch_size=batch_size, shuffle=True, augment=augment, seed=seed,
                                     device=device, rank=D.rank(), world_size=D.world_size())
                         for seed in self.seeds()[1:]]
        self._iters = self._next = None

    def batches(self, x: torch.Tensor, y: torch.Tensor, ctx) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(x, y), (x_1, y_1), ...]``: the loop's batch for peer 0, then each other peer's batch at the
        same place (epoch, step) of its own plan, in ``x``'s device and memory format."""
        if self._source is None:
            raise RuntimeError("plans='own' draws each peer's batches from the training data, which the distiller "
                               "receives in prepare(data, cfg): call it before training")
        if ctx is None:
            raise ValueError("plans='own' needs the step context (epoch and step) the training loop passes")
        if self._loaders is None or (self._loaders and self._loaders[0].device != x.device):
            self._build(x.device)
        if any(len(loader) != ctx.steps_per_epoch for loader in self._loaders):
            raise RuntimeError(f"the peers' plans have {len(self._loaders[0])} batches an epoch but the loop "
                               f"{ctx.steps_per_epoch}: prepare(data, cfg) was given other data or another batch size")
        pos = ctx.step - (ctx.epoch - 1) * ctx.steps_per_epoch
        if self._next != (ctx.epoch, pos):  # a new epoch (or a resumed run): replay each plan up to here
            for loader in self._loaders:
                loader.set_epoch(ctx.epoch - 1)
            self._iters = [iter(loader) for loader in self._loaders]
            for it in self._iters:
                for _ in range(pos):
                    next(it)
        out = [(x, y)]
        for it in self._iters:
            xb, yb = next(it)[:2]
            if xb.shape[0] != x.shape[0]:
                raise RuntimeError(f"a peer's batch holds {xb.shape[0]} images, the loop's {x.shape[0]}")
            out.append((xb.contiguous(memory_format=torch.channels_last) if _channels_last(x) else xb, yb))
        self._next = (ctx.epoch, pos + 1)
        return out


def peers_on_each_batch(students: Sequence[nn.Module], batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                        ) -> list[list[torch.Tensor | None]]:
    """``out[i][j]``: peer ``j``'s logits on peer ``i``'s batch (float32, no gradients) for ``j != i``, None on
    the diagonal. Each peer runs in training mode (batch statistics, as in a shared-plan step) with its
    buffers put back afterwards, so only its own batch moves its BatchNorm statistics. Call it before the
    step's forward passes with gradients: putting the buffers back is an in-place write, which autograd
    refuses on buffers a pending backward pass has saved."""
    out: list[list[torch.Tensor | None]] = []
    for i, (xi, _) in enumerate(batches):
        row: list[torch.Tensor | None] = []
        for j, student in enumerate(students):
            if j == i:
                row.append(None)
                continue
            with torch.no_grad(), _kept_buffers(student):
                row.append(student(xi).float())
        out.append(row)
    return out


class OwnPlansMixin:
    """``plans="shared"|"own"`` for a distiller that trains a :class:`Cohort` (a ``student`` with
    ``.students``): the check, the :class:`PeerPlans` it keeps and the ``prepare`` that binds them."""

    def _init_plans(self, plans: str) -> None:
        if plans not in PLANS:
            raise ValueError(f"plans must be one of {PLANS}, got {plans!r}")
        self.plans = plans
        self.peer_plans = PeerPlans(len(self.student.students)) if plans == "own" else None

    def prepare(self, data, cfg, progress: bool = True) -> None:
        """With ``plans="own"``: hand the training data and the run's config to the peers' plans (call before
        training; nothing is trained here). With shared plans: nothing to do."""
        if self.peer_plans is not None:
            self.peer_plans.bind(data, cfg)

    def own_step(self, x, y, ctx, views: bool = False):
        """``(batches, own, views)``: each peer's batch, its logits on it (with gradients) and, with ``views``,
        for each peer ``i`` every peer's logits on ``i``'s batch, detached, float32, (S, N, K) (row ``i`` is
        ``own[i]``; the others from :func:`peers_on_each_batch`, computed first)."""
        batches = self.peer_plans.batches(x, y, ctx)
        students = self.student.students
        cross = peers_on_each_batch(students, batches) if views else None
        own = [s(xb) for s, (xb, _) in zip(students, batches)]
        if cross is None:
            return batches, own, None
        stacked = [torch.stack([own[i].detach().float() if z is None else z for z in row]) for i, row in enumerate(cross)]
        return batches, own, stacked


class CohortDistiller(OwnPlansMixin, Distiller):
    """Train a :class:`Cohort` on shared batches: each student gets CE, optionally KD from the
    teacher (cached outputs or an online teacher, shared by all students) and optionally the mutual
    term. Loss terms are summed over students (so each student's gradient is its own loss's).

    ``plans="own"``: each student trains on its own plan (:class:`PeerPlans`; the data come through
    :meth:`prepare`), for teacher-free cohorts only (``alpha = 0``: cached teacher outputs follow the
    run's plan alone). Student ``i``'s mutual term compares it with its peers on its own batch; a step
    then costs ``S`` forward-backward passes plus ``S (S - 1)`` forward passes without gradients. The
    logits handed back to the loop (its training accuracy) are student 0's on the loop's batch."""

    def __init__(self, cohort: Cohort, teacher: nn.Module | None = None, *, temperature: float = CIFAR_KD.temperature,
                 alpha: float = 0.0, beta: float = 0.0, mutual_temperature: float = 1.0, peers: str = "mean",
                 plans: str = "shared"):
        if peers not in PEER_REDUCTIONS:
            raise ValueError(f"peers must be one of {PEER_REDUCTIONS}, got {peers!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if beta > 0 and len(cohort.students) < 2:
            raise ValueError("mutual learning (beta > 0) needs at least two students")
        if plans == "own" and alpha > 0:
            raise ValueError(f"plans='own' is for teacher-free cohorts (alpha = 0): the teacher's cached outputs "
                             f"follow the run's shared plan only; got alpha={alpha}")
        super().__init__(cohort, teacher)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.mutual_temperature, self.peers = float(mutual_temperature), peers
        self._init_plans(plans)

    logits_only = True  # the teacher's logits are all it reads
    family = "ensemble"

    def forward(self, x, y, ctx=None):
        if self.plans == "own":
            return self._forward_own(x, y, ctx)
        logits = self.student.all_logits(x)
        s = logits.shape[0]
        losses: dict[str, torch.Tensor] = {}
        if self.alpha < 1:
            losses["loss_ce"] = (1 - self.alpha) * sum(F.cross_entropy(logits[i].float(), y) for i in range(s))
        if self.alpha > 0:
            t = self.teacher_logits(x, ctx)
            losses["loss_kd"] = self.alpha * sum(kd_loss(logits[i], t, self.temperature) for i in range(s))
        if self.beta > 0:
            losses["loss_dml"] = self.beta * mutual_loss(logits.float(), self.mutual_temperature, self.peers)
        return logits.float().mean(0), losses

    def _forward_own(self, x, y, ctx):
        """Own plans: CE of each student on its own batch; the mutual term on each student's own batch."""
        batches, own, views = self.own_step(x, y, ctx, views=self.beta > 0)
        losses = {"loss_ce": (1 - self.alpha) * sum(F.cross_entropy(z.float(), yb) for z, (_, yb) in zip(own, batches))}
        if self.beta > 0:
            s = len(own)
            scale = 1.0 / (s - 1) if self.peers == "mean" else 1.0
            total = x.new_zeros((), dtype=torch.float32)
            for i in range(s):
                for j in range(s):
                    if i != j:
                        total = total + kd_loss(own[i], views[i][j], self.mutual_temperature) * scale
            losses["loss_dml"] = self.beta * total
        return own[0].float(), losses

    def describe(self) -> dict[str, Any]:
        return {"method": "CohortDistiller", "students": len(self.student.students), "temperature": self.temperature,
                "alpha": self.alpha, "beta": self.beta, "mutual_temperature": self.mutual_temperature,
                **({"peers": self.peers} if self.peers != "mean" else {}),
                **({"plans": self.plans} if self.plans != "shared" else {})}


DISTILLERS["cohort"] = CohortDistiller


def pairwise_disagreement(logits: Sequence[torch.Tensor]) -> float:
    """Mean over model pairs of the fraction of samples on which their top-1 predictions differ."""
    preds = [lg.argmax(1) for lg in logits]
    pairs = [(preds[i] != preds[j]).float().mean().item() for i in range(len(preds)) for j in range(i + 1, len(preds))]
    if not pairs:
        raise ValueError("need at least two models")
    return float(sum(pairs) / len(pairs))


def pairwise_kl(logits: Sequence[torch.Tensor]) -> float:
    """Mean over ordered model pairs (i, j), i != j, of KL(p_i || p_j) in nats (T = 1), averaged over samples."""
    from .metrics import kl_divergence
    pairs = [kl_divergence(logits[i], logits[j]) for i in range(len(logits)) for j in range(len(logits)) if i != j]
    if not pairs:
        raise ValueError("need at least two models")
    return float(sum(pairs) / len(pairs))


def ensemble_curve(logits: Sequence[torch.Tensor], labels: torch.Tensor, combine: str = "probs",
                   subsets: bool = False) -> list[float]:
    """Test accuracy of the ensemble of the first 1, 2, ..., k models; with ``subsets=True`` the
    mean accuracy over every subset of each size instead (independent of the members' order)."""
    from itertools import combinations
    acc = lambda idx: float((ensemble_logits([logits[i] for i in idx], combine).argmax(1) == labels).float().mean())
    n = len(logits)
    if not subsets:
        return [acc(range(k)) for k in range(1, n + 1)]
    out = []
    for k in range(1, n + 1):
        vals = [acc(c) for c in combinations(range(n), k)]
        out.append(sum(vals) / len(vals))
    return out


def disagreement_matrix(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """(M, M) fraction of samples on which models i and j differ in their top-1 prediction."""
    preds = torch.stack([lg.argmax(1) for lg in logits])
    return (preds[:, None, :] != preds[None, :, :]).float().mean(-1)
