"""Input-pipeline figures: the seeds' PIL/DataLoader path against BatchLoader, and the loader's share
of a VGG-8 training pass."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image

from kd_utils.data import DataBundle
from kd_utils.train_kd import Vanilla
from .core import (CIFAR_BATCH, MNIST_BATCH, SEED, Bench, Figure, _drain, _med, _model, _raw, _sgd, _subset,
                   _train_pass)


class SeedStyleDataset(torch.utils.data.Dataset):
    """The seed notebooks' input path: one PIL image per item, through per-sample torchvision transforms.

    Items are built like torchvision's MNIST/CIFAR10 datasets build theirs (``Image.fromarray`` on the
    stored uint8 array), over the same uint8 images our :class:`~kd_utils.data.BatchLoader` reads.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable):
        arr = x.numpy()
        # MNIST-like: (H, W) "L" images; CIFAR: (H, W, 3) "RGB" images, as torchvision stores them.
        self.images = arr[:, 0] if arr.shape[1] == 1 else np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def _seed_loader(data: DataBundle, batch_size: int, num_workers: int, device: torch.device,
                 augment: bool = False, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """torchvision transforms in a ``DataLoader``, the way the seed notebooks fed their models."""
    from torchvision import transforms
    steps = [transforms.RandomCrop(data.x_train.shape[-1], padding=4), transforms.RandomHorizontalFlip()] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    return torch.utils.data.DataLoader(
        SeedStyleDataset(data.x_train, data.y_train, transform), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, drop_last=drop_last, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(SEED))


def _workers_note() -> str:
    return (f"{os.cpu_count()} logical CPUs: DataLoader workers (1 torch thread each) compete with the "
            f"training process's {torch.get_num_threads()} thread(s) for the same cores; workers are not persistent "
            "(the DataLoader default the seeds used), so their start-up is paid every epoch")


# =====================================================================================================
# Figures
# =====================================================================================================

def fig_input_pipeline_speedup_mlp(b: Bench) -> Figure:
    """Epoch time of the 800-800 MLP fed the seeds' way (PIL + ToTensor + Normalize per sample in a
    DataLoader, best of num_workers in ``sizes.workers``) divided by the epoch time with BatchLoader."""
    s, dev = b.sizes, b.device
    data = _subset(b.data("mnist"), s.mlp_train)
    n = len(data.y_train)
    model = _model("hinton_student", dev)
    method, opt = Vanilla(model), _sgd(model.parameters())
    ours = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev)
    seeds = {w: _seed_loader(data, MNIST_BATCH, w, dev) for w in s.workers}
    # One model for every arm: its speed does not depend on the weights, and it is warm after one pass.
    b.log(f"input_pipeline_speedup_mlp: {n} images, workers {list(s.workers)}")
    _train_pass(method, opt, ours, dev)
    fns = {"ours": lambda: _train_pass(method, opt, ours, dev)}
    fns.update({f"seeds_w{w}": (lambda dl=dl: _train_pass(method, opt, dl, dev)) for w, dl in seeds.items()})
    # Loader-alone passes explain the ratio: the speed-up cannot exceed seeds_epoch / (ours_epoch - ours_loader).
    fns["ours_loader_only"] = lambda: _drain(ours)
    fns["seeds_w0_loader_only"] = lambda: _drain(seeds[0] if 0 in seeds else next(iter(seeds.values())))
    t = b.times(fns, warmup=0)
    med = {k: _med(v) for k, v in t.items()}
    best_w = min(s.workers, key=lambda w: med[f"seeds_w{w}"])
    seeds_best = med[f"seeds_w{best_w}"]
    compute = med["ours"] - med["ours_loader_only"]
    return Figure(
        "input_pipeline_speedup_mlp", seeds_best / med["ours"], "x", 3.0, True,
        f"seed-style DataLoader epoch (PIL + ToTensor + Normalize per sample, best num_workers of {list(s.workers)})",
        {"images": n, "batch_size": MNIST_BATCH, "batches": len(ours), "model": "hinton_student (784-800-800-10)",
         "step": "forward + backward + SGD(momentum 0.9, Nesterov) step, fp32",
         "ours_epoch_s": med["ours"], "best_num_workers": best_w, "seeds_epoch_s_best": seeds_best,
         **{f"seeds_epoch_s_workers_{w}": med[f"seeds_w{w}"] for w in s.workers},
         "ours_loader_only_s": med["ours_loader_only"], "seeds_loader_only_s_workers_0": med["seeds_w0_loader_only"],
         "speedup_bound_if_loading_were_free": seeds_best / compute if compute > 0 else None,
         "workers_note": _workers_note(), "times_s": {k: _raw(v) for k, v in t.items()}})


def fig_input_pipeline_share_vgg8(b: Bench) -> Figure:
    """Share of a VGG-8 training pass spent producing batches: time(iterate BatchLoader alone) /
    time(training over the same batches), crop_flip, channels_last, fp32, batch 256."""
    s, dev = b.sizes, b.device
    data = _subset(b.data("cifar10"), s.vgg_batches * CIFAR_BATCH)
    model = _model("vgg8", dev, width=0.25)
    method, opt = Vanilla(model), _sgd(model.parameters(), weight_decay=5e-4)
    ours = data.loader("train", batch_size=CIFAR_BATCH, shuffle=True, augment="crop_flip", seed=SEED, device=dev,
                       drop_last=True, channels_last=True)
    # The torchvision alternative in its serial form (num_workers=0): its share is then exactly the
    # loading fraction, with no overlap to account for.
    tv = _seed_loader(data, CIFAR_BATCH, 0, dev, augment=True, drop_last=True)
    b.log(f"input_pipeline_share_vgg8: {len(ours)} batches of {CIFAR_BATCH}")
    _train_pass(method, opt, ours, dev)  # warm-up
    t = b.times({"ours_loader_only": lambda: _drain(ours),
                 "ours_train": lambda: _train_pass(method, opt, ours, dev),
                 "torchvision_loader_only": lambda: _drain(tv),
                 "torchvision_train": lambda: _train_pass(method, opt, tv, dev, channels_last=True)}, warmup=0)
    med = {k: _med(v) for k, v in t.items()}
    b.memo["vgg8_w0.25_fp32_step_s"] = med["ours_train"] / len(ours)
    return Figure(
        "input_pipeline_share_vgg8", med["ours_loader_only"] / med["ours_train"], "fraction", 0.05, False,
        "training pass over the same batches with the same loader (forward + backward + SGD step)",
        {"batches": len(ours), "batch_size": CIFAR_BATCH, "model": "vgg8 width 0.25", "augment": "crop_flip",
         "precision": "fp32", "channels_last": True, **{f"{k}_s": v for k, v in med.items()},
         "torchvision_share": med["torchvision_loader_only"] / med["torchvision_train"],
         "torchvision_note": "RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize per PIL "
                             "image, DataLoader num_workers=0",
         "times_s": {k: _raw(v) for k, v in t.items()}})
