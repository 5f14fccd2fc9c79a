"""Checksums, in one place: of tensors, of state dicts, of files, and of a data bundle's training split.

Their byte layouts are fixed: teacher checksums, plan-cache keys and run keys are built from them,
so changing one would orphan every committed teacher and stored run.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 over dtype, shape and raw bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of every tensor: detects bit rot inside the
    weights, which the archive format itself does not."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(data) -> dict:
    """What identifies a data bundle's training split (name, size, content, normalisation)."""
    cached = getattr(data, "_fingerprint", None)
    if cached is None:
        cached = {"name": data.name, "train": int(len(data.y_train)), "mean": list(data.mean), "std": list(data.std),
                  "train_sha256": tensor_digest(data.x_train, data.y_train, data.train_idx)}
        try:
            data._fingerprint = cached  # the bundle's tensors are not meant to change; hashing 150 MB once is enough
        except AttributeError:
            pass
    return cached
