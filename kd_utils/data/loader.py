"""Batches from in-memory uint8 images: :class:`BatchLoader` (the default path) and the map-style
:class:`ImageDataset` view for users who want a ``torch.utils.data.Dataset``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from .augment import AUGMENTATIONS, _affine, _check_augment, _normalize, random_crop

def _share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Bounds of rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


EPOCH_STRIDE = 1_000_000  # epochs a plan can have before its stream would reach the next seed's


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch ``epoch`` of plan ``seed``: ``seed * EPOCH_STRIDE + epoch``.

    Seeding ``seed + epoch`` (numerics ``data`` v1) made seed s+1 replay seed s's epochs one epoch later
    (seeds 0-2 of a 15-epoch run shared 14 epochs), so the spread over seeds missed most of the data-order
    and augmentation variance. Plan seed 0 draws exactly what it drew before."""
    if not 0 <= epoch < EPOCH_STRIDE:
        raise ValueError(f"epoch must be in [0, {EPOCH_STRIDE}), got {epoch}")
    return seed * EPOCH_STRIDE + epoch


class BatchLoader:
    """Iterate over in-memory uint8 images in batches of normalised float32 tensors.

    Each batch is a tuple ``(x, y, *extras)``: ``x`` float32 (N, C, H, W) normalised with
    mean/std (``channels_last`` memory format on request), ``y`` int64, then each tensor of
    ``extras`` (first dimension = number of samples, e.g. cached teacher logits) sliced with the
    same indices as ``x``. Data are moved to ``device`` once, at construction.

    Shuffling and augmentation draw from a CPU ``torch.Generator`` seeded :func:`epoch_seed`
    ``(seed, epoch)``; the epoch counter starts at 0 and goes up by one on every ``iter()``, so two
    loaders built alike give identical batches, each epoch differs, and no two seeds share an epoch.
    ``set_epoch(e)`` sets the epoch of the next pass.

    With ``augment`` the images change every epoch while ``extras`` do not: extras computed from
    un-augmented images (like cached teacher logits) are then stale; that choice is left to the caller.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 128,
        shuffle: bool = False,
        augment: str | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
        extras: Sequence[torch.Tensor] = (),
        channels_last: bool = False,
        split: str = "custom",
        rank: int = 0,
        world_size: int = 1,
        epoch_extras: Sequence[torch.Tensor] = (),
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if x.dim() != 4 or x.dtype != torch.uint8:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        n = x.shape[0]
        if tuple(y.shape) != (n,):
            raise ValueError(f"y must have shape ({n},), got {tuple(y.shape)}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} channels, got {len(mean)}/{len(std)}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        extras = tuple(extras)
        for i, extra in enumerate(extras):
            if not isinstance(extra, torch.Tensor) or extra.dim() == 0 or extra.shape[0] != n:
                shape = tuple(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__
                raise ValueError(f"extras[{i}] must be a tensor with first dimension {n}, got {shape}")
        epoch_extras = tuple(epoch_extras)
        for i, extra in enumerate(epoch_extras):
            if not isinstance(extra, torch.Tensor) or extra.dim() < 2 or extra.shape[1] != n:
                shape = tuple(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__
                raise ValueError(f"epoch_extras[{i}] must be a tensor (epochs, {n}, ...), got {shape}")

        self.split = split
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = _check_augment(augment)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_samples = n
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.extras = tuple(e.to(self.device) for e in extras)
        self.epoch_extras = tuple(e.to(self.device) for e in epoch_extras)
        scale, shift = _affine(mean, std)
        self._scale, self._shift = scale.to(self.device), shift.to(self.device)
        self.rank, self.world_size = rank, world_size
        self._epoch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` of the plan (e.g. to resume a run mid-way)."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # Not a generator function itself, so the epoch advances at iter(), not at the first next().
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        for extra in self.epoch_extras:
            if epoch >= extra.shape[0]:
                raise ValueError(f"epoch_extras cover {extra.shape[0]} epoch(s) of the plan; epoch {epoch + 1} "
                                 "was asked for (train for fewer epochs or rebuild them for this many)")
        per_epoch = [e[epoch] for e in self.epoch_extras]
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=generator).to(self.device) if self.shuffle else None
        stop = len(self) * self.batch_size if self.drop_last else self.num_samples
        for start in range(0, stop, self.batch_size):
            if order is None:  # contiguous slices are views: no copy until normalisation
                sel = slice(start, start + self.batch_size)
                xb, yb, extras = self.x[sel], self.y[sel], [e[sel] for e in self.extras]
            else:
                idx = order[start:start + self.batch_size]
                xb, yb, extras = self.x[idx], self.y[idx], [e[idx] for e in self.extras]
            # outputs stored per plan position (epoch order), not per sample
            extras += [e[start:start + self.batch_size] for e in per_epoch]
            if self.augment is not None:
                pad, flip = AUGMENTATIONS[self.augment]
                xb = random_crop(xb, pad, flip, generator)
            if self.world_size > 1:
                # Distributed: every rank draws the same global batch (same generator stream, so the
                # same crops) and keeps its contiguous share, so N processes see what one would.
                lo, hi = _share(len(yb), self.rank, self.world_size)
                xb, yb, extras = xb[lo:hi], yb[lo:hi], [e[lo:hi] for e in extras]
            xb = _normalize(xb, self._scale, self._shift)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield (xb, yb, *extras)

    def __repr__(self) -> str:
        return (f"BatchLoader(split={self.split!r}, num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment!r}, device={str(self.device)!r}, "
                f"extras={len(self.extras)}, epoch_extras={len(self.epoch_extras)})")


# =====================================================================================================
# Dataset view
# =====================================================================================================


class ImageDataset(torch.utils.data.Dataset):
    """Map-style view over uint8 tensors: item ``i`` is (normalised float32 C x H x W image, int label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        self.x, self.y = x, y
        self._scale, self._shift = _affine(mean, std)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.x[index]
        scale, shift = self._scale.to(image.device), self._shift.to(image.device)
        return _normalize(image, scale, shift), int(self.y[index])
