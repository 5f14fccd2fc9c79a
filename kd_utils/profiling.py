"""Model cost measurements: parameters, FLOPs, checkpoint size and latency.

FLOPs come from torch's own ``FlopCounterMode`` (which counts 2 FLOPs per
multiply-accumulate); nothing here hand-derives operator costs. Every function
leaves the model's training mode as it found it.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "count_parameters",
    "flops_per_image",
    "spec_flops",
    "width_for_flops",
    "checkpoint_size_bytes",
    "latency",
    "profile_model",
    "compare_models",
    "estimate_training_s",
    "format_duration",
    "describe_estimate",
]

LONG_TRAINING_S = 300.0  # "more than a few minutes": a training above this is announced, or refused unasked


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min`` or ``2.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_training_s(model: nn.Module, input_shape: Sequence[int], cfg, n_train: int, n_val: int = 0,
                        num_classes: int | None = None, steps: int = 2,
                        bound_s: float = LONG_TRAINING_S) -> dict[str, Any]:
    """How long ``fit(model, data, cfg)`` would take on this machine, measured before it starts:
    training steps (cross-entropy, ``cfg``'s optimiser, batch size, device and precision, channels-last
    for conv nets) and one evaluation pass are timed on a batch of random images of ``input_shape``,
    then scaled to ``cfg.epochs`` epochs of ``n_train`` training and ``n_val`` validation images.

    The first step includes one-off set-up, so it is an upper bound: when it already puts the whole
    training under ``bound_s``, nothing more is timed (``"upper_bound": True``); else ``steps`` more
    steps are. Data loading, augmentation and teacher passes are not included (in-memory batches cost
    a few percent of a step, BENCHMARKS.md). The model is trained on random data: pass a throw-away
    instance. Returns ``{"seconds", "step_s", "steps_per_epoch", "epochs", "train_images", "device",
    "precision", "upper_bound", "text"}``; ``text`` is a one-line summary."""
    import math

    import torch.nn.functional as F

    from .runtime import autocast, resolve_device, resolve_precision
    from .train_eval import make_optimizer, uses_channels_last
    shape = _check_input_shape(input_shape)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model = model.to(device)
    batch = max(1, min(cfg.batch_size, n_train))
    x = torch.randn(batch, *shape, device=device)
    if uses_channels_last(model) and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    k = num_classes

    def step() -> None:
        nonlocal k
        with autocast(device, precision):
            out = model(x).float()
        k = k or out.shape[1]
        loss = F.cross_entropy(out, torch.randint(0, k, (batch,), device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad(), autocast(device, precision):
            model(x)

    def timed(fn, n: int = 1) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / n

    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    val_batches = math.ceil(n_val / batch) if n_val else 0
    model.train()
    step_s = timed(step)   # includes one-off set-up: an upper bound
    eval_s = step_s / 2    # a forward pass costs about a third of a training step: bounded above by half
    upper = cfg.epochs * (steps_per_epoch * step_s + val_batches * eval_s) <= bound_s
    if not upper:
        step_s = timed(step, max(1, steps))
        model.eval()
        eval_s = timed(forward)
    seconds = cfg.epochs * (steps_per_epoch * step_s + val_batches * eval_s)
    est = {"seconds": seconds, "step_s": step_s, "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs,
           "train_images": n_train, "device": str(device), "precision": precision, "upper_bound": upper}
    return {**est, "text": describe_estimate(est)}


def describe_estimate(est: Mapping[str, Any]) -> str:
    """One line from :func:`estimate_training_s`'s numbers."""
    return (f"estimated {'at most ' if est.get('upper_bound') else ''}{format_duration(est['seconds'])} on this "
            f"machine ({est['epochs']} epoch(s) x {est['steps_per_epoch']} steps of {est['step_s']:.2f} s measured, "
            f"{est['device']}, {est['precision']})")


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a sequence of ints like (C, H, W), got {input_shape!r}") from None
    if len(shape) == 0 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be non-empty with positive sizes, got {tuple(input_shape)}")
    return shape


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter/buffer (CPU/float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device, torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode and restore each submodule's own flag afterwards.

    Restoring per submodule (not just ``model.train(was_training)``) keeps a
    deliberately frozen sub-block, e.g. a BN layer kept in eval, as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def flops_per_image(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a single image of shape ``input_shape`` = (C, H, W).

    Measured with ``torch.utils.flop_counter.FlopCounterMode`` on a batch of 1, in
    eval mode and under ``torch.no_grad``. Operators torch does not count (e.g.
    activations, pooling, normalisation) contribute 0.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = _check_input_shape(input_shape)
    device, dtype = _model_device_dtype(model)
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def spec_flops(name: str, input_shape: Sequence[int] = (3, 32, 32), **kwargs: Any) -> int:
    """:func:`flops_per_image` of the registered model ``name`` built with ``kwargs``, on the meta device:
    no weights are allocated or initialised (so the global random state is left alone)."""
    from .models import build_model
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    return flops_per_image(model, input_shape)


def width_for_flops(name: str, target_flops: float, input_shape: Sequence[int] = (3, 32, 32),
                    **kwargs: Any) -> float:
    """The width multiplier at which model ``name`` (a registered model taking ``width``, e.g. ``"vgg8"``)
    costs ``target_flops`` FLOPs per image: e.g. the wide student with the FLOPs of an ensemble,
    ``width_for_flops("vgg8", 5 * spec_flops("vgg8", width=0.25))``. ``kwargs`` go to the constructor.

    Found by bisection: a model's channel counts are whole numbers, so its FLOPs are a non-decreasing step
    function of the width and the target is bracketed between two adjacent steps; the width of the step
    nearer the target is returned (the bracket's end, so the width builds exactly that model). Raises
    ``ValueError`` when the target is below the model's smallest cost or above its cost at width 1024."""
    if "width" in kwargs:
        raise ValueError("width_for_flops finds the width itself: do not pass width")
    if isinstance(target_flops, bool) or not isinstance(target_flops, (int, float)) or not (
            target_flops > 0 and target_flops < float("inf")):
        raise ValueError(f"target_flops must be a finite number > 0, got {target_flops!r}")
    try:
        cost = lambda w: spec_flops(name, input_shape, width=w, **kwargs)  # noqa: E731
        lo, hi = 1e-3, 1.0
        f_lo = cost(lo)
    except ValueError as e:
        raise ValueError(f"width_for_flops needs a registered model whose constructor takes width: {e}") from None
    if f_lo > target_flops:
        raise ValueError(f"target_flops {target_flops:.4g} is below {name}'s smallest cost ({f_lo} FLOPs at width {lo})")
    f_hi = cost(hi)
    while f_hi < target_flops:
        if hi >= 1024:
            raise ValueError(f"target_flops {target_flops:.4g} is above {name}'s cost at width {hi:g} ({f_hi} FLOPs)")
        lo, f_lo, hi = hi, f_hi, hi * 2
        f_hi = cost(hi)
    while hi - lo > 1e-7 * hi:  # f(lo) <= target <= f(hi) throughout
        mid = (lo + hi) / 2
        f_mid = cost(mid)
        if f_mid < target_flops:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    best, f_best = (hi, f_hi) if f_hi - target_flops <= target_flops - f_lo else (lo, f_lo)
    for digits in range(2, 8):  # the shortest decimal width that builds the same model, for readable specs
        w = round(best, digits)
        if w > 0 and cost(w) == f_best:
            return float(w)
    return float(best)


def checkpoint_size_bytes(model: nn.Module) -> int:
    """Bytes taken by ``torch.save(model.state_dict())`` (serialised in memory)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Wall-clock forward latency per batch.

    Returns ``median_s``, ``mean_s``, ``std_s`` (seconds per batch of ``batch_size``)
    and ``images_per_s`` (batch_size / median). If ``device`` is given the model
    is moved there (and left there, as ``nn.Module.to`` is in-place); otherwise the
    model's current device is used.
    """
    shape = _check_input_shape(input_shape)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if device is not None:
        model.to(device)
    dev, dtype = _model_device_dtype(model)
    if device is not None:
        dev = torch.device(device)
    x = torch.randn((batch_size, *shape), device=dev, dtype=dtype)
    times: list[float] = []
    with _eval_mode(model), torch.no_grad():
        for _ in range(warmup):
            model(x)
        _sync(dev)
        for _ in range(repeats):
            # Synchronise on both sides so CUDA's async launches are included in the timing.
            _sync(dev)
            t0 = time.perf_counter()
            model(x)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "median_s": median,
        "mean_s": statistics.fmean(times),
        "std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "images_per_s": batch_size / median if median > 0 else float("inf"),
    }


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int],
    name: str | None = None,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 20,
    warmup: int = 3,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """One-row cost profile of a model.

    Keys: ``name`` (if given), ``params``, ``trainable_params``, ``flops``,
    ``size_bytes``, ``size_mb`` (10**6 bytes), ``latency_b{B}_ms`` (median per
    batch) and ``throughput_b{B}`` (images/s) for each batch size, and
    ``throughput`` = images/s at the largest batch size.
    """
    if not batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    row: dict[str, Any] = {}
    if name is not None:
        row["name"] = name
    size = checkpoint_size_bytes(model)
    row.update(
        params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        flops=flops_per_image(model, input_shape),
        size_bytes=size,
        size_mb=size / 1e6,
    )
    for b in batch_sizes:
        lat = latency(model, input_shape, batch_size=int(b), repeats=repeats, warmup=warmup, device=device)
        row[f"latency_b{int(b)}_ms"] = lat["median_s"] * 1e3
        row[f"throughput_b{int(b)}"] = lat["images_per_s"]
    row["throughput"] = row[f"throughput_b{int(max(batch_sizes))}"]
    return row


def compare_models(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    baseline: str | None = None,
    **kw: Any,
):
    """Profile several models into a ``pandas.DataFrame`` indexed by model name.

    Besides the :func:`profile_model` columns it adds, relative to ``baseline``
    (default: the first model), ``speedup_vs_<baseline>`` (model ``throughput`` /
    baseline ``throughput``, i.e. images/s at the largest batch size; >1 means
    faster) and
    ``param_ratio`` (model params / baseline params). ``kw`` goes to ``profile_model``.
    """
    import pandas as pd

    if not models:
        raise ValueError("models must contain at least one model")
    names = list(models)
    if baseline is None:
        baseline = names[0]
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    rows = [profile_model(m, input_shape, name=n, **kw) for n, m in models.items()]
    df = pd.DataFrame(rows).set_index("name")
    # Throughput at the largest batch is less dominated by Python call overhead
    # than batch-1 latency, so it reflects the models' compute cost better.
    df[f"speedup_vs_{baseline}"] = df["throughput"] / df.loc[baseline, "throughput"]
    ref_params = df.loc[baseline, "params"]
    df["param_ratio"] = df["params"] / ref_params if ref_params else float("nan")
    return df
