"""The CIFAR-10 seed project: a ResNet-style teacher distilled into a compact CNN, with a baseline.

``train_teacher`` writes ``best_teacher.pth``; ``distill_students`` loads it and writes
``best_student_kd.pth`` and ``best_student_base.pth`` (each the best epoch on validation).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .checkpoint import CheckpointError, load_model
from .config import KDConfig, get_profile
from .data import get_data
from .models import build_model
from .runtime import seed_everything
from .train_eval import evaluate, fit
from .experiments import distill

TEACHER_FILE, KD_FILE, BASE_FILE = "best_teacher.pth", "best_student_kd.pth", "best_student_base.pth"


def _config(profile: str | None, epochs: int | None, batch_size: int | None, seed: int, device: str):
    prof = get_profile(profile)
    over = {"seed": seed, "device": device}
    if epochs is not None:
        over["epochs"] = epochs
    if batch_size is not None:
        over["batch_size"] = batch_size
    return prof, over


def train_teacher(out: str | Path, dataset: str = "cifar10", epochs: int | None = None, batch_size: int | None = None,
                  profile: str | None = None, seed: int = 0, device: str = "auto", arch: str = "cifar_resnet",
                  progress: bool = True, resume: bool = False) -> dict:
    """Train the ResNet-style teacher; returns its test metrics."""
    prof, over = _config(profile, epochs, batch_size, seed, device)
    data = get_data(dataset, **prof.data_kwargs())
    seed_everything(seed)
    teacher = build_model(arch, num_classes=data.num_classes)
    res = fit(teacher, data, prof.train("cifar_teacher", **over), checkpoint_path=Path(out) / TEACHER_FILE,
              progress=progress, desc=f"teacher ({arch})", state_path=Path(out) / "training_state" / TEACHER_FILE,
              resume=resume)
    ev = evaluate(teacher, data, device=device)
    return {"model": "teacher", "test_acc": ev.accuracy, "best_val_acc": res.best_val_acc, "epochs": len(res.history)}


def distill_students(out: str | Path, dataset: str = "cifar10", epochs: int | None = None,
                     batch_size: int | None = None, temperature: float = 4.0, alpha: float = 0.1,
                     profile: str | None = None, seed: int = 0, device: str = "auto", arch: str = "cifar_cnn",
                     progress: bool = True, resume: bool = False) -> pd.DataFrame:
    """Load ``best_teacher.pth`` from ``out``, train the KD and baseline students, return the table."""
    KDConfig(temperature, alpha)
    out = Path(out)
    if not (out / TEACHER_FILE).is_file():
        raise CheckpointError(f"no teacher checkpoint at {out / TEACHER_FILE}: train one first with "
                              f"kd_utils.cifar_seed.train_teacher({str(out)!r}, {dataset!r}, profile={profile!r})")
    teacher = load_model(out / TEACHER_FILE)
    prof, over = _config(profile, epochs, batch_size, seed, device)
    data = get_data(dataset, **prof.data_kwargs())
    if getattr(teacher, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"teacher in {out / TEACHER_FILE} predicts {teacher.num_classes} classes but {dataset} "
                         f"has {data.num_classes}")
    cfg = prof.train("cifar_student", **over)
    rows = [{"model": "teacher", "test_acc": evaluate(teacher, data, device=device).accuracy}]
    for name, fname in (("student_kd", KD_FILE), ("student_base", BASE_FILE)):
        seed_everything(seed)
        student = build_model(arch, num_classes=data.num_classes)
        kw = dict(checkpoint_path=out / fname, progress=progress, desc=name, state_path=out / "training_state" / fname,
                  resume=resume)
        if name == "student_kd":  # augmented: the teacher's outputs come from the run's plan cache
            res = distill(student, teacher, data, cfg, method="kd", temperature=temperature, alpha=alpha, **kw)
        else:
            res = fit(student, data, cfg, **kw)
        rows.append({"model": name, "test_acc": evaluate(student, data, device=device).accuracy,
                     "best_val_acc": res.best_val_acc})
    table = pd.DataFrame(rows).set_index("model")
    table.attrs["kd_improvement"] = table.loc["student_kd", "test_acc"] - table.loc["student_base", "test_acc"]
    return table
