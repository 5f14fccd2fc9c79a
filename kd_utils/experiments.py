"""One-call conveniences above the training loop: ``distill`` and memoised experiment runs.

Imports run one way: ``train_kd`` (methods) <- ``train_eval`` (the loop) <- this module.

``run_experiment`` runs a training run described completely by its specification (student
architecture, method and hyper-parameters, training config, data, teacher checksum, augmentation
plan, and the source code of ``kd_utils``) and stores its checkpoint, history and metrics under
``models/<profile>/runs/``. Asked again with exactly the same specification, it reuses the stored
run instead of training: an interrupted notebook, or one re-executed after editing prose or plots,
retrains only what did not finish. ``fresh=True`` or ``KD_FRESH_RUNS=1`` forces new runs (the
committed reference notebooks are executed that way).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import metrics
from .config import Profile, TrainConfig, get_profile, output_dirs
from .plans import AugmentationPlan, data_fingerprint, teacher_digest, teacher_outputs
from .train_eval import FitResult, evaluate, fit, predict
from .train_kd import build_distiller

FRESH_ENV = "KD_FRESH_RUNS"


# ------------------------------------------------------------ distillation ----
@torch.no_grad()
def cache_teacher_logits(teacher: nn.Module, data, split: str = "train", batch_size: int = 1024,
                         device: str | torch.device = "auto", precision: str = "auto") -> torch.Tensor:
    """Teacher logits for every sample of an un-augmented split, in split order (float32, CPU).

    This is the seed pipeline's DistillDataset idea: when the transfer set is not augmented the
    teacher's outputs cannot change, so they are computed once. Pass the result as
    ``fit(..., train_extras=(logits,))``. With augmentation use :func:`kd_utils.plans.teacher_outputs`.
    """
    logits, _ = predict(teacher, data.loader(split, batch_size=batch_size, shuffle=False), device=device,
                        precision=precision)
    return logits


def distill(student: nn.Module, teacher: nn.Module, data, cfg: TrainConfig, *, method: str = "kd",
            cache: bool | None = None, cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> FitResult:
    """Distil ``teacher`` into ``student`` in one call; returns :class:`~kd_utils.train_eval.FitResult`.

    ``kwargs`` go to the distiller (``temperature``, ``alpha``) or to ``fit`` (``progress``,
    ``checkpoint_path``, ``desc``, ``restore_best``, ``state_path``, ``resume``, ``stop_after``).

    ``cache=None`` (default) uses cached teacher outputs whenever the method needs only the
    teacher's logits: without augmentation the logits of the fixed transfer set, with augmentation
    the outputs for every batch of the run's augmentation plan (computed once, reused by every run
    that replays the same plan). ``cache=False`` runs the teacher on every batch.
    ``result.config["teacher_outputs"]`` says which was used.
    """
    fit_keys = {"progress", "checkpoint_path", "desc", "restore_best", "state_path", "resume", "stop_after"}
    fit_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in fit_keys}
    distiller = build_distiller(method, student, teacher, **kwargs)
    logits_only = getattr(distiller, "logits_only", False)
    embed_layer = getattr(distiller, "cached_layer", None)  # feature methods on one pooled teacher layer
    if cache is None:
        cache = logits_only or embed_layer is not None
    if cache and not (logits_only or embed_layer is not None):
        raise ValueError(f"method {method!r} needs more than the teacher's logits, so its outputs cannot be "
                         "cached; use cache=False")
    t0 = time.perf_counter()
    prepare = getattr(distiller, "prepare", None)  # a first stage (e.g. FitNets hint training)
    if prepare is not None:
        prepare(data, cfg, progress=fit_kw.get("progress", True))
    stage1_s = time.perf_counter() - t0
    train_extras, epoch_extras, source = (), (), "online teacher"
    if cache and cfg.augment is None and embed_layer is None:
        train_extras = (cache_teacher_logits(teacher, data, "train", device=cfg.device, precision=cfg.precision),)
        source = "cached logits (un-augmented transfer set)"
    elif cache:
        outs = teacher_outputs(teacher, data, AugmentationPlan.of(cfg), embed_layer=embed_layer, cache_dir=cache_dir,
                               device=cfg.device, precision=cfg.precision, progress=fit_kw.get("progress", True))
        epoch_extras = (outs.logits,) if embed_layer is None else (outs.logits, outs.embedding)
        source = f"plan cache {'built' if outs.built else 'read'}: {outs.path.name}"
    res = fit(student, data, cfg, method=distiller, train_extras=train_extras, epoch_extras=epoch_extras, **fit_kw)
    res.config["teacher_outputs"] = source
    res.config["extra_parameters"] = int(getattr(distiller, "extra_parameters", 0))
    if prepare is not None:
        res.config["stage1_time_s"] = stage1_s
    return res


# ------------------------------------------------------------- memoised runs ----
@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of every Python file of ``kd_utils``: a code change invalidates stored runs."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Run:
    """A finished training run: the trained model (eval mode), its history and test metrics."""
    name: str
    model: nn.Module
    history: pd.DataFrame
    metrics: dict[str, Any]
    reused: bool
    path: Path
    spec: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.metrics["test_accuracy"]

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, test_accuracy={self.accuracy:.4f}, "
                f"{'reused' if self.reused else 'trained'}, {self.path})")


def run_spec(student: dict, data, cfg: TrainConfig, method: str, method_kwargs: dict,
             teacher: nn.Module | None) -> dict:
    """The complete specification of a run; its hash names the stored run."""
    return {"student": dict(student), "method": method, "method_kwargs": dict(sorted(method_kwargs.items())),
            "config": cfg.to_dict(), "data": data_fingerprint(data), "test_n": int(len(data.y_test)),
            "teacher_sha256": teacher_digest(teacher) if teacher is not None else None,
            "plan": {"seed": cfg.plan_seed, "augment": cfg.augment}, "kd_utils_source": source_digest()}


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _fresh(fresh: bool | None) -> bool:
    if fresh is not None:
        return fresh
    return os.environ.get(FRESH_ENV, "") not in ("", "0")


# Runs trained by this process: reused even in fresh mode (a sweep point equal to a main run is one run).
_TRAINED_HERE: set[str] = set()


_TEST_LOGITS: dict[tuple, torch.Tensor] = {}


def test_logits(model: nn.Module, data, device="auto", precision="auto") -> torch.Tensor:
    """A model's test-set logits (float32, CPU), computed once per (weights, test set)."""
    key = (teacher_digest(model), data.name, len(data.y_test), int(data.y_test[:64].sum()))
    if key not in _TEST_LOGITS:
        _TEST_LOGITS[key] = predict(model, data.loader("test", batch_size=1024), device, precision)[0]
    return _TEST_LOGITS[key]


def test_metrics(model: nn.Module, data, teacher: nn.Module | None = None, device="auto",
                 precision="auto") -> dict[str, float]:
    """Test accuracy, errors, loss and ECE; with a teacher also top-1 agreement and KL(teacher||model)."""
    ev = evaluate(model, data, "test", device=device, precision=precision)
    out = {"test_accuracy": ev.accuracy, "test_errors": ev.errors, "test_loss": ev.loss,
           "ece": metrics.expected_calibration_error(ev.logits, ev.labels)}
    if teacher is not None:
        out.update(_teacher_metrics(teacher, ev.logits, data, device, precision))
    return out


def _teacher_metrics(teacher: nn.Module, logits: torch.Tensor, data, device, precision) -> dict[str, float]:
    """Top-1 agreement and KL(teacher || model) of a model's test logits with a teacher's."""
    t = test_logits(teacher, data, device, precision)
    return {"agreement": metrics.agreement(t, logits), "kl": metrics.kl_divergence(t, logits)}


def fidelity(teacher: nn.Module, student: nn.Module, data, splits=("train", "test"), device="auto",
             precision="auto") -> pd.DataFrame:
    """How closely a student follows its teacher (Stanton et al. 2021), per un-augmented split: top-1
    agreement, KL(teacher || student) at T = 1, and both models' accuracy. One row per split."""
    rows = []
    for split in splits:
        loader = data.loader(split, batch_size=1024, shuffle=False)
        t, labels = predict(teacher, loader, device, precision)
        s, _ = predict(student, loader, device, precision)
        rows.append({"split": split, "agreement": metrics.agreement(t, s), "kl": metrics.kl_divergence(t, s),
                     "teacher_accuracy": metrics.accuracy(t, labels), "student_accuracy": metrics.accuracy(s, labels)})
    return pd.DataFrame(rows).set_index("split")


def run_experiment(name: str, student: dict, data, cfg: TrainConfig, *, method: str = "ce",
                   teacher: nn.Module | None = None, profile: str | Profile | None = None,
                   fresh: bool | None = None, progress: bool = True, root: str | os.PathLike | None = None,
                   stop_after: int | None = None, **method_kwargs: Any) -> Run:
    """Train (or reuse) one run and return it with its test metrics.

    ``student``: a model spec ``{"name": "vgg8", "width": 0.25}`` (built with ``build_model``
    after seeding with ``cfg.seed``, so a seed gives the same initialisation). ``method``: a
    distiller name (``"ce"``, ``"kd"``, ``"mse"``, ...) with its ``method_kwargs``; teacher outputs
    are cached as :func:`distill` does. A stored run is reused only when the whole specification,
    including the source of ``kd_utils``, is identical; in fresh mode only runs trained by this
    process are reused. ``stop_after``: an early-stopped run (the first epochs of ``cfg``'s schedule).
    """
    from .checkpoint import CheckpointError, load_model, save_checkpoint
    from .fileio import write_json, write_text
    from .models import build_model
    from .runtime import seed_everything, versions
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    spec = run_spec(student, data, cfg, method, method_kwargs, teacher if method != "ce" else None)
    if stop_after is not None:
        spec["stop_after"] = int(stop_after)
    key = spec_key(spec)
    folder = output_dirs(prof, root=root, create=False)["models"] / "runs" / f"{name}-{key[:12]}"
    record = folder / "run.json"
    if (not _fresh(fresh) or str(folder) in _TRAINED_HERE) and record.exists():
        try:
            saved = json.loads(record.read_text())
            if saved.get("key") == key:
                model = load_model(folder / "model.pt")
                history = pd.read_csv(folder / "history.csv")
                m = saved["metrics"]
                if method == "ce" and teacher is not None:  # never stored (see below): with the teacher asked about
                    m = {**m, **_teacher_metrics(teacher, test_logits(model, data, cfg.device, cfg.precision), data,
                                                 cfg.device, cfg.precision)}
                if progress:
                    print(f"[reused] {name}: test accuracy {m['test_accuracy']:.4f} ({folder})")
                return Run(name, model, history, m, True, folder, spec)
        except (OSError, ValueError, KeyError, CheckpointError) as e:
            print(f"[rerun] {name}: stored run unusable ({e})")
    spec_model = dict(student)
    seed_everything(cfg.seed)
    model = build_model(spec_model.pop("name"), num_classes=data.num_classes, **spec_model)
    t0 = time.perf_counter()
    if method != "ce" and teacher is None:  # a teacher-free method (e.g. mutual learning in a cohort)
        res = fit(model, data, cfg, progress=progress, desc=name, stop_after=stop_after,
                  method=build_distiller(method, model, None, **method_kwargs))
        res.config["teacher_outputs"] = "none"
    elif method == "ce":
        if method_kwargs:
            raise ValueError(f"method 'ce' takes no arguments (label smoothing is TrainConfig.label_smoothing); "
                             f"got {sorted(method_kwargs)}")
        res = fit(model, data, cfg, progress=progress, desc=name, stop_after=stop_after)
        res.config["teacher_outputs"] = "none"
    else:
        res = distill(model, teacher, data, cfg, method=method, progress=progress, desc=name, stop_after=stop_after,
                      **method_kwargs)
    wall = time.perf_counter() - t0
    m = {**test_metrics(model, data, teacher, cfg.device, cfg.precision), "best_epoch": res.best_epoch,
         "best_val_acc": res.best_val_acc, "train_time_s": res.wall_time_s, "wall_time_s": wall,
         "epoch_time_s": float(res.history["time_s"].mean()), "precision": res.config["precision_used"],
         "teacher_outputs": res.config["teacher_outputs"], "extra_parameters": res.config.get("extra_parameters", 0),
         "stage1_time_s": res.config.get("stage1_time_s", 0.0)}
    folder.mkdir(parents=True, exist_ok=True)
    # A "ce" run's key ignores the teacher, so its record keeps no teacher-dependent metrics: a later
    # caller may reuse it beside another teacher, or none.
    stored = {k: v for k, v in m.items() if k not in ("agreement", "kl")} if method == "ce" else m
    save_checkpoint(folder / "model.pt", model, config=cfg.to_dict(), seed=cfg.seed, metrics=stored,
                    extra={"run": name, "key": key})
    write_text(folder / "history.csv", res.history.to_csv(index=False))
    write_json(record, {"name": name, "key": key, "metrics": stored, "spec": spec, "versions": versions()})  # last
    _TRAINED_HERE.add(str(folder))
    if progress:
        print(f"[trained] {name}: test accuracy {m['test_accuracy']:.4f} in {wall:.0f} s ({res.config['teacher_outputs']})")
    return Run(name, model, res.history, m, False, folder, spec)


def run_seeds(name: str, student: dict, data, cfg: TrainConfig, seeds, **kwargs: Any) -> list[Run]:
    """:func:`run_experiment` once per seed (``cfg.seed`` = each seed; each replays its own plan
    unless ``cfg.data_seed`` is set), named ``<name>-s<seed>``."""
    return [run_experiment(f"{name}-s{s}", student, data, cfg.replace(seed=int(s)), **kwargs) for s in seeds]


def runs_table(runs: dict[str, list[Run]]) -> pd.DataFrame:
    """Mean and sample std of test accuracy per method over its seeds, with per-seed values and
    the mean teacher agreement and ECE where known."""
    from .analysis import seed_table
    extra = {}
    for key in ("agreement", "ece", "epoch_time_s"):
        if all(key in r.metrics for rs in runs.values() for r in rs):
            extra[key] = {m: [r.metrics[key] for r in rs] for m, rs in runs.items()}
    return seed_table({m: [r.accuracy for r in rs] for m, rs in runs.items()}, extra)
