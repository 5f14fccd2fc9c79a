"""Data sets with no registry copy, fetched by torchvision's own downloader: CIFAR-100 and SVHN.

Their hosts (www.cs.toronto.edu, ufldl.stanford.edu) are reachable from a typical laptop but not from
a sandbox: before downloading, the host is probed with a short TCP connect (``PROBE_TIMEOUT_S``), so
where it cannot be reached the call fails in well under a second with a message that names the
file to place by hand in ``ROOT/downloads/`` and its expected md5 (torchvision's own checksum). A
placed file is used only when its md5 matches. The archive is converted (by the decoders in
:mod:`kd_utils.data.convert`) to the same verified uint8 cache as the registry data sets
(:func:`kd_utils.data.load_raw`); :func:`kd_utils.data.sources.obtain` is the one entry point for both kinds.
"""
from __future__ import annotations

import contextlib
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..digests import file_digest
from ..fetch import DataError, note
from .convert import _cifar100, _svhn

PROBE_TIMEOUT_S = 3.0        # a reachable host answers a TCP connect in milliseconds
DOWNLOAD_TIMEOUT_S = 60.0    # per socket operation during the download itself


@dataclass(frozen=True)
class WebFile:
    url: str
    filename: str
    md5: str


@dataclass(frozen=True)
class WebSource:
    dataset: str
    files: tuple[WebFile, ...]
    convert: Callable[[list[Path]], dict[str, torch.Tensor]]

    @property
    def identity(self) -> str:
        """Stands for the source artifacts in the cache (as the registry sources' sha256 does)."""
        return "md5:" + ",".join(f.md5 for f in self.files)

    def hint(self, downloads: Path) -> str:
        files = "; ".join(f"{f.filename} (md5 {f.md5}) from {f.url}" for f in self.files)
        return f"To install it by hand, download {files} and put {'them' if len(self.files) > 1 else 'it'} in {downloads}/."


class _Unreachable(Exception):
    pass


def md5_file(path: Path) -> str:
    return file_digest(path, "md5")


def _probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise _Unreachable(f"{parts.hostname}:{port} cannot be reached ({e.strerror or type(e).__name__})") from None


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)  # torchvision's urlopen has no timeout argument of its own
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def obtain(source: WebSource, root: Path) -> list[Path]:
    """Checksum-verified files of ``source`` in ``root/downloads``: placed by hand, or downloaded."""
    downloads = root / "downloads"
    paths = []
    for f in source.files:
        path = downloads / f.filename
        if path.is_file():
            got = md5_file(path)
            if got != f.md5:
                raise DataError(f"checksum mismatch for {source.dataset} file {path}: expected md5 {f.md5}, got "
                                f"{got}. Delete or replace the file. {source.hint(downloads)}")
            paths.append(path)
            continue
        try:
            _probe(f.url)
        except _Unreachable as e:
            raise DataError(f"cannot download {source.dataset}: {e}. {source.hint(downloads)}") from None
        note(f"downloading {f.url} with torchvision (once; cached in {root})")
        from torchvision.datasets.utils import download_url
        downloads.mkdir(parents=True, exist_ok=True)
        tmp_dir = downloads / f".download-{f.filename}"
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                download_url(f.url, str(tmp_dir), filename=f.filename, md5=f.md5)
            got = md5_file(tmp_dir / f.filename)
            if got != f.md5:
                raise DataError(f"downloaded {f.filename} has md5 {got}, expected {f.md5}. {source.hint(downloads)}")
            (tmp_dir / f.filename).replace(path)  # same folder: an atomic rename
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - network errors of every kind get the manual route
            raise DataError(f"cannot download {source.dataset} from {f.url}: {type(e).__name__}: {e}. "
                            f"{source.hint(downloads)}") from None
        finally:
            import shutil
            shutil.rmtree(tmp_dir, ignore_errors=True)
        paths.append(path)
    return paths


_C100 = WebFile("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85")
SOURCES: dict[str, WebSource] = {
    "cifar100": WebSource("cifar100", (_C100,), _cifar100("fine_labels")),
    "cifar100_coarse": WebSource("cifar100_coarse", (_C100,), _cifar100("coarse_labels")),
    "svhn": WebSource("svhn", (
        WebFile("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat",
                "e26dedcc434d2e4c54c9b2d4a06d8373"),
        WebFile("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat",
                "eb5a983be6a315427106f1b164d9cef3")), _svhn),
}
