"""AB: knowledge transfer via distillation of activation boundaries (Heo et al., AAAI 2019).

The student learns *where* the teacher's hidden neurons switch on: for every matched layer a connector
(1x1 conv + BatchNorm) maps the student's pre-ReLU map onto the teacher's channels, and a hinge-like
squared loss with margin ``m`` pushes each connected response above ``+m`` where the teacher's
pre-activation is positive and below ``-m`` where it is not (the "alternative" loss of the paper).

As in RepDistiller, AB is a pre-training stage only: :meth:`AB.prepare` trains the connectors and the
student's convolutional layers with the AB loss alone for ``init_epochs``; the connectors are then
discarded and the main stage trains the student with cross-entropy (plus Hinton KD when ``alpha > 0``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from kd_utils.feature_kd import FeatureDistiller, FeatureHooks
from kd_utils.train_kd import DISTILLERS, HintonKD, StepContext

# RepDistiller's ABLoss divides each layer's summed loss by the batch size and scales it by 3/1000.
AB_SCALE = 3 / 1000


class ClonedFeatureHooks(FeatureHooks):
    """:class:`~kd_utils.feature_kd.FeatureHooks` that store a copy of each output: a BatchNorm's output
    is overwritten by the in-place ReLU that follows it, so pre-activations must be cloned in the hook
    (the copy keeps the autograd link to the BatchNorm)."""

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self._store[name] = output.clone()
        return hook


def capture_preact(model: nn.Module, x: torch.Tensor, names: Sequence[str]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(x)`` and the (cloned) outputs of the named layers."""
    with ClonedFeatureHooks(model, names) as hooks:
        out = model(x)
        return out, hooks.pop()


def preact_layers(model: nn.Module, stages: Sequence[str] = ("stage2", "stage3", "stage4", "stage5")
                  ) -> tuple[str, ...]:
    """The last BatchNorm of each named stage: its output is the stage's pre-ReLU feature map (the
    ``preact`` features of RepDistiller's VGG)."""
    modules = dict(model.named_modules())
    out = []
    for stage in stages:
        if stage not in modules or not stage:
            raise ValueError(f"{type(model).__name__} has no stage {stage!r}; give student_layers/teacher_layers "
                             "explicitly (pre-ReLU layers, e.g. 'stage3.1')")
        bns = [n for n, m in modules.items() if n.startswith(stage + ".") and isinstance(m, nn.BatchNorm2d)]
        if not bns:
            raise ValueError(f"stage {stage!r} of {type(model).__name__} has no BatchNorm2d whose output is a pre-ReLU "
                             "map; give student_layers/teacher_layers explicitly")
        out.append(bns[-1])
    return tuple(out)


def ab_layer_weights(n_layers: int) -> list[float]:
    """RepDistiller's per-layer weights ``2**(i - L + 1)``: the deepest layer 1, each shallower one half."""
    return [2.0 ** (i - n_layers + 1) for i in range(n_layers)]


def ab_criterion(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The alternative AB loss summed over all elements: ``(s + m)^2`` where ``s > -m`` and the teacher
    is off (``t <= 0``), ``(s - m)^2`` where ``s <= m`` and the teacher is on (``t > 0``), else 0."""
    if source.shape != target.shape:
        raise ValueError(f"AB: connected student map {tuple(source.shape)} and teacher map {tuple(target.shape)} "
                         "differ in shape")
    s, t = source.float(), target.float()
    off = (s > -margin) & (t <= 0)
    on = (s <= margin) & (t > 0)
    return ((s + margin).pow(2) * off + (s - margin).pow(2) * on).sum()


def ab_loss(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], margin: float = 1.0) -> torch.Tensor:
    """RepDistiller's ``ABLoss`` summed over layers: ``sum_i w_i * criterion_i / N * 3/1000``."""
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"AB needs as many student as teacher maps (at least one), got {len(sources)} and "
                         f"{len(targets)}")
    n = sources[0].shape[0]
    terms = [w * ab_criterion(s, t, margin) for w, s, t in zip(ab_layer_weights(len(sources)), sources, targets)]
    return sum(terms) / n * AB_SCALE


class ABStage(FeatureDistiller):
    """The AB pre-training stage: ``beta * ab_loss(connector(student pre-ReLU), teacher pre-ReLU)`` alone
    (no labels, no KD). Gradients reach the connectors and the student's layers up to the deepest matched
    one; the classifier (and any layer after the last matched one) receives none."""
    term = "loss_ab"
    family = "ab"

    def __init__(self, student, teacher, *, margin: float = 1.0, beta: float = 1.0, connector_bias: bool = False,
                 identity_when_equal: bool = True, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, input_shape: Sequence[int] = (3, 32, 32)):
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
        if teacher is None:
            raise ValueError("AB needs the teacher network (its pre-activations are the targets)")
        self.margin = float(margin)
        self.connector_bias, self.identity_when_equal = bool(connector_bias), bool(identity_when_equal)
        super().__init__(student, teacher, beta=beta, alpha=0.0,
                         student_layers=tuple(student_layers) if student_layers else preact_layers(student),
                         teacher_layers=tuple(teacher_layers) if teacher_layers else preact_layers(teacher),
                         input_shape=input_shape)

    def make_adapters(self, s_shapes, t_shapes):
        connectors = []
        for n_s, n_t, s, t in zip(self.s_layers, self.t_layers, s_shapes, t_shapes):
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ValueError(f"AB: student layer {n_s!r} has shape {s} and teacher layer {n_t!r} has shape {t}; "
                                 "the 1x1 connector needs (C, H, W) maps with equal H and W")
            if s == t and self.identity_when_equal:
                connectors.append(nn.Identity())
            else:
                connectors.append(nn.Sequential(nn.Conv2d(s[0], t[0], 1, bias=self.connector_bias),
                                                nn.BatchNorm2d(t[0])))
        for m in nn.ModuleList(connectors).modules():
            if isinstance(m, nn.Conv2d):  # as Heo's connectors (bhheo/AB_distillation): N(0, 2 / (k*k*C_out))
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_channels))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return nn.ModuleList(connectors)

    def feature_loss(self, s_feats, t_feats):
        return ab_loss([c(f) for c, f in zip(self.adapters, s_feats)], t_feats, self.margin)

    def forward(self, x, y, ctx: StepContext | None = None):
        logits, s = capture_preact(self.student, x, self.s_layers)
        with torch.no_grad():
            _, t = capture_preact(self.teacher, x, self.t_layers)
        loss = self.feature_loss([s[n] for n in self.s_layers], [t[n] for n in self.t_layers])
        return logits, {self.term: self.beta * loss}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "ABStage", "margin": self.margin, "connector_bias": self.connector_bias,
                "identity_when_equal": self.identity_when_equal}


def _check_init(init_epochs: Any, init_schedule: Any) -> None:
    if isinstance(init_epochs, bool) or not isinstance(init_epochs, int) or init_epochs < 0:
        raise ValueError(f"init_epochs must be an int >= 0 (0: no pre-training stage), got {init_epochs!r}")
    allowed = ("constant", "cosine", "onecycle", "step")
    if init_schedule is not None and init_schedule not in allowed:
        raise ValueError(f"init_schedule must be None (the run's schedule) or one of {', '.join(allowed)}, "
                         f"got {init_schedule!r}")


class _InitStageMethod(HintonKD):
    """Shared protocol of the methods RepDistiller runs as an init stage (``helper/pretrain.py``): a stage
    distiller built at construction (layers validated, its extra parameters counted), trained by
    :meth:`prepare` through ``kd_utils.train_eval.fit``, then dropped; the main stage is
    ``(1 - alpha) * CE + alpha * KD`` (alpha 0: cross-entropy alone, as RepDistiller's ``-a 0``)."""
    stage_name = "init stage"

    def __init__(self, student, teacher, stage: FeatureDistiller, *, init_epochs: int, init_schedule: str | None,
                 temperature: float, alpha: float):
        _check_init(init_epochs, init_schedule)
        super().__init__(student, teacher, temperature=temperature, alpha=alpha)
        self.init_epochs, self.init_schedule = init_epochs, init_schedule
        self.logits_only = self.alpha > 0  # with CE alone the teacher is never read: nothing to cache
        self._stage = [stage]  # a list: not a submodule, so the stage's extras never join the main stage
        self.extra_parameters = stage.extra_parameters  # trained in stage 1, discarded after it
        self.stage1 = None  # the init stage's FitResult, once run

    def prepare(self, data, cfg, progress: bool = True) -> None:
        if self.init_epochs == 0:
            return
        from kd_utils.train_eval import fit
        if not self._stage:
            raise RuntimeError(f"{type(self).__name__}: the {self.stage_name} has already run")
        stage = self._stage.pop()
        over = {"epochs": self.init_epochs}
        if self.init_schedule is not None:
            over["schedule"] = self.init_schedule
        self.stage1 = fit(self.student, data, cfg.replace(**over), method=stage, progress=progress,
                          desc=self.stage_name, restore_best=False)
        self.teacher.eval()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "init_epochs": self.init_epochs, "init_schedule": self.init_schedule,
                "extra_parameters": self.extra_parameters}


class AB(_InitStageMethod):
    """Activation-boundary transfer (Heo et al., AAAI 2019) as RepDistiller runs it: an init stage with the
    AB loss, then CE (+ KD).

    Reference: HobbitLong/RepDistiller ``distiller_zoo/AB.py`` (``ABLoss``: margin 1.0, layer weights
    ``2**(i-L+1)``, each layer's sum / batch * 3/1000), ``train_student.py`` (``abound``: the pre-ReLU
    outputs ``feat[1:-1]`` = our ``stage2``..``stage5`` last BatchNorm, ``--init_epochs 30``; the
    connector 1x1 conv + BN, identity where shapes are equal, ``models/util.py::Connector``; main stage
    ``-a 0 -b 1`` with the AB term 0, i.e. CE alone, ``scripts/run_cifar_distill.sh``, ``helper/loops.py``),
    ``helper/pretrain.py`` (the init stage trains the connectors and the student's feature modules, not the
    classifier, with the AB loss alone, SGD at the run's lr, momentum and weight decay, constant lr).

    Here: the init stage is ``fit`` on :class:`ABStage` with the run's optimiser settings, ``init_epochs``
    epochs and ``init_schedule`` ("constant" as RepDistiller; None keeps the run's schedule). Connector
    as the authors' code (bhheo/AB_distillation ``models/distillation_module.py``): 1x1 conv without bias
    + BN, weights N(0, 2/C_out); ``connector_bias=True`` gives RepDistiller's conv bias (redundant before
    BN; RepDistiller also keeps PyTorch's default init). The classifier is not trained in stage 1, as in
    RepDistiller: it gets no gradient (the loop zeroes grads with ``set_to_none``), so neither momentum
    nor weight decay touch it. ``init_beta`` scales the stage's loss (1, as RepDistiller). Main stage:
    ``alpha`` 0 (CE alone, RepDistiller's ``-a 0``); ``alpha > 0`` mixes in Hinton KD at ``temperature``
    (4, RepDistiller's ``--kd_T``), then the teacher's logits may be cached. ``extra_parameters``: the
    connectors (trained in stage 1, discarded), e.g. 77,184 for vgg13 w0.5 -> vgg8 w0.25.
    """
    family = "ab"
    stage_name = "AB init stage"

    def __init__(self, student, teacher, *, init_epochs: int = 30, margin: float = 1.0, init_beta: float = 1.0,
                 temperature: float = 4.0, alpha: float = 0.0, init_schedule: str | None = "constant",
                 connector_bias: bool = False, identity_when_equal: bool = True,
                 student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
                 input_shape: Sequence[int] = (3, 32, 32)):
        stage = ABStage(student, teacher, margin=margin, beta=init_beta, connector_bias=connector_bias,
                        identity_when_equal=identity_when_equal, student_layers=student_layers,
                        teacher_layers=teacher_layers, input_shape=input_shape)
        super().__init__(student, teacher, stage, init_epochs=init_epochs, init_schedule=init_schedule,
                         temperature=temperature, alpha=alpha)
        self.margin, self.init_beta = stage.margin, stage.beta
        self.s_layers, self.t_layers = stage.s_layers, stage.t_layers
        self.connector_bias, self.identity_when_equal = stage.connector_bias, stage.identity_when_equal

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "AB", "margin": self.margin, "init_beta": self.init_beta,
                "student_layers": list(self.s_layers), "teacher_layers": list(self.t_layers),
                "connector_bias": self.connector_bias, "identity_when_equal": self.identity_when_equal}


DISTILLERS.update({"ab": AB})
