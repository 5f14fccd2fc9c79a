"""Checkpoints: a state_dict plus what is needed to rebuild and trust it.

Layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "kd_utils/1", "arch": {"name": "vgg8", "kwargs": {...}}, "state_dict": {...},
     "config": {...}, "metrics": {...}, "seed": 0, "versions": {...}, "created": "...", "extra": {...}}

Files are written atomically: an interrupted save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import datetime as _dt
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .digests import state_digest
from .fileio import atomic_path
from .models import build_model
from .runtime import versions

FORMAT = "kd_utils/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model asked for."""


def check_savable(model: nn.Module, **metadata: Any) -> None:
    """Raise :class:`CheckpointError` now for anything :func:`save_checkpoint` would fail on or
    store lossily: an ``.arch`` whose arguments are not plain data, or metadata that is not."""
    arch = getattr(model, "arch", None)
    if arch is not None:
        _require_plain(arch, f"model {type(model).__name__}'s .arch")
    for key, value in metadata.items():
        _require_plain(value or {}, key)
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state_dict entry {k!r} of {type(model).__name__} is a {type(v).__name__}, "
                                  "not a tensor; it cannot be stored in a weights_only checkpoint")


def _require_plain(obj: Any, where: str, path: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _require_plain(v, where, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _require_plain(v, where, f"{path}[{i}]")
    elif not (obj is None or isinstance(obj, (str, int, float, bool, Path)) or
              (hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0)):
        raise CheckpointError(f"{where} holds {type(obj).__name__} at {path or 'top level'!r}, which a checkpoint "
                              "cannot store (plain numbers, strings, lists and dicts only)")


def save_checkpoint(path: str | Path, model: nn.Module, *, config: dict | None = None, metrics: dict | None = None,
                    seed: int | None = None, extra: dict | None = None,
                    state_dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` with its metadata, atomically.

    A model from :func:`kd_utils.models.build_model` (or a registered constructor) records its
    ``.arch`` so :func:`load_model` can rebuild it. Any other ``nn.Module`` is saved with its class
    (module and qualified name); load it back with ``load_weights(MyNet(...), path)``.
    ``state_dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type, except those it
    cannot hold (a BatchNorm running variance above float16's 65504 would become inf), which keep their
    own; loading casts them back to the model's.
    """
    check_savable(model, config=config, metrics=metrics, extra=extra)
    arch = getattr(model, "arch", None)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if state_dtype is not None:
        def narrow(v: torch.Tensor) -> torch.Tensor:
            if not v.is_floating_point():
                return v
            cast = v.to(state_dtype)
            return cast if torch.isfinite(cast).all() or not torch.isfinite(v).all() else v
        state = {k: narrow(v) for k, v in state.items()}
    cls = type(model)
    payload = {"format": FORMAT, "arch": _plain(arch), "module_class": f"{cls.__module__}:{cls.__qualname__}",
               "state_dict": state, "sha256": state_digest(state),
               "config": _plain(config or {}),
               "metrics": _plain(metrics or {}), "seed": seed, "versions": versions(),
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "extra": _plain(extra or {})}
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", format: str = FORMAT) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: a pickle that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted: not a complete torch archive "
                              f"({path.stat().st_size} bytes)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects that are not plain data "
                              f"(weights_only=True) -- {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted and cannot be read: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != format:
        raise CheckpointError(f"{path} is not a kd_utils checkpoint (expected a dict with format {format!r}); "
                              "a bare state_dict can be loaded with model.load_state_dict(torch.load(path, "
                              "weights_only=True))")
    if "sha256" in payload and state_digest(payload["state_dict"]) != payload["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupted: its weights do not match the checksum stored "
                              "when it was saved")
    return payload


def load_model(path: str | Path, expected: str | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``path`` and load its weights (in eval mode).

    ``expected`` (a model name such as ``"vgg8"``) guards against loading the wrong network.
    The checkpoint's metadata is attached as ``model.checkpoint``.
    """
    payload = load_checkpoint(path, map_location)
    arch = payload["arch"]
    if arch is None:
        cls = payload.get("module_class", "an unregistered class")
        raise CheckpointError(f"checkpoint {path} holds a {cls} model that was not built from the model registry, "
                              "so it cannot be rebuilt by name: register its constructor with "
                              "kd_utils.models.register_model, or load the weights into an instance you build "
                              f"yourself: load_weights({cls.split(':')[-1]}(...), {str(path)!r})")
    if expected is not None and arch.get("name") != expected:
        raise CheckpointError(f"checkpoint {path} holds a {arch.get('name')!r} model, not the expected {expected!r}")
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    load_weights(model, payload, path)
    model.checkpoint = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval()


def load_weights(model: nn.Module, payload_or_path: dict | str | Path, path: str | Path | None = None) -> nn.Module:
    """Load a checkpoint's weights into an existing ``model``; a mismatch gets a clear error."""
    if not isinstance(payload_or_path, dict):
        path = payload_or_path
        payload_or_path = load_checkpoint(payload_or_path)
    payload = payload_or_path
    mine, theirs = getattr(model, "arch", None), payload.get("arch")
    if mine is not None and theirs is not None and _plain(mine) != theirs:
        raise CheckpointError(f"checkpoint {path} was saved from {theirs}, which does not match this model {mine}")
    mismatch = _state_mismatch(model.state_dict(), payload["state_dict"])
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {mismatch}")
    model.load_state_dict(payload["state_dict"])
    return model


def _state_mismatch(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], show: int = 8) -> str:
    """A readable list of missing, unexpected and differently shaped entries ('' when they fit)."""
    parts = []
    missing = [k for k in mine if k not in theirs]
    unexpected = [k for k in theirs if k not in mine]
    shapes = [f"{k}: model {tuple(mine[k].shape)} vs checkpoint {tuple(theirs[k].shape)}"
              for k in mine if k in theirs and tuple(mine[k].shape) != tuple(theirs[k].shape)]
    for label, items in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" ... (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{label}: {', '.join(items[:show])}{more}")
    return "; ".join(parts)


def _plain(obj: Any) -> Any:
    """Convert tuples, numpy/torch scalars and paths to plain types weights_only can read back."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
