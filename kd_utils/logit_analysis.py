"""Analyses of teacher and student logits for Task 2 ("where logit matching fails, and why"):

* :func:`similarity_inheritance` -- does the student's class-similarity structure follow the teacher's?
* :func:`error_inheritance` -- does the student copy the teacher's mistakes beyond what a student of the
  same task that never saw the teacher does?
* :func:`fit_temperature`, :func:`calibration_report` -- temperature scaling (Guo et al., ICML 2017).
* :func:`dkd_terms_per_sample`, :func:`dkd_coupling` -- the classical KD loss split as
  ``KD = TCKD + (1 - p_t^T) * NCKD`` (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation", Sec. 3.1)
  per bin of the teacher's target confidence: how much the non-target term is suppressed where the
  teacher is sure.
* :func:`logit_scale`, :func:`logit_scale_table`, :func:`logit_scale_curve` -- the per-sample standard
  deviation of the logits, which Sun et al. (CVPR 2024, "Logit Standardization in Knowledge
  Distillation") show differs between teacher and student: plain KD at a shared temperature asks the
  student to match the teacher's scale as well as its shape.

Everything takes stored logits (e.g. ``Run.logits("test")``) and returns numbers or DataFrames; nothing
here trains or touches model state (the curve evaluates the models it is given, in eval mode).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .analysis import class_similarity, rank_correlation


# ----------------------------------------------------------------- validation ----
def _check_logits(logits: Any, name: str = "logits", min_classes: int = 1) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point (N, K) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} hold no samples")
    if logits.shape[1] < min_classes:
        raise ValueError(f"{name} need at least {min_classes} classes, got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return logits.detach().cpu().double()


def _check_labels(labels: Any, n: int, k: int, name: str = "labels") -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape ({n},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}"
                         f"{'' if not isinstance(labels, torch.Tensor) else ' of ' + str(labels.dtype)}")
    labels = labels.detach().cpu().long()
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"{name} must lie in [0, {k}), got range [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_pair(teacher_logits, student_logits, labels, min_classes=1):
    t = _check_logits(teacher_logits, "teacher_logits", min_classes)
    s = _check_logits(student_logits, "student_logits", min_classes)
    if t.shape != s.shape:
        raise ValueError(f"teacher_logits {tuple(t.shape)} and student_logits {tuple(s.shape)} differ in shape")
    return t, s, _check_labels(labels, t.shape[0], t.shape[1])


# ------------------------------------------------------ similarity inheritance ----
def similarity_inheritance(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                           num_classes: int, temperature: float = 4.0) -> float:
    """Spearman rank correlation between the off-diagonal entries of the teacher's and the student's
    soft-output class-similarity matrices (:func:`kd_utils.analysis.class_similarity` at ``temperature``:
    row ``i`` is the mean softened distribution on images of class ``i`` with its own class removed and
    renormalised; :func:`kd_utils.analysis.rank_correlation`). 1: the student ranks which wrong classes
    are close exactly as its teacher does; about 0: no inherited structure. Pass the same images for
    both (e.g. the test split) with their true labels. A class with no image gives an undefined row
    (0 / 0) and raises."""
    t, s, y = _check_pair(teacher_logits, student_logits, labels, min_classes=3)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes != t.shape[1]:
        raise ValueError(f"num_classes must be the logits' class count {t.shape[1]}, got {num_classes!r}")
    missing = sorted(set(range(num_classes)) - set(y.unique().tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no image, so their similarity rows are undefined; pass images "
                         "of every class")
    temperature = _check_temperature(temperature)
    return rank_correlation(class_similarity(t, y, num_classes, temperature),
                            class_similarity(s, y, num_classes, temperature))


# ----------------------------------------------------------- error inheritance ----
def _mistakes(teacher_pred: torch.Tensor, other_pred: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, float]:
    t_wrong, o_wrong = teacher_pred != y, other_pred != y
    both = t_wrong & o_wrong
    conf_t = torch.zeros(k, k, dtype=torch.float64).index_put_((y, teacher_pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    conf_o = torch.zeros(k, k, dtype=torch.float64).index_put_((y, other_pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    rate = lambda n, d: float(n) / float(d) if d else float("nan")  # noqa: E731
    return {"errors": int(o_wrong.sum()),
            "wrong_given_teacher_wrong": rate(both.sum(), t_wrong.sum()),
            "wrong_given_teacher_right": rate((o_wrong & ~t_wrong).sum(), (~t_wrong).sum()),
            "same_wrong_class": rate((both & (other_pred == teacher_pred)).sum(), both.sum()),
            "confusion_rank_correlation": rank_correlation(conf_t, conf_o)}


def error_inheritance(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                      reference_logits: torch.Tensor | None = None) -> pd.DataFrame:
    """How much of the teacher's mistakes a student repeats, beside a reference student that never saw the
    teacher (e.g. the scratch student: what two networks trained on the same task share anyway). One row
    per student (``student``, ``reference``) with its ``errors``, ``wrong_given_teacher_wrong`` (the share
    of the teacher's mistakes it also makes), ``wrong_given_teacher_right``, ``same_wrong_class`` (of the
    images both get wrong, the share where it names the teacher's wrong class) and
    ``confusion_rank_correlation`` (Spearman over the off-diagonal counts of the two confusion matrices).
    A student inherits errors beyond its accuracy when its rates exceed the reference's at a similar
    error count. Rates with an empty denominator are NaN."""
    t, s, y = _check_pair(teacher_logits, student_logits, labels, min_classes=2)
    rows = {"student": _mistakes(t.argmax(1), s.argmax(1), y, t.shape[1])}
    if reference_logits is not None:
        _, r, _ = _check_pair(t, reference_logits, y, min_classes=2)
        rows["reference"] = _mistakes(t.argmax(1), r.argmax(1), y, t.shape[1])
    return pd.DataFrame(rows).T.astype({"errors": int})


# -------------------------------------------------------- temperature scaling ----
def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(F.cross_entropy(logits / temperature, labels))


def fit_temperature(val_logits: torch.Tensor, val_labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-6) -> float:
    """Temperature scaling (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks", sec. 4.2):
    the single ``T > 0`` minimising the validation NLL of ``softmax(z / T)``.

    The NLL is convex in ``1 / T`` (a log-sum-exp minus a linear term), hence unimodal in ``log T``:
    a golden-section search on ``log T`` over ``bounds`` finds the minimum to a relative ``tol``, in
    float64. ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one;
    argmax predictions (accuracy) never change. An optimum at a bound (e.g. perfectly separated logits,
    whose NLL falls all the way to ``T -> 0``) is returned with a warning."""
    z = _check_logits(val_logits, "val_logits")
    y = _check_labels(val_labels, z.shape[0], z.shape[1], "val_labels")
    lo, hi = bounds
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must be (lo, hi) with 0 < lo < hi finite, got {bounds!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    a, b = math.log(lo), math.log(hi)
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = _nll(z, y, math.exp(c)), _nll(z, y, math.exp(d))
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = _nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = _nll(z, y, math.exp(d))
    t = math.exp((a + b) / 2)
    if min(t / lo, hi / t) < 1 + 1e-3:
        warnings.warn(f"the fitted temperature {t:.4g} is at the search bound {bounds}: the validation NLL keeps "
                      "falling beyond it", stacklevel=2)
    return t


def calibration_report(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                       test_labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Temperature scaling fitted on the validation split (:func:`fit_temperature`) and judged on the
    test split: ``{"T", "ece_before", "ece_after", "nll_before", "nll_after"}``, the ECE by
    :func:`kd_utils.metrics.expected_calibration_error` (``n_bins`` equal-width bins) and the NLL the
    mean cross-entropy, both of the test logits before and after dividing them by ``T``."""
    t = fit_temperature(val_logits, val_labels)
    z = _check_logits(test_logits, "test_logits")
    y = _check_labels(test_labels, z.shape[0], z.shape[1], "test_labels")
    if z.shape[1] != val_logits.shape[1]:
        raise ValueError(f"test_logits have {z.shape[1]} classes, val_logits {val_logits.shape[1]}")
    return {"T": t,
            "ece_before": metrics.expected_calibration_error(z, y, n_bins),
            "ece_after": metrics.expected_calibration_error(z / t, y, n_bins),
            "nll_before": _nll(z, y, 1.0), "nll_after": _nll(z, y, t)}


# --------------------------------------------------------- DKD's coupling of KD ----
def dkd_terms_per_sample(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 4.0) -> dict[str, torch.Tensor]:
    """Per sample (float64, CPU, shape (N,)), everything times ``T^2`` as the project's losses are:

    * ``p_target``: the teacher's target-class probability ``p_t^T`` at ``T`` (target = the label);
    * ``tckd``: KL between the teacher's and student's binary ``[p_t, 1 - p_t]`` distributions;
    * ``nckd``: KL between their distributions over the non-target classes, renormalised;
    * ``kd``: the classical KL(p_t^T || p_s^T), which equals ``tckd + (1 - p_target) * nckd``
      (Zhao et al. 2022, Sec. 3.1). Their batch means are :func:`kd_utils.methods.dkd.dkd_terms`."""
    t, s, y = _check_pair(teacher_logits, student_logits, labels, min_classes=2)
    T = _check_temperature(temperature)
    n, k = t.shape
    is_target = F.one_hot(y, k).bool()
    log_pt, log_ps = F.log_softmax(t / T, dim=1), F.log_softmax(s / T, dim=1)

    def binary(log_p):  # (N, 2): log p(target), log (1 - p(target))
        return torch.stack([log_p[is_target], log_p[~is_target].view(n, k - 1).logsumexp(dim=1)], dim=1)

    def others(z):  # (N, K-1) log-softmax among the non-target classes
        return F.log_softmax(z[~is_target].view(n, k - 1) / T, dim=1)

    def kl_rows(log_p, log_q):
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    bt, bs = binary(log_pt), binary(log_ps)
    scale = T * T
    return {"p_target": bt[:, 0].exp(), "tckd": scale * kl_rows(bt, bs),
            "nckd": scale * kl_rows(others(t), others(s)), "kd": scale * kl_rows(log_pt, log_ps)}


def _bin_edges(bins) -> np.ndarray:
    if isinstance(bins, bool):
        raise ValueError(f"bins must be a whole number >= 1 or increasing edges in [0, 1], got {bins!r}")
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be a whole number >= 1 or increasing edges in [0, 1], got {bins!r}")
        return np.linspace(0.0, 1.0, bins + 1)
    try:
        edges = np.asarray(list(bins), dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"bins must be a whole number >= 1 or increasing edges in [0, 1], got {bins!r}") from None
    if edges.ndim != 1 or len(edges) < 2 or not (np.diff(edges) > 0).all() or edges[0] < 0 or edges[-1] > 1:
        raise ValueError(f"bin edges must be at least two increasing numbers in [0, 1], got {list(edges)}")
    return edges


def dkd_coupling(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 4.0, bins: int | Sequence[float] = 10, alpha: float | None = None,
                 beta: float | None = None) -> pd.DataFrame:
    """The classical KD loss decomposed as ``KD = TCKD + (1 - p_t^T) * NCKD`` (Zhao et al., CVPR 2022,
    Sec. 3.1; :func:`dkd_terms_per_sample`), per bin of the teacher's target-class probability ``p_t^T``
    at ``temperature``: where the teacher is confident, the weight ``1 - p_t`` on the non-target term is
    small -- the coupling DKD removes.

    ``bins``: a number of equal-width bins on [0, 1], or the edges; bins are right-closed ``(lo, hi]``,
    the first also holding ``lo`` itself. One row per bin: ``lo``, ``hi``, ``count``, ``p_target`` (mean
    teacher target probability), ``nckd_weight`` (mean ``1 - p_t``, i.e. ``1 - p_target``), ``tckd``,
    ``nckd`` and ``kd`` (means, each times ``T^2``) and ``nckd_share``: the share of the bin's KD carried
    by the non-target term, ``sum((1 - p_t) * NCKD) / sum(KD)``. With DKD's weights ``alpha`` and
    ``beta`` (both or neither) a column ``nckd_share_dkd``: the same share under DKD's decoupled loss,
    ``sum(beta * NCKD) / sum(alpha * TCKD + beta * NCKD)``. Empty bins have count 0 and NaN elsewhere;
    samples outside custom edges are left out."""
    if (alpha is None) != (beta is None):
        raise ValueError(f"pass both of DKD's alpha and beta or neither, got alpha={alpha!r}, beta={beta!r}")
    for name, w in (("alpha", alpha), ("beta", beta)):
        if w is not None and not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    terms = dkd_terms_per_sample(teacher_logits, student_logits, labels, temperature)
    edges = _bin_edges(bins)
    p = terms["p_target"].numpy()
    idx = np.searchsorted(edges, p, side="left") - 1  # (lo, hi]: p == hi falls in this bin
    idx[p == edges[0]] = 0
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        row = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(sel.sum())}
        if sel.any():
            pt = p[sel]
            tckd, nckd, kd = (terms[k].numpy()[sel] for k in ("tckd", "nckd", "kd"))
            row.update(p_target=float(pt.mean()), nckd_weight=float((1 - pt).mean()), tckd=float(tckd.mean()),
                       nckd=float(nckd.mean()), kd=float(kd.mean()),
                       nckd_share=float(((1 - pt) * nckd).sum() / kd.sum()) if kd.sum() > 0 else math.nan)
            if alpha is not None:
                dkd = alpha * tckd.sum() + beta * nckd.sum()
                row["nckd_share_dkd"] = float(beta * nckd.sum() / dkd) if dkd > 0 else math.nan
        else:
            row.update({k: math.nan for k in ("p_target", "nckd_weight", "tckd", "nckd", "kd", "nckd_share")
                        + (("nckd_share_dkd",) if alpha is not None else ())})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- logit scale ----
class LogitScale(NamedTuple):
    """Per-sample logit standard deviation (N,) float64 and its mean over the samples."""
    per_sample: torch.Tensor
    mean: float


def logit_scale(logits: torch.Tensor) -> LogitScale:
    """The per-sample standard deviation of the logits over the classes (the unbiased one, as
    :func:`kd_utils.train_kd.standardize_logits` divides by), and its mean. Sun et al. (CVPR 2024) show
    teachers and students differ in it, so a shared temperature softens them unequally."""
    per = metrics.logit_std(_check_logits(logits, min_classes=2))
    return LogitScale(per, float(per.mean()))


def logit_scale_table(logits: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per named set of logits (e.g. ``{"teacher": ..., "kd student": ...}``): the mean and the
    median per-sample logit std (:func:`logit_scale`)."""
    if not isinstance(logits, Mapping) or not logits:
        raise ValueError("logits must be a non-empty mapping from a name to (N, K) logits")
    rows = []
    for name, z in logits.items():
        per = logit_scale(z).per_sample
        rows.append({"model": name, "mean_logit_std": float(per.mean()), "median_logit_std": float(per.median())})
    return pd.DataFrame(rows).set_index("model")


def _logits_of(item: Any, data, split: str, device) -> torch.Tensor:
    """Logits of one epoch's item: a tensor as is, a stored run's ``logits(split)``, a model (or a
    checkpoint path, :func:`kd_utils.checkpoint.load_model`) evaluated on ``data``'s ``split``."""
    if isinstance(item, torch.Tensor):
        return item
    if callable(getattr(item, "logits", None)) and not isinstance(item, nn.Module):  # a Run
        return item.logits(split)
    if isinstance(item, (str, Path)):
        from .checkpoint import load_model
        item = load_model(item)
    if isinstance(item, nn.Module):
        if data is None:
            raise ValueError("evaluating models needs data (a DataBundle) to run them on")
        from .train_eval import predict
        return predict(item, data.loader(split, batch_size=1024, shuffle=False), device, "fp32")[0]
    raise ValueError(f"each epoch's entry must be logits, a stored run, a model or a checkpoint path, got "
                     f"{type(item).__name__}")


def logit_scale_curve(checkpoints_or_models: Mapping[int, Any] | Sequence[Any], data=None, split: str = "test",
                      device: str = "cpu") -> pd.DataFrame:
    """The mean (and median) per-sample logit std of a model along its training, one row per epoch.

    On the validation split the mean comes free: every run's history has a ``val_logit_std`` column
    (recorded by ``fit`` from its validation pass; runs trained before it was added lack it). For other
    splits, or the median, the curve is evaluated afterwards from what was kept of each epoch: ``checkpoints_or_models`` maps an epoch to its logits (a tensor), a stored run
    (its ``logits(split)``), a model, or a checkpoint path; a sequence is epochs 1, 2, ... Models are
    evaluated in fp32 on ``data``'s ``split``. Early-stopped runs (``run_experiment(..., stop_after=e)``)
    are one way to have a model per epoch; note that ``fit`` restores the best validation epoch among
    the first ``e`` (``restore_best``), so pass ``stop_after`` runs' own ``metrics["best_epoch"]`` as
    the key where that matters."""
    if isinstance(checkpoints_or_models, Mapping):
        items = dict(checkpoints_or_models)
    elif isinstance(checkpoints_or_models, Sequence) and not isinstance(checkpoints_or_models, (str, bytes)):
        items = {i + 1: v for i, v in enumerate(checkpoints_or_models)}
    else:
        raise ValueError(f"checkpoints_or_models must be a mapping epoch -> item or a sequence, got "
                         f"{type(checkpoints_or_models).__name__}")
    if not items:
        raise ValueError("checkpoints_or_models is empty")
    bad = [e for e in items if isinstance(e, bool) or not isinstance(e, int) or e < 0]
    if bad:
        raise ValueError(f"epochs must be whole numbers >= 0, got {bad}")
    rows = []
    for epoch in sorted(items):
        per = logit_scale(_logits_of(items[epoch], data, split, device)).per_sample
        rows.append({"epoch": epoch, "mean_logit_std": float(per.mean()), "median_logit_std": float(per.median())})
    return pd.DataFrame(rows).set_index("epoch")
