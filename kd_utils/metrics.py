"""Classification and distillation metrics computed on tensors.

Every function takes ``logits`` of shape (N, K) (any float dtype) and/or integer
``labels`` of shape (N,), validates the shapes and returns plain Python numbers
or CPU tensors. Nothing here touches model state or autograd.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "accuracy",
    "error_count",
    "per_class_accuracy",
    "confusion_matrix",
    "prediction_distribution",
    "agreement",
    "kl_divergence",
    "expected_calibration_error",
    "summarize",
]


# --------------------------------------------------------------------------- validation


def _check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (N, K), got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    # Detach so callers can pass tensors that still require grad.
    return logits.detach()


def _check_labels(labels: torch.Tensor, n: int | None = None, name: str = "labels") -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} but expected ({n},) to match the logits"
        )
    return labels.detach()


def _check_pair(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _check_logits(logits)
    labels = _check_labels(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} and labels shape {tuple(labels.shape)} "
            "disagree on the number of samples"
        )
    return logits, labels.to(logits.device)


def _check_teacher_student(t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = _check_logits(t, "teacher_logits")
    s = _check_logits(s, "student_logits")
    if t.shape != s.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(t.shape)} and student_logits shape {tuple(s.shape)} differ"
        )
    return t, s.to(t.device)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_label_range(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


# --------------------------------------------------------------------------- accuracy


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]; ``nan`` for an empty batch."""
    logits, labels = _check_pair(logits, labels)
    n = labels.shape[0]
    if n == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).sum().item() / n


def error_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of samples whose top-1 prediction differs from the label."""
    logits, labels = _check_pair(logits, labels)
    return int((logits.argmax(dim=1) != labels).sum().item())


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy for each true class, shape (num_classes,) float64; ``nan`` for absent classes."""
    cm = confusion_matrix(logits, labels, num_classes).to(torch.float64)
    support = cm.sum(dim=1)
    correct = cm.diagonal()
    # 0/0 gives nan, which is exactly what we want for classes with no samples.
    return correct / support


def confusion_matrix(preds_or_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix of shape (K, K), int64, rows = true class, columns = predicted class.

    ``preds_or_logits`` may be 1-D integer predictions (N,) or 2-D logits (N, K).
    """
    num_classes = _check_num_classes(num_classes)
    x = preds_or_logits
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"preds_or_logits must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        logits, labels = _check_pair(x, labels)
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"logits shape {tuple(logits.shape)} does not match num_classes={num_classes}"
            )
        preds = logits.argmax(dim=1)
    elif x.dim() == 1:
        preds = _check_labels(x, name="preds")
        labels = _check_labels(labels)
        if preds.shape != labels.shape:
            raise ValueError(
                f"preds shape {tuple(preds.shape)} and labels shape {tuple(labels.shape)} differ"
            )
        labels = labels.to(preds.device)
        _check_label_range(preds, num_classes, "preds")
    else:
        raise ValueError(
            f"preds_or_logits must have shape (N,) or (N, K), got {tuple(x.shape)}"
        )
    _check_label_range(labels, num_classes)
    # Encode each (true, pred) pair as one index so a single bincount fills the matrix.
    flat = labels.to(torch.int64).cpu() * num_classes + preds.to(torch.int64).cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def prediction_distribution(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many samples are predicted as each class, shape (num_classes,) int64."""
    num_classes = _check_num_classes(num_classes)
    logits = _check_logits(logits)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits shape {tuple(logits.shape)} does not match num_classes={num_classes}")
    return torch.bincount(logits.argmax(dim=1).cpu(), minlength=num_classes).to(torch.int64)


def logit_std(logits: torch.Tensor) -> torch.Tensor:
    """The per-sample standard deviation of the logits over the classes, shape (N,): the unbiased one,
    as :func:`kd_utils.train_kd.standardize_logits` divides by (Sun et al., CVPR 2024's logit scale)."""
    logits = _check_logits(logits)
    if logits.shape[1] < 2:
        raise ValueError(f"a logit std needs at least 2 classes, got shape {tuple(logits.shape)}")
    return (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits).std(dim=1)


# --------------------------------------------------------------------------- teacher vs student


def agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Fraction of samples on which teacher and student have the same top-1 class."""
    t, s = _check_teacher_student(teacher_logits, student_logits)
    n = t.shape[0]
    if n == 0:
        return float("nan")
    return (t.argmax(dim=1) == s.argmax(dim=1)).sum().item() / n


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean over samples of KL(softmax(t/T) || softmax(s/T)), in nats.

    Computed in float64 from log-softmax so that near-zero probabilities do not
    produce ``0 * log 0`` NaNs or catastrophic cancellation.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    t, s = _check_teacher_student(teacher_logits, student_logits)
    if t.shape[0] == 0:
        return float("nan")
    log_p = torch.log_softmax(t.to(torch.float64) / temperature, dim=1)
    log_q = torch.log_softmax(s.to(torch.float64) / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return float(kl.mean().item())


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins on [0, 1].

    ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|, where confidence is the max
    softmax probability. Bins are right-closed, (lo, hi], as in the usual definition;
    a confidence of exactly 0 cannot occur for a softmax.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    logits, labels = _check_pair(logits, labels)
    n = labels.shape[0]
    if n == 0:
        return float("nan")
    _, sum_conf, sum_acc = confidence_bins(logits, labels, n_bins)
    # |sum_acc - sum_conf| / N equals (|B|/N) * |acc - conf| and is 0 for empty bins.
    return float(((sum_acc - sum_conf).abs().sum() / n).item())


def confidence_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width, right-closed confidence bin (lo, hi]: sample count, sum of confidences (max
    softmax probability) and number correct (float64, CPU): what ECE and reliability diagrams share."""
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    # Bin index for (lo, hi]: ceil(conf * n_bins) - 1, clamped for safety at the ends.
    idx = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).to(torch.int64).cpu()
    conf, correct = conf.cpu(), correct.cpu()
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return count, sum_conf, sum_acc


# --------------------------------------------------------------------------- summary


def summarize(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """JSON-friendly summary: accuracy, errors, n, ece (+ agreement and kl if a teacher is given).

    ``kl`` is KL(teacher || student) at temperature 1.
    """
    num_classes = _check_num_classes(num_classes)
    logits, labels = _check_pair(logits, labels)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits shape {tuple(logits.shape)} does not match num_classes={num_classes}")
    _check_label_range(labels, num_classes)
    out: dict[str, Any] = {
        "n": int(labels.shape[0]),
        "accuracy": float(accuracy(logits, labels)),
        "errors": int(error_count(logits, labels)),
        "ece": float(expected_calibration_error(logits, labels)),
    }
    if teacher_logits is not None:
        out["agreement"] = float(agreement(teacher_logits, logits))
        out["kl"] = float(kl_divergence(teacher_logits, logits))
    return out
