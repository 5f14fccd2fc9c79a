"""One-call conveniences above the training loop: ``distill`` and memoised experiment runs.

Imports run one way: ``train_kd`` (methods) <- ``train_eval`` (the loop) <- this module.

``run_experiment`` runs a training run described completely by its specification (student
architecture, method and hyper-parameters, training config, data, teacher checksum, augmentation
plan, and the numerics versions of the code it uses, :mod:`kd_utils.numerics`) and stores its
record, logits and weights (:mod:`kd_utils.runs`). Asked again with the same specification, it
reuses the stored run instead of training: an interrupted notebook, or one re-executed after editing
prose, plots or any code that does not change training numbers, retrains nothing. ``mode="fresh"``
(``KD_RUNS=fresh``) retrains; ``mode="replay"`` never trains and rebuilds a notebook from its
committed runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import locks, metrics, numerics, runs
from .checkpoint import CheckpointError
from .config import Profile, TrainConfig, get_profile, output_dirs
from .plans import AugmentationPlan, data_fingerprint, teacher_digest, teacher_outputs
from .train_eval import FitResult, evaluate, fit, predict
from .train_kd import DISTILLERS, build_distiller


# ------------------------------------------------------------ distillation ----
@torch.no_grad()
def cache_teacher_logits(teacher: nn.Module, data, split: str = "train", batch_size: int = 1024,
                         device: str | torch.device = "auto", precision: str = "auto") -> torch.Tensor:
    """Teacher logits for every sample of an un-augmented split, in split order (float32, CPU).

    This is the seed pipeline's DistillDataset idea: when the transfer set is not augmented the
    teacher's outputs cannot change, so they are computed once. Pass the result as
    ``fit(..., teacher_outputs={"logits": logits})``. With augmentation use :func:`kd_utils.plans.teacher_outputs`.
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

    The caller's ``teacher`` is handed back as it was: training freezes it (``requires_grad=False``,
    eval mode) and may move it to the training device and to channels-last memory format; each
    parameter's ``requires_grad``, each module's train/eval mode, the memory format and the device
    are restored when ``distill`` returns or fails.
    """
    saved = _module_state(teacher)
    try:
        return _distill(student, teacher, data, cfg, method=method, cache=cache, cache_dir=cache_dir, **kwargs)
    finally:
        _restore_module_state(teacher, saved)


def _module_state(model: nn.Module | None) -> dict[str, Any] | None:
    """What training may change on a frozen module: requires_grad, train/eval modes, memory formats, device."""
    if model is None:
        return None
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    formats = {k: t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for k, t in tensors.items() if t.dim() == 4}
    first = next(iter(tensors.values()), None)
    return {"grad": {k: p.requires_grad for k, p in model.named_parameters()},
            "training": {k: m.training for k, m in model.named_modules()}, "channels_last": formats,
            "device": None if first is None else first.device}


def _restore_module_state(model: nn.Module | None, saved: dict[str, Any] | None) -> None:
    if model is None or saved is None:
        return
    if saved["device"] is not None:
        model.to(saved["device"])
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        for k, was_cl in saved["channels_last"].items():
            t = tensors.get(k)
            if t is not None:
                t.data = t.data.contiguous(memory_format=torch.channels_last if was_cl else torch.contiguous_format)
    for k, p in model.named_parameters():
        if k in saved["grad"]:
            p.requires_grad_(saved["grad"][k])
    for k, m in model.named_modules():
        if k in saved["training"]:
            m.training = saved["training"][k]


def _distill(student: nn.Module, teacher: nn.Module, data, cfg: TrainConfig, *, method: str = "kd",
             cache: bool | None = None, cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> FitResult:
    fit_keys = {"progress", "checkpoint_path", "desc", "restore_best", "state_path", "resume", "stop_after"}
    fit_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in fit_keys}
    distiller = build_distiller(method, student, teacher, **kwargs)
    teacher_free = getattr(distiller, "teacher_free", False)  # e.g. label smoothing: holds no teacher
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
    fixed, per_epoch, source = {}, {}, "none" if teacher_free else "online teacher"
    if cache and cfg.augment is None and embed_layer is None:
        fixed = {"logits": cache_teacher_logits(teacher, data, "train", device=cfg.device, precision=cfg.precision)}
        source = "cached logits (un-augmented transfer set)"
    elif cache:
        outs = teacher_outputs(teacher, data, AugmentationPlan.of(cfg), embed_layer=embed_layer, cache_dir=cache_dir,
                               device=cfg.device, precision=cfg.precision, progress=fit_kw.get("progress", True))
        per_epoch = {"logits": outs.logits} if embed_layer is None else {"logits": outs.logits, "embedding": outs.embedding}
        source = f"plan cache {'built' if outs.built else 'read'}: {outs.path.name}"
    res = fit(student, data, cfg, method=distiller, teacher_outputs=fixed, plan_outputs=per_epoch, **fit_kw)
    res.config["teacher_outputs"] = source
    res.config["extra_parameters"] = int(getattr(distiller, "extra_parameters", 0))
    if prepare is not None:
        res.config["stage1_time_s"] = stage1_s
    return res


# ------------------------------------------------------------- memoised runs ----
def uses_teacher(method: str) -> bool:
    """Whether a run of ``method`` depends on its teacher: not plain ``"ce"``, nor a distiller class marked
    ``teacher_free`` (label smoothing); such runs are keyed, trained and recorded without one."""
    return method != "ce" and not getattr(DISTILLERS.get(method), "teacher_free", False)


@dataclass
class Run:
    """A finished training run: its record (history, teacher-free test metrics, stored logits) and,
    where stored, its model (eval mode). ``metrics`` adds agreement and KL with the teacher the
    caller passed, computed from the stored test logits."""
    name: str
    history: pd.DataFrame
    metrics: dict[str, Any]
    reused: bool
    path: Path
    spec: dict[str, Any] = field(repr=False, default_factory=dict)
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    _model: nn.Module | None = field(repr=False, default=None)
    _weights_fallback: Path | None = field(repr=False, default=None)
    _logits: dict[str, torch.Tensor | None] | None = field(repr=False, default=None)  # read once
    _store: tuple | None = field(repr=False, default=None)  # (profile, root): where a read of val logits is noted

    @property
    def accuracy(self) -> float:
        return self.metrics["test_accuracy"]

    @property
    def model(self) -> nn.Module:
        """The trained model; loaded from the stored weights on first use (``RunError`` when the run
        was committed without them)."""
        if self._model is None:
            self._model = runs.load_weights(self.path, self._weights_fallback)
        return self._model

    @property
    def key(self) -> str:
        return self.record.get("key", "")

    def logits(self, split: str = "test") -> torch.Tensor:
        """The run's stored logits of ``split`` ("test" or "val"), float32."""
        stored = self._read_logits(split)
        if split not in stored or stored[split] is None:
            raise ValueError(f"run {self.name!r} stores logits for {sorted(k for k, v in stored.items() if v is not None)}"
                             f", not {split!r}{self._why_no_val(split)}")
        return stored[split].float()

    def member_logits(self, split: str = "test") -> torch.Tensor:
        """A cohort run's stored logits of each member, (members, N, K) float32 (``split``: "test" or "val")."""
        stored = self._read_logits(split).get(f"{split}_members")
        if stored is None:
            raise ValueError(f"run {self.name!r} stores no per-member logits of {split!r} (not a cohort, or recorded "
                             f"before cohorts stored them){self._why_no_val(split)}")
        return stored.float()

    def _read_logits(self, split: str) -> dict[str, torch.Tensor | None]:
        if self._logits is None:
            self._logits = runs.read_logits(self.path)
        if split != "test" and self._store is not None:  # the export keeps validation logits a cell read
            runs.note_use(self._store[0], self.path, False, self._store[1], val_logits=True)
            self._store = None  # noted once
        return self._logits

    def _why_no_val(self, split: str) -> str:
        if split == "val" and self.record.get("val_logits") is False:
            return ("; it was committed without them because no cell of the notebook that committed it read them: "
                    "retrain it (mode=\"fresh\") where a cell needs them")
        return ""

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, test_accuracy={self.accuracy:.4f}, "
                f"{'reused' if self.reused else 'trained'}, {self.path})")


def run_spec(student: dict, data, cfg: TrainConfig, method: str, method_kwargs: dict,
             teacher: nn.Module | None) -> dict:
    """The complete specification of a run; its hash names the stored run.

    It holds what can change the run's numbers: model, method and hyper-parameters, training config,
    data, teacher checksum, augmentation plan, and the numerics versions of the code families the run
    uses (:mod:`kd_utils.numerics`) -- not the source of plots, analysis, the CLI or docstrings."""
    student = student_spec(student)
    if method not in DISTILLERS:
        raise ValueError(f"unknown distillation method {method!r}; known: {', '.join(DISTILLERS)}")
    return {"student": dict(student), "method": method, "method_kwargs": dict(sorted(method_kwargs.items())),
            "config": cfg.to_dict(), "data": data_fingerprint(data), "test_n": int(len(data.y_test)),
            "teacher_sha256": teacher_sha256(teacher) if teacher is not None else None,
            "plan": {"seed": cfg.plan_seed, "augment": cfg.augment},
            "numerics": numerics.versions_for(DISTILLERS[method], teacher is not None, cfg.plan_seed)}


def teacher_sha256(teacher: "nn.Module | Run") -> str:
    """The checksum a run's key holds for its teacher: of the module's weights, or -- for a teacher that
    is itself a stored :class:`Run` -- of that run's stored weights, read from its record
    (``weights_sha256``) so that keying, reusing and replaying a student never load the teacher's weights;
    records written before the field existed load them once."""
    if isinstance(teacher, Run):
        return teacher.record.get("weights_sha256") or teacher_digest(teacher.model)
    return teacher_digest(teacher)


def teacher_module(teacher: "nn.Module | Run | None") -> nn.Module | None:
    """The module to train with: a stored :class:`Run`'s model (its weights must be stored:
    ``keep_weights=True`` where it was trained), else ``teacher`` itself."""
    if isinstance(teacher, Run):
        try:
            return teacher.model
        except runs.RunError as e:
            raise runs.RunError(f"teacher run {teacher.name!r} must be trained with keep_weights=True to teach a run "
                                f"that is not stored yet: {e}") from None
    return teacher


def student_spec(student: Any) -> dict:
    """``student`` if it is a model spec (``{"name": <registered model>, **constructor kwargs}``); else a
    ``TypeError`` that says what a spec is and how to register a model. A module instance is refused:
    a stored run is keyed on, and rebuilt from, its spec, and its initial weights come from seeding
    with ``cfg.seed`` -- an instance's own weights and class could not be keyed or rebuilt reliably."""
    from .models import MODELS
    if isinstance(student, dict) and isinstance(student.get("name"), str):
        return student
    example = '{"name": "vgg8", "width": 0.25}'
    if isinstance(student, nn.Module):
        arch = getattr(student, "arch", None)
        if isinstance(arch, dict) and "name" in arch:  # built by build_model: its spec is known
            kw = {k: v for k, v in arch.get("kwargs", {}).items() if k != "num_classes"}
            example = repr({"name": arch["name"], **kw}).replace("'", '"')
            how = f"this {type(student).__name__} was built by build_model, so pass its spec: {example}"
        else:
            how = (f"to use your own {type(student).__name__} class, register it once, e.g. "
                   f"`@register_model(\"{type(student).__name__.lower()}\")` above its definition "
                   "(from kd_utils.models import register_model; its __init__ takes num_classes and your own "
                   f"keyword arguments), then pass {{\"name\": \"{type(student).__name__.lower()}\", ...}}")
        raise TypeError(f"run_experiment needs a model spec, not a {type(student).__name__} instance: a spec is a "
                        f"dict {{\"name\": <registered model name>, **constructor keyword arguments}}, e.g. "
                        f"{{\"name\": \"vgg8\", \"width\": 0.25}}; the run builds it after seeding with cfg.seed, "
                        f"so the spec and seed key the stored run and fix its initial weights. {how[0].upper() + how[1:]}. "
                        f"Registered now: {', '.join(sorted(MODELS))}")
    if isinstance(student, dict):
        raise TypeError(f"model spec {student!r} has no 'name': a spec is {example} (a registered model name and "
                        "its constructor keyword arguments)")
    raise TypeError(f"student must be a model spec such as {example} (a registered model name and its constructor "
                    f"keyword arguments), got {type(student).__name__}")


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


_SPLIT_LOGITS: dict[tuple, torch.Tensor] = {}
EVAL_PRECISION = "fp32"  # records are evaluated in fp32: the same numbers on every CPU, bf16 units or not


def split_logits(model: nn.Module, data, split: str = "test", device="auto", precision=EVAL_PRECISION) -> torch.Tensor:
    """A model's logits on an un-augmented split (float32, CPU), computed once per (weights, split's
    images by their labels and count) in this process: a teacher is evaluated once, however many
    students are compared with it."""
    labels = {"train": data.y_train, "val": data.y_val, "test": data.y_test}.get(split)
    if labels is None:
        raise ValueError(f"unknown split {split!r}; allowed: train, val, test")
    digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    key = (teacher_digest(model), data.name, split, len(labels), digest, precision)
    if key not in _SPLIT_LOGITS:
        _SPLIT_LOGITS[key] = predict(model, data.loader(split, batch_size=1024, shuffle=False), device, precision)[0]
    return _SPLIT_LOGITS[key]


def test_logits(model: nn.Module, data, device="auto", precision=EVAL_PRECISION) -> torch.Tensor:
    """A model's test-set logits (float32, CPU), computed once per (weights, test set)."""
    return split_logits(model, data, "test", device, precision)


def logits_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Test accuracy, errors, loss and ECE of stored logits."""
    logits = logits.float()
    return {"test_accuracy": metrics.accuracy(logits, labels), "test_errors": metrics.error_count(logits, labels),
            "test_loss": F.cross_entropy(logits, labels).item(), "ece": metrics.expected_calibration_error(logits, labels)}


def test_metrics(model: nn.Module, data, teacher: nn.Module | None = None, device="auto",
                 precision=EVAL_PRECISION) -> dict[str, float]:
    """Test accuracy, errors, loss and ECE; with a teacher also top-1 agreement and KL(teacher||model)."""
    logits = test_logits(model, data, device, precision)
    out = logits_metrics(logits, data.y_test)
    if teacher is not None:
        out.update(teacher_metrics(teacher, logits, data, device))
    return out


def teacher_metrics(teacher: "nn.Module | Run", logits: torch.Tensor, data, device="auto") -> dict[str, float]:
    """Top-1 agreement and KL(teacher || model) of a model's test logits with a teacher's (a stored
    :class:`Run`'s own stored test logits when the teacher is one)."""
    t = teacher.logits("test") if isinstance(teacher, Run) else test_logits(teacher, data, device)
    return {"agreement": metrics.agreement(t, logits.float()), "kl": metrics.kl_divergence(t, logits.float())}


def fidelity(teacher: nn.Module, student: nn.Module, data, splits=("train", "test"), device="auto",
             precision=EVAL_PRECISION) -> pd.DataFrame:
    """How closely a student follows its teacher (Stanton et al. 2021), per un-augmented split: top-1
    agreement, KL(teacher || student) at T = 1, and both models' accuracy. One row per split. The
    teacher's logits are computed once per process (:func:`split_logits`)."""
    rows = []
    for split in splits:
        t = split_logits(teacher, data, split, device, precision)
        s, labels = predict(student, data.loader(split, batch_size=1024, shuffle=False), device, precision)
        rows.append({"split": split, "agreement": metrics.agreement(t, s), "kl": metrics.kl_divergence(t, s),
                     "teacher_accuracy": metrics.accuracy(t, labels), "student_accuracy": metrics.accuracy(s, labels)})
    return pd.DataFrame(rows).set_index("split")


# Every run this process asked for, in order: what a notebook's summary cell counts.
RUNS_USED: list[Run] = []


def _train(name: str, student: dict, data, cfg: TrainConfig, method: str, teacher: nn.Module | None,
           progress: bool, stop_after: int | None, method_kwargs: dict, state_path: Path | None = None,
           restore_best: bool = True):
    """Build the seeded student and train it with ``method``; returns (model, FitResult). With a
    ``state_path`` the training state is saved after every epoch and a run killed part-way resumes
    from it, bit for bit (``fit(..., resume=True)``)."""
    resume = dict(state_path=state_path, resume=state_path is not None, restore_best=restore_best)
    from .models import build_model
    from .runtime import seed_everything
    spec_model = dict(student)
    seed_everything(cfg.seed)
    model = build_model(spec_model.pop("name"), num_classes=data.num_classes, **spec_model)
    if method == "ce" and method_kwargs:
        raise ValueError(f"method 'ce' takes no arguments (label smoothing is TrainConfig.label_smoothing); "
                         f"got {sorted(method_kwargs)}")
    # plain CE, or a teacher-free method (mutual learning in a cohort, label smoothing)
    if method == "ce" or teacher is None or not uses_teacher(method):
        distiller = None if method == "ce" else build_distiller(method, model, None, **method_kwargs)
        prepare = getattr(distiller, "prepare", None)  # e.g. a cohort's peers on their own plans
        if prepare is not None:
            prepare(data, cfg, progress=progress)
        res = fit(model, data, cfg, progress=progress, desc=name, stop_after=stop_after, method=distiller, **resume)
        res.config["teacher_outputs"] = "none"
    else:
        res = distill(model, teacher, data, cfg, method=method, progress=progress, desc=name, stop_after=stop_after,
                      **resume, **method_kwargs)
    return model, res


def run_experiment(name: str, student: dict, data, cfg: TrainConfig, *, method: str = "ce",
                   teacher: "nn.Module | Run | None" = None, profile: str | Profile | None = None,
                   mode: str | None = None, progress: bool = True, root: str | os.PathLike | None = None,
                   stop_after: int | None = None, keep_weights: bool = False, restore_best: bool = True,
                   **method_kwargs: Any) -> Run:
    """Train (or reuse, or replay) one run and return it with its test metrics.

    ``student``: a model spec ``{"name": "vgg8", "width": 0.25}`` (built with ``build_model``
    after seeding with ``cfg.seed``, so a seed gives the same initialisation). ``method``: a
    distiller name (``"ce"``, ``"kd"``, ``"mse"``, ...) with its ``method_kwargs``; teacher outputs
    are cached as :func:`distill` does. ``stop_after``: an early-stopped run (the first epochs of
    ``cfg``'s schedule). ``mode``: ``reuse``/``fresh``/``replay`` (default ``$KD_RUNS``, else reuse;
    see :mod:`kd_utils.runs`). ``keep_weights``: the reference store keeps this run's weights (a
    notebook cell reads them, e.g. for CKA, or it teaches another run); every other run is committed
    as its record and logits only. ``restore_best=False``: the run keeps its last epoch's weights
    instead of its best validation epoch's (a protocol that reports the last epoch; the key records it,
    so the default's keys are unchanged). ``teacher``: a module, or a stored :class:`Run` (a teacher
    trained by a notebook): the key holds its recorded weights checksum, so a stored student is reused
    or replayed without the teacher's weights, which are loaded only to train.

    A stored run is reused only when its key (:func:`run_spec`: the specification and the numerics
    versions of the code it uses) is identical. The trained model's weights are rounded to float16
    (what the record stores) before it is evaluated, so a replayed run equals a fresh one.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    mode = runs.run_mode(mode)
    spec = run_spec(student, data, cfg, method, method_kwargs, teacher if uses_teacher(method) else None)
    if stop_after is not None:
        spec["stop_after"] = int(stop_after)
    if not restore_best:  # only when asked: every run keyed before this option keeps its key
        spec["restore_best"] = False
    key = spec_key(spec)
    places = runs.stores(prof, root)
    order = [places["reference"]] if mode == "replay" else [places["training"], places["reference"], places["bank"]]
    # a cell that reads the weights takes the first stored copy that has them (e.g. banked, while the
    # committed copy of another notebook has none)
    found = (keep_weights and runs.find(name, key, order, weights=True)) or runs.find(name, key, order)
    if found is not None:
        record = runs.read_record(found)
        if mode != "fresh" or record.get("session") == runs.session_id():
            try:
                fallback = None if mode == "replay" else places["training"] / found.name  # replay: as committed
                if keep_weights and not runs.has_weights(found, fallback):
                    # banked or committed without weights, but a cell now reads them: only training gives them
                    raise runs.RunError("it was stored without its weights and keep_weights=True asks for them")
                run = _from_record(name, found, record, spec, data, teacher, cfg, fallback)
            except (OSError, ValueError, KeyError, CheckpointError, runs.RunError) as e:
                if mode == "replay":
                    raise runs.RunError(f"committed run {found.name} is unusable: {e}") from None
                print(f"[rerun] {name}: stored run unusable ({e})")
            else:
                if progress:
                    print(f"[{'replayed' if mode == 'replay' else 'reused'}] {name}: test accuracy "
                          f"{run.accuracy:.4f} ({found})")
                runs.note_use(prof, found, keep_weights, root)
                run._store = (prof, root)
                RUNS_USED.append(run)
                return run
    if mode == "replay":
        raise runs.RunError(f"run {name!r} cannot be replayed: {runs.explain_mismatch(name, spec, order)}; "
                            f"re-execute {os.environ.get(runs.NOTEBOOK_ENV) or 'the notebook that makes it'} "
                            "with `make run FRESH=1`")
    # One process at a time trains this run (a sweep's workers, two notebooks): the others wait here, then
    # reuse its record; a lock left by a process that died is taken over (kd_utils.locks).
    lock = locks.FileLock(places["training"] / "_locks" / f"{runs.folder_name(name, key)}.lock", what=f"run {name}",
                          notify=print if progress else None)
    with lock:
        if runs.find(name, key, [places["training"]]) is not None and (found is None or lock.waited):
            lock.release()  # another process stored it meanwhile: take it as any stored run
            return run_experiment(name, student, data, cfg, method=method, teacher=teacher, profile=prof, mode=mode,
                                  progress=progress, root=root, stop_after=stop_after, keep_weights=keep_weights,
                                  restore_best=restore_best, **method_kwargs)
        # A long run killed part-way (a session's end) continues from its last epoch next time it is asked for.
        state = places["training"] / "_state" / f"{runs.folder_name(name, key)}.pth"
        if mode == "fresh":  # retrain means from the first epoch
            state.unlink(missing_ok=True)
        else:  # cut off in an earlier session and banked (runs.bank): continue from there
            runs.banked_state(state, prof, root)
        done_before = runs.epochs_in_state(state)
        if uses_teacher(method):
            teacher = teacher_module(teacher)
        t0 = time.perf_counter()
        model, res = _train(name, student, data, cfg, method, teacher, progress, stop_after, method_kwargs, state,
                            restore_best)
        wall = time.perf_counter() - t0
        earlier_s = float(res.history["time_s"].iloc[:done_before].sum()) if done_before else 0.0
        runs.round_weights(model.cpu()).eval()
        weights_sha256 = teacher_digest(model)  # what a student of this run keys on (teacher_sha256)
        logits = {"test": predict(model, data.loader("test", batch_size=1024), cfg.device, EVAL_PRECISION)[0],
                  "val": (predict(model, data.loader("val", batch_size=1024), cfg.device, EVAL_PRECISION)[0]
                          if len(data.y_val) else None)}
        members = getattr(model, "students", None)  # a cohort: each member's logits too, so per-member
        if members is not None:                      # numbers need no stored weights
            for split in [k for k, v in list(logits.items()) if v is not None]:
                logits[f"{split}_members"] = torch.stack(
                    [predict(s, data.loader(split, batch_size=1024), cfg.device, EVAL_PRECISION)[0] for s in members])
        logits = {k: None if v is None else v.to(runs.LOGITS_DTYPE) for k, v in logits.items()}
        m = {**logits_metrics(logits["test"], data.y_test), "best_epoch": res.best_epoch,
             "best_val_acc": res.best_val_acc, "train_time_s": res.wall_time_s + earlier_s, "wall_time_s": wall + earlier_s,
             "epoch_time_s": float(res.history["time_s"].mean()), "precision": res.config["precision_used"],
             "teacher_outputs": res.config["teacher_outputs"], "extra_parameters": res.config.get("extra_parameters", 0),
             "stage1_time_s": res.config.get("stage1_time_s", 0.0),
             **({"resumed_after_epoch": done_before} if done_before else {})}
        record = {"format": runs.FORMAT, "name": name, "key": key, "spec": spec, "metrics": m,
                  "session": runs.session_id(), "weights": True, "weights_sha256": weights_sha256,
                  "provenance": runs.provenance()}
        folder = places["training"] / runs.folder_name(name, key)
        runs.write_run(folder, record, res.history, logits, model)
        state.unlink(missing_ok=True)  # the record is written: the run will never resume again
        if progress:
            print(f"[trained] {name}: test accuracy {m['test_accuracy']:.4f} in {wall:.0f} s ({res.config['teacher_outputs']})")
        runs.note_use(prof, folder, keep_weights, root)
        run = Run(name, res.history, _with_teacher(m, logits["test"], teacher, data, cfg), False, folder, spec, record,
                  model, None, logits, (prof, root))
        RUNS_USED.append(run)
        return run


def execution_summary(notebook_start: float | None = None, notebook: str | None = None) -> dict[str, Any]:
    """What a notebook's results file records about the runs behind it: the git commit, how many runs
    it used and trained now, their training compute (from their records, whether trained now or
    reused), the CPUs and precisions they were trained with, this execution's wall time, and the wall
    time of the execution that trained them (this one, or -- when replaying -- the committed one's) with
    the number of runs it trained (the others came from earlier executions, e.g. banked across sessions)."""
    seen: dict[str, Run] = {}
    for r in RUNS_USED:
        seen.setdefault(r.key or r.path.name, r)
    recs = [r.record for r in seen.values()]
    wall = None if notebook_start is None else time.perf_counter() - notebook_start
    out = {"git_commit": runs.git_commit(), "mode": runs.run_mode(), "runs": len(recs),
           "runs_trained_now": sum(not r.reused for r in seen.values()),
           "training_compute_s": round(sum(float(r["metrics"].get("wall_time_s", 0.0)) for r in recs), 1),
           "trained_on": sorted({r.get("provenance", {}).get("versions", {}).get("processor", "unknown") for r in recs}),
           "precisions": sorted({str(r["metrics"].get("precision")) for r in recs}),
           "execution_wall_time_s": None if wall is None else round(wall, 1)}
    notebook = notebook or os.environ.get(runs.NOTEBOOK_ENV)
    manifest = runs.manifest_path(get_profile(None), notebook) if notebook else None
    if out["mode"] == "replay" and manifest is not None and manifest.is_file():
        m = json.loads(manifest.read_text())
        # an execution that reused runs banked by earlier ones trained only some (or none) of them
        out["training_execution_wall_time_s"] = m["execution_wall_time_s"]
        out["runs_trained_in_training_execution"] = m.get("runs_trained_in_execution")
    else:
        out["training_execution_wall_time_s"] = out["execution_wall_time_s"]
        out["runs_trained_in_training_execution"] = out["runs_trained_now"]
    return out


def _with_teacher(m: dict, logits: torch.Tensor, teacher: nn.Module | None, data, cfg: TrainConfig) -> dict:
    """A record's metrics plus agreement and KL with ``teacher`` (if any), from the stored logits."""
    return {**m, **teacher_metrics(teacher, logits, data, cfg.device)} if teacher is not None else dict(m)


def _from_record(name: str, folder: Path, record: dict, spec: dict, data, teacher, cfg: TrainConfig,
                 weights_fallback: Path | None) -> Run:
    """A stored run; where its weights are stored they are re-evaluated and must reproduce the stored
    test logits."""
    history = pd.read_csv(folder / "history.csv")
    logits = runs.read_logits(folder)
    if len(logits["test"]) != len(data.y_test):
        raise ValueError(f"stored test logits cover {len(logits['test'])} images, the test set has {len(data.y_test)}")
    run = Run(name, history, _with_teacher(record["metrics"], logits["test"], teacher, data, cfg), True, folder, spec,
              record, None, weights_fallback, logits)
    if runs.has_weights(folder, weights_fallback):
        # compared at the stored precision: a near-tie that float16 rounds to a tie must not count as a change
        fresh = test_logits(run.model, data, cfg.device).to(logits["test"].dtype).float()
        agree = metrics.agreement(fresh, logits["test"].float())
        if agree < 0.999:
            raise runs.RunError(f"stored weights of run {folder.name} no longer reproduce its record: their test "
                                f"predictions agree with the stored ones on {100 * agree:.2f}% of images")
    return run


def run_seeds(name: str, student: dict, data, cfg: TrainConfig, seeds, **kwargs: Any) -> list[Run]:
    """:func:`run_experiment` once per seed (``cfg.seed`` = each seed; each replays its own plan
    unless ``cfg.data_seed`` is set), named ``<name>-s<seed>``."""
    return [run_experiment(f"{name}-s{s}", student, data, cfg.replace(seed=int(s)), **kwargs) for s in seeds]


def run_metric(run: Run, metric: str) -> float:
    """One number of a run: ``"test_accuracy"``, any key of its record's metrics (``"best_val_acc"``,
    ``"ece"``, ...), or ``"final_<history column>"`` (the last epoch's value, e.g. ``"final_train_acc"``)."""
    if metric == "test_accuracy":
        return float(run.accuracy)
    if metric in run.metrics:
        return float(run.metrics[metric])
    column = metric[len("final_"):] if metric.startswith("final_") else None
    if column is not None and column in run.history.columns:
        return float(run.history[column].iloc[-1])
    raise ValueError(f"run {run.name!r} has no metric {metric!r}; allowed: test_accuracy, "
                     f"{', '.join(sorted(k for k, v in run.metrics.items() if isinstance(v, (int, float))))}, "
                     f"or final_<column> of its history ({', '.join(map(str, run.history.columns))})")


def runs_table(runs: dict[str, list[Run]], teacher_logits: torch.Tensor | None = None,
               metric: str = "test_accuracy") -> pd.DataFrame:
    """Mean and sample std of ``metric`` (:func:`run_metric`; default test accuracy) per method over its
    seeds, with per-seed values and the mean teacher agreement, ECE and epoch time where known: a column
    is kept when any method has it, NaN for a method whose runs lack it (e.g. agreement of scratch runs
    trained without a teacher). ``teacher_logits`` (test logits): agreement of every run with that
    teacher, from its stored logits."""
    from .analysis import seed_table

    def value(r: Run, key: str) -> float:
        if key == "agreement" and teacher_logits is not None:
            return float((r.logits("test").argmax(1) == teacher_logits.argmax(1)).double().mean())
        return float(r.metrics.get(key, float("nan")))

    extra = {}
    for key in ("agreement", "ece", "epoch_time_s"):
        per = {m: [value(r, key) for r in rs] for m, rs in runs.items()}
        if any(v == v for vs in per.values() for v in vs):  # some run knows it
            extra[key] = per
    return seed_table({m: [run_metric(r, metric) for r in rs] for m, rs in runs.items()}, extra)
