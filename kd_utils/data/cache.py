"""The uint8 cache: one torch file ``ROOT/<name>.pt`` per data set, its content hash stored inside.

:func:`load_raw` reads a data set from its cache, or builds the cache from the source's verified files
(:mod:`kd_utils.data.sources`, decoded by :mod:`kd_utils.data.convert`). The cache is written
atomically (readers see the old file or the complete new one) and is never trusted on reading: a
cache that fails to load, is of another format or source, or fails its content checksum is rebuilt
with a :class:`DataWarning`.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from ..fetch import note
from ..fileio import atomic_path
from .catalog import _canonical_name, cache_path, default_root
from .convert import _check_tensors, convert
from .sources import obtain, source


class DataWarning(UserWarning):
    """A cache was found damaged or stale and is being rebuilt."""


_CACHE_FORMAT = 1
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors' dtypes, shapes and bytes (not of the file, so it can live inside it)."""
    digest = hashlib.sha256()
    for key in _KEYS:
        t = tensors[key].contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(memoryview(t.numpy()).cast("B"))
    return digest.hexdigest()


def _source_identity(name: str) -> str:
    return source(name).identity


def _write_cache(path: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    payload = {
        "format": _CACHE_FORMAT,
        "name": name,
        "source_sha256": _source_identity(name),
        "sha256": _content_sha256(tensors),
        **{k: tensors[k] for k in _KEYS},
    }
    with atomic_path(path) as tmp:  # readers see the old cache or the complete new one, never half
        torch.save(payload, tmp)


def _read_cache(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Load and validate a cache; any problem raises (the caller rebuilds)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT or payload.get("name") != name:
        raise ValueError("unknown cache format")
    if payload.get("source_sha256") != _source_identity(name):
        raise ValueError("cache was built from a different source artifact")
    tensors = {k: payload[k] for k in _KEYS}
    _check_tensors(name, tensors)
    if _content_sha256(tensors) != payload.get("sha256"):
        raise ValueError("content checksum mismatch")
    return tensors


def load_raw(name: str, root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The full data set as CPU tensors: ``x_train``/``x_test`` uint8 (N, C, H, W), ``y_*`` int64.

    The first call fetches the artifact (or uses one in ``ROOT/downloads/``), verifies its sha256
    and writes the cache ``ROOT/<name>.pt``; later calls read the cache. A cache that fails to load
    or fails its content checksum is rebuilt with a :class:`DataWarning`. Raises :class:`DataError`
    when the data cannot be obtained, ``ValueError`` for an unknown name.
    """
    name = _canonical_name(name)
    root = Path(root) if root is not None else default_root()
    path = cache_path(name, root)
    if path.exists():
        try:
            return _read_cache(path, name)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, a cache is never trusted
            warnings.warn(f"data cache {path} is unusable ({type(exc).__name__}: {exc}); rebuilding it",
                          DataWarning, stacklevel=2)
    src = source(name)
    files = obtain(name, root)
    note(f"converting {', '.join(p.name for p in files)} into {path}")
    tensors = convert(name, src, files, root)
    _write_cache(path, name, tensors)
    return tensors
