"""FT: "Paraphrasing Complex Network: Network Compression via Factor Transfer" (Kim, Park & Kwak, NeurIPS 2018).

Two stages. First a *paraphraser* -- a convolutional autoencoder whose bottleneck has ``rate`` times
the teacher's channels -- learns to reconstruct the teacher's last feature map (MSE), unsupervised,
with the teacher and the student untouched. Then the frozen paraphraser's encoder turns the teacher's
feature into the *teacher factor*, a *translator* (a small conv encoder, trained with the student)
turns the student's feature into the *student factor*, and the student learns with
``CE + beta * || normalised student factor - normalised teacher factor ||_1`` (mean over elements).

Stage 1 runs through :func:`kd_utils.train_eval.fit` (in :meth:`FactorTransfer.prepare`, which
:func:`kd_utils.experiments.distill` calls before training) on :class:`ParaphraserStage`, whose
"student" is the paraphrased teacher (:class:`ParaphrasedTeacher`): the teacher with its hint
layer's output replaced by the paraphraser's reconstruction, so the stage's logged accuracies are
the teacher's accuracy on reconstructed features (how much the reconstruction keeps).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.feature_kd import FeatureDistiller
from kd_utils.train_kd import DISTILLERS, Distiller

FACTOR_NORMS = ("attention", "flat")


# ----------------------------------------------------------------- modules ----
def _factor_channels(channels: int, rate: float) -> int:
    k = int(channels * rate)  # as the reference: int(C_t * k)
    if k < 1:
        raise ValueError(f"rate {rate} leaves int({channels} * {rate}) = {k} factor channels; need at least 1 "
                         "(a larger rate or a wider teacher layer)")
    return k


def _conv_unit(conv: nn.Module, channels: int, bn: bool) -> list[nn.Module]:
    return [conv, *([nn.BatchNorm2d(channels)] if bn else []), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Convolutional autoencoder on a (C, H, W) teacher map (RepDistiller ``models/util.py``
    ``Paraphraser``): encoder 3x3 convs C -> C -> kC -> kC, decoder 3x3 transposed convs kC -> kC -> C -> C
    (stride 1, padding 1, with bias), each followed by LeakyReLU(0.1) (and BatchNorm with ``use_bn``;
    the reference's default is without). ``forward`` returns ``(factor, reconstruction)``."""

    def __init__(self, channels: int, rate: float = 0.5, use_bn: bool = False):
        super().__init__()
        c, k = channels, _factor_channels(channels, rate)
        self.channels, self.factor_channels = c, k
        self.encoder = nn.Sequential(*_conv_unit(nn.Conv2d(c, c, 3, 1, 1), c, use_bn),
                                     *_conv_unit(nn.Conv2d(c, k, 3, 1, 1), k, use_bn),
                                     *_conv_unit(nn.Conv2d(k, k, 3, 1, 1), k, use_bn))
        self.decoder = nn.Sequential(*_conv_unit(nn.ConvTranspose2d(k, k, 3, 1, 1), k, use_bn),
                                     *_conv_unit(nn.ConvTranspose2d(k, c, 3, 1, 1), c, use_bn),
                                     *_conv_unit(nn.ConvTranspose2d(c, c, 3, 1, 1), c, use_bn))

    def encode(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(f)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """The student side's encoder (RepDistiller ``Translator``): 3x3 convs C_s -> C_s -> kC_t -> kC_t,
    each with BatchNorm (the reference's default) and LeakyReLU(0.1)."""

    def __init__(self, in_channels: int, factor_channels: int, use_bn: bool = True):
        super().__init__()
        c, k = in_channels, factor_channels
        self.encoder = nn.Sequential(*_conv_unit(nn.Conv2d(c, c, 3, 1, 1), c, use_bn),
                                     *_conv_unit(nn.Conv2d(c, k, 3, 1, 1), k, use_bn),
                                     *_conv_unit(nn.Conv2d(k, k, 3, 1, 1), k, use_bn))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)


# ------------------------------------------------------------------- loss ----
def ft_factor(factor: torch.Tensor, p1: float = 2.0, mode: str = "attention") -> torch.Tensor:
    """The normalised factor, (N, D). ``"attention"`` (RepDistiller ``FactorTransfer.factor``): the
    channel mean of ``factor ** p1`` per position, flattened, unit L2 norm per sample (D = H*W).
    ``"flat"`` (the paper's Eq. 3): the whole factor flattened, unit L2 norm per sample (D = C*H*W)."""
    if factor.dim() != 4:
        raise ValueError(f"factors are (N, C, H, W) maps, got shape {tuple(factor.shape)}")
    f = factor.float()
    if mode == "attention":
        return F.normalize(f.pow(p1).mean(1).flatten(1), dim=1)
    if mode == "flat":
        return F.normalize(f.flatten(1), dim=1)
    raise ValueError(f"unknown factor_norm {mode!r}; allowed: {', '.join(FACTOR_NORMS)}")


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, p1: float = 2.0, p2: float = 1.0,
            mode: str = "attention") -> torch.Tensor:
    """``mean |phi(s) - phi(t)| ** p2`` over samples and entries of the normalised factors
    (:func:`ft_factor`); p2 = 1 is the paper's L1 (RepDistiller raises the signed difference to p2 for
    p2 != 1: the same for even p2). The map with the larger spatial size is first adaptively
    average-pooled to the other's (as RepDistiller)."""
    if factor_s.dim() != 4 or factor_t.dim() != 4 or factor_s.shape[0] != factor_t.shape[0]:
        raise ValueError(f"FT compares (N, C, H, W) factors of the same N samples, got student "
                         f"{tuple(factor_s.shape)} and teacher {tuple(factor_t.shape)}")
    if mode == "flat" and factor_s.shape[1] != factor_t.shape[1]:
        raise ValueError(f"factor_norm='flat' needs equal factor channels, got student {factor_s.shape[1]} and "
                         f"teacher {factor_t.shape[1]}")
    hs, ht = tuple(factor_s.shape[2:]), tuple(factor_t.shape[2:])
    if hs != ht:
        size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
        factor_s = F.adaptive_avg_pool2d(factor_s, size) if hs != size else factor_s
        factor_t = F.adaptive_avg_pool2d(factor_t, size) if ht != size else factor_t
    d = (ft_factor(factor_s, p1, mode) - ft_factor(factor_t, p1, mode)).abs()
    return d.mean() if p2 == 1 else d.pow(p2).mean()


# ------------------------------------------------------------- stage one ----
class ParaphrasedTeacher(nn.Module):
    """The teacher with its ``layer`` output replaced by the paraphraser's reconstruction: the model
    that stage 1 "trains" (only the paraphraser is a submodule; the teacher is held outside the module
    tree, so its mode, parameters and state are never this module's)."""

    def __init__(self, paraphraser: Paraphraser, teacher: nn.Module, layer: str):
        super().__init__()
        self.paraphraser = paraphraser
        self._teacher = (teacher,)  # a tuple: not registered as a submodule
        self.layer = layer
        self.num_classes = getattr(teacher, "num_classes", None)
        modules = dict(teacher.named_modules())
        if layer not in modules or not layer:
            raise ValueError(f"{type(teacher).__name__} has no layer {layer!r}")
        self._module = (modules[layer],)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits on the reconstruction, the teacher's feature, its reconstruction)``; the
        reconstruction carries the paraphraser's gradient, the logits none."""
        store: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output):
            f = output.detach().clone()
            store["feature"] = f
            store["rec"] = self.paraphraser(f)[1]
            return store["rec"].detach().clone()  # later in-place ops must not touch the graph's tensor

        handle = self._module[0].register_forward_hook(hook)
        try:
            logits = self._teacher[0](x)
        finally:
            handle.remove()
        return logits, store["feature"], store["rec"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


class ParaphraserStage(Distiller):
    """FT stage 1: ``MSE(paraphraser(f_t), f_t)`` on the teacher's ``layer`` feature (RepDistiller
    ``helper/pretrain.py``, ``criterion_init = nn.MSELoss()``); no labels, no student. Its term is
    ``loss_rec``; only the paraphraser is trainable."""
    family = "ft"

    def __init__(self, paraphraser: Paraphraser, teacher: nn.Module, layer: str):
        super().__init__(ParaphrasedTeacher(paraphraser, teacher, layer), teacher)
        self.layer = layer

    def forward(self, x, y, ctx=None):
        logits, f, rec = self.student.run(x)
        return logits, {"loss_rec": F.mse_loss(rec.float(), f.float())}

    def describe(self) -> dict[str, Any]:
        return {"method": "ParaphraserStage", "layer": self.layer,
                "paraphraser_parameters": sum(p.numel() for p in self.student.parameters())}


# -------------------------------------------------------------- distiller ----
class FactorTransfer(FeatureDistiller):
    """Factor transfer (Kim et al., NeurIPS 2018): ``(1 - alpha) * CE + alpha * KD + beta * FT``.

    Defaults and their sources (HobbitLong/RepDistiller):

    * layers: the last block's (post-ReLU) output, ``feat[-2]`` in ``train_student.py`` / ``helper/loops.py``
      -> ``stage5`` of both VGGs;
    * ``rate = 0.5`` (``Paraphraser(t_shape, k=0.5)``, ``Translator(s_shape, t_shape, k=0.5)`` in
      ``models/util.py``); paraphraser without BatchNorm, translator with (their ``use_bn`` defaults);
    * loss ``FactorTransfer(p1=2, p2=1)`` (``distiller_zoo/FT.py``): the factor's channel mean of squares,
      flattened and L2-normalised (``factor_norm="attention"``), mean absolute difference; the paper's
      own normalisation of the whole flattened factor is ``factor_norm="flat"``;
    * ``beta = 200`` and no KD (``scripts/run_cifar_distill.sh``: ``--distill factor -a 0 -b 200``, CE
      weight ``-r 1``) -> ``alpha = 0``, CE weight 1;
    * stage 1 (``helper/pretrain.py``): ``init_epochs = 30`` (``train_student.py``), SGD on the
      paraphraser alone at the run's learning rate (0.05 for VGG students), momentum 0.9, weight decay
      5e-4, constant rate, MSE reconstruction of the teacher's feature; in stage 2 the paraphraser is
      frozen (eval mode, not optimised). Here stage 1 uses the run's ``TrainConfig`` (optimiser,
      ``lr`` or ``init_lr``, weight decay, batch size, augmentation) with ``init_epochs`` epochs and a
      constant schedule.

    ``extra_parameters`` counts both adapters trained besides the student: the translator (stage 2)
    and the paraphraser (stage 1); ``describe()`` gives each. The teacher runs online (its 2-D map is
    needed, not a pooled vector). Without :meth:`prepare` (direct calls) the paraphraser stays at its
    initialisation.
    """
    term = "loss_ft"
    family = "ft"
    student_layers = ("stage5",)
    teacher_layers = ("stage5",)

    def __init__(self, student, teacher, *, beta: float = 200.0, rate: float = 0.5, p1: float = 2.0,
                 p2: float = 1.0, factor_norm: str = "attention", init_epochs: int = 30, init_lr: float | None = None,
                 paraphraser_bn: bool = False, translator_bn: bool = True, **kw):
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate (the paraphraser's channel rate k) must be a finite number > 0, got {rate!r}")
        for name, v in (("p1", p1), ("p2", p2)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if factor_norm not in FACTOR_NORMS:
            raise ValueError(f"unknown factor_norm {factor_norm!r}; allowed: {', '.join(FACTOR_NORMS)}")
        if isinstance(init_epochs, bool) or not isinstance(init_epochs, int) or init_epochs < 1:
            raise ValueError(f"init_epochs (paraphraser training epochs) must be an int >= 1, got {init_epochs!r}")
        if init_lr is not None and not (isinstance(init_lr, (int, float)) and math.isfinite(init_lr) and init_lr > 0):
            raise ValueError(f"init_lr must be None (the run's lr) or a finite number > 0, got {init_lr!r}")
        self.rate, self.p1, self.p2, self.factor_norm = float(rate), float(p1), float(p2), factor_norm
        self.init_epochs, self.init_lr = init_epochs, None if init_lr is None else float(init_lr)
        self.paraphraser_bn, self.translator_bn = bool(paraphraser_bn), bool(translator_bn)
        super().__init__(student, teacher, beta=beta, **kw)
        self.stage1 = None  # stage 1's FitResult, once run

    def make_adapters(self, s_shapes, t_shapes):
        (s,), (t,) = s_shapes, t_shapes
        self.check_maps(s_shapes, t_shapes, "FT", same_size=False)
        paraphraser = Paraphraser(t[0], self.rate, use_bn=self.paraphraser_bn)
        translator = Translator(s[0], paraphraser.factor_channels, use_bn=self.translator_bn)
        paraphraser.requires_grad_(False)  # trained only in stage 1 (prepare)
        return nn.ModuleList([translator, paraphraser])

    @property
    def translator(self) -> Translator:
        return self.adapters[0]

    @property
    def paraphraser(self) -> Paraphraser:
        return self.adapters[1]

    def train(self, mode: bool = True) -> "FactorTransfer":
        super().train(mode)
        self.paraphraser.eval()  # frozen in stage 2, as the reference's module_list[2].eval()
        return self

    def teacher_factor(self, t_feat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.paraphraser.encode(t_feat)

    def feature_loss(self, s_feats, t_feats):
        return ft_loss(self.translator(s_feats[0]), self.teacher_factor(t_feats[0]), self.p1, self.p2,
                       self.factor_norm)

    def prepare(self, data, cfg, progress: bool = True) -> None:
        """Stage 1: train the paraphraser to reconstruct the teacher's feature for ``init_epochs``."""
        from kd_utils.train_eval import fit
        stage = ParaphraserStage(self.paraphraser, self.teacher, self.t_layers[0])
        stage_cfg = cfg.replace(epochs=self.init_epochs, schedule="constant", milestones=(),
                                lr=cfg.lr if self.init_lr is None else self.init_lr)
        self.paraphraser.requires_grad_(True)
        try:
            self.stage1 = fit(stage.student, data, stage_cfg, method=stage, progress=progress,
                              desc="paraphraser stage", restore_best=False)
        finally:
            self.paraphraser.requires_grad_(False)
            self.paraphraser.eval()
            self.teacher.eval()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rate": self.rate, "p1": self.p1, "p2": self.p2,
                "factor_norm": self.factor_norm, "init_epochs": self.init_epochs, "init_lr": self.init_lr,
                "paraphraser_bn": self.paraphraser_bn, "translator_bn": self.translator_bn,
                "translator_parameters": sum(p.numel() for p in self.translator.parameters()),
                "paraphraser_parameters": sum(p.numel() for p in self.paraphraser.parameters())}


DISTILLERS.update({"ft": FactorTransfer})
