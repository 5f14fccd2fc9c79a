"""The data sets this suite knows: names and aliases, classes, shapes, statistics, and where their caches live.

Needs no download and imports no other part of :mod:`kd_utils.data`.
"""
from __future__ import annotations

import os
from pathlib import Path

DATASETS = ("mnist", "fashion_mnist", "cifar10")            # registry copies (work offline)
WEB_DATASETS = ("cifar100", "cifar100_coarse", "svhn")      # torchvision's hosts, or placed by hand
ALL_DATASETS = DATASETS + WEB_DATASETS

_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "cifar100_fine": "cifar100"}

# mean/std are per channel on the 0-1 scale, computed over every pixel of the full training set
# (the std is the pixel std, not the mean of per-image stds that some CIFAR code uses).
_INFO = {
    "mnist": dict(
        num_classes=10,
        classes=[str(d) for d in range(10)],
        shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        train_size=60000,
        test_size=10000,
    ),
    "fashion_mnist": dict(
        num_classes=10,
        classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        train_size=60000,
        test_size=10000,
    ),
    "cifar10": dict(
        num_classes=10,
        classes=["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"],
        shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        train_size=50000,
        test_size=10000,
    ),
    # The sets below cannot be downloaded here; their statistics are the values published with them
    # (CIFAR-100) and widely used (SVHN), not recomputed by this code.
    "cifar100": dict(
        num_classes=100, classes=None, shape=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762), train_size=50000, test_size=10000,
    ),
    "cifar100_coarse": dict(
        num_classes=20, classes=None, shape=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762), train_size=50000, test_size=10000,
    ),
    "svhn": dict(
        num_classes=10, classes=[str(d) for d in range(10)], shape=(3, 32, 32), mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970), train_size=73257, test_size=26032,
    ),
}


def _canonical_name(name: str) -> str:
    """Map a user-facing name (any case, '-' or '_', aliases) to one of DATASETS."""
    if not isinstance(name, str):
        raise ValueError(f"data set name must be a string, got {name!r}; known: {', '.join(DATASETS)}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key.replace("-", "_"))
    if key not in ALL_DATASETS:
        raise ValueError(
            f"unknown data set {name!r}; known: {', '.join(ALL_DATASETS)} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return key


def dataset_info(name: str) -> dict:
    """Static facts about a data set: num_classes, classes, shape (C, H, W), mean, std, sizes.

    Needs no download. ``mean`` and ``std`` are per-channel tuples on the 0-1 pixel scale.
    """
    info = _INFO[_canonical_name(name)]
    return {**info, "classes": _classes(_canonical_name(name)), "name": _canonical_name(name)}


def _classes(name: str) -> list[str]:
    if name in ("cifar100", "cifar100_coarse"):
        return list(CIFAR100_FINE if name == "cifar100" else CIFAR100_COARSE)
    return list(_INFO[name]["classes"])


def default_root() -> Path:
    """``$KD_DATA_ROOT`` if set, else ``<home>/data``: the suite's root is ``$KD_HOME``, else the checkout
    holding the current directory, else the checkout the package is imported from, else the current
    directory (:mod:`kd_utils.locations`); never site-packages."""
    from ..locations import data_root
    return data_root()


def cache_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the uint8 cache of ``name`` lives (it may not exist yet)."""
    root = Path(root) if root is not None else default_root()
    return root / f"{_canonical_name(name)}.pt"


# Class names of CIFAR-100 (fine and coarse labels), in label order.
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
