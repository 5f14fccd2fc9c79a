"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush the data to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Make numpy/torch scalars and paths JSON-serialisable."""
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


class OutputFolderError(OSError):
    """An output folder that cannot take our files. ``cli_hint`` is what the command line adds (its
    ``--out`` flag); Python callers see only the message."""
    cli_hint = "choose another with --out"


def check_writable(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Fail early, with a clear message, when ``folder`` cannot take our files: not creatable,
    read-only, or with less than ``need_bytes`` (plus a 16 MB margin) free."""
    import shutil
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputFolderError(f"output folder {folder} is not writable ({e.strerror or e}); write somewhere else "
                                "or fix its permissions") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes + 16 * 2**20:
        raise OutputFolderError(f"output folder {folder} has {free / 2**20:.0f} MB free but about "
                                f"{(need_bytes + 16 * 2**20) / 2**20:.0f} MB are needed; free some space or write "
                                "somewhere else")
    return folder
