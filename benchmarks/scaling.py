"""How cost scales: achieved FLOP/s against a matmul, epoch time against data size, step time against width."""
from __future__ import annotations

import torch

from kd_utils.profiling import flops_per_image
from kd_utils.train_kd import Vanilla
from .core import (CIFAR_BATCH, MNIST_BATCH, SEED, Bench, Figure, SkipFigure, _loglog_slope, _med, _model, _raw,
                   _sgd, _subset, _train_pass, _vgg_batches)


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
