"""Numeric formats and compilation: bf16 autocast against fp32, and torch.compile against eager."""
from __future__ import annotations

import contextlib
import tempfile
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from kd_utils.models import build_model
from kd_utils.runtime import cpu_has_fast_bf16
from kd_utils.train_kd import Vanilla
from .core import (CIFAR_BATCH, CIFAR_EPOCH_STEPS, SEED, Bench, Figure, SkipFigure, _cpu_flags, _first_line, _med,
                   _model, _raw, _sgd, _subset, _test_accuracy, _train_pass, _vgg_batches)


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
    from kd_utils.config import TrainConfig
    from kd_utils.train_eval import fit
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


def _compile(module: nn.Module) -> nn.Module:
    """``torch.compile`` applied as ``fit`` applies it with ``TrainConfig(compile=True)``: to the whole
    distiller (forward and loss; backward through AOTAutograd; the optimiser step stays eager)."""
    return torch.compile(module)


@contextlib.contextmanager
def _fresh_inductor_cache() -> Iterator[str | None]:
    """An empty, temporary inductor cache for the duration: the compile time measured is a first run's
    (inductor otherwise reuses graphs compiled by earlier runs from its on-disk cache). Yields the
    folder, or None where this torch has no such hook (the default cache is then used)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # a private hook: without it the default cache is used and said so
        temporary_cache_dir = None
    with tempfile.TemporaryDirectory(prefix="kd_bench_inductor_") as tmp:
        if temporary_cache_dir is None:
            yield None
        else:
            with temporary_cache_dir(tmp):
                yield tmp


def _compile_figure(b: Bench, arch: str) -> Figure:
    """Steady-state eager step / compiled step for ``arch`` at the width ``sizes.compile_models`` gives."""
    import torch._dynamo
    s, dev, prec = b.sizes, b.device, b.precision
    name = f"compile_speedup_{arch}"
    widths = dict(s.compile_models)
    if arch not in widths:
        raise SkipFigure(f"not measured in {s.mode} mode (full mode only): compiling {arch} takes a minute or more "
                         "on a small CPU")
    width = widths[arch]
    batches = _vgg_batches(b, s.compile_steps)
    arms = {}
    for arm in ("eager", "compiled"):
        m = _model(arch, dev, width=width)  # same seed: the same initial weights in both arms
        arms[arm] = [Vanilla(m), _sgd(m.parameters(), weight_decay=5e-4)]
    _train_pass(*arms["eager"], batches[:1], dev, precision=prec)  # a failure here is not the compiler's
    torch._dynamo.reset()  # nothing compiled earlier in this process is reused
    with _fresh_inductor_cache() as cache:
        arms["compiled"][0] = _compile(arms["compiled"][0])
        b.log(f"{name}: compiling {arch} w{width} ({prec}) on the first training step")
        try:
            _, first_s = b.timed(lambda: _train_pass(*arms["compiled"], batches[:1], dev, precision=prec))
        except Exception as e:  # no C++ compiler, unsupported platform, inductor bug: the figure cannot be measured
            raise SkipFigure(f"torch.compile failed on this machine: {_first_line(e)}") from e
        b.log(f"{name}: first compiled step {first_s:.1f} s; {len(batches)} steps per repeat")
        t = b.times({arm: (lambda a=arms[arm]: _train_pass(*a, batches, dev, precision=prec)) for arm in arms})
    eager_s, compiled_s = _med(t["eager"]) / len(batches), _med(t["compiled"]) / len(batches)
    compile_s = max(0.0, first_s - compiled_s)
    n = CIFAR_EPOCH_STEPS
    return Figure(
        name, eager_s / compiled_s, "x", None, True,
        f"eager training step of the same model and batches ({prec}, channels_last)",
        {"model": f"{arch} width {width}", "batch_size": CIFAR_BATCH, "precision": prec, "channels_last": True,
         "steps_per_repeat": len(batches), "eager_step_s": eager_s, "compiled_step_s": compiled_s,
         "first_compiled_step_s": first_s, "compile_s": compile_s, "epoch_steps": n,
         "speedup_over_one_epoch_including_compile": n * eager_s / (n * compiled_s + compile_s),
         "compiled": "torch.compile(distiller), as fit does with TrainConfig(compile=True): forward and loss "
                     "compiled, backward through AOTAutograd, optimiser step eager",
         "compile_note": "compile_s = first compiled step - steady compiled step; fit's last, smaller batch of "
                         "an epoch is compiled once more (a new shape)",
         "inductor_cache": ("empty temporary cache (a first run's compile time; reruns that find the default "
                            "on-disk cache compile faster)") if cache else "the default on-disk cache",
         "times_s": {k: _raw(v) for k, v in t.items()}})


def fig_compile_speedup_vgg8(b: Bench) -> Figure:
    """Steady-state training-step time eager / ``torch.compile``d (compile excluded), VGG-8 w0.25, batch
    256, the run's precision; compile time and the ratio over one CIFAR-10 epoch (176 steps) including
    it in detail."""
    return _compile_figure(b, "vgg8")


def fig_compile_speedup_vgg13(b: Bench) -> Figure:
    """Steady-state training-step time eager / ``torch.compile``d (compile excluded), VGG-13 w0.5, batch
    256, the run's precision; compile time and the ratio over one CIFAR-10 epoch (176 steps) including
    it in detail (full mode only)."""
    return _compile_figure(b, "vgg13")
