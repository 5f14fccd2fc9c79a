"""Benchmarks of the suite's speed claims, each a ratio against a baseline measured in the same run.

    python -m kd_utils.bench [--quick] [--out results] [--only NAME[,NAME]] [--repeats N] [--threads N] [--list]

writes ``<out>/benchmarks.json`` and ``BENCHMARKS.md`` (repository root; ``--md`` elsewhere). Full mode
must fit in about 15 minutes on a free 2-core CPU (estimated 10), ``--quick`` in 2-4 minutes (smaller
data, fewer steps, no time-to-accuracy runs). Every timed quantity is the median of ``repeats`` (>= 3) runs, and the
arms of one ratio are run interleaved (A, B, B, A, ...) so that a slow spell of a shared machine hits
both sides rather than one. Timings are only meaningful on an otherwise idle machine: the load average
at start and end is recorded in ``machine`` for that reason.

Figures (``--list`` prints them):

- ``input_pipeline_speedup_mlp``  seed-style PIL/DataLoader epoch / BatchLoader epoch, 800-800 MLP (>= 3.0)
- ``input_pipeline_share_vgg8``   loader-alone time / training time, VGG-8 w0.25 CIFAR-10 (<= 0.05)
- ``kd_overhead_cached``          KD epoch with cached teacher logits / CE epoch (<= 1.10)
- ``kd_overhead_online``          KD epoch, online teacher / (CE epoch + teacher inference) (<= 1.10)
- ``bf16_speedup_vgg``            fp32 step / bf16-autocast step, channels_last VGG (>= 1.5)
- ``hardware_utilisation_vgg``    achieved training FLOP/s / measured fp32 matmul FLOP/s
- ``time_to_99_mnist_kd``         KD / scratch training seconds to 99% MNIST test accuracy (full mode)
- ``time_to_85_cifar_vgg8``       not measurable within the budget: always listed under "skipped"
- ``cost_scaling_data``           log-log slope of MLP epoch time vs training-set size
- ``cost_scaling_width``          log-log slope of VGG-8 step time vs width multiplier
- ``k_students_shared_teacher``   3 separate online-KD runs / 3 students sharing one teacher pass
- ``batch_crop_speedup``          old 4-D-indexing crop / gather crop (an optimisation, shown as its gain)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import nn

from .cli import positive_int
from .data import DataBundle, get_data
from .fileio import write_json, write_text
from .models import build_model
from .profiling import flops_per_image
from .runtime import autocast, cpu_has_fast_bf16, resolve_device, seed_everything, versions
from .train_kd import HintonKD, Vanilla, kd_loss

__all__ = ["Figure", "Sizes", "SkipFigure", "Bench", "FIGURES", "time_runs", "median_time",
           "interleaved_times", "judge_met", "render_markdown", "run", "main"]

SEED = 0
MNIST_BATCH = 128
CIFAR_BATCH = 256
KD_T, KD_ALPHA = 4.0, 0.9  # HintonKD's defaults: the overhead does not depend on them
DEFAULT_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


# =====================================================================================================
# Timing helpers
# =====================================================================================================

def _check_counts(repeats: int, warmup: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def time_runs(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, *,
              clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before starting and before stopping the clock, so
    asynchronous device work launched by ``fn`` is inside its own timing and nobody else's.
    """
    _check_counts(repeats, warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        times.append(clock() - t0)
    return times


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, *,
                clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None) -> float:
    """Median seconds of ``repeats`` timed calls of ``fn`` (see :func:`time_runs`)."""
    return statistics.median(time_runs(fn, repeats, warmup, clock=clock, sync=sync))


def interleaved_times(fns: Mapping[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1, *,
                      clock: Callable[[], float] = time.perf_counter,
                      sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time several functions round by round: their ratios then see the same machine conditions.

    Every function is called ``warmup`` times first; then each round calls every function once, in
    forward order on even rounds and reverse order on odd ones (so neither always runs first).
    """
    _check_counts(repeats, warmup)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].extend(time_runs(fns[name], 1, 0, clock=clock, sync=sync))
    return out


def _med(times: Sequence[float]) -> float:
    return statistics.median(times)


def _raw(times: Sequence[float]) -> list[float]:
    return [round(t, 5) for t in times]


def _loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log(y) on log(x), and the fit's R^2."""
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(slope), r2


# =====================================================================================================
# Results
# =====================================================================================================

def judge_met(value: float | None, target: float | None, higher_is_better: bool) -> bool | None:
    """Whether ``value`` meets ``target`` (>= when higher is better, else <=); None without a target or value."""
    if target is None or value is None or not math.isfinite(value):
        return None
    return bool(value >= target) if higher_is_better else bool(value <= target)


@dataclass
class Figure:
    """One benchmark figure: a ratio (usually) against a baseline measured in the same run."""
    name: str
    value: float | None
    unit: str
    target: float | None
    higher_is_better: bool
    baseline: str
    detail: dict[str, Any] = field(default_factory=dict)
    met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.met = judge_met(self.value, self.target, self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "target": self.target,
                "higher_is_better": self.higher_is_better, "baseline": self.baseline, "met": self.met,
                "detail": self.detail}


class SkipFigure(Exception):
    """Raised by a figure function that cannot (or should not) be measured in this run; the message says why."""


# =====================================================================================================
# Sizes per mode
# =====================================================================================================

@dataclass(frozen=True)
class Sizes:
    """How much work each figure does. ``None`` for a train size means the whole train split."""
    mode: str
    repeats: int
    mlp_train: int | None  # images per epoch, input_pipeline_speedup_mlp
    kd_train: int | None  # images per epoch, kd_overhead_*
    vgg_batches: int  # batches per timed pass, input_pipeline_share_vgg8
    vgg_steps: int  # training steps per timed repeat, hardware_utilisation_vgg and cost_scaling_width
    bf16_steps: int  # training steps per timed repeat, bf16_speedup_vgg
    bf16_models: tuple[tuple[str, float], ...]
    acc_train: int  # images of the short accuracy run, bf16_speedup_vgg
    acc_test: int | None
    scaling_sizes: tuple[int, ...]
    widths: tuple[float, ...]
    k_students_train: int
    workers: tuple[int, ...] = (0, 1, 2)
    mm_size: int = 2048
    time_to_99: bool = False
    teacher_epochs: int = 4
    max_epochs: int = 12
    max_seconds_per_run: float = 100.0
    t99_train: int | None = None  # training images of the time-to-99 runs (None: the whole split)


# Full mode: about 10 minutes estimated on a free 2-core CPU (extrapolated from 1-thread quick runs on a busy
# one), under the 15-minute budget; time_to_99 is bounded by max_seconds_per_run of training per student arm.
FULL = Sizes(mode="full", repeats=5, mlp_train=None, kd_train=None, vgg_batches=32, vgg_steps=6, bf16_steps=2,
             bf16_models=(("vgg8", 0.25), ("vgg13", 0.5)), acc_train=10_240, acc_test=None,
             scaling_sizes=(6_000, 12_000, 24_000, 48_000), widths=(0.125, 0.25, 0.5), k_students_train=12_800,
             time_to_99=True, teacher_epochs=5, max_epochs=20, max_seconds_per_run=100.0)
QUICK = Sizes(mode="quick", repeats=3, mlp_train=10_000, kd_train=20_000, vgg_batches=16, vgg_steps=4, bf16_steps=2,
              bf16_models=(("vgg8", 0.25),), acc_train=5_120, acc_test=2_000,
              scaling_sizes=(3_000, 6_000, 12_000, 24_000), widths=(0.125, 0.25, 0.5), k_students_train=10_240)
# Hidden --tiny: the smallest sizes that still exercise every code path (tests).
TINY = Sizes(mode="tiny", repeats=3, mlp_train=1_024, kd_train=1_024, vgg_batches=2, vgg_steps=1, bf16_steps=1,
             bf16_models=(("vgg8", 0.125),), acc_train=512, acc_test=256, scaling_sizes=(256, 512, 1_024),
             widths=(0.125, 0.25), k_students_train=512, mm_size=256, teacher_epochs=1, max_epochs=1,
             max_seconds_per_run=30.0)


# =====================================================================================================
# Context shared by the figure functions
# =====================================================================================================

class Bench:
    """Sizes, device, clock and cached data sets for one benchmark run."""

    def __init__(self, sizes: Sizes, device: str | torch.device = "auto",
                 clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] | None = None,
                 preloaded: Mapping[str, DataBundle] | None = None):
        self.sizes = sizes
        self.device = resolve_device(device)
        self.clock = clock
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        self._log = log or _log
        self._data: dict[str, DataBundle] = dict(preloaded or {})  # tests hand in synthetic bundles
        self.memo: dict[str, float] = {}  # measurements one figure can lend another (estimates only)

    def log(self, message: str) -> None:
        self._log(message)

    def data(self, name: str) -> DataBundle:
        """The full data set (train split = 90% of the official training set), loaded once."""
        if name not in self._data:
            self._data[name] = get_data(name)
        return self._data[name]

    def times(self, fns: Mapping[str, Callable[[], Any]], warmup: int = 1) -> dict[str, list[float]]:
        """Interleaved timings of ``fns`` with this run's repeats, clock and device sync."""
        self.log(f"  timing {', '.join(fns)}: {warmup} warm-up + {self.sizes.repeats} interleaved rounds")
        return interleaved_times(fns, self.sizes.repeats, warmup, clock=self.clock, sync=self.sync)

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Call ``fn`` once; return its result and the seconds it took (device work included)."""
        if self.sync is not None:
            self.sync()
        t0 = self.clock()
        result = fn()
        if self.sync is not None:
            self.sync()
        return result, self.clock() - t0


def _log(message: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(f"[bench] {message}", file=sys.stderr)
    except ImportError:  # tqdm is a dependency, but a log line must never be what fails
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# =====================================================================================================
# Building blocks: data, the seeds' input path, one training pass
# =====================================================================================================

def _subset(data: DataBundle, n: int | None, n_test: int | None = None, drop_val: bool = False) -> DataBundle:
    """The bundle with only the first ``n`` training images (None: all) and first ``n_test`` test
    images (None: all); ``drop_val`` empties the validation split (``fit`` then validates on nothing)."""
    changes: dict[str, Any] = {}
    if n is not None and n < len(data.y_train):
        changes.update(x_train=data.x_train[:n], y_train=data.y_train[:n], train_idx=data.train_idx[:n])
    if n_test is not None and n_test < len(data.y_test):
        changes.update(x_test=data.x_test[:n_test], y_test=data.y_test[:n_test])
    if drop_val:
        changes.update(x_val=data.x_val[:0], y_val=data.y_val[:0], val_idx=data.val_idx[:0])
    return dataclasses.replace(data, **changes) if changes else data


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


def _sgd(params: Iterable[nn.Parameter], lr: float = 0.05, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    # The suite's recipes (config.py): SGD, momentum 0.9, Nesterov.
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _model(name: str, device: torch.device, seed: int = SEED, **kwargs: Any) -> nn.Module:
    """A freshly initialised model on ``device``; conv nets in channels_last (as ``fit`` does)."""
    torch.manual_seed(seed)  # the same initial weights for every arm that builds this model
    model = build_model(name, **kwargs).to(device)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def _train_pass(method: nn.Module, opt: torch.optim.Optimizer, batches: Iterable, device: torch.device,
                precision: str = "fp32", channels_last: bool = False, sched=None) -> int:
    """Training steps over ``batches`` the way ``fit`` takes them (autocast forward through the
    distiller, summed losses, zero_grad, backward, optimiser step), without fit's per-epoch
    bookkeeping (metric sums, validation, checkpoints). Returns the number of steps.

    ``channels_last`` converts batches that do not arrive in that layout (torchvision's loader).
    """
    method.train()
    steps = 0
    for x, y, *extras in batches:
        x = x.to(device, non_blocking=True)  # no-op for BatchLoader batches, already on the device
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            _, losses = method(x, y, *extras)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        steps += 1
    return steps


def _drain(batches: Iterable) -> int:
    """Iterate a loader without training: the cost of producing its batches."""
    n = 0
    for _ in batches:
        n += 1
    return n


@torch.no_grad()
def _logits(model: nn.Module, loader: Iterable, device: torch.device) -> torch.Tensor:
    """Eval-mode logits for every batch of an unshuffled loader, in order (on ``device``)."""
    was = model.training
    model.eval()
    out = [model(batch[0].to(device)) for batch in loader]
    model.train(was)
    return torch.cat(out)


def _test_accuracy(model: nn.Module, data: DataBundle, device: torch.device) -> float:
    from .train_eval import evaluate
    return float(evaluate(model, data, "test", device=device, precision="fp32").accuracy)


def _cpu_flags() -> dict[str, bool]:
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        line = ""
    flags = set(line.split(":", 1)[-1].split())
    return {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


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


def fig_kd_overhead_cached(b: Bench) -> Figure:
    """KD epoch with cached teacher logits as loader extras / plain CE epoch, same 800-800 student."""
    s, dev = b.sizes, b.device
    data = _subset(b.data("mnist"), s.kd_train)
    teacher = _model("hinton_teacher", dev, seed=SEED + 1)  # untrained: its logits' values do not change the cost
    cached = _logits(teacher, data.loader("train", batch_size=1024, shuffle=False, device=dev), dev)
    ce_model, kd_model = _model("hinton_student", dev), _model("hinton_student", dev)
    ce, kd = Vanilla(ce_model), HintonKD(kd_model, None, temperature=KD_T, alpha=KD_ALPHA)
    ce_opt, kd_opt = _sgd(ce_model.parameters()), _sgd(kd_model.parameters())
    # Same seed: both loaders give the same batches, the KD one with each sample's logits alongside.
    ce_loader = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev)
    kd_loader = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev, extras=(cached,))
    b.log(f"kd_overhead_cached: {len(data.y_train)} images")
    t = b.times({"ce_epoch": lambda: _train_pass(ce, ce_opt, ce_loader, dev),
                 "kd_epoch": lambda: _train_pass(kd, kd_opt, kd_loader, dev)})
    med = {k: _med(v) for k, v in t.items()}
    return Figure(
        "kd_overhead_cached", med["kd_epoch"] / med["ce_epoch"], "x", 1.10, False,
        "cross-entropy epoch of the same student on the same batches",
        {"images": len(data.y_train), "batch_size": MNIST_BATCH, "student": "hinton_student (800-800)",
         "method": f"HintonKD(T={KD_T}, alpha={KD_ALPHA}) with cached logits passed as loader extras",
         **{f"{k}_s": v for k, v in med.items()}, "times_s": {k: _raw(v) for k, v in t.items()}})


def fig_kd_overhead_online(b: Bench) -> Figure:
    """KD epoch with an online teacher on jittered batches / (CE epoch + teacher inference alone)."""
    s, dev = b.sizes, b.device
    data = _subset(b.data("mnist"), s.kd_train)
    teacher = _model("hinton_teacher", dev, seed=SEED + 1)
    ce_model, kd_model = _model("hinton_student", dev), _model("hinton_student", dev)
    ce, kd = Vanilla(ce_model), HintonKD(kd_model, teacher, temperature=KD_T, alpha=KD_ALPHA)
    ce_opt, kd_opt = _sgd(ce_model.parameters()), _sgd(kd_model.parameters())
    make = lambda: data.loader("train", batch_size=MNIST_BATCH, shuffle=True, augment="jitter", seed=SEED, device=dev)
    ce_loader, kd_loader = make(), make()
    # The teacher-alone pass reads batches made beforehand: the loader's cost is already in the CE epoch.
    frozen = [x for x, _ in make()]

    @torch.no_grad()
    def teacher_only() -> None:
        teacher.eval()
        for x in frozen:
            teacher(x)

    b.log(f"kd_overhead_online: {len(data.y_train)} images, jitter")
    t = b.times({"ce_epoch": lambda: _train_pass(ce, ce_opt, ce_loader, dev),
                 "kd_epoch": lambda: _train_pass(kd, kd_opt, kd_loader, dev),
                 "teacher_inference": teacher_only})
    med = {k: _med(v) for k, v in t.items()}
    return Figure(
        "kd_overhead_online", med["kd_epoch"] / (med["ce_epoch"] + med["teacher_inference"]), "x", 1.10, False,
        "student CE epoch + teacher (hinton_teacher 1200-1200) inference alone over the same batches",
        {"images": len(data.y_train), "batch_size": MNIST_BATCH, "augment": "jitter",
         "teacher": "hinton_teacher (1200-1200, eval mode, no_grad)", "student": "hinton_student (800-800)",
         **{f"{k}_s": v for k, v in med.items()}, "times_s": {k: _raw(v) for k, v in t.items()}})


def _vgg_batches(b: Bench, n: int, batch_size: int = CIFAR_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` augmented channels_last CIFAR batches made once, so step timings measure compute only."""
    data = _subset(b.data("cifar10"), n * batch_size)
    loader = data.loader("train", batch_size=batch_size, shuffle=True, augment="crop_flip", seed=SEED,
                         device=b.device, drop_last=True, channels_last=True)
    return [(x, y) for x, y in loader]


def fig_bf16_speedup_vgg(b: Bench) -> Figure:
    """fp32 step time / bf16-autocast step time (both channels_last) for VGG training, plus test accuracy
    after the same short run in each precision."""
    s, dev = b.sizes, b.device
    batches = _vgg_batches(b, s.bf16_steps)
    per_model: dict[str, Any] = {}
    speedups = []
    for arch, width in s.bf16_models:
        key = f"{arch}_w{width}"
        arms = {}
        for prec in ("fp32", "bf16"):
            m = _model(arch, dev, width=width)
            arms[prec] = (Vanilla(m), _sgd(m.parameters(), weight_decay=5e-4))
        b.log(f"bf16_speedup_vgg: {key}, {len(batches)} steps per repeat")
        t = b.times({prec: (lambda p=prec: _train_pass(arms[p][0], arms[p][1], batches, dev, precision=p))
                     for prec in arms})
        fp32, bf16 = _med(t["fp32"]) / len(batches), _med(t["bf16"]) / len(batches)
        speedups.append(fp32 / bf16)
        per_model[key] = {"fp32_step_s": fp32, "bf16_step_s": bf16, "speedup": fp32 / bf16,
                          "times_s": {k: _raw(v) for k, v in t.items()}}
        if (arch, width) == ("vgg8", 0.25):
            b.memo["vgg8_w0.25_fp32_step_s"] = fp32
    acc = _bf16_accuracy_runs(b)
    flags = _cpu_flags()
    detail: dict[str, Any] = {
        "batch_size": CIFAR_BATCH, "steps_per_repeat": len(batches), "models": per_model,
        "summary": "geometric mean of the per-model speed-ups", "accuracy_run": acc}
    if dev.type == "cuda":
        detail["gpu"] = torch.cuda.get_device_name(dev)
        detail["cuda_bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    else:
        detail["cpu_flags"] = flags
        detail["cpu_has_fast_bf16"] = cpu_has_fast_bf16()
        if not cpu_has_fast_bf16():
            detail["note"] = ("this CPU has neither AMX nor AVX512-BF16 (see cpu_flags), so bf16 matmuls and "
                              "convolutions are emulated with conversions: bf16 is expected to be slower here; "
                              "kd_utils.runtime.resolve_precision('auto') picks fp32 on such CPUs")
    return Figure("bf16_speedup_vgg", float(np.exp(np.mean(np.log(speedups)))), "x", 1.5, True,
                  "fp32 training step of the same model and batches (channels_last both)", detail)


def _bf16_accuracy_runs(b: Bench) -> dict[str, Any]:
    """Test accuracy of VGG-8 w0.25 after one epoch on a small subset, in fp32 and in bf16 (``fit``)."""
    from .config import TrainConfig
    from .train_eval import fit
    s, dev = b.sizes, b.device
    data = _subset(b.data("cifar10"), s.acc_train, s.acc_test, drop_val=True)
    out: dict[str, Any] = {"model": "vgg8 width 0.25", "train_images": len(data.y_train),
                           "test_images": len(data.y_test), "epochs": 1,
                           "recipe": "SGD 0.05 Nesterov, wd 5e-4, onecycle, batch 256, crop_flip"}
    for prec in ("fp32", "bf16"):
        b.log(f"bf16_speedup_vgg: accuracy run, {prec}")
        torch.manual_seed(SEED)
        model = build_model("vgg8", width=0.25)
        cfg = TrainConfig(epochs=1, batch_size=CIFAR_BATCH, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="onecycle", augment="crop_flip", precision=prec,
                          device=str(dev), seed=SEED)
        _, secs = b.timed(lambda: fit(model, data, cfg, progress=False))
        out[f"{prec}_test_acc"] = _test_accuracy(model, data, dev)
        out[f"{prec}_fit_s"] = secs
    return out


def fig_hardware_utilisation_vgg(b: Bench) -> Figure:
    """Achieved training FLOP/s of VGG-8 w0.25 (3 x forward FLOPs per image x images/s) / the FLOP/s of
    a square fp32 ``torch.mm`` on the same device and threads."""
    s, dev = b.sizes, b.device
    batches = _vgg_batches(b, s.vgg_steps)
    model = _model("vgg8", dev, width=0.25)
    fwd_flops = flops_per_image(model, (3, 32, 32))
    method, opt = Vanilla(model), _sgd(model.parameters(), weight_decay=5e-4)
    n = s.mm_size
    g = torch.Generator().manual_seed(SEED)
    a, c = (torch.randn(n, n, generator=g).to(dev) for _ in range(2))
    out = torch.empty(n, n, device=dev)
    mm_reps = 5  # one mm is short: several per timing so the clock's resolution does not matter

    def matmul() -> None:
        for _ in range(mm_reps):
            torch.mm(a, c, out=out)

    b.log(f"hardware_utilisation_vgg: {len(batches)} steps per repeat, mm {n}x{n}")
    t = b.times({"train": lambda: _train_pass(method, opt, batches, dev), "matmul": matmul})
    step_s = _med(t["train"]) / len(batches)
    peak = 2 * n ** 3 * mm_reps / _med(t["matmul"])
    images_per_s = CIFAR_BATCH / step_s
    achieved = 3 * fwd_flops * images_per_s
    return Figure(
        "hardware_utilisation_vgg", achieved / peak, "fraction", None, True,
        f"measured fp32 torch.mm {n}x{n} FLOP/s (same threads)",
        {"model": "vgg8 width 0.25", "batch_size": CIFAR_BATCH, "precision": "fp32", "channels_last": True,
         "forward_flops_per_image": fwd_flops, "train_flops_per_image": 3 * fwd_flops,
         "flops_note": "training = 3 x forward (backward ~ 2 x forward); FlopCounterMode counts conv/linear "
                       "only, so BatchNorm, ReLU and pooling work is not credited",
         "step_s": step_s, "images_per_s": images_per_s, "achieved_gflops": achieved / 1e9,
         "matmul_gflops": peak / 1e9, "threads": torch.get_num_threads(),
         "times_s": {k: _raw(v) for k, v in t.items()}})


def _train_until(b: Bench, method: nn.Module, model: nn.Module, loader, data: DataBundle, target: float,
                 epochs: int) -> dict[str, Any]:
    """Train (SGD Nesterov 0.05, cosine over ``epochs``) until test accuracy >= ``target``, evaluating
    after every epoch. Only training time counts; evaluation is a measurement, not part of the method."""
    s, dev = b.sizes, b.device
    opt = _sgd(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    elapsed, curve = 0.0, []
    for epoch in range(1, epochs + 1):
        _, secs = b.timed(lambda: _train_pass(method, opt, loader, dev, sched=sched))
        elapsed += secs
        acc = _test_accuracy(model, data, dev)
        curve.append({"epoch": epoch, "train_s": round(elapsed, 3), "test_acc": acc})
        b.log(f"  epoch {epoch}: {elapsed:.1f} s, test acc {acc:.4f}")
        if acc >= target:
            return {"reached": True, "seconds": elapsed, "epochs": epoch, "curve": curve}
        if elapsed >= s.max_seconds_per_run:
            break
    return {"reached": False, "seconds": None, "epochs": None, "curve": curve,
            "best_test_acc": max(c["test_acc"] for c in curve)}


def fig_time_to_99_mnist_kd(b: Bench) -> Figure:
    """Training seconds for the 800-800 student to reach 99.0% MNIST test accuracy with KD (cached
    logits of a quickly trained mnist_cnn teacher) / the same from scratch (cross-entropy)."""
    from .train_kd import cache_teacher_logits
    s, dev = b.sizes, b.device
    if not s.time_to_99:
        raise SkipFigure("full mode only (it trains a teacher and two students, about 4 minutes)")
    data, target = _subset(b.data("mnist"), s.t99_train), 0.99
    # Teacher: the seed's CNN, Adam with a cosine decay, jittered inputs (it generalises better).
    teacher = _model("mnist_cnn", dev, seed=SEED + 2)
    t_opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    t_loader = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, augment="jitter", seed=SEED + 2, device=dev)
    t_sched = torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=s.teacher_epochs * len(t_loader))
    b.log(f"time_to_99_mnist_kd: teacher mnist_cnn, {s.teacher_epochs} epochs")
    _, teacher_s = b.timed(lambda: [_train_pass(Vanilla(teacher), t_opt, t_loader, dev, sched=t_sched)
                                    for _ in range(s.teacher_epochs)])
    teacher_acc = _test_accuracy(teacher, data, dev)
    cached, cache_s = b.timed(lambda: cache_teacher_logits(teacher, data, "train", device=dev, precision="fp32"))
    runs = {}
    for arm in ("kd", "scratch"):
        b.log(f"time_to_99_mnist_kd: {arm} student (at most {s.max_epochs} epochs / {s.max_seconds_per_run:.0f} s)")
        student = _model("hinton_student", dev)
        if arm == "kd":
            method = HintonKD(student, None, temperature=KD_T, alpha=KD_ALPHA)
            loader = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev, extras=(cached,))
        else:
            method = Vanilla(student)
            loader = data.loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev)
        runs[arm] = _train_until(b, method, student, loader, data, target, s.max_epochs)
    kd, scratch = runs["kd"], runs["scratch"]
    detail: dict[str, Any] = {
        "target_test_acc": target, "repeats": 1,
        "repeats_note": "one run per arm: repeating three times would triple a budget of minutes",
        "teacher": {"model": "mnist_cnn", "epochs": s.teacher_epochs, "recipe": "Adam 2e-3, cosine, jitter",
                    "train_s": teacher_s, "test_acc": teacher_acc, "logit_cache_s": cache_s},
        "student": "hinton_student (800-800), SGD 0.05 Nesterov, cosine over max epochs, batch 128",
        "kd": {"method": f"HintonKD(T={KD_T}, alpha={KD_ALPHA}), cached logits", **kd},
        "scratch": {"method": "cross-entropy", **scratch},
        "max_epochs": s.max_epochs, "max_train_seconds_per_run": s.max_seconds_per_run,
        "time_to_99_mnist_scratch_s": scratch["seconds"],
        "kd_time_including_teacher_s": (kd["seconds"] + teacher_s + cache_s) if kd["reached"] else None,
        "timing_note": "training seconds only (per-epoch test evaluation excluded)"}
    if kd["reached"] and scratch["reached"]:
        detail["ratio"] = kd["seconds"] / scratch["seconds"]
        value, unit = detail["ratio"], "x"
    elif kd["reached"]:
        detail["ratio"] = None
        detail["explanation"] = (f"the scratch student never reached {target:.1%} within the budget (best "
                                 f"{scratch['best_test_acc']:.2%}): value is the KD time in seconds, ratio undefined")
        value, unit = kd["seconds"], "s"
    else:
        detail["ratio"] = None
        detail["explanation"] = (f"the distilled student did not reach {target:.1%} within the budget (best "
                                 f"{kd['best_test_acc']:.2%}; teacher {teacher_acc:.2%})")
        value, unit = None, "x"
    return Figure("time_to_99_mnist_kd", value, unit, None, False,
                  "training seconds of the same student from scratch (cross-entropy) to the same accuracy", detail)


def fig_time_to_85_cifar_vgg8(b: Bench) -> Figure:
    """Not measured: reaching 85% on CIFAR-10 with VGG-8 takes tens of epochs; always skipped with why."""
    step = b.memo.get("vgg8_w0.25_fp32_step_s")
    estimate = ""
    if step is not None:
        epoch_s = step * (45_000 // CIFAR_BATCH)
        estimate = (f" (measured in this run: about {epoch_s:.0f} s per epoch for VGG-8 w0.25, so 30 epochs "
                    f"= {30 * epoch_s / 60:.0f} min)")
    raise SkipFigure("not bounded: VGG-8 at the CPU width (0.25) needs tens of augmented CIFAR-10 epochs to reach "
                     "85% test accuracy, if it gets there at all, which does not fit beside the other figures in "
                     f"this benchmark's 15-minute budget on a small CPU{estimate}")


def fig_cost_scaling_data(b: Bench) -> Figure:
    """Log-log slope of MLP epoch time vs training-set size (1.0 = cost linear in the data)."""
    s, dev = b.sizes, b.device
    full = b.data("mnist")
    sizes = [n for n in s.scaling_sizes if n <= len(full.y_train)]
    if len(sizes) < 2:
        raise SkipFigure(f"needs two sizes within the {len(full.y_train)}-image train split, got {list(s.scaling_sizes)}")
    model = _model("hinton_student", dev)
    method, opt = Vanilla(model), _sgd(model.parameters())
    loaders = {n: _subset(full, n).loader("train", batch_size=MNIST_BATCH, shuffle=True, seed=SEED, device=dev)
               for n in sizes}
    b.log(f"cost_scaling_data: sizes {sizes}")
    _train_pass(method, opt, loaders[sizes[0]], dev)  # one shared model, warmed once
    t = b.times({str(n): (lambda ld=ld: _train_pass(method, opt, ld, dev)) for n, ld in loaders.items()}, warmup=0)
    med = [_med(t[str(n)]) for n in sizes]
    slope, r2 = _loglog_slope(sizes, med)
    return Figure(
        "cost_scaling_data", slope, "exponent", None, False,
        "log-log fit of epoch time vs training images (1.0 = linear)",
        {"model": "hinton_student (800-800)", "batch_size": MNIST_BATCH, "sizes": sizes,
         "epoch_s": dict(zip(map(str, sizes), med)), "r2": r2, "times_s": {k: _raw(v) for k, v in t.items()}})


def fig_cost_scaling_width(b: Bench) -> Figure:
    """Log-log slope of VGG-8 training step time vs width multiplier (FLOPs grow ~ width^2)."""
    s, dev = b.sizes, b.device
    batches = _vgg_batches(b, s.vgg_steps)
    arms, flops = {}, {}
    for w in s.widths:
        m = _model("vgg8", dev, width=w)
        flops[str(w)] = flops_per_image(m, (3, 32, 32))
        arms[str(w)] = (Vanilla(m), _sgd(m.parameters(), weight_decay=5e-4))
    b.log(f"cost_scaling_width: widths {list(s.widths)}")
    t = b.times({k: (lambda a=a: _train_pass(a[0], a[1], batches, dev)) for k, a in arms.items()})
    step = [_med(t[str(w)]) / len(batches) for w in s.widths]
    slope, r2 = _loglog_slope(s.widths, step)
    flop_slope, _ = _loglog_slope(s.widths, [flops[str(w)] for w in s.widths])
    return Figure(
        "cost_scaling_width", slope, "exponent", None, False,
        "log-log fit of step time vs width multiplier (forward FLOPs scale with the exponent in detail)",
        {"model": "vgg8", "batch_size": CIFAR_BATCH, "precision": "fp32", "widths": list(s.widths),
         "step_s": dict(zip(map(str, s.widths), step)), "r2": r2, "forward_flops_per_image": flops,
         "flops_exponent": flop_slope, "times_s": {k: _raw(v) for k, v in t.items()}})


def _shared_teacher_pass(teacher: nn.Module, students: Sequence[nn.Module], opts: Sequence[torch.optim.Optimizer],
                         loader, device: torch.device) -> None:
    """k students distilled together: one no-grad teacher forward per batch, then each student's
    forward/backward/step with HintonKD's loss (alpha * T^2 KL + (1 - alpha) * CE)."""
    teacher.eval()
    for st in students:
        st.train()
    for x, y in loader:
        with torch.no_grad():
            t_logits = teacher(x)
        for st, opt in zip(students, opts):
            logits = st(x)
            loss = (1 - KD_ALPHA) * F.cross_entropy(logits.float(), y) + KD_ALPHA * kd_loss(logits, t_logits, KD_T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def fig_k_students_shared_teacher(b: Bench, k: int = 3) -> Figure:
    """k separate online-KD runs (each with its own teacher forward and loader pass) / k students trained
    together sharing one teacher forward per batch."""
    s, dev = b.sizes, b.device
    data = _subset(b.data("mnist"), s.k_students_train)
    teacher = _model("hinton_teacher", dev, seed=SEED + 1)
    students = [_model("hinton_student", dev, seed=SEED + 10 + i) for i in range(k)]
    opts = [_sgd(st.parameters()) for st in students]
    make = lambda: data.loader("train", batch_size=MNIST_BATCH, shuffle=True, augment="jitter", seed=SEED, device=dev)
    together_loader, separate_loaders = make(), [make() for _ in range(k)]
    methods = [HintonKD(st, teacher, temperature=KD_T, alpha=KD_ALPHA) for st in students]

    def separate() -> None:
        for method, opt, loader in zip(methods, opts, separate_loaders):
            _train_pass(method, opt, loader, dev)

    b.log(f"k_students_shared_teacher: k={k}, {len(data.y_train)} images, jitter")
    t = b.times({"separate": separate,
                 "together": lambda: _shared_teacher_pass(teacher, students, opts, together_loader, dev)})
    med = {k_: _med(v) for k_, v in t.items()}
    return Figure(
        "k_students_shared_teacher", med["separate"] / med["together"], "x", None, True,
        f"{k} separate HintonKD epochs, each with its own online teacher forward",
        {"k": k, "images": len(data.y_train), "batch_size": MNIST_BATCH, "augment": "jitter",
         "teacher": "hinton_teacher (1200-1200)", "students": "hinton_student (800-800)",
         **{f"{k_}_s": v for k_, v in med.items()}, "times_s": {k_: _raw(v) for k_, v in t.items()}})


def _crop_advanced_indexing(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The first version of ``data._random_crop`` (4-D advanced indexing), kept as this figure's baseline."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def fig_batch_crop_speedup(b: Bench) -> Figure:
    """Optimisation shown: crop+flip of a CIFAR batch of 256 by one flattened ``gather`` (now in
    ``data._random_crop``) vs the first version's 4-D advanced indexing; outputs must be identical."""
    from .data import _random_crop
    x = b.data("cifar10").x_train[:CIFAR_BATCH]
    g1, g2 = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED)
    if not torch.equal(_random_crop(x, 4, True, g1), _crop_advanced_indexing(x, 4, True, g2)):
        raise RuntimeError("gather crop and advanced-indexing crop disagree")
    g = torch.Generator().manual_seed(SEED)
    reps = 20
    t = b.times({"advanced_indexing": lambda: [_crop_advanced_indexing(x, 4, True, g) for _ in range(reps)],
                 "gather": lambda: [_random_crop(x, 4, True, g) for _ in range(reps)]})
    med = {k: _med(v) / reps for k, v in t.items()}
    return Figure("batch_crop_speedup", med["advanced_indexing"] / med["gather"], "x", None, True,
                  "the same crop+flip by 4-D advanced indexing (the loader's first version)",
                  {"batch": list(x.shape), **{f"{k}_ms_per_batch": 1000 * v for k, v in med.items()},
                   "times_s": {k: _raw(v) for k, v in t.items()}})


FIGURES: dict[str, Callable[[Bench], Figure]] = {
    "input_pipeline_speedup_mlp": fig_input_pipeline_speedup_mlp,
    "input_pipeline_share_vgg8": fig_input_pipeline_share_vgg8,
    "kd_overhead_cached": fig_kd_overhead_cached,
    "kd_overhead_online": fig_kd_overhead_online,
    "bf16_speedup_vgg": fig_bf16_speedup_vgg,
    "hardware_utilisation_vgg": fig_hardware_utilisation_vgg,
    "time_to_99_mnist_kd": fig_time_to_99_mnist_kd,
    "time_to_85_cifar_vgg8": fig_time_to_85_cifar_vgg8,
    "cost_scaling_data": fig_cost_scaling_data,
    "cost_scaling_width": fig_cost_scaling_width,
    "k_students_shared_teacher": fig_k_students_shared_teacher,
    "batch_crop_speedup": fig_batch_crop_speedup,
}


# =====================================================================================================
# Running and reporting
# =====================================================================================================

def machine_info(device: torch.device) -> dict[str, Any]:
    """What the timings ran on, including the load average (a busy machine inflates every figure)."""
    v = versions()
    info: dict[str, Any] = {"processor": v.get("processor"), "logical_cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": str(device),
                            "cpu_flags": _cpu_flags(), "cpu_has_fast_bf16": cpu_has_fast_bf16()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["summary"] = (f"{info.get('gpu') or v.get('processor')}, device {device}, "
                       f"torch threads: {info['torch_threads']}")
    return info


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run(names: Sequence[str], sizes: Sizes, device: str | torch.device = "auto") -> tuple[dict[str, Any], int]:
    """Measure the named figures; return the results document and the number of figures that failed."""
    from tqdm import tqdm
    b = Bench(sizes, device)
    machine = machine_info(b.device)
    machine["load_average_start"] = _load()
    started = time.perf_counter()
    figures, skipped, errors = [], [], 0
    for name in tqdm(names, desc="benchmarks", unit="figure", file=sys.stderr):
        seed_everything(SEED)  # each figure's numbers do not depend on which ran before it
        t0 = time.perf_counter()
        try:
            fig = FIGURES[name](b)
        except SkipFigure as e:
            skipped.append({"name": name, "reason": str(e)})
            b.log(f"{name}: skipped: {e}")
            continue
        except Exception as e:  # recorded and reported, never swallowed: the exit status says so too
            errors += 1
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            skipped.append({"name": name, "reason": f"error: {type(e).__name__}: {e}", "traceback": tb})
            continue
        fig.detail["bench_elapsed_s"] = round(time.perf_counter() - t0, 2)
        figures.append(fig.to_dict())
        b.log(f"{name}: {_fmt(fig.value)} {fig.unit} (target {_target_text(fig.to_dict())}, met {_met_text(fig.met)})")
    machine["load_average_end"] = _load()
    results = {"machine": machine, "versions": versions(),
               "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "mode": sizes.mode, "wall_time_s": round(time.perf_counter() - started, 2),
               "repeats": sizes.repeats, "figures": figures, "skipped": skipped}
    return results, errors


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3g}"
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def _target_text(fig: Mapping[str, Any]) -> str:
    if fig.get("target") is None:
        return "none"
    return f"{'>=' if fig['higher_is_better'] else '<='} {_fmt(float(fig['target']))}"


def _met_text(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def _inline(val: Any) -> str:
    """A nested detail value on one line: ``a=1.23, b={c=4.56}``; timing lists and curves omitted."""
    if isinstance(val, Mapping):
        return ", ".join(f"{k}={{{_inline(v)}}}" if isinstance(v, Mapping) else f"{k}={_inline(v)}"
                         for k, v in val.items() if k not in ("times_s", "curve"))
    if isinstance(val, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in val) + "]"
    return _fmt(val)


def _detail_lines(detail: Mapping[str, Any]) -> list[str]:
    """One bullet per detail entry; raw timing lists are left to the JSON."""
    lines = []
    for key, val in detail.items():
        if key == "times_s":
            continue
        if isinstance(val, Mapping):
            text = _inline(val)
            if "curve" in val:
                text += "; test acc by epoch: " + ", ".join(f"{c['test_acc']:.4f}" for c in val["curve"])
        elif isinstance(val, (list, tuple)):
            text = ", ".join(_fmt(v) for v in val)
        else:
            text = _fmt(val)
        lines.append(f"- {key}: {text}")
    return lines


def render_markdown(results: Mapping[str, Any], json_path: str | os.PathLike = "results/benchmarks.json") -> str:
    """The human-readable report (BENCHMARKS.md) of a results document written to ``json_path``."""
    m, v = results.get("machine", {}), results.get("versions", {})
    out = ["# Benchmarks", "",
           f"Generated by `python -m kd_utils.bench{' --quick' if results.get('mode') == 'quick' else ''}` "
           f"(do not edit by hand; rerun it). Raw numbers: `{json_path}`.", "",
           f"- Date: {results.get('date')}",
           f"- Mode: {results.get('mode')} (every timing is the median of {results.get('repeats')} interleaved repeats)",
           f"- Wall time: {_fmt(results.get('wall_time_s'))} s",
           f"- Machine: {m.get('summary', m)}",
           f"- Logical CPUs: {m.get('logical_cpus')}; CPU bf16 units (AMX / AVX512-BF16): "
           f"{'yes' if m.get('cpu_has_fast_bf16') else 'no'}",
           f"- Load average at start / end: {m.get('load_average_start')} / {m.get('load_average_end')} "
           "(timings are trustworthy only when this is well below the number of CPUs)", "",
           "## Library versions", "", "| library | version |", "|---|---|"]
    out += [f"| {k} | {val} |" for k, val in v.items()]
    out += ["", "## Figures", "", "| Figure | Value | Unit | Target | Met | Baseline |", "|---|---|---|---|---|---|"]
    for fig in results.get("figures", []):
        out.append(f"| `{fig['name']}` | {_fmt(fig['value'])} | {fig['unit']} | {_target_text(fig)} | "
                   f"{_met_text(fig['met'])} | {fig['baseline']} |")
    skipped = results.get("skipped", [])
    if skipped:
        out += ["", "## Skipped", "", "| Figure | Reason |", "|---|---|"]
        out += [f"| `{s['name']}` | {s['reason'].splitlines()[0] if s['reason'] else ''} |" for s in skipped]
    out += ["", "## Details", ""]
    for fig in results.get("figures", []):
        out += [f"### `{fig['name']}`", "", *_detail_lines(fig.get("detail", {})), ""]
    return "\n".join(out).rstrip() + "\n"


def _parse_only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kd_utils.bench",
                                description="Measure the suite's speed figures; write <out>/benchmarks.json and "
                                            "BENCHMARKS.md. Run on an otherwise idle machine.")
    p.add_argument("--quick", action="store_true", help="smaller sizes, 2-4 minutes, no time-to-accuracy runs")
    p.add_argument("--out", default="results", help="folder for benchmarks.json (default: results)")
    p.add_argument("--md", default=str(DEFAULT_MD), help="where to write the Markdown report (default: %(default)s)")
    p.add_argument("--only", type=_parse_only, action="append", default=None, metavar="NAME[,NAME]",
                   help="run only these figures (repeatable)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats per measurement (default: 5 full, 3 quick; at least 3)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: ~1k images, every code path
    return p


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (so the report does not carry a home directory)."""
    try:
        return str(Path(path).resolve().relative_to(DEFAULT_MD.parent))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 when a figure failed with an error."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, fn in FIGURES.items():
            print(f"{name:28s} {' '.join((fn.__doc__ or '').split())}")
        return 0
    names = [n for group in args.only for n in group] if args.only else list(FIGURES)
    names = list(dict.fromkeys(names))
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 3:
            build_parser().error(f"--repeats must be at least 3 (every figure is a median of >= 3 runs), got {args.repeats}")
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        results, errors = run(names, sizes, args.device)
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called in-process (tests, notebooks)
    json_path = write_json(Path(args.out) / "benchmarks.json", results)
    md_path = write_text(args.md, render_markdown(results, _display_path(json_path)))
    print(f"wrote {json_path} and {md_path} ({results['mode']} mode, {results['wall_time_s']:.0f} s)")
    for fig in results["figures"]:
        print(f"  {fig['name']:28s} {_fmt(fig['value']):>8s} {fig['unit']:9s} target {_target_text(fig):8s} "
              f"met {_met_text(fig['met']).strip('*')}")
    for s in results["skipped"]:
        print(f"  {s['name']:28s} skipped: {s['reason'].splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
