"""Hinton, Vinyals & Dean (2015), section 3: the MNIST experiment, at our profile's scale.

Teacher 784-1200-1200-10 (dropout, max-norm, inputs jittered by up to 2 px); student 784-800-800-10
trained once on hard labels and once on the teacher's soft targets at T=20. The paper reports
67 / 146 / 74 test errors; ``PAPER_ERRORS`` holds them for the comparison table.

Protocol (the paper's): recipes and lengths are chosen on the 54,000 / 6,000 split
(:func:`length_study`), then the reported models train on all 60,000 images (:func:`paper_data`) for
a fixed number of epochs and the last epoch is reported, so the test set never selects anything.
The teacher is :func:`kd_utils.teacher.hinton_teacher` (trained once, then loaded). Every run is
memoised by :func:`kd_utils.experiments.run_experiment`; the loops over runs go through
:func:`kd_utils.sweep.run_each`, so an ``executor`` can train them elsewhere (a process pool, Dask, SLURM).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from .config import HINTON_KD, Profile, TrainConfig, get_profile
from .data import DataBundle, get_data
from .experiments import Run

PAPER_ERRORS = {"teacher": 67, "student_scratch": 146, "student_kd": 74}
STUDENT = {"name": "hinton_student"}
TEACHER = {"name": "hinton_teacher"}


def paper_data(profile: str | Profile | None = None) -> DataBundle:
    """MNIST as the paper used it: every training image is trained on (no validation hold-out)."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    return get_data("mnist", val_fraction=0, **prof.data_kwargs())


SWEEP_KEYWORDS = ("profile", "mode", "root")  # what a sweep sets for all its runs


def _student_spec(data, cfg: TrainConfig, seed: int, teacher: nn.Module | None, temperature: float, alpha: float,
                  arch: str = "hinton_student", kind: str | None = None, keep_weights: bool = False,
                  restore_best: bool = True):
    """The run specification of one student (:func:`train_student`): its name says kind, length,
    temperature and seed, and ``-last`` when the last epoch is kept although a validation split exists."""
    from .sweep import experiment
    cfg = cfg.replace(seed=seed)
    kind = kind or ("student_scratch" if teacher is None else "student_kd")
    name = f"hinton-{kind}{'' if restore_best else '-last'}-e{cfg.epochs}" + (f"-T{temperature:g}" if teacher is not None else "") + f"-s{seed}"
    if teacher is None:
        return experiment(name, {"name": arch}, data, cfg, keep_weights=keep_weights, restore_best=restore_best)
    return experiment(name, {"name": arch}, data, cfg, method="kd", teacher=teacher, temperature=temperature,
                      alpha=alpha, keep_weights=keep_weights, restore_best=restore_best)


def _row(run: Run, spec) -> dict:
    m = run.metrics
    return {"seed": spec.cfg.seed, "temperature": spec.method_kwargs.get("temperature"),
            "errors": int(m["test_errors"]), "accuracy": m["test_accuracy"], "best_epoch": m["best_epoch"],
            "epochs": spec.cfg.epochs, "wall_time_s": m["train_time_s"]}


def _run_students(specs: list, executor, desc: str, progress: bool, run_kwargs: dict) -> list[Run]:
    """Every specification through :func:`kd_utils.sweep.run_each` (``executor``: None = this process)."""
    from .sweep import run_each
    other = sorted(set(run_kwargs) - set(SWEEP_KEYWORDS))
    if other:
        raise ValueError(f"unsupported keyword(s) {other}; allowed: {', '.join(SWEEP_KEYWORDS)}")
    return run_each(specs, executor, desc=desc, progress=progress, **run_kwargs)


def train_student(data, cfg: TrainConfig, seed: int, teacher: nn.Module | None = None, temperature: float = HINTON_KD.temperature,
                  alpha: float = HINTON_KD.alpha, arch: str = "hinton_student", kind: str | None = None,
                  keep_weights: bool = False, restore_best: bool = True, progress: bool = False,
                  **run_kwargs) -> tuple[Run, dict]:
    """One memoised student run: from scratch when ``teacher`` is None, else distilled with Hinton's
    loss. Without augmentation the teacher's logits of the fixed transfer set are computed once; with
    ``cfg.augment`` (the jittered transfer set) the teacher's outputs for every jittered batch of the
    run's plan. The model keeps its best validation epoch, or its last epoch when ``data`` has no
    validation split (:func:`paper_data`) or ``restore_best=False``. Returns the :class:`~kd_utils.experiments.Run` and a row
    ``{seed, temperature, errors, accuracy, best_epoch, epochs, wall_time_s}``.
    ``run_kwargs``: ``profile``, ``mode``, ``root`` (as in ``run_experiment``)."""
    spec = _student_spec(data, cfg, seed, teacher, temperature, alpha, arch, kind, keep_weights, restore_best)
    (run,) = _run_students([spec], None, spec.name, progress, run_kwargs)
    return run, _row(run, spec)


KINDS = ("student_scratch", "student_kd", "student_kd_jitter")


def student_runs(data, cfg: TrainConfig, seeds: Sequence[int], teacher: nn.Module, temperature: float = HINTON_KD.temperature,
                 alpha: float = HINTON_KD.alpha, kinds: Sequence[str] = KINDS[:2], progress: bool = True,
                 executor=None, restore_best: bool = True, **run_kwargs) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Students for every seed and kind: ``student_scratch`` (hard labels), ``student_kd`` (soft
    targets on the un-augmented training set, as in the paper) and ``student_kd_jitter`` (soft
    targets on a jittered transfer set). One row per (kind, seed), and each run's training history
    keyed by ``(kind, seed)``. ``restore_best=False`` keeps every run's last epoch. ``executor``: where the runs train (:func:`kd_utils.sweep.run_each`;
    None: this process, one after another)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown student kind(s) {unknown}; known: {list(KINDS)}")
    jobs = [(kind, s) for s in seeds for kind in kinds]
    specs = [_student_spec(data, cfg.replace(augment="jitter") if kind == "student_kd_jitter" else cfg, s,
                           None if kind == "student_scratch" else teacher, temperature, alpha, kind=kind,
                           restore_best=restore_best)
             for kind, s in jobs]
    done = _run_students(specs, executor, "students", progress, run_kwargs)
    rows = [{"model": kind, **_row(run, spec)} for (kind, _), run, spec in zip(jobs, done, specs)]
    return pd.DataFrame(rows), {job: run.history for job, run in zip(jobs, done)}


def temperature_sweep(data, cfg: TrainConfig, teacher: nn.Module, temperatures: Iterable[float], seed: int = 0,
                      alpha: float = HINTON_KD.alpha, progress: bool = True, executor=None, **run_kwargs) -> pd.DataFrame:
    """Distilled-student test errors for each temperature (one seed); ``executor`` as in :func:`student_runs`."""
    specs = [_student_spec(data, cfg, seed, teacher, float(T), alpha) for T in temperatures]
    done = _run_students(specs, executor, "temperatures", progress, run_kwargs)
    return pd.DataFrame([_row(run, spec) for run, spec in zip(done, specs)])


def length_study(data, cfg: TrainConfig, lengths: Sequence[int], *, arch: str | None = None,
                 teacher: nn.Module | None = None, temperature: float = HINTON_KD.temperature, alpha: float = HINTON_KD.alpha, seed: int = 0,
                 label: str = "teacher", progress: bool = True, keep_longest: bool = False, executor=None, **run_kwargs
                 ) -> tuple[pd.DataFrame, dict[int, Run]]:
    """How long to train, measured on the validation split: one :func:`train_student` run of ``cfg``
    per length (each with its own full learning-rate schedule) of ``arch`` (default: the teacher's
    architecture alone, the student's when distilled from ``teacher``). One row per length with the
    validation errors of the last epoch (what the paper protocol would report) and of the best epoch;
    the runs (histories with per-epoch ``val_acc``) keyed by length. ``keep_longest``: the reference
    store keeps the longest run's weights (a later cell uses it, e.g. as a teacher). ``executor`` as in
    :func:`student_runs`."""
    if len(data.y_val) == 0:
        raise ValueError("length_study needs a validation split (get_data(..., val_fraction > 0)); "
                         "the test set is never used to choose a length")
    bad = [n for n in lengths if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"lengths must be positive epoch counts, got {bad}")
    arch = arch or (TEACHER if teacher is None else STUDENT)["name"]
    lengths = list(lengths)
    specs = [_student_spec(data, cfg.replace(epochs=n), seed, teacher, temperature, alpha, arch=arch,
                           kind=f"{label}-split", keep_weights=keep_longest and n == max(lengths)) for n in lengths]
    done = _run_students(specs, executor, f"{label} lengths", progress, run_kwargs)
    n_val, rows, runs = len(data.y_val), [], {}
    for n, run in zip(lengths, done):
        val = run.history["val_acc"]
        rows.append({"model": label, "epochs": n, "val_errors_last": int(round((1 - val.iloc[-1]) * n_val)),
                     "val_errors_best": int(round((1 - val.max()) * n_val)),
                     "best_epoch": int(run.history["epoch"][val.idxmax()]),
                     "train_time_s": run.metrics["train_time_s"]})
        runs[n] = run
    return pd.DataFrame(rows), runs


def hinton_table(teacher_errors: int, runs: pd.DataFrame) -> pd.DataFrame:
    """Paper errors beside ours (mean, std over seeds, and each seed)."""
    rows = [{"model": "teacher", "paper_errors": PAPER_ERRORS["teacher"], "errors": float(teacher_errors),
             "errors_std": 0.0, "errors_per_seed": [int(teacher_errors)]}]
    for kind in [k for k in KINDS if k in set(runs["model"])]:
        e = runs.loc[runs["model"] == kind, "errors"].astype(int).tolist()
        rows.append({"model": kind, "paper_errors": PAPER_ERRORS.get(kind), "errors": float(np.mean(e)),
                     "errors_std": float(np.std(e, ddof=1)) if len(e) > 1 else 0.0, "errors_per_seed": e})
    return pd.DataFrame(rows).set_index("model")


def table_json(table: pd.DataFrame, profile: Profile | str, temperature: float, epochs: dict, wall_time_s: float,
               **extra) -> dict:
    """The ``results/metrics/hinton_mnist.json`` object."""
    out = {k: {"paper_errors": None if pd.isna(r["paper_errors"]) else int(r["paper_errors"]),
               "errors": float(r["errors"]),
               "errors_std": float(r["errors_std"]), "errors_per_seed": [int(e) for e in r["errors_per_seed"]]}
           for k, r in table.iterrows()}
    out.update(profile=profile.name if isinstance(profile, Profile) else profile, temperature=temperature,
               epochs=epochs, wall_time_s=round(wall_time_s, 1), **extra)
    return out


# Targets for the ``cpu`` profile under the paper protocol (all 60,000 training images, last epoch):
# the teacher at most the paper's 67 errors, the distilled student (mean over seeds) at most 80, and
# at least 60 errors fewer than the student trained from scratch.
TARGETS = {"teacher_max_errors": 67, "kd_max_errors": 80, "kd_min_gain": 60}


def check_targets(table: pd.DataFrame) -> pd.DataFrame:
    """One row per target: what we required, what we measured, and whether it was met."""
    t, s, k = (float(table.loc[m, "errors"]) for m in ("teacher", "student_scratch", "student_kd"))
    rows = [("teacher errors", f"<= {TARGETS['teacher_max_errors']}", t, t <= TARGETS["teacher_max_errors"]),
            ("distilled student errors (mean)", f"<= {TARGETS['kd_max_errors']}", k, k <= TARGETS["kd_max_errors"]),
            ("scratch - distilled errors", f">= {TARGETS['kd_min_gain']}", s - k, s - k >= TARGETS["kd_min_gain"])]
    return pd.DataFrame(rows, columns=["target", "required", "measured", "met"]).set_index("target")
