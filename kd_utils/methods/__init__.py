"""The field's distillation methods beyond Hinton KD, one module per method (its paper, its reference
implementation's defaults, its loss), each registering its distiller in ``train_kd.DISTILLERS``.

Every method here is its own numerics family (``kd_utils.numerics``): editing one retrains its runs only.
:func:`methods_table` lists every registered method with its paper, what it matches, its default weights,
its extra parameters for a teacher/student pair and where its teacher outputs come from
(``python -m kd_utils methods``).
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from . import ab, cc, crd, dist, dkd, fsp, ft, kdsvd, nst, ofd, reviewkd, rkd, sp, vid  # noqa: F401 (register)
from . import controls  # noqa: F401 (register "label_smoothing", "kd_permuted", "pseudo_label")
from . import kdcl  # noqa: F401 (register "kdcl")
from .. import ensemble, feature_kd  # noqa: F401 (register "cohort" and the feature methods)
from ..train_kd import DISTILLERS, build_distiller

# name -> (paper, what the student is made to match)
PAPERS: dict[str, tuple[str, str]] = {
    "kd": ("Hinton et al. 2015", "softened teacher probabilities (KL at T)"),
    "mse": ("Ba & Caruana 2014", "raw teacher logits (MSE)"),
    "dkd": ("Zhao et al., CVPR 2022", "target / non-target parts of the softened KL, weighted apart"),
    "dist": ("Huang et al., NeurIPS 2022", "Pearson relations of the probabilities, per sample and per class"),
    "fitnets": ("Romero et al., ICLR 2015", "a middle feature map through a conv regressor (MSE)"),
    "fitnets_two_stage": ("Romero et al., ICLR 2015", "hint stage on a middle feature map, then KD"),
    "at": ("Zagoruyko & Komodakis, ICLR 2017", "spatial attention maps of several stages"),
    "cosine": ("(baseline)", "direction of the pooled penultimate feature"),
    "pkt": ("Passalis & Tefas, ECCV 2018", "cosine-kernel distribution of the batch's pooled features"),
    "crd": ("Tian et al., ICLR 2020", "contrastive: teacher embedding against memory-bank negatives (NCE)"),
    "rkd": ("Park et al., CVPR 2019", "pairwise distances and triplet angles of pooled features"),
    "sp": ("Tung & Mori, ICCV 2019", "batch similarity matrix of the last feature map"),
    "cc": ("Peng et al., ICCV 2019", "correlation between samples' embeddings"),
    "vid": ("Ahn et al., CVPR 2019", "feature maps under a learned Gaussian (variational mutual information)"),
    "nst": ("Huang & Wang 2017", "distribution of neuron selectivity (polynomial-kernel MMD)"),
    "ofd": ("Heo et al., ICCV 2019", "pre-ReLU feature maps above the teacher's BN margin (partial L2)"),
    "reviewkd": ("Chen et al., CVPR 2021", "teacher stages from fused student stages, deep to shallow (HCL)"),
    "ab": ("Heo et al., AAAI 2019", "activation boundaries of pre-ReLU maps, in an init stage"),
    "ft": ("Kim et al., NeurIPS 2018", "teacher factors from a pre-trained paraphraser"),
    "fsp": ("Yim et al., CVPR 2017", "flow matrices between consecutive stages, in an init stage"),
    "kdsvd": ("Lee et al., ECCV 2018", "correlations of the feature maps' leading singular vectors"),
    "cohort": ("Zhang et al., CVPR 2018", "several students together: KD and mutual learning"),
    "kdcl": ("Guo et al., CVPR 2020", "no teacher: the peers' combined logits (MinLogit) as each peer's soft target"),
    "label_smoothing": ("Szegedy et al., CVPR 2016", "no teacher: the label mixed with the uniform distribution"),
    "kd_permuted": ("(control) after Yuan et al., CVPR 2020 / Müller et al. 2019",
                    "softened teacher probabilities with the non-target entries permuted per image (KL at T)"),
    "pseudo_label": ("Touvron et al. 2021 (DeiT hard-label distillation)", "the teacher's top-1 class only (CE)"),
}
_SHOWN = ("alpha", "beta", "temperature", "ce_weight", "warmup", "w_d", "w_a", "feat_dim", "nce_k", "nce_t",
          "init_epochs", "hint_epochs", "margin", "p", "gamma", "tau", "epsilon")


def teacher_source(distiller: nn.Module) -> str:
    """Where a distiller's teacher outputs come from: cached logits (+ one pooled layer), an online teacher,
    or none (a teacher-free control such as label smoothing)."""
    if getattr(distiller, "teacher_free", False):
        return "none"
    if getattr(distiller, "cached_layer", None) is not None:
        return f"cached (logits + pooled {distiller.cached_layer})"
    if getattr(distiller, "logits_only", False):
        return "cached (logits)"
    return "online teacher"


def methods_table(teacher: nn.Module, student_factory, input_shape=(3, 32, 32),
                  kwargs: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per registered method (plain CE and the several-student cohort excepted), built on
    ``teacher`` and a fresh ``student_factory()``: paper, what it matches, its default weights (from
    ``describe()``), extra parameters and teacher outputs. A method that cannot be built on this pair
    (FSP and KDSVD's default layout need equal widths) gets its error as the row's note.
    ``kwargs``: per-method arguments (e.g. ``{"crd": {"n_data": 50000}}``)."""
    kwargs = kwargs or {}
    rows = []
    for name in DISTILLERS:
        if name in ("ce", "cohort"):
            continue
        paper, matches = PAPERS.get(name, ("", ""))
        row = {"method": name, "paper": paper, "matches": matches}
        try:
            d = build_distiller(name, student_factory(), teacher, **kwargs.get(name, {}))
        except ValueError as e:  # what is wrong, and the way out where the message gives one
            msg = str(e)
            way_out = msg[msg.rfind(". Use ") + 2:] if ". Use " in msg else ""
            rows.append({**row, "note": f"{msg.split(';')[0]}. {way_out}".strip()})
            continue
        desc = d.describe()
        shown = [k for k in _SHOWN if k in desc and not (k == "temperature" and desc.get("alpha") == 0)]
        row["defaults"] = ", ".join(f"{k}={desc[k]:g}" if isinstance(desc[k], float) else f"{k}={desc[k]}"
                                    for k in shown)
        layers = desc.get("student_layers")
        row["layers"] = "" if layers is None else ", ".join(layers)
        row["extra_parameters"] = int(getattr(d, "extra_parameters", 0))
        row["teacher_outputs"] = teacher_source(d)
        row["pre_training_stage"] = callable(getattr(d, "prepare", None)) and any(
            k in desc for k in ("init_epochs", "hint_epochs"))
        rows.append(row)
    out = pd.DataFrame(rows).set_index("method")
    out["extra_parameters"] = out["extra_parameters"].astype("Int64")  # missing where the pair cannot be built
    return out
