"""The batch crop+flip of the loader against its first version (an optimisation, shown as its gain)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import CIFAR_BATCH, SEED, Bench, Figure, _med, _raw


def _crop_advanced_indexing(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The first version of ``data.random_crop`` (4-D advanced indexing), kept as this figure's baseline."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def fig_batch_crop_speedup(b: Bench) -> Figure:
    """Optimisation shown: crop+flip of a CIFAR batch of 256 by one flattened ``gather`` (now in
    ``data.random_crop``) vs the first version's 4-D advanced indexing; outputs must be identical."""
    from kd_utils.data import random_crop
    x = b.data("cifar10").x_train[:CIFAR_BATCH]
    g1, g2 = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED)
    if not torch.equal(random_crop(x, 4, True, g1), _crop_advanced_indexing(x, 4, True, g2)):
        raise RuntimeError("gather crop and advanced-indexing crop disagree")
    g = torch.Generator().manual_seed(SEED)
    reps = 20
    t = b.times({"advanced_indexing": lambda: [_crop_advanced_indexing(x, 4, True, g) for _ in range(reps)],
                 "gather": lambda: [random_crop(x, 4, True, g) for _ in range(reps)]})
    med = {k: _med(v) / reps for k, v in t.items()}
    return Figure("batch_crop_speedup", med["advanced_indexing"] / med["gather"], "x", None, True,
                  "the same crop+flip by 4-D advanced indexing (the loader's first version)",
                  {"batch": list(x.shape), **{f"{k}_ms_per_batch": 1000 * v for k, v in med.items()},
                   "times_s": {k: _raw(v) for k, v in t.items()}})
