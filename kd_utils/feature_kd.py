"""Feature distillation: intermediate features through forward hooks, and the methods that match them.

Features are read by dotted module path (as torchdistill does).

    with FeatureHooks(model, ["stage3", "stage4"]) as feats:
        logits = model(x)
        f3 = feats.pop()["stage3"]

Models need no special ``forward``; unknown layer names are rejected with the list of valid ones.
``clone=True`` stores a copy of each output, for pre-ReLU features (:func:`pre_relu_layers`): a
BatchNorm's output is overwritten by the in-place ReLU after it.

Methods (distillers returning their loss terms by name, like :mod:`kd_utils.train_kd`): FitNets hints
(single stage, and the two-stage recipe), attention transfer, cosine matching of pooled features, and
PKT (probabilistic knowledge transfer) as the relational method; each can be mixed with Hinton KD
(``alpha``). ``linear_cka`` compares representations layer by layer.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CIFAR_KD
from .train_kd import DISTILLERS, Distiller, HintonKD, StepContext, kd_loss


_BN = nn.modules.batchnorm._BatchNorm
# RepDistiller's and mdistiller's ``feat[1:-1]``, the outputs of the blocks after the first: our VGG's stages 2-5
REFERENCE_LAYERS = ("stage2", "stage3", "stage4", "stage5")


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable module path of ``model`` (children before their parents' siblings)."""
    return [name for name, _ in model.named_modules() if name]


def _no_such_layer(model: nn.Module, what: str) -> ValueError:
    known = layer_names(model)
    shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
    return ValueError(f"{type(model).__name__} has no {what}; known layers: {shown}")


def pre_relu_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """For each named layer, the dotted name of the BatchNorm whose output is its pre-ReLU feature:
    the layer itself when it is a BatchNorm, else the last BatchNorm inside it (``"stage3"`` of a
    VGG13 -> ``"stage3.4"``). Read them with ``capture(..., clone=True)``."""
    modules = dict(model.named_modules())
    out = []
    for name in layers:
        if not name or name not in modules:
            raise _no_such_layer(model, f"layer {name!r}")
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


class FeatureHooks:
    """Collect the outputs of named modules on every forward pass; ``pop()`` hands them over and
    empties the store. Hooks are removed by ``close()`` or on leaving a ``with`` block.

    ``clone=True`` stores ``output.clone()`` (still linked to the graph): needed for a BatchNorm's
    output, which the in-place ReLU after it overwrites (pre-ReLU features, :func:`pre_relu_layers`)."""

    def __init__(self, model: nn.Module, names: Iterable[str], stop_when_complete: bool = False,
                 clone: bool = False):
        names = list(names)
        if not names:
            raise ValueError("give at least one layer name")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            raise _no_such_layer(model, f"layer(s) {missing}")
        self.names = names
        self.stop_when_complete = stop_when_complete  # raise _Enough once all are captured (no-grad passes)
        self.clone = bool(clone)
        self._store: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self._store[name] = output.clone() if self.clone else output
            if self.stop_when_complete and len(self._store) == len(self.names):
                raise _Enough
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The features of the last forward pass, by name (the store is emptied)."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise RuntimeError(f"no features captured for {missing}: run a forward pass first")
        out, self._store = self._store, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._store = [], {}

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Enough(Exception):
    """Raised by a hook once every requested feature is captured, to skip the rest of a no-grad pass."""


def capture(model: nn.Module, x: torch.Tensor, names: Sequence[str], full: bool = True, clone: bool = False
            ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run ``model(x)`` and return ``(output, {name: feature})``. With ``full=False`` the pass stops
    as soon as the last requested layer has run (output ``None``): a teacher whose logits are not
    needed costs only the layers up to the deepest hint. ``clone=True``: each feature is a copy taken
    in the hook (:class:`FeatureHooks`), as pre-ReLU BatchNorm outputs need."""
    with FeatureHooks(model, names, stop_when_complete=not full, clone=clone) as hooks:
        try:
            out = model(x)
        except _Enough:
            out = None
        return out, hooks.pop()


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape[1:])


def pooled(f: torch.Tensor) -> torch.Tensor:
    """Global average over every axis after the channels: (N, C, ...) -> (N, C)."""
    return f.float().mean(dim=tuple(range(2, f.dim()))) if f.dim() > 2 else f.float()


def sum_terms(terms: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """``t_1 + t_2 + ...`` in order (None for no terms), the first term not added to a 0."""
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def check_same_size(method: str, fs: torch.Tensor, ft: torch.Tensor) -> None:
    """A student and a teacher feature map of the same samples and spatial size (channels may differ)."""
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ValueError(f"{method} needs equal spatial sizes: student feature {tuple(fs.shape)}, "
                         f"teacher feature {tuple(ft.shape)}")


# ------------------------------------------------------------------ losses ----
def hint_loss(student_regressed: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): mean squared error between the regressed student feature and the
    teacher's hint, averaged over every element."""
    if student_regressed.shape != teacher_hint.shape:
        raise ValueError(f"regressed student feature {tuple(student_regressed.shape)} does not match the teacher "
                         f"hint {tuple(teacher_hint.shape)}")
    return F.mse_loss(student_regressed.float(), teacher_hint.float())


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (N, C, H, W) feature (Zagoruyko & Komodakis 2017): the channel mean of
    ``|f|^p``, flattened to (N, H*W) and L2-normalised per sample."""
    if f.dim() != 4:
        raise ValueError(f"attention maps need (N, C, H, W) features, got shape {tuple(f.shape)}")
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                   p: float = 2.0) -> torch.Tensor:
    """Sum over layer pairs of the mean squared difference of normalised attention maps. Channel counts
    may differ; spatial sizes must match."""
    def term(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        check_same_size("attention transfer", fs, ft)
        return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
    return sum_terms(term(fs, ft) for fs, ft in zip(student_feats, teacher_feats, strict=True))


def cosine_loss(student_vec: torch.Tensor, teacher_vec: torch.Tensor) -> torch.Tensor:
    """``1 - cos(s, t)`` averaged over the batch, for (N, D) vectors of equal size."""
    if student_vec.shape != teacher_vec.shape:
        raise ValueError(f"student vectors {tuple(student_vec.shape)} and teacher vectors {tuple(teacher_vec.shape)} "
                         "differ in shape (project the student first)")
    return (1 - F.cosine_similarity(student_vec.float(), teacher_vec.float(), dim=1)).mean()


def pkt_loss(student_vec: torch.Tensor, teacher_vec: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018). Within the batch, each sample's
    conditional distribution over the batch, ``P(j | i) ∝ (1 + cos(v_i, v_j)) / 2``, is computed for
    teacher and student; the loss is the mean over all (i, j) of ``p_t log(p_t / p_s)`` (the mean
    per-sample KL divided by the batch size). The dimensions of the two sides may differ: no
    projection is needed, only the geometry of the batch is matched."""
    if student_vec.dim() != 2 or teacher_vec.dim() != 2 or student_vec.shape[0] != teacher_vec.shape[0]:
        raise ValueError(f"PKT needs (N, D) vectors for the same N samples, got student {tuple(student_vec.shape)} "
                         f"and teacher {tuple(teacher_vec.shape)}")

    def conditional(v: torch.Tensor) -> torch.Tensor:
        v = F.normalize(v.float(), dim=1)
        k = (v @ v.T + 1) / 2
        return k / k.sum(1, keepdim=True)

    p_s, p_t = conditional(student_vec), conditional(teacher_vec)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) between two representations of the
    same N samples, (N, ...) each, flattened per sample: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``,
    computed through the N x N Gram matrices (cheap when features are wider than N)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides: {x.shape[0]} vs {y.shape[0]}")
    kx, ky = _centred_gram(x), _centred_gram(y)
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


def _centred_gram(f: torch.Tensor) -> torch.Tensor:
    f = f.reshape(len(f), -1).double()
    f = f - f.mean(0)
    return f @ f.T


# -------------------------------------------------------------- distillers ----
class FeatureDistiller(Distiller):
    """``(1 - alpha) * CE + alpha * KD(T) + beta * feature_loss``: a feature method alone (alpha = 0,
    CE weight 1, as RepDistiller trains them) or combined with Hinton KD (alpha = 0.9 as in Task 1),
    all weights in one place (:meth:`_losses`). ``ce_weight`` replaces the convex ``1 - alpha``: the
    references add KD to a feature method as ``CE + KD + beta * feature`` (RepDistiller's ``-r 1 -a 1``),
    i.e. ``ce_weight=1, alpha=1``. Subclasses name the layers, build adapters from the
    probed feature shapes, and define ``feature_loss``; where they read features differently they
    override :meth:`student_features` / :meth:`teacher_features` (``clone_features``: pre-ReLU maps),
    and a scheduled feature weight overrides :meth:`loss_weight`. Adapters (regressors, projections)
    are parameters of the distiller, trained with the student and not part of it (``extra_parameters``).

    ``cached_layer``: when a method reads only the teacher's logits and one globally pooled layer,
    that layer's name; :func:`kd_utils.experiments.distill` then serves both from the plan cache as
    ``ctx.teacher["logits"]`` and ``ctx.teacher["embedding"]`` instead of running the teacher.
    """
    term = "loss_feat"
    family = "feature"
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    cached_layer: str | None = None
    clone_features = False  # capture copies of the outputs (BatchNorm outputs an in-place ReLU overwrites)

    def __init__(self, student: nn.Module, teacher: nn.Module, *, beta: float, alpha: float = 0.0,
                 temperature: float = CIFAR_KD.temperature, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, input_shape: Sequence[int] = (3, 32, 32),
                 ce_weight: float | None = None):
        if teacher is None:
            raise ValueError(f"{type(self).__name__} needs the teacher network (its layers define the targets)")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta (feature loss weight) must be a finite number >= 0, got {beta}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if ce_weight is not None and not (isinstance(ce_weight, (int, float)) and math.isfinite(ce_weight)
                                          and ce_weight >= 0):
            raise ValueError(f"ce_weight must be a finite number >= 0 or None (None: 1 - alpha), got {ce_weight!r}")
        super().__init__(student, teacher)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.ce_weight = 1.0 - self.alpha if ce_weight is None else float(ce_weight)
        self.s_layers = tuple(student_layers or self.student_layers)
        self.t_layers = tuple(teacher_layers or self.teacher_layers)
        if len(self.s_layers) != len(self.t_layers) or not self.s_layers:
            raise ValueError(f"give as many student layers as teacher layers (at least one): {list(self.s_layers)} "
                             f"vs {list(self.t_layers)}")
        s_shapes, t_shapes = probe_shapes(student, self.s_layers, input_shape), probe_shapes(teacher, self.t_layers, input_shape)
        self.adapters = self.make_adapters(s_shapes, t_shapes)

    # -- to override
    def make_adapters(self, s_shapes: list[tuple[int, ...]], t_shapes: list[tuple[int, ...]]) -> nn.ModuleList:
        return nn.ModuleList()

    def feature_loss(self, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, ctx: StepContext | None) -> float:
        """The feature term's weight this step: ``beta`` (a method with a schedule overrides it)."""
        return self.beta

    # -- shape checks for make_adapters
    def check_maps(self, s_shapes, t_shapes, method: str, same_size: bool = True, need: str | None = None) -> None:
        """Every layer pair must be (C, H, W) maps, with equal H and W unless ``same_size=False``; else a
        ValueError ``"<method>: student layer ... has shape ... and teacher layer ... has shape ...; <need>"``."""
        if need is None:
            need = "both must be (C, H, W) with equal H and W" if same_size else "both must be (C, H, W) maps"
        for n_s, n_t, s, t in zip(self.s_layers, self.t_layers, s_shapes, t_shapes):
            if len(s) != 3 or len(t) != 3 or (same_size and s[1:] != t[1:]):
                raise ValueError(f"{method}: student layer {n_s!r} has shape {s} and teacher layer {n_t!r} has shape "
                                 f"{t}; {need}")

    def unmatched_pairs(self, s_shapes, t_shapes, dim: int) -> list[str]:
        """The layer pairs that are not both (C, H, W) maps of equal size along ``dim`` (0: channels), as
        ``"'student layer' shape vs 'teacher layer' shape"``."""
        pairs = zip(self.s_layers, self.t_layers, s_shapes, t_shapes)
        return [f"{n_s!r} {s} vs {n_t!r} {t}" for n_s, n_t, s, t in pairs
                if len(s) != 3 or len(t) != 3 or s[dim] != t[dim]]

    # --
    @property
    def extra_parameters(self) -> int:
        """Parameters the method trains besides the student (dropped from the deployed student)."""
        return sum(p.numel() for p in self.adapters.parameters())

    def student_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The student's logits and its features at ``s_layers``."""
        logits, feats = capture(self.student, x, self.s_layers, clone=self.clone_features)
        return logits, [feats[n] for n in self.s_layers]

    def _teacher_capture(self, x: torch.Tensor, ctx: StepContext | None, names: Sequence[str]
                         ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """A no-grad teacher pass for the ``names`` features; the logits from the context's cache when it
        has them, from this pass when KD needs them (else the pass stops after the deepest layer: None)."""
        cached = {} if ctx is None else ctx.teacher
        need_logits = self.alpha > 0 and "logits" not in cached
        with torch.no_grad():
            out, feats = capture(self.teacher, x, names, full=need_logits, clone=self.clone_features)
        return (cached["logits"].float() if "logits" in cached else out), feats

    def teacher_features(self, x: torch.Tensor, ctx: StepContext | None
                         ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        cached = {} if ctx is None else ctx.teacher
        if self.cached_layer is not None and "logits" in cached and "embedding" in cached:
            return cached["logits"].float(), [cached["embedding"].float()]
        t_logits, feats = self._teacher_capture(x, ctx, self.t_layers)
        return t_logits, [feats[n] for n in self.t_layers]

    def _losses(self, logits: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
                feature_loss: Callable[[], torch.Tensor], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        """The weighted terms: ``loss_ce`` ``ce_weight * CE`` (weight > 0; default ``1 - alpha``), ``loss_kd`` ``alpha * KD(T)``
        (alpha > 0), and ``term`` ``loss_weight(ctx) * feature_loss()`` (beta > 0; ``feature_loss`` is only
        called then, so a term with side effects, such as CRD's bank update, has none at beta 0)."""
        losses = {}
        if self.ce_weight > 0:
            losses["loss_ce"] = self.ce_weight * F.cross_entropy(logits.float(), y)
        if self.alpha > 0:
            losses["loss_kd"] = self.alpha * kd_loss(logits, t_logits, self.temperature)
        if self.beta > 0:
            losses[self.term] = self.loss_weight(ctx) * feature_loss()
        return losses

    def forward(self, x, y, ctx=None):
        logits, s_feats = self.student_features(x)
        t_logits, t_feats = self.teacher_features(x, ctx)
        return logits, self._losses(logits, y, t_logits, lambda: self.feature_loss(s_feats, t_feats), ctx)

    def describe(self) -> dict[str, Any]:
        return {"method": type(self).__name__, "alpha": self.alpha, "beta": self.beta, "temperature": self.temperature,
                "ce_weight": self.ce_weight, "student_layers": list(self.s_layers), "teacher_layers": list(self.t_layers),
                "extra_parameters": self.extra_parameters}


@torch.no_grad()
def probe_shapes(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-sample output shapes of the named layers, from one eval-mode pass on zeros (BatchNorm
    statistics are untouched)."""
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(2, *input_shape, device=p.device if p is not None else "cpu")
    try:
        model.eval()
        _, feats = capture(model, x, names, full=False)
    finally:
        model.train(was_training)
    return [_shape(feats[n]) for n in names]


REGRESSORS = {"conv3x3": 3, "conv1x1": 1}  # FitNets regressor -> kernel size


class FitNets(FeatureDistiller):
    """Hints (Romero et al. 2015), single stage: a regressor (conv + BatchNorm + ReLU, as the teacher's
    hint is a post-ReLU map) maps the student's guided layer onto the teacher's hint layer; loss
    ``beta * MSE``. Default layers: the middle stage of both VGGs (``stage3``, RepDistiller's
    ``--hint_layer 2``). ``regressor``: ``"conv3x3"`` (ours, the default) or ``"conv1x1"``, the kernel
    RepDistiller's ``ConvReg`` uses when the spatial sizes agree (9x fewer regressor parameters)."""
    term = "loss_hint"
    student_layers = ("stage3",)
    teacher_layers = ("stage3",)

    def __init__(self, student, teacher, *, beta: float = 100.0, regressor: str = "conv3x3", **kw):
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {sorted(REGRESSORS)}, got {regressor!r}")
        self.regressor = regressor
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        (s,), (t,) = s_shapes, t_shapes
        self.check_maps(s_shapes, t_shapes, "FitNets hint",
                        need="the conv regressor needs (C, H, W) maps with equal H and W")
        k = REGRESSORS[self.regressor]
        return nn.ModuleList([nn.Sequential(nn.Conv2d(s[0], t[0], k, padding=k // 2, bias=False),
                                            nn.BatchNorm2d(t[0]), nn.ReLU())])

    def describe(self):
        return {**super().describe(), **({"regressor": self.regressor} if self.regressor != "conv3x3" else {})}

    def feature_loss(self, s_feats, t_feats):
        return hint_loss(self.adapters[0](s_feats[0]), t_feats[0])


class FeatureStage(FeatureDistiller):
    """A pre-training stage: ``beta * feature_loss`` alone (no labels, no KD: alpha 0; the teacher pass
    stops after its deepest layer). Only the student's layers up to the deepest matched one, and the
    adapters, receive gradients; the classifier gets none. Run by :class:`InitStageMethod`."""

    def __init__(self, student, teacher, **kw):
        super().__init__(student, teacher, alpha=0.0, **kw)

    def forward(self, x, y, ctx=None):
        logits, s_feats = self.student_features(x)
        _, t_feats = self.teacher_features(x, None)
        return logits, {self.term: self.beta * self.feature_loss(s_feats, t_feats)}


class HintStage(FeatureStage, FitNets):
    """Stage 1 of the two-stage FitNets recipe: the hint loss alone (no labels, no KD); only the
    student's layers up to the guided layer, and the regressor, receive gradients."""

    def __init__(self, student, teacher, *, beta: float = 1.0, **kw):
        super().__init__(student, teacher, beta=beta, **kw)


class AttentionTransfer(FeatureDistiller):
    """Attention transfer (Zagoruyko & Komodakis 2017): ``beta`` (1000, as RepDistiller) times the sum
    over stages 1-4 of the mean squared difference of normalised spatial attention maps. No extra
    parameters; channel counts may differ, spatial sizes must match.

    RepDistiller and mdistiller match the outputs of the blocks after the first (``feat[1:-1]``: for
    our VGG stages 2-5, :attr:`REFERENCE_LAYERS`); pass ``student_layers=AttentionTransfer.REFERENCE_LAYERS,
    teacher_layers=AttentionTransfer.REFERENCE_LAYERS`` for their setting."""
    term = "loss_at"
    student_layers = ("stage1", "stage2", "stage3", "stage4")
    teacher_layers = ("stage1", "stage2", "stage3", "stage4")
    REFERENCE_LAYERS = REFERENCE_LAYERS

    def __init__(self, student, teacher, *, beta: float = 1000.0, p: float = 2.0, **kw):
        self.p = float(p)
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        self.check_maps(s_shapes, t_shapes, "attention transfer")
        return nn.ModuleList()

    def feature_loss(self, s_feats, t_feats):
        return attention_loss(s_feats, t_feats, self.p)


class _PooledDistiller(FeatureDistiller):
    """Methods on the globally pooled output of the last stage (the penultimate representation):
    the teacher side is one vector per sample, so it can come from the plan cache."""
    student_layers = ("stage5",)
    teacher_layers = ("stage5",)
    cached_layer = "stage5"

    def __init__(self, student, teacher, **kw):
        super().__init__(student, teacher, **kw)
        self.cached_layer = self.t_layers[0]

    def teacher_features(self, x, extras):
        t_logits, (t,) = super().teacher_features(x, extras)
        return t_logits, [pooled(t)]


class CosineMatching(_PooledDistiller):
    """Cosine matching of pooled penultimate features: ``beta * (1 - cos(W s, t))`` with a learned
    linear projection ``W`` when the widths differ (an identity-free layer otherwise)."""
    term = "loss_cos"

    def __init__(self, student, teacher, *, beta: float = 1.0, **kw):
        super().__init__(student, teacher, beta=beta, **kw)

    def make_adapters(self, s_shapes, t_shapes):
        (s,), (t,) = s_shapes, t_shapes
        return nn.ModuleList([nn.Linear(s[0], t[0], bias=False) if s[0] != t[0] else nn.Identity()])

    def feature_loss(self, s_feats, t_feats):
        return cosine_loss(self.adapters[0](pooled(s_feats[0])), t_feats[0])


class PKT(_PooledDistiller):
    """Probabilistic knowledge transfer on pooled penultimate features (weight 30000, as RepDistiller):
    relational, so no projection head and no extra parameters.

    The loss is a mean over the batch's N x N pairs, i.e. the mean per-sample KL divided by N, so a
    given ``beta`` weighs less at larger batches: 30000 at batch 256 is 4x weaker than RepDistiller's
    30000 at batch 64. ``reference_batch=64`` multiplies the loss by ``N / 64``, which gives the
    reference's strength at any batch size (default None: the loss as it is)."""
    term = "loss_pkt"

    def __init__(self, student, teacher, *, beta: float = 30000.0, reference_batch: int | None = None, **kw):
        if reference_batch is not None and not (isinstance(reference_batch, int) and reference_batch >= 1):
            raise ValueError(f"reference_batch must be None or an int >= 1, got {reference_batch!r}")
        self.reference_batch = reference_batch
        super().__init__(student, teacher, beta=beta, **kw)

    def feature_loss(self, s_feats, t_feats):
        loss = pkt_loss(pooled(s_feats[0]), t_feats[0])
        return loss if self.reference_batch is None else loss * (len(t_feats[0]) / self.reference_batch)

    def describe(self):
        return {**super().describe(), **({"reference_batch": self.reference_batch} if self.reference_batch else {})}


INIT_SCHEDULES = ("constant", "cosine", "onecycle", "step")


class InitStageMethod(HintonKD):
    """A method in two stages (as RepDistiller's ``helper/pretrain.py`` and the FitNets recipe): a
    pre-training stage distiller, trained by :meth:`prepare` (which :func:`kd_utils.experiments.distill`
    calls before training) through ``kd_utils.train_eval.fit`` for ``init_epochs`` (0: no stage) with the
    run's settings and ``init_schedule`` (None: the run's schedule), then dropped; the main stage is
    ``(1 - alpha) * CE + alpha * KD`` (alpha 0: cross-entropy alone, and the teacher is never read).

    ``stage``: the stage distiller built at construction (its layers validated, its extra parameters
    counted), held outside the module tree so its adapters never join the main stage; or None, and
    :meth:`make_stage` builds it when :meth:`prepare` runs. ``extra_parameters``: the stage's (trained in
    stage 1, discarded); ``stage1``: the stage's FitResult once run."""
    stage_name = "init stage"

    def __init__(self, student, teacher, stage: Distiller | None = None, *, init_epochs: int,
                 init_schedule: str | None = None, temperature: float = CIFAR_KD.temperature,
                 alpha: float = CIFAR_KD.alpha):
        if isinstance(init_epochs, bool) or not isinstance(init_epochs, int) or init_epochs < 0:
            raise ValueError(f"init_epochs must be an int >= 0 (0: no pre-training stage), got {init_epochs!r}")
        if init_schedule is not None and init_schedule not in INIT_SCHEDULES:
            raise ValueError(f"init_schedule must be None (the run's schedule) or one of {', '.join(INIT_SCHEDULES)}, "
                             f"got {init_schedule!r}")
        super().__init__(student, teacher, temperature=temperature, alpha=alpha)
        self.init_epochs, self.init_schedule = init_epochs, init_schedule
        self._stage = [] if stage is None else [stage]  # a list: not a submodule
        self.extra_parameters = 0 if stage is None else stage.extra_parameters
        self.stage1 = None

    @property
    def logits_only(self) -> bool:
        """With CE alone the teacher is never read: nothing to cache."""
        return self.alpha > 0

    def make_stage(self) -> Distiller:
        """The stage distiller, built anew by each :meth:`prepare`, for methods that give none at construction
        (a stage given there runs once: a second :meth:`prepare` raises)."""
        raise RuntimeError(f"{type(self).__name__}: the {self.stage_name} has already run")

    def prepare(self, data, cfg, progress: bool = True) -> None:
        if self.init_epochs == 0:
            return
        from .train_eval import fit
        stage = self._stage.pop() if self._stage else self.make_stage()
        self.extra_parameters = stage.extra_parameters
        over = {"epochs": self.init_epochs}
        if self.init_schedule is not None:
            over["schedule"] = self.init_schedule
        self.stage1 = fit(self.student, data, cfg.replace(**over), method=stage, progress=progress,
                          desc=self.stage_name, restore_best=False)
        self.teacher.eval()

    def describe_stage(self) -> dict[str, Any]:
        """The stage's settings in :meth:`describe` (before ``extra_parameters``)."""
        return {"init_epochs": self.init_epochs, "init_schedule": self.init_schedule}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": type(self).__name__, **self.describe_stage(),
                "extra_parameters": self.extra_parameters}


class FitNetsTwoStage(InitStageMethod):
    """The two-stage FitNets recipe: ``hint_epochs`` of hint training (:class:`HintStage`, the run's
    schedule over those epochs) initialise the student's lower layers, then ordinary Hinton KD trains
    the whole student. :func:`kd_utils.experiments.distill` calls :meth:`prepare` before stage 2; each
    call builds a fresh hint stage (``extra_parameters``: its regressor's, 0 until then)."""
    logits_only = True
    family = "feature"
    stage_name = "hint stage"

    def __init__(self, student, teacher, *, hint_epochs: int = 5, hint_beta: float = 1.0,
                 temperature: float = CIFAR_KD.temperature, alpha: float = CIFAR_KD.alpha, **hint_kw):
        if isinstance(hint_epochs, bool) or not (isinstance(hint_epochs, int) and hint_epochs >= 1):
            raise ValueError(f"hint_epochs must be an int >= 1, got {hint_epochs!r}")
        super().__init__(student, teacher, init_epochs=hint_epochs, temperature=temperature, alpha=alpha)
        self.hint_beta, self.hint_kw = float(hint_beta), hint_kw

    @property
    def hint_epochs(self) -> int:
        return self.init_epochs

    def make_stage(self) -> HintStage:
        return HintStage(self.student, self.teacher, beta=self.hint_beta, **self.hint_kw)

    def describe_stage(self):
        return {"hint_epochs": self.hint_epochs, "hint_beta": self.hint_beta}


FEATURE_METHODS = {"fitnets": FitNets, "fitnets_two_stage": FitNetsTwoStage, "at": AttentionTransfer,
                   "cosine": CosineMatching, "pkt": PKT}
DISTILLERS.update(FEATURE_METHODS)


# --------------------------------------------------------------- analysis ----
@torch.no_grad()
def collect_features(model: nn.Module, x: torch.Tensor, names: Sequence[str], batch_size: int = 500,
                     pool: bool = False) -> dict[str, torch.Tensor]:
    """The named layers' outputs for normalised inputs ``x`` (eval mode, float32 on the CPU), batched;
    ``pool=True`` averages each over its spatial positions."""
    was_training = model.training
    p = next(model.parameters())
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            _, feats = capture(model, x[i:i + batch_size].to(p.device, p.dtype), names)
            for n in names:
                f = feats[n].float()
                out[n].append((pooled(f) if pool else f).cpu())
    finally:
        model.train(was_training)
    return {n: torch.cat(v) for n, v in out.items()}


def centred_grams(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per layer, the centred N x N Gram matrix of the flattened features on inputs ``x`` (float64):
    computed once, it serves every CKA comparison with that layer."""
    feats = collect_features(model, x, layers)
    return {n: _centred_gram(feats.pop(n)) for n in layers}


def cka_matrix(grams_a: dict[str, torch.Tensor], grams_b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(layers of a, layers of b) linear CKA from :func:`centred_grams` of two models on the same inputs."""
    return torch.tensor([[float((ga * gb).sum() / (ga.norm() * gb.norm())) for gb in grams_b.values()]
                         for ga in grams_a.values()])
