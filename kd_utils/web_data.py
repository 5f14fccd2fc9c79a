"""Data sets with no registry copy, fetched by torchvision's own downloader: CIFAR-100 and SVHN.

Their hosts (www.cs.toronto.edu, ufldl.stanford.edu) are reachable from a typical laptop but not from
a sandbox: before downloading, the host is probed with a short TCP connect (``PROBE_TIMEOUT_S``), so
where it cannot be reached the call fails in well under a second with a message that names the
file to place by hand in ``ROOT/downloads/`` and its expected md5 (torchvision's own checksum). A
placed file is used only when its md5 matches. The archive is converted to the same verified uint8
cache as the registry data sets (:func:`kd_utils.data.load_raw`).
"""
from __future__ import annotations

import contextlib
import io
import pickle
import socket
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .digests import file_digest
from .fetch import DataError, note

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


# ----------------------------------------------------------------- converters ----
def _cifar100_members(path: Path) -> dict[str, dict]:
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in ("train", "test", "meta"):
                # The archive is pinned by md5 above: unpickling its members is as safe as the checksum.
                out[base] = pickle.load(io.BytesIO(tar.extractfile(member).read()), encoding="latin1")
    missing = {"train", "test"} - out.keys()
    if missing:
        raise ValueError(f"archive lacks {sorted(missing)}")
    return out


def _cifar100(label_key: str) -> Callable[[list[Path]], dict[str, torch.Tensor]]:
    def convert(paths: list[Path]) -> dict[str, torch.Tensor]:
        m = _cifar100_members(paths[0])

        def images(d):  # rows of 3072 bytes: 1024 R, 1024 G, 1024 B, each row-major 32x32
            return torch.from_numpy(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        return {"x_train": images(m["train"]), "y_train": torch.tensor(m["train"][label_key], dtype=torch.int64),
                "x_test": images(m["test"]), "y_test": torch.tensor(m["test"][label_key], dtype=torch.int64)}
    return convert


def _svhn(paths: list[Path]) -> dict[str, torch.Tensor]:
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is a pinned dependency
        raise ValueError("reading SVHN's .mat files needs scipy (pip install scipy)") from None
    out = {}
    for split, path in zip(("train", "test"), paths):
        mat = loadmat(str(path))
        x = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
        y[y == 10] = 0  # SVHN labels the digit 0 as class 10
        out[f"x_{split}"], out[f"y_{split}"] = torch.from_numpy(x.copy()), torch.from_numpy(y)
    return out


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

CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
