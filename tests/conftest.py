"""Shared fixtures: small synthetic data sets that train in seconds on the CPU."""
from __future__ import annotations

import pytest
import torch

from kd_utils.data import DataBundle


def make_bundle(n_train: int = 512, n_val: int = 128, n_test: int = 256, shape=(1, 28, 28), num_classes: int = 10,
                seed: int = 0) -> DataBundle:
    """Images whose class is written as a bright patch at a class-specific place: learnable, cheap."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape

    def split(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = torch.randint(0, 60, (n, c, h, w), generator=g, dtype=torch.uint8)
        for k in range(num_classes):
            r, q = divmod(k, 4)
            x[y == k, :, 2 + 6 * r:6 + 6 * r, 2 + 6 * q:6 + 6 * q] = 255
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_val), split(n_test)
    return DataBundle(name="synthetic", num_classes=num_classes, classes=[str(k) for k in range(num_classes)],
                      mean=(0.2,) * c, std=(0.3,) * c, x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs,
                      y_test=ys, train_idx=torch.arange(n_train), val_idx=torch.arange(n_train, n_train + n_val))


@pytest.fixture
def toy_mnist() -> DataBundle:
    return make_bundle()


@pytest.fixture
def toy_cifar() -> DataBundle:
    return make_bundle(n_train=256, n_val=64, n_test=128, shape=(3, 32, 32))


@pytest.fixture(autouse=True)
def _private_teacher_cache(tmp_path_factory, monkeypatch):
    """Tests never write teacher-output caches into the user's data folder."""
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "teacher_cache"))


LINEAR_K = 6  # classes of the tiny linear pair below


def linear_pair(seed=0):
    """A tiny linear student and teacher on 2x2x3 inputs (logit-method tests): exact logits, cheap."""
    torch.manual_seed(seed)
    s = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, LINEAR_K))
    t = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, LINEAR_K))
    with torch.no_grad():
        t[1].weight.mul_(3)
    return s, t.eval()


def linear_batch(n=5, seed=1):
    """Inputs and labels for :func:`linear_pair`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, LINEAR_K, (n,), generator=g)
