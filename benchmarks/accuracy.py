"""Time to accuracy: training seconds to a test-accuracy target with KD and from scratch."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_utils.data import DataBundle
from kd_utils.train_kd import HintonKD, Vanilla
from .core import (CIFAR_BATCH, KD_ALPHA, KD_T, MNIST_BATCH, SEED, Bench, Figure, SkipFigure, _model, _sgd,
                   _subset, _test_accuracy, _train_pass, _trained_cifar_teacher)


def _train_until(b: Bench, method: nn.Module, model: nn.Module, loader, data: DataBundle, target: float,
                 epochs: int, *, opt: torch.optim.Optimizer | None = None, sched=None, precision: str = "fp32",
                 max_seconds: float | None = None) -> dict[str, Any]:
    """Train (by default SGD Nesterov 0.05, cosine over ``epochs``; else ``opt`` and ``sched``, stepped
    per batch) until test accuracy >= ``target``, evaluating after every epoch, for at most ``max_seconds``
    (default ``sizes.max_seconds_per_run``) of training. Only training time counts; evaluation is a
    measurement, not part of the method."""
    s, dev = b.sizes, b.device
    max_seconds = s.max_seconds_per_run if max_seconds is None else max_seconds
    if opt is None:
        opt = _sgd(model.parameters())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    elapsed, curve = 0.0, []
    for epoch in range(1, epochs + 1):
        _, secs = b.timed(lambda: _train_pass(method, opt, loader, dev, precision=precision, sched=sched))
        elapsed += secs
        acc = _test_accuracy(model, data, dev)
        curve.append({"epoch": epoch, "train_s": round(elapsed, 3), "test_acc": acc})
        b.log(f"  epoch {epoch}: {elapsed:.1f} s, test acc {acc:.4f}")
        if acc >= target:
            return {"reached": True, "seconds": elapsed, "epochs": epoch, "curve": curve}
        if elapsed >= max_seconds:
            break
    return {"reached": False, "seconds": None, "epochs": None, "curve": curve,
            "best_test_acc": max(c["test_acc"] for c in curve)}


def fig_time_to_99_mnist_kd(b: Bench) -> Figure:
    """Training seconds for the 800-800 student to reach 99.0% MNIST test accuracy with KD (cached
    logits of a quickly trained mnist_cnn teacher) / the same from scratch (cross-entropy)."""
    from kd_utils.experiments import cache_teacher_logits
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


def _cifar_teacher() -> nn.Module | None:
    """The trained CIFAR-10 teacher when one loads without training (tests replace this)."""
    return _trained_cifar_teacher()


def fig_time_to_85_cifar_vgg8(b: Bench) -> Figure:
    """Training seconds for VGG-8 w0.25 to reach 85% CIFAR-10 test accuracy with KD from the trained
    VGG-13 w0.5 teacher's cached plan outputs (crop+flip, onecycle over at most ``t85_epochs``), beside
    the same student from scratch on the same plan; where 85% is not reached, the test accuracy reached
    within the budget. Full mode only; skipped when no trained teacher loads without training."""
    from kd_utils.config import get_profile
    from kd_utils.plans import AugmentationPlan, teacher_outputs
    from kd_utils.train_eval import make_optimizer, make_scheduler
    s, dev, prec = b.sizes, b.device, b.precision
    if not s.time_to_85:
        raise SkipFigure("full mode only (two bounded CIFAR-10 training runs plus the teacher's plan outputs, "
                         "up to about 6 minutes)")
    teacher = _cifar_teacher()
    if teacher is None:
        raise SkipFigure("no trained CIFAR-10 teacher available; run the Logit_Matching notebook or "
                         "cifar_teacher() first")
    data, target, epochs = b.data("cifar10"), 0.85, s.t85_epochs
    # The cpu profile's student recipe (SGD 0.05 Nesterov, wd 5e-4, onecycle, batch 256, crop_flip), shortened.
    cfg = get_profile("cpu").train("cifar_student", epochs=epochs, precision=prec, device=str(dev), seed=SEED)
    plan = AugmentationPlan.of(cfg)
    teacher.to(dev)
    b.log(f"time_to_85_cifar_vgg8: teacher outputs for {epochs} plan epochs (read from the cache when built before)")
    outs, outs_s = b.timed(lambda: teacher_outputs(teacher, data, plan, device=dev, precision=prec, progress=False))
    runs: dict[str, dict[str, Any]] = {}
    for arm in ("kd", "scratch"):
        b.log(f"time_to_85_cifar_vgg8: {arm} student (at most {epochs} epochs / {s.t85_max_seconds_per_run:.0f} s)")
        student = _model("vgg8", dev, width=s.t85_student_width)
        if arm == "kd":
            method = HintonKD(student, None, temperature=KD_T, alpha=KD_ALPHA)
            loader = data.loader("train", batch_size=plan.batch_size, shuffle=True, augment=plan.augment,
                                 seed=plan.seed, device=dev, channels_last=True, epoch_extras=(outs.logits,))
        else:
            method = Vanilla(student)
            loader = plan.loader(data, dev, channels_last=True)
        opt = make_optimizer(method.trainable_parameters(), cfg)
        sched = make_scheduler(opt, cfg, len(loader))
        runs[arm] = _train_until(b, method, student, loader, data, target, epochs, opt=opt, sched=sched,
                                 precision=prec, max_seconds=s.t85_max_seconds_per_run)
        runs[arm]["best_test_acc"] = max(c["test_acc"] for c in runs[arm]["curve"])
    kd, scratch = runs["kd"], runs["scratch"]
    metrics = (getattr(teacher, "checkpoint", None) or {}).get("metrics", {})
    detail: dict[str, Any] = {
        "target_test_acc": target, "repeats": 1, "precision": prec,
        "teacher": {"model": "vgg13 width 0.5 (the cpu profile's shared CIFAR-10 teacher)",
                    "test_acc": metrics.get("test_accuracy"), "outputs_built_now": outs.built,
                    "outputs_s": outs_s, "outputs_epochs": epochs, "outputs_bytes": outs.nbytes},
        "student": f"vgg8 width {s.t85_student_width}, SGD 0.05 Nesterov, wd 5e-4, onecycle over {epochs} epochs, "
                   f"batch {CIFAR_BATCH}, crop_flip; both arms replay the same augmentation plan",
        "kd": {"method": f"HintonKD(T={KD_T}, alpha={KD_ALPHA}), cached plan outputs (epoch_extras)", **kd},
        "scratch": {"method": "cross-entropy", **scratch},
        "max_epochs": epochs, "max_train_seconds_per_run": s.t85_max_seconds_per_run,
        "ratio": kd["seconds"] / scratch["seconds"] if kd["reached"] and scratch["reached"] else None,
        "kd_time_including_teacher_outputs_s": (kd["seconds"] + outs_s) if kd["reached"] and outs.built else None,
        "timing_note": "training seconds only (per-epoch test evaluation excluded); the teacher outputs are "
                       "kept in the teacher-output cache, so later runs read them instead of building them"}
    if kd["reached"]:
        value, unit, higher = kd["seconds"], "s", False
    else:
        value, unit, higher = kd["best_test_acc"], "test acc", True
        detail["explanation"] = (f"the distilled student did not reach {target:.0%} within {epochs} epochs: the value "
                                 f"is its best test accuracy (scratch: {scratch['best_test_acc']:.2%})")
    return Figure("time_to_85_cifar_vgg8", value, unit, None, higher,
                  "the same student from scratch (cross-entropy) on the same plan and budget", detail)
