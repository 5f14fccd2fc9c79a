"""Users' own data: checking and converting their images and labels before they become a bundle.

Images uint8 (0-255) or float (0-1), shaped (N, C, H, W), (N, H, W) or channels-last (N, H, W, C);
integer labels; per-channel statistics computed from the training images (:func:`channel_stats`).
The public constructors, :func:`kd_utils.data.from_tensors` and :func:`kd_utils.data.from_dataset`
(also ``DataBundle.from_tensors``/``from_dataset``), live beside :class:`~kd_utils.data.DataBundle`
in :mod:`kd_utils.data.bundle` and call the helpers here, so this module needs no other part of
:mod:`kd_utils.data`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

def _as_uint8_images(x, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 or float-in-[0, 1] tensors/arrays shaped (N, C, H, W), (N, H, W)
    or channels-last (N, H, W, C) with C in 1, 3."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{what} must be images shaped (N, C, H, W), (N, H, W) or (N, H, W, C); got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty: every split needs at least one image")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise ValueError(f"{what} must be uint8 (0-255) or float (0-1) images, got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
        raise ValueError(f"{what}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(pass uint8 0-255 images, or divide by 255)")
    return torch.round(x.float() * 255).to(torch.uint8).contiguous()


def _as_labels(y, n: int, what: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must be a 1-D sequence of {n} labels (one per image), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class indices, got dtype {y.dtype}")
    return y.long()


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (pixel) standard deviation of uint8 images on the 0-1 scale."""
    flat = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).double() / 255.0
    return tuple(float(v) for v in flat.mean(1)), tuple(float(v) for v in flat.std(1, unbiased=False))


def _own_tensors(x_train, y_train, x_test, y_test, classes: Sequence[str] | None, num_classes: int | None,
                mean: Sequence[float] | None, std: Sequence[float] | None):
    """Your images and labels checked and converted, for :func:`kd_utils.data.from_tensors`:
    ``(x_train, y_train, x_test, y_test, num_classes, class names, mean, std)``, images uint8
    (N, C, H, W), labels int64, ``num_classes`` and ``mean``/``std`` filled in where not given."""
    xt, xs = _as_uint8_images(x_train, "x_train"), _as_uint8_images(x_test, "x_test")
    if xt.shape[1:] != xs.shape[1:]:
        raise ValueError(f"train images {tuple(xt.shape[1:])} and test images {tuple(xs.shape[1:])} differ in shape")
    yt, ys = _as_labels(y_train, xt.shape[0], "y_train"), _as_labels(y_test, xs.shape[0], "y_test")
    if num_classes is None:
        num_classes = len(classes) if classes is not None else int(max(yt.max(), ys.max())) + 1
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names given for {num_classes} classes")
    for label, y in (("y_train", yt), ("y_test", ys)):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{label} holds labels in [{lo}, {hi}], outside 0..{num_classes - 1}")
    computed_mean, computed_std = channel_stats(xt)
    mean = tuple(mean) if mean is not None else computed_mean
    std = tuple(std) if std is not None else computed_std
    c = xt.shape[1]
    if len(mean) != c or len(std) != c or min(std) <= 0:
        raise ValueError(f"mean and std need {c} value(s) with std > 0, got mean={mean}, std={std}")
    names = list(classes) if classes is not None else [str(k) for k in range(num_classes)]
    return xt, yt, xs, ys, num_classes, names, mean, std


def _dataset_tensors(ds, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) stacked from a map-style dataset of (image, label) pairs: PIL images,
    tensors or arrays shaped (C, H, W) or (H, W); one shape for all."""
    from PIL import Image

    xs, ys = [], []
    for i in range(len(ds)):
        img, label = ds[i]
        if isinstance(img, Image.Image):  # HWC or HW uint8
            img = np.array(img, dtype=np.uint8)
            img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        img = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
        if img.dim() == 2:
            img = img.unsqueeze(0)
        xs.append(img)
        ys.append(int(label))
    if not xs:
        raise ValueError(f"{what} dataset is empty")
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) > 1:
        raise ValueError(f"{what} dataset has images of different shapes {sorted(shapes)[:4]}; resize them first")
    return torch.stack(xs), torch.tensor(ys)
