"""Normalisation and batch augmentation of uint8 images, with tensor operations only (whole batches).

``AUGMENTATIONS`` maps an augment name to (padding in pixels, horizontal flip); :class:`~kd_utils.data.BatchLoader`
and the augmentation plans (:mod:`kd_utils.plans`) look it up here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# name -> (padding in pixels, horizontal flip)
AUGMENTATIONS = {"crop": (4, False), "crop_flip": (4, True), "jitter": (2, False)}


def _check_augment(augment: str | None) -> str | None:
    if augment is not None and augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; allowed: None, {', '.join(map(repr, AUGMENTATIONS))}")
    return augment


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x/255 - mean)/std == x*scale - shift, shaped (C, 1, 1), float32 on CPU."""
    mean64 = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return (1.0 / (255.0 * std64)).float(), (mean64 / std64).float()


def _normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # One multiply and one subtract instead of three passes; same maths as (x/255 - mean)/std.
    return x.to(torch.float32).mul_(scale).sub_(shift)


def random_crop(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of a uint8 batch (N, C, H, W) after zero padding, optionally mirrored.

    Like torchvision's RandomCrop(padding=pad) (+ RandomHorizontalFlip), but for the whole batch at
    once: pad once, then read every sample's window with one ``gather`` over the flattened image
    (an index per output pixel, shared by the channels: ~3.5x faster than 4-D advanced indexing).
    Random numbers come from ``generator`` (CPU), so a seed gives the same crops on any device.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros = black, before normalisation
    wp = w + 2 * pad
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = top[:, None] + torch.arange(h)  # (n, h)
    cols = left[:, None] + torch.arange(w)  # (n, w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)  # reading columns backwards mirrors
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).to(x.device)
    return padded.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w)).reshape(n, c, h, w)
