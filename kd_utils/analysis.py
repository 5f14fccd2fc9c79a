"""Analyses of what a teacher's logits carry: seed tables, the high-temperature limit of KD,
dark knowledge (class similarity in the soft targets) and calibration bins."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import metrics
from .train_kd import kd_loss


# ------------------------------------------------------------------ seed tables ----
def seed_table(accuracies: Mapping[str, Sequence[float]], extra: Mapping[str, Mapping[str, Sequence[float]]] | None = None
               ) -> pd.DataFrame:
    """One row per method: accuracies per seed, mean, sample standard deviation (ddof=1) and n;
    ``extra`` adds the mean of other per-seed quantities (e.g. ``{"agreement": {...}}``)."""
    rows = []
    for name, accs in accuracies.items():
        a = np.asarray(list(accs), dtype=float)
        if a.size == 0:
            raise ValueError(f"method {name!r} has no runs")
        row = {"method": name, "n": int(a.size), "mean": float(a.mean()),
               "std": float(a.std(ddof=1)) if a.size > 1 else float("nan"), "per_seed": [float(v) for v in a]}
        for key, per_method in (extra or {}).items():
            row[f"{key}_mean"] = float(np.mean(per_method[name]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ------------------------------------------------- KD at high temperature (Hinton 2015, sec. 2.1) ----
def kd_logit_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """d kd_loss / d student_logits by autograd (kd_loss includes the T^2 factor and the batch mean)."""
    z = student_logits.detach().double().requires_grad_(True)
    kd_loss(z, teacher_logits.double(), temperature).backward()
    return z.grad


def matching_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor, centre: bool = True) -> torch.Tensor:
    """The gradient Hinton's high-temperature limit predicts: ``(z - v) / (K N)`` with both logit
    vectors made zero-mean per sample (``centre=False`` keeps the raw logits, as MSE would)."""
    z, v = student_logits.double(), teacher_logits.double()
    if centre:
        z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    n, k = z.shape
    return (z - v) / (k * n)


def high_temperature_limit(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           temperatures: Iterable[float]) -> pd.DataFrame:
    """How close the KD gradient gets to logit matching as T grows.

    Per temperature: the relative error ``|g_KD - g_match| / |g_match|`` and the cosine between them,
    against the zero-mean matching gradient and against matching the raw (uncentred) logits.
    """
    rows = []
    ref_c = matching_gradient(student_logits, teacher_logits, centre=True)
    ref_raw = matching_gradient(student_logits, teacher_logits, centre=False)
    for t in temperatures:
        g = kd_logit_gradient(student_logits, teacher_logits, float(t))
        rows.append({"temperature": float(t),
                     "rel_error_zero_mean": float((g - ref_c).norm() / ref_c.norm()),
                     "cosine_zero_mean": float(F.cosine_similarity(g.flatten(), ref_c.flatten(), dim=0)),
                     "rel_error_raw_logits": float((g - ref_raw).norm() / ref_raw.norm()),
                     "cosine_raw_logits": float(F.cosine_similarity(g.flatten(), ref_raw.flatten(), dim=0))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- dark knowledge ----
def soft_targets(logits: torch.Tensor, temperatures: Iterable[float]) -> dict[float, torch.Tensor]:
    """softmax(logits / T) for each T."""
    return {float(t): torch.softmax(logits.double() / t, dim=1).float() for t in temperatures}


def class_similarity(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float = 4.0
                     ) -> torch.Tensor:
    """(K, K) matrix: row i is the mean softened distribution the model gives images of class i,
    with the own-class entry removed and the row renormalised: how the wrong-class mass is spread."""
    p = torch.softmax(logits.double() / temperature, dim=1)
    m = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    m.index_add_(0, labels.long(), p)
    m /= torch.bincount(labels.long(), minlength=num_classes).clamp(min=1).double()[:, None]
    m.fill_diagonal_(0)
    return (m / m.sum(1, keepdim=True)).float()


def second_choices(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> pd.DataFrame:
    """For each true class: the wrong class most often ranked second among images the model gets
    right, and how often."""
    rows = []
    top2 = logits.topk(2, dim=1).indices
    right = top2[:, 0] == labels
    for k, name in enumerate(classes):
        sel = right & (labels == k)
        if sel.sum() == 0:
            rows.append({"class": name, "second_choice": None, "share": float("nan")})
            continue
        counts = torch.bincount(top2[sel, 1], minlength=len(classes))
        j = int(counts.argmax())
        rows.append({"class": name, "second_choice": classes[j], "share": float(counts[j] / sel.sum())})
    return pd.DataFrame(rows).set_index("class")


def mean_image_similarity(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) cosine similarity of the class-mean images after subtracting the overall mean image:
    a crude, model-free measure of which classes look alike (colour and layout, not shape)."""
    flat = x.reshape(x.shape[0], -1).double()
    flat = flat - flat.mean(0, keepdim=True)
    means = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64)
    means.index_add_(0, labels.long(), flat)
    means /= torch.bincount(labels.long(), minlength=num_classes).clamp(min=1).double()[:, None]
    means = F.normalize(means, dim=1)
    return (means @ means.T).float()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of the off-diagonal entries of two (K, K) matrices."""
    k = a.shape[0]
    mask = ~torch.eye(k, dtype=torch.bool)
    ra = a[mask].double().argsort().argsort().double()
    rb = b[mask].double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt(float((ra @ ra) * (rb @ rb))))


# ------------------------------------------------------------------- calibration ----
def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> pd.DataFrame:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence and accuracy (NaN when empty).
    The count-weighted mean of |accuracy - confidence| is the ECE of :mod:`kd_utils.metrics`."""
    count, s_conf, s_acc = metrics.confidence_bins(logits, labels, n_bins)
    with np.errstate(invalid="ignore"):
        return pd.DataFrame({"lo": np.arange(n_bins) / n_bins, "hi": np.arange(1, n_bins + 1) / n_bins,
                             "count": count.numpy().astype(int), "confidence": (s_conf / count).numpy(),
                             "accuracy": (s_acc / count).numpy()})


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """Projection of (N, D) features on their first two principal components (centred, SVD), (N, 2)."""
    x = features.reshape(len(features), -1).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).float()


# --------------------------------------------------------- limitations of logit matching ----
def add_logit_bias(logits: torch.Tensor, classes: Sequence[int], bias: float) -> torch.Tensor:
    """``logits`` (float32 copy) with ``bias`` added to the logits of ``classes``: Hinton et al.'s
    (2015, §3) repair of a student whose transfer set lacked those classes."""
    out = logits.float().clone()
    cols = sorted({int(c) for c in classes})
    bad = [c for c in cols if not 0 <= c < out.shape[1]]
    if not cols or bad:
        raise ValueError(f"classes must be a non-empty subset of 0..{out.shape[1] - 1}, got {list(classes)}")
    out[:, cols] += float(bias)
    return out


def logit_bias_table(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                     biases: Iterable[float]) -> pd.DataFrame:
    """Errors, overall and on ``classes``, after adding each bias to the logits of ``classes``."""
    biases = [float(b) for b in biases]
    if not biases:
        raise ValueError("give at least one bias")
    on = torch.isin(labels, torch.tensor(sorted({int(c) for c in classes})))
    rows = []
    for b in biases:
        wrong = add_logit_bias(logits, classes, b).argmax(1) != labels
        rows.append({"bias": b, "errors": int(wrong.sum()), "errors_on_classes": int((wrong & on).sum())})
    return pd.DataFrame(rows)


def choose_logit_bias(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                      grid: Iterable[float]) -> tuple[float, pd.DataFrame]:
    """The bias on the logits of ``classes`` that makes the fewest errors on ``(logits, labels)``
    (pass validation data: the test set must not choose it). Ties go to the bias of smallest size.
    Returns the bias and the :func:`logit_bias_table` of every candidate."""
    table = logit_bias_table(logits, labels, classes, grid)
    best = table.assign(size=table["bias"].abs()).sort_values(["errors", "size"], kind="stable").iloc[0]
    return float(best["bias"]), table


def wrong_class_information(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
                            ) -> dict[str, float]:
    """What a teacher's soft targets say beyond the label (Müller et al. 2019): the mean probability
    on the wrong classes at ``temperature``, and the mean entropy of the wrong-class distribution
    (renormalised over the K - 1 wrong classes) divided by log(K - 1): 1 means uniform, i.e. no
    information about which wrong classes are close; lower means more structure."""
    p = torch.softmax(logits.double() / temperature, dim=1)
    k = p.shape[1]
    target = F.one_hot(labels.long(), k).bool()
    wrong = p.masked_fill(target, 0.0)
    mass = wrong.sum(1)
    q = wrong / mass.clamp_min(1e-300).unsqueeze(1)
    ent = -(q * q.clamp_min(1e-300).log()).sum(1) / math.log(k - 1)
    return {"wrong_class_mass": float(mass.mean()), "wrong_class_entropy": float(ent.mean())}
