"""What each distillation method costs: one epoch of every registered method over one cross-entropy
epoch of the same student on the same augmentation plan, each through ``distill``/``fit`` (the loop the
notebooks train with, so adapters, hooks, caches and memory banks are all in the measured step).

CIFAR-10, crop+flip, batch 256, the first ``sizes.aug_batches * 256`` training images, no validation
split; the cpu profile's VGG-13 w0.5 teacher (untrained: a forward pass costs the same whatever the
weights) and VGG-8 w0.25 student; the run's precision. Methods that read only the teacher's logits
(and a pooled embedding) are served from the plan's cached outputs, built before the timing (their
build is ``teacher_cache_build_s``); the others run the teacher online. A method with a pre-training
stage runs one stage epoch, reported beside its main epoch. Two methods run off their defaults on this
pair (the detail says so): CRD with one shared set of negatives per batch (its reference draws 16,384
per anchor, timed separately over one step: ``crd_per_anchor_step_ratio``), and KDSVD in mdistiller's
``ch_w`` layout (its reference layout needs equal widths); FSP, which needs equal widths, is skipped.
"""
from __future__ import annotations

import math
import statistics
import tempfile
from typing import Any

from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.plans import AugmentationPlan, teacher_outputs
from kd_utils.train_eval import fit
from kd_utils.train_kd import DISTILLERS
from .core import CIFAR_BATCH, SEED, Bench, Figure, _model, _subset

# Per-method arguments for the measured epoch: one epoch of any pre-training stage, and the two
# departures the module docstring names; everything else is the method's default (the reference
# configuration its docstring names).
STAGE_ARGS: dict[str, dict[str, Any]] = {"fitnets_two_stage": {"hint_epochs": 1}, "ab": {"init_epochs": 1},
                                         "fsp": {"init_epochs": 1}, "ft": {"init_epochs": 1},
                                         "crd": {"shared_negatives": True}, "kdsvd": {"layout": "ch_w"}}
SKIP = ("ce", "cohort", "kdcl")  # the baseline itself, and the several-student distillers (Multiple_Students' figure)


def measured_methods() -> list[str]:
    return [m for m in DISTILLERS if m not in SKIP]


def fig_method_epoch_cost(b: Bench) -> Figure:
    """Each method's epoch / a cross-entropy epoch of the same student on the same plan (median over methods
    as the value; every method's ratio in the detail)."""
    s = b.sizes
    data = _subset(b.data("cifar10"), s.aug_batches * CIFAR_BATCH, drop_val=True)
    cfg = TrainConfig(epochs=1, batch_size=CIFAR_BATCH, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="constant", augment="crop_flip", seed=SEED, device=str(b.device),
                      precision=b.precision)
    t_arch, t_width = s.aug_teacher
    s_arch, s_width = s.aug_student
    teacher = _model(t_arch, b.device, seed=SEED + 1, width=t_width).eval()
    student = lambda: _model(s_arch, b.device, width=s_width)

    def ce_epoch() -> float:
        return float(fit(student(), data, cfg, progress=False).history["time_s"].iloc[0])

    methods = measured_methods()
    b.log(f"method_epoch_cost: {len(methods)} methods, {len(data.y_train)} images, crop_flip, {b.precision}")
    with tempfile.TemporaryDirectory() as cache_dir:
        plan = AugmentationPlan.of(cfg)
        for layer in (None, "stage5"):  # both plan caches the cached methods read, built before any timing
            teacher_outputs(teacher, data, plan, embed_layer=layer, cache_dir=cache_dir, device=b.device,
                            precision=b.precision, progress=False)
        ce_epoch()  # warm-up
        ce = [ce_epoch()]
        rows: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        for m in methods:
            try:
                res = distill(student(), teacher, data, cfg, method=m, cache_dir=cache_dir, progress=False,
                              **STAGE_ARGS.get(m, {}))
            except ValueError as e:  # the method cannot be built on this pair (FSP: unequal widths)
                skipped[m] = str(e).split(";")[0]
                b.log(f"  {m}: skipped ({skipped[m][:80]})")
                continue
            row = {"epoch_s": float(res.history["time_s"].iloc[0]), "teacher_outputs": res.config["teacher_outputs"],
                   "extra_parameters": res.config["extra_parameters"], "arguments": STAGE_ARGS.get(m, {})}
            if any(k in STAGE_ARGS.get(m, {}) for k in ("init_epochs", "hint_epochs")):  # a pre-training stage ran
                row["stage_epoch_s"] = float(res.config["stage1_time_s"])
            rows[m] = row
            b.log(f"  {m}: {row['epoch_s']:.2f} s ({row['teacher_outputs']})")
        ce.append(ce_epoch())  # the baseline before and after: drift of the machine shows as their spread
        per_anchor = _crd_per_anchor_step(b, data, cfg, teacher, student, cache_dir) if "crd" in methods else None
    base = statistics.fmean(ce)
    steps = math.ceil(len(data.y_train) / CIFAR_BATCH)
    for row in rows.values():
        row["ratio"] = row["epoch_s"] / base
        if "stage_epoch_s" in row:
            row["stage_ratio"] = row["stage_epoch_s"] / base
    return Figure(
        "method_epoch_cost", statistics.median(r["ratio"] for r in rows.values()), "x", None, False,
        "cross-entropy epoch of the same student on the same plan (mean of one before and one after the methods)",
        {"images": len(data.y_train), "batch_size": CIFAR_BATCH, "augment": "crop_flip", "precision": b.precision,
         "teacher": f"{t_arch} w{t_width} (untrained)", "student": f"{s_arch} w{s_width}", "ce_epoch_s": ce,
         "value": "median over methods of epoch / CE epoch", "methods": rows, "skipped": skipped,
         **({} if per_anchor is None else {"crd_per_anchor_step_s": per_anchor,
                                          "crd_per_anchor_step_ratio": per_anchor / (base / steps)})})


def _crd_per_anchor_step(b: Bench, data, cfg: TrainConfig, teacher, student, cache_dir) -> float:
    """Seconds of one training step of CRD as its reference runs it (16,384 negatives drawn per anchor):
    a one-batch epoch, whose one step is what is timed."""
    one = _subset(data, CIFAR_BATCH, drop_val=True)
    res = distill(student(), teacher, one, cfg, method="crd", cache_dir=cache_dir, progress=False)
    return float(res.history["time_s"].iloc[0])
