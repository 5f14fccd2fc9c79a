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

from kd_utils.feature_kd import REFERENCE_LAYERS, FeatureStage, InitStageMethod, pre_relu_layers
from kd_utils.train_kd import DISTILLERS

# RepDistiller's ABLoss divides each layer's summed loss by the batch size and scales it by 3/1000.
AB_SCALE = 3 / 1000


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


class ABStage(FeatureStage):
    """The AB pre-training stage: ``beta * ab_loss(connector(student pre-ReLU), teacher pre-ReLU)`` alone
    (no labels, no KD). Gradients reach the connectors and the student's layers up to the deepest matched
    one; the classifier (and any layer after the last matched one) receives none. Default layers: the
    last BatchNorm of ``stage2``..``stage5`` (:func:`~kd_utils.feature_kd.pre_relu_layers`); given layers
    are read as they are. Every feature is cloned in its hook (``clone_features``)."""
    term = "loss_ab"
    family = "ab"
    clone_features = True

    def __init__(self, student, teacher, *, margin: float = 1.0, beta: float = 1.0, connector_bias: bool = False,
                 identity_when_equal: bool = True, student_layers: Sequence[str] | None = None,
                 teacher_layers: Sequence[str] | None = None, input_shape: Sequence[int] = (3, 32, 32)):
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
        if teacher is None:
            raise ValueError("AB needs the teacher network (its pre-activations are the targets)")
        self.margin = float(margin)
        self.connector_bias, self.identity_when_equal = bool(connector_bias), bool(identity_when_equal)
        super().__init__(student, teacher, beta=beta,
                         student_layers=tuple(student_layers or pre_relu_layers(student, REFERENCE_LAYERS)),
                         teacher_layers=tuple(teacher_layers or pre_relu_layers(teacher, REFERENCE_LAYERS)),
                         input_shape=input_shape)

    def make_adapters(self, s_shapes, t_shapes):
        self.check_maps(s_shapes, t_shapes, "AB", need="the 1x1 connector needs (C, H, W) maps with equal H and W")
        connectors = []
        for s, t in zip(s_shapes, t_shapes):
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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "ABStage", "margin": self.margin, "connector_bias": self.connector_bias,
                "identity_when_equal": self.identity_when_equal}


class AB(InitStageMethod):
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
        return {**super().describe(), "margin": self.margin, "init_beta": self.init_beta,
                "student_layers": list(self.s_layers), "teacher_layers": list(self.t_layers),
                "connector_bias": self.connector_bias, "identity_when_equal": self.identity_when_equal}


DISTILLERS.update({"ab": AB})
