"""Distillation with augmentation at the cost of plain training: cached teacher outputs of an augmentation
plan (:mod:`kd_utils.plans`) against cross-entropy and against an online teacher, and what the cache costs.

All three figures use CIFAR-10, crop+flip, batch 256, one epoch of the plan over the first
``sizes.aug_batches * 256`` training images, the VGG-13 w0.5 teacher and VGG-8 w0.25 student of the
cpu profile (smaller in tests), channels_last, and the run's precision (:attr:`Bench.precision`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_utils.data import DataBundle
from kd_utils.plans import STORAGE_DTYPE, AugmentationPlan, teacher_outputs
from kd_utils.runtime import autocast
from kd_utils.train_kd import HintonKD, Vanilla, kd_loss
from .core import (CIFAR_BATCH, KD_ALPHA, KD_T, SEED, Bench, Figure, _med, _model, _raw, _replay, _sgd, _subset,
                   _train_pass, _trained_cifar_teacher)


def _plan_setup(b: Bench) -> tuple[DataBundle, AugmentationPlan, nn.Module]:
    """The measured subset, a one-epoch crop+flip plan over it, and an (untrained) teacher: the cost of
    a forward pass does not depend on the weights."""
    s = b.sizes
    data = _subset(b.data("cifar10"), s.aug_batches * CIFAR_BATCH)
    plan = AugmentationPlan(augment="crop_flip", batch_size=CIFAR_BATCH, seed=SEED, epochs=1)
    arch, width = s.aug_teacher
    return data, plan, _model(arch, b.device, seed=SEED + 1, width=width)


def _build(b: Bench, teacher: nn.Module, data: DataBundle, plan: AugmentationPlan, cache_dir: str | Path):
    """Teacher outputs of ``plan`` built afresh into ``cache_dir`` (then the teacher back in channels_last)."""
    outs = teacher_outputs(teacher, data, plan, cache_dir=cache_dir, device=b.device, precision=b.precision,
                           progress=False)
    teacher.to(memory_format=torch.channels_last)  # teacher_outputs hands the teacher back contiguous
    return outs


def _kd_loader(data: DataBundle, plan: AugmentationPlan, b: Bench, logits: torch.Tensor):
    """The plan's loader with the cached outputs of each position as the batch's extra."""
    return data.loader("train", batch_size=plan.batch_size, shuffle=True, augment=plan.augment, seed=plan.seed,
                       device=b.device, channels_last=True, epoch_extras=(logits,))


def _same_batches(a, c) -> None:
    """Both loaders replay the same plan: their first batches must be identical."""
    xa, ya, *_ = next(iter(_replay(a)))
    xc, yc, *_ = next(iter(_replay(c)))
    if not (torch.equal(xa, xc) and torch.equal(ya, yc)):
        raise RuntimeError("the two arms' loaders do not replay the same augmentation plan")


def _student(b: Bench) -> tuple[nn.Module, torch.optim.Optimizer]:
    arch, width = b.sizes.aug_student
    m = _model(arch, b.device, width=width)
    return m, _sgd(m.parameters(), weight_decay=5e-4)


def _common_detail(b: Bench, data: DataBundle, plan: AugmentationPlan) -> dict[str, Any]:
    s = b.sizes
    return {"images": len(data.y_train), "batch_size": plan.batch_size, "augment": plan.augment,
            "teacher": f"{s.aug_teacher[0]} width {s.aug_teacher[1]} (eval mode, no_grad)",
            "student": f"{s.aug_student[0]} width {s.aug_student[1]}", "precision": b.precision,
            "channels_last": True}


def fig_kd_overhead_augmented_cached(b: Bench) -> Figure:
    """KD training pass over crop+flip CIFAR-10 batches, HintonKD reading the teacher's cached plan
    outputs (epoch_extras) / a cross-entropy pass of the same VGG-8 student over the same batches."""
    dev, prec = b.device, b.precision
    data, plan, teacher = _plan_setup(b)
    with tempfile.TemporaryDirectory(prefix="kd_bench_cache_") as tmp:
        outs = _build(b, teacher, data, plan, tmp)
    (ce_model, ce_opt), (kd_model, kd_opt) = _student(b), _student(b)
    ce, kd = Vanilla(ce_model), HintonKD(kd_model, None, temperature=KD_T, alpha=KD_ALPHA)
    ce_loader, kd_loader = plan.loader(data, dev, channels_last=True), _kd_loader(data, plan, b, outs.logits)
    _same_batches(ce_loader, kd_loader)
    b.log(f"kd_overhead_augmented_cached: {len(kd_loader)} batches, crop_flip, {prec}")
    t = b.times({"ce_pass": lambda: _train_pass(ce, ce_opt, _replay(ce_loader), dev, precision=prec),
                 "kd_pass": lambda: _train_pass(kd, kd_opt, _replay(kd_loader), dev, precision=prec)})
    med = {k: _med(v) for k, v in t.items()}
    return Figure(
        "kd_overhead_augmented_cached", med["kd_pass"] / med["ce_pass"], "x", 1.10, False,
        "cross-entropy pass of the same student over the same augmented batches (same plan)",
        {**_common_detail(b, data, plan), "batches": len(kd_loader),
         "method": f"HintonKD(T={KD_T}, alpha={KD_ALPHA}) reading cached fp16 plan outputs (epoch_extras)",
         "cache_bytes": outs.nbytes, **{f"{k}_s": v for k, v in med.items()},
         "times_s": {k: _raw(v) for k, v in t.items()}})


def fig_kd_speedup_augmented(b: Bench) -> Figure:
    """KD training pass with the online VGG-13 teacher (a teacher forward every batch) / the same KD
    pass reading the teacher's cached plan outputs, crop+flip CIFAR-10, same batches."""
    dev, prec = b.device, b.precision
    data, plan, teacher = _plan_setup(b)
    with tempfile.TemporaryDirectory(prefix="kd_bench_cache_") as tmp:
        outs, build_s = b.timed(lambda: _build(b, teacher, data, plan, tmp))
    (on_model, on_opt), (ca_model, ca_opt) = _student(b), _student(b)
    online = HintonKD(on_model, teacher, temperature=KD_T, alpha=KD_ALPHA)
    cached = HintonKD(ca_model, None, temperature=KD_T, alpha=KD_ALPHA)
    on_loader, ca_loader = plan.loader(data, dev, channels_last=True), _kd_loader(data, plan, b, outs.logits)
    _same_batches(on_loader, ca_loader)
    b.log(f"kd_speedup_augmented: {len(ca_loader)} batches, crop_flip, {prec}")
    t = b.times({"online_pass": lambda: _train_pass(online, on_opt, _replay(on_loader), dev, precision=prec),
                 "cached_pass": lambda: _train_pass(cached, ca_opt, _replay(ca_loader), dev, precision=prec)})
    med = {k: _med(v) for k, v in t.items()}
    return Figure(
        "kd_speedup_augmented", med["online_pass"] / med["cached_pass"], "x", None, True,
        "the same KD pass with the online teacher (one teacher forward per batch)",
        {**_common_detail(b, data, plan), "batches": len(ca_loader),
         "method": f"HintonKD(T={KD_T}, alpha={KD_ALPHA}); online: teacher forward per batch, cached: plan "
                   "outputs read from epoch_extras",
         **{f"{k}_s": v for k, v in med.items()}, "cache_build_s": build_s,
         "speedup_including_one_build": med["online_pass"] / (med["cached_pass"] + build_s),
         "build_note": "building the outputs is one batched teacher pass over the plan epoch, so a single run "
                       "gains little once the build is counted (speedup_including_one_build); every further run "
                       "replaying the plan (seeds sharing data_seed, other students, hyper-parameter sweeps) "
                       "gains the full ratio",
         "times_s": {k: _raw(v) for k, v in t.items()}})


@torch.no_grad()
def _fp16_cost(reference: torch.Tensor, stored: torch.Tensor, student_logits: torch.Tensor) -> dict[str, float]:
    """How far logits kept as ``stored`` are from fp32 ``reference`` logits, and what that does to the
    KD loss (T = KD_T) against ``student_logits`` and to the teacher's predicted classes."""
    stored = stored.float()
    ref_loss, got_loss = kd_loss(student_logits, reference, KD_T).item(), kd_loss(student_logits, stored, KD_T).item()
    return {"max_abs_logit_diff": (stored - reference).abs().max().item(),
            "max_abs_logit": reference.abs().max().item(),
            "kd_loss_fp32": ref_loss,
            "kd_loss_rel_diff": abs(got_loss - ref_loss) / abs(ref_loss) if ref_loss else 0.0,
            "argmax_changed_fraction": (stored.argmax(1) != reference.argmax(1)).float().mean().item()}


@torch.no_grad()
def _plan_logits(model: nn.Module, data: DataBundle, plan: AugmentationPlan, b: Bench, precision: str) -> torch.Tensor:
    """Eval-mode fp32 logits of ``model`` for epoch 0 of ``plan``, in plan order (CPU)."""
    was = model.training
    model.eval()
    out = []
    for x, *_ in plan.loader(data, b.device, channels_last=True):
        with autocast(b.device, precision):
            out.append(model(x).float().cpu())
    model.train(was)
    return torch.cat(out)


def fig_teacher_cache_build_s(b: Bench) -> Figure:
    """Seconds to build the teacher's outputs for one epoch of a crop+flip plan (batched VGG-13 forward,
    fp16 storage, checksummed write), per epoch of the full CIFAR-10 train split; cache bytes and the
    accuracy cost of fp16 storage in detail."""
    s, dev, prec = b.sizes, b.device, b.precision
    data, plan, teacher = _plan_setup(b)
    teacher_note = f"{s.aug_teacher[0]} width {s.aug_teacher[1]}, random initialisation"
    trained = _trained_cifar_teacher() if s.trained_teacher else None
    if trained is not None:  # same architecture and cost; its logits make the fp16 numbers representative
        teacher = trained.to(dev).to(memory_format=torch.channels_last)
        teacher_note = "the trained cpu-profile CIFAR-10 teacher (vgg13 width 0.5)"
    n, full_n = len(data.y_train), len(b.data("cifar10").y_train)
    with tempfile.TemporaryDirectory(prefix="kd_bench_cache_") as tmp:
        builds = iter(range(10_000))
        last: dict[str, Any] = {}

        def build() -> None:  # a new folder each time: every call computes and writes, none reads
            last["outs"] = _build(b, teacher, data, plan, Path(tmp) / str(next(builds)))

        b.log(f"teacher_cache_build_s: {n} images, one plan epoch, {prec}")
        t = b.times({"build": build})
        outs = last["outs"]
    build_s = _med(t["build"])
    per_epoch_bytes = outs.nbytes // plan.epochs
    # The accuracy cost of fp16 storage, on the same batches: against fp32 logits of an fp32 teacher pass.
    reference = _plan_logits(teacher, data, plan, b, "fp32")
    student = _model(s.aug_student[0], dev, width=s.aug_student[1])
    student_logits = _plan_logits(student, data, plan, b, "fp32")
    storage_only = _fp16_cost(reference, reference.to(STORAGE_DTYPE), student_logits)
    as_built = _fp16_cost(reference, outs.logits[0], student_logits)
    return Figure(
        "teacher_cache_build_s", build_s * full_n / n, "s", None, False,
        f"seconds per plan epoch of {full_n} training images (measured on {n}, scaled linearly)",
        {**_common_detail(b, data, plan), "teacher": teacher_note, "train_split_images": full_n,
         "build_s_measured": build_s, "build_s_per_image": build_s / n,
         "images_per_s": n / build_s, "cache_bytes_per_epoch_measured": per_epoch_bytes,
         "cache_bytes_per_epoch_full_split": per_epoch_bytes * full_n // n,
         "storage_dtype": str(STORAGE_DTYPE).replace("torch.", ""),
         "fp16_storage_vs_fp32": storage_only,
         f"cache_as_built_{prec}_vs_fp32": as_built,
         "fp16_note": "fp16_storage_vs_fp32: fp32 logits of an fp32 teacher pass stored as fp16 (the storage "
                      f"alone); cache_as_built_{prec}_vs_fp32: the cache as built in this run's precision "
                      "(compute and storage); KD loss at T=4 against an untrained student's logits on the same "
                      "batches",
         "times_s": {k: _raw(v) for k, v in t.items()}})
