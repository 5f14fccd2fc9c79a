"""Overhead of distillation on MNIST: cached and online teachers, and k students sharing one teacher."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_utils.train_kd import HintonKD, Vanilla, kd_loss
from .core import (KD_ALPHA, KD_T, MNIST_BATCH, SEED, Bench, Figure, _logits, _med, _model, _raw, _sgd, _subset,
                   _train_pass)


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
