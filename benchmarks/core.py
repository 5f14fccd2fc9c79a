"""What every figure shares: timing helpers, the Figure/Sizes/Bench types and the building blocks
(data subsets, models, one training pass) the figure modules are written with."""
from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kd_utils.config import CIFAR_KD
from kd_utils.data import DataBundle, get_data
from kd_utils.models import build_model
from kd_utils.runtime import autocast, resolve_device, resolve_precision
from kd_utils.train_kd import StepContext

SEED = 0
MNIST_BATCH = 128
CIFAR_BATCH = 256
CIFAR_EPOCH_STEPS = 176  # steps of one CIFAR-10 epoch: ceil(45,000 train images / 256)
KD_T, KD_ALPHA = CIFAR_KD.temperature, CIFAR_KD.alpha  # HintonKD's defaults: the overhead does not depend on them
DEFAULT_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"  # the repository root


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
    # Distillation with augmentation (kd_overhead_augmented_cached, kd_speedup_augmented, teacher_cache_build_s):
    # CIFAR-10 batches of 256 per timed pass and per timed cache build; (architecture, width) of both models.
    aug_batches: int = 20
    aug_teacher: tuple[str, float] = ("vgg13", 0.5)
    aug_student: tuple[str, float] = ("vgg8", 0.25)
    trained_teacher: bool = True  # teacher_cache_build_s may use the trained CIFAR-10 teacher when there is one
    # compile_speedup_<arch>: the (architecture, width) pairs measured in this mode; timed steps per repeat
    compile_models: tuple[tuple[str, float], ...] = (("vgg8", 0.25), ("vgg13", 0.5))
    compile_steps: int = 4
    # time_to_85_cifar_vgg8: cached-plan KD and scratch runs of at most t85_epochs (onecycle over them)
    time_to_85: bool = False
    t85_epochs: int = 8
    t85_student_width: float = 0.25
    t85_max_seconds_per_run: float = 150.0


# Full mode: the original figures take about 10 minutes on a free 2-core CPU (extrapolated from 1-thread quick
# runs on a busy one); time_to_99 is bounded by max_seconds_per_run of training per student arm. The
# augmented-KD figures add about 1.5 minutes, the two compile figures about 2-3 (mostly compilation), and
# time_to_85_cifar_vgg8 at most about 6 (two 8-epoch runs and, the first time, 8 epochs of teacher outputs).
FULL = Sizes(mode="full", repeats=5, mlp_train=None, kd_train=None, vgg_batches=32, vgg_steps=6, bf16_steps=2,
             bf16_models=(("vgg8", 0.25), ("vgg13", 0.5)), acc_train=10_240, acc_test=None,
             scaling_sizes=(6_000, 12_000, 24_000, 48_000), widths=(0.125, 0.25, 0.5), k_students_train=12_800,
             time_to_99=True, teacher_epochs=5, max_epochs=20, max_seconds_per_run=100.0,
             aug_batches=20, compile_steps=4, time_to_85=True, t85_epochs=8, t85_max_seconds_per_run=150.0)
QUICK = Sizes(mode="quick", repeats=3, mlp_train=10_000, kd_train=20_000, vgg_batches=16, vgg_steps=4, bf16_steps=2,
              bf16_models=(("vgg8", 0.25),), acc_train=5_120, acc_test=2_000,
              scaling_sizes=(3_000, 6_000, 12_000, 24_000), widths=(0.125, 0.25, 0.5), k_students_train=10_240,
              aug_batches=8, compile_models=(("vgg8", 0.25),), compile_steps=2)
# Hidden --tiny: the smallest sizes that still exercise every code path (tests).
TINY = Sizes(mode="tiny", repeats=3, mlp_train=1_024, kd_train=1_024, vgg_batches=2, vgg_steps=1, bf16_steps=1,
             bf16_models=(("vgg8", 0.125),), acc_train=512, acc_test=256, scaling_sizes=(256, 512, 1_024),
             widths=(0.125, 0.25), k_students_train=512, mm_size=256, teacher_epochs=1, max_epochs=1,
             max_seconds_per_run=30.0, aug_batches=2, aug_teacher=("vgg13", 0.125), aug_student=("vgg8", 0.125),
             trained_teacher=False, compile_models=(("vgg8", 0.125), ("vgg13", 0.125)), compile_steps=1,
             t85_epochs=1, t85_student_width=0.125, t85_max_seconds_per_run=30.0)


# =====================================================================================================
# Context shared by the figure functions
# =====================================================================================================

class Bench:
    """Sizes, device, precision, clock and cached data sets for one benchmark run.

    ``precision`` ("auto": what ``fit`` picks by default, bf16 on GPUs and CPUs with bf16 units) is the
    one the figures of the augmented-KD, compile and time-to-85 runs train in; the older figures state
    their precision themselves (fp32, or both for bf16_speedup_vgg).
    """

    def __init__(self, sizes: Sizes, device: str | torch.device = "auto",
                 clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] | None = None,
                 preloaded: Mapping[str, DataBundle] | None = None, precision: str = "auto"):
        self.sizes = sizes
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
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
            _, losses = method(x, y, StepContext(teacher={"logits": extras[0]} if extras else {}))
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
    from kd_utils.train_eval import evaluate
    return float(evaluate(model, data, "test", device=device, precision="fp32").accuracy)


def _cpu_flags() -> dict[str, bool]:
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        line = ""
    flags = set(line.split(":", 1)[-1].split())
    return {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def _vgg_batches(b: Bench, n: int, batch_size: int = CIFAR_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` augmented channels_last CIFAR batches made once, so step timings measure compute only."""
    data = _subset(b.data("cifar10"), n * batch_size)
    loader = data.loader("train", batch_size=batch_size, shuffle=True, augment="crop_flip", seed=SEED,
                         device=b.device, drop_last=True, channels_last=True)
    return [(x, y) for x, y in loader]


def _replay(loader, epoch: int = 0):
    """``loader`` set to replay plan epoch ``epoch`` on its next pass (timed repeats see the same batches,
    and ``epoch_extras`` built for one epoch stay valid)."""
    loader.set_epoch(epoch)
    return loader


def _trained_cifar_teacher() -> nn.Module | None:
    """The cpu profile's shared CIFAR-10 teacher (VGG-13 w0.5) when a file of it loads without training
    (checksum and specification verified, see :mod:`kd_utils.teacher`), else None. Never trains one."""
    from kd_utils import teacher as T
    if T.find_teacher("cifar", "cpu") is None:
        return None
    return T.cifar_teacher("cpu", retrain=False, progress=False, verbose=False)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
