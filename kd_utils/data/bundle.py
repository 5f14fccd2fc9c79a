"""A data set split into train / val / test: :class:`DataBundle`, and the functions that make one.

- :func:`get_data`: a known data set (:mod:`kd_utils.data.catalog`) read through the uint8 cache
  (:func:`kd_utils.data.load_raw`), its training set split by a seeded permutation;
- :func:`from_tensors` / :func:`from_dataset` (also classmethods of :class:`DataBundle`): your own images
  and labels (checked by :mod:`kd_utils.data.own`), with the same seeded split.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .augment import _affine, _normalize
from .cache import load_raw
from .catalog import _INFO, _canonical_name, _classes
from .loader import BatchLoader, ImageDataset
from .own import _dataset_tensors, _own_tensors

_SPLITS = ("train", "val", "test")


@dataclass(repr=False, eq=False)
class DataBundle:
    """A data set split into train / val / test, as uint8 (N, C, H, W) and int64 CPU tensors.

    ``train_idx`` and ``val_idx`` index the original training set (60k for MNIST-like, 50k for
    CIFAR-10), so a split can be reproduced or related to the raw data.
    """

    name: str
    num_classes: int
    classes: list[str]
    mean: tuple
    std: tuple
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    _affine_cache: tuple = field(default=None, init=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    def keep_train_classes(self, classes: Sequence[int]) -> "DataBundle":
        """A copy whose *training* split holds only the samples of ``classes`` (a transfer set that
        lacks the others, as in Hinton et al. 2015, §3); validation and test splits are unchanged."""
        keep = sorted({int(c) for c in classes})
        bad = [c for c in keep if not 0 <= c < self.num_classes]
        if not keep or bad:
            raise ValueError(f"classes must be a non-empty subset of 0..{self.num_classes - 1}, got {list(classes)}")
        mask = torch.isin(self.y_train, torch.tensor(keep))
        return dataclasses.replace(self, x_train=self.x_train[mask], y_train=self.y_train[mask],
                                   train_idx=self.train_idx[mask])

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x uint8, y int64) of ``split`` ("train", "val" or "test")."""
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(_SPLITS)}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def loader(
        self,
        split: str,
        batch_size: int = 128,
        shuffle: bool | None = None,
        augment: str | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
        extras: Sequence[torch.Tensor] = (),
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        epoch_extras: Sequence[torch.Tensor] = (),
    ) -> BatchLoader:
        """A :class:`BatchLoader` over ``split``; shuffles by default only for "train".

        ``augment``: None, "crop" (random 32x32/28x28 crop of the image zero-padded by 4 px),
        "crop_flip" (the same plus a horizontal flip with p=0.5) or "jitter" (translation by up to
        2 px). ``extras`` are tensors aligned with the split's samples, batched alongside;
        ``epoch_extras`` are tensors (epochs, N, ...) aligned with the positions each epoch visits
        (cached teacher outputs of an augmentation plan, see :mod:`kd_utils.plans`).
        ``rank``/``world_size``: under DistributedDataParallel each process takes its share of every
        global batch (``batch_size`` is the global batch).
        """
        x, y = self.tensors(split)
        return BatchLoader(
            x, y, mean=self.mean, std=self.std, batch_size=batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle, augment=augment, seed=seed,
            device=device, drop_last=drop_last, extras=extras, channels_last=channels_last, split=split,
            rank=rank, world_size=world_size, epoch_extras=epoch_extras,
        )

    @classmethod
    def from_tensors(cls, x_train, y_train, x_test, y_test, **kwargs) -> "DataBundle":
        """Your own images and labels as a bundle, with the same seeded validation split as
        :func:`get_data`: images uint8 (0-255) or float (0-1), shaped (N, C, H, W), (N, H, W) or
        (N, H, W, C); integer labels. Keywords: ``classes`` (names), ``num_classes`` (default
        ``len(classes)`` or max label + 1), ``name``, ``mean``/``std`` (default: computed from the
        training images), ``val_fraction`` (0.1), ``seed`` (42)."""
        return from_tensors(x_train, y_train, x_test, y_test, **kwargs)

    @classmethod
    def from_dataset(cls, train, test, **kwargs) -> "DataBundle":
        """A bundle from two map-style datasets of (image, label) pairs small enough for memory
        (torchvision datasets without transforms, or with ``ToTensor``); keywords as
        :meth:`from_tensors` (``classes`` defaults to ``train.classes`` when it has them)."""
        return from_dataset(train, test, **kwargs)

    def dataset(self, split: str) -> ImageDataset:
        """A ``torch.utils.data.Dataset`` view of ``split`` returning (normalised image, int label)."""
        x, y = self.tensors(split)
        return ImageDataset(x, y, self.mean, self.std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (C, H, W) or (N, C, H, W) -> float32 ``(x/255 - mean)/std`` on x's device."""
        if self._affine_cache is None:
            self._affine_cache = _affine(self.mean, self.std)
        scale, shift = (t.to(x.device) for t in self._affine_cache)
        return _normalize(x, scale, shift)

    def __repr__(self) -> str:
        return (f"DataBundle({self.name!r}, classes={self.num_classes}, shape={self.shape}, "
                f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)})")


def _check_subset(arg: str, value: int | None, available: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be None or a positive int, got {value!r}")
    if value > available:
        raise ValueError(f"{arg}={value} exceeds the {available} samples available")


def get_data(
    name: str,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> DataBundle:
    """Load ``name`` and split its training set into train and validation parts.

    A permutation of the training set drawn from ``torch.Generator().manual_seed(seed)`` decides
    everything: with ``train_subset`` only its first ``train_subset`` samples are kept, then the
    first ``round(val_fraction * kept)`` of those form the validation set and the rest the training
    set (indices sorted, so the original order is preserved within each part). ``test_subset`` keeps
    the first samples of the test set. ``val_fraction=0`` gives an empty validation set.
    """
    name = _canonical_name(name)
    info = _INFO[name]
    _check_subset("train_subset", train_subset, info["train_size"])
    _check_subset("test_subset", test_subset, info["test_size"])
    _check_split_args(val_fraction, seed)
    raw = load_raw(name, root)
    return _split(name, info["num_classes"], _classes(name), tuple(info["mean"]), tuple(info["std"]),
                  raw["x_train"], raw["y_train"], raw["x_test"], raw["y_test"], val_fraction, seed,
                  train_subset, test_subset)


def _check_split_args(val_fraction, seed) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _split(name, num_classes, classes, mean, std, x_train, y_train, x_test, y_test, val_fraction, seed,
           train_subset=None, test_subset=None) -> DataBundle:
    """The seeded train/val split every bundle uses (see :func:`get_data`)."""
    n_total = y_train.shape[0]
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    if train_subset is not None:
        order = order[:train_subset]
    n_val = int(round(val_fraction * len(order)))
    if n_val >= len(order):
        raise ValueError(f"val_fraction={val_fraction} of {len(order)} samples leaves no training samples")
    val_idx, _ = order[:n_val].sort()
    train_idx, _ = order[n_val:].sort()
    n_test = test_subset if test_subset is not None else y_test.shape[0]
    return DataBundle(name=name, num_classes=num_classes, classes=list(classes), mean=tuple(mean), std=tuple(std),
                      x_train=x_train[train_idx], y_train=y_train[train_idx], x_val=x_train[val_idx],
                      y_val=y_train[val_idx], x_test=x_test[:n_test].clone(), y_test=y_test[:n_test].clone(),
                      train_idx=train_idx, val_idx=val_idx)


def from_tensors(x_train, y_train, x_test, y_test, *, classes: Sequence[str] | None = None,
                 num_classes: int | None = None, name: str = "custom", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, val_fraction: float = 0.1, seed: int = 42) -> DataBundle:
    """A :class:`DataBundle` from your own images and labels (see :meth:`DataBundle.from_tensors`)."""
    _check_split_args(val_fraction, seed)
    xt, yt, xs, ys, num_classes, names, mean, std = _own_tensors(x_train, y_train, x_test, y_test, classes,
                                                                 num_classes, mean, std)
    bundle = _split(name, num_classes, names, mean, std, xt, yt, xs, ys, val_fraction, seed)
    if len(bundle.y_train) == 0:
        raise ValueError("the training split is empty")
    return bundle


def from_dataset(train, test, *, classes: Sequence[str] | None = None, **kwargs) -> DataBundle:
    """A :class:`DataBundle` from torchvision-style datasets of (image, label) pairs held in memory
    (see :meth:`DataBundle.from_dataset`)."""
    if classes is None:
        classes = getattr(train, "classes", None)
    (xt, yt), (xs, ys) = _dataset_tensors(train, "train"), _dataset_tensors(test, "test")
    return from_tensors(xt, yt, xs, ys, classes=classes, **kwargs)
