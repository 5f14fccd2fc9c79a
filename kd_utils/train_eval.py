"""One training loop (``fit``) for every method, and evaluation (``predict``, ``evaluate``)."""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from .progress import progress as progress_bar

from . import distributed as D
from . import metrics
from .checkpoint import CheckpointError, _plain, check_savable, load_checkpoint, save_checkpoint
from .digests import data_fingerprint
from .fileio import atomic_path, check_writable
from .config import TrainConfig
from .runtime import autocast, resolve_device, resolve_precision, seed_everything, warn_if_busy
from .train_kd import Distiller, StepContext, Vanilla


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    """What ``fit`` returns: the per-epoch history and the best-on-validation epoch."""
    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        last = self.history.iloc[-1]
        return (f"FitResult(epochs={len(self.history)}, best_epoch={self.best_epoch}, "
                f"best_val_acc={self.best_val_acc:.4f}, last_train_loss={last['train_loss']:.4f}, "
                f"wall_time_s={self.wall_time_s:.1f})")


# -------------------------------------------------------------- helpers ----
def uses_channels_last(model: nn.Module) -> bool:
    """channels_last pays off for conv nets on CPU and GPU; MLPs gain nothing from it."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step schedule (stepped after every optimiser step)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25,
                                                   anneal_strategy="linear", cycle_momentum=False)
    if cfg.schedule == "step":
        bounds = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.gamma ** sum(s >= b for b in bounds))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


# ------------------------------------------------------------ evaluation ----
@torch.no_grad()
def predict(model: nn.Module, loader, device: str | torch.device = "auto", precision: str = "fp32"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch of ``loader``, in order. Eval mode is
    used and the model's previous mode restored. Evaluation defaults to fp32, so a reported number
    is the same on every CPU (with bf16 units or without); training passes its own precision."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    was_training = model.training
    model.eval()
    model.to(dev)
    out, labels = [], []
    try:
        for batch in loader:
            x, y = batch[0].to(dev, non_blocking=True), batch[1]
            if uses_channels_last(model) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, prec):
                out.append(model(x).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("the loader yielded no batches (empty split?)")
    return torch.cat(out), torch.cat(labels)


@dataclass
class EvalResult:
    """Test-set evaluation of one model."""
    loss: float
    accuracy: float
    errors: int
    n: int
    logits: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        return metrics.per_class_accuracy(self.logits, self.labels, self.num_classes)

    @property
    def confusion(self) -> torch.Tensor:
        return metrics.confusion_matrix(self.logits, self.labels, self.num_classes)

    @property
    def prediction_distribution(self) -> torch.Tensor:
        return metrics.prediction_distribution(self.logits, self.num_classes)

    def summary(self, teacher: "EvalResult | None" = None) -> dict[str, Any]:
        """JSON-friendly numbers: loss, accuracy, errors, ECE, per-class accuracy (and agreement
        and KL with a teacher's result on the same samples, when given)."""
        d = {"loss": self.loss, **metrics.summarize(self.logits, self.labels, self.num_classes,
                                                    None if teacher is None else teacher.logits)}
        d["per_class_accuracy"] = [None if math.isnan(a) else a for a in self.per_class_accuracy.tolist()]
        return d


def evaluate(model: nn.Module, data, split: str = "test", batch_size: int = 1024, device: str | torch.device = "auto",
             precision: str = "fp32") -> EvalResult:
    """Evaluate on a split of a :class:`~kd_utils.data.DataBundle` (or on any loader of
    ``(x, y, ...)`` batches): loss, accuracy, error count; confusion matrix and friends on demand."""
    loader = data.loader(split, batch_size=batch_size, shuffle=False) if hasattr(data, "loader") else data
    logits, labels = predict(model, loader, device=device, precision=precision)
    k = getattr(model, "num_classes", None) or getattr(data, "num_classes", None) or logits.shape[1]
    return EvalResult(loss=F.cross_entropy(logits, labels).item(), accuracy=metrics.accuracy(logits, labels),
                      errors=metrics.error_count(logits, labels), n=len(labels), logits=logits, labels=labels,
                      num_classes=int(k))


# -------------------------------------------------------------- training ----
def _trainable_state(method: Distiller) -> dict[str, torch.Tensor]:
    """The distiller's weights without the frozen teacher (student + adapters)."""
    return {k: v.detach().clone() for k, v in method.state_dict().items() if not k.startswith("teacher.")}


STATE_FORMAT = "kd_utils/train-state/2"


def _resume_identity(method: Distiller, data, cfg: TrainConfig) -> dict[str, Any]:
    """What a saved training state must share with the run resuming from it."""
    return {"config": cfg.to_dict(), "method_hparams": _plain(method.describe()), "data": data_fingerprint(data)}


def _save_state(path: Path, method: Distiller, opt, sched, epoch: int, rows: list, best: dict,
                identity: dict[str, Any]) -> None:
    """Everything a run needs to continue after ``epoch``: weights and distiller state (buffers such
    as memory banks), optimiser, schedule, RNG, history."""
    state = {"format": STATE_FORMAT, "epoch": epoch, "method": _trainable_state(method),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "history": [{k: float(v) for k, v in r.items()} for r in rows], "best": best, **identity}
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _load_state(path: Path, method: Distiller, identity: dict[str, Any]) -> dict:
    """A saved training state, refused (naming what differs) when it was written by another config,
    method, method hyper-parameters or data; the distiller's state is restored strictly."""
    state = load_checkpoint(path, format=STATE_FORMAT)
    for part, now in identity.items():
        saved = state.get(part)
        if saved != now:
            diff = ({k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
                    if isinstance(saved, dict) and isinstance(now, dict) else (saved, now))
            raise CheckpointError(f"cannot resume from {path}: it was written with a different {part} "
                                  f"(saved, now): {diff}")
    mine = {k for k in method.state_dict() if not k.startswith("teacher.")}
    missing, unexpected = sorted(mine - set(state["method"])), sorted(set(state["method"]) - mine)
    if missing or unexpected:
        raise CheckpointError(f"cannot resume from {path}: its distiller state does not fit this method "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    method.load_state_dict(state["method"], strict=False)  # strict on everything but the frozen teacher
    return state


@dataclass
class _Loop:
    """What every step of one ``fit`` call shares."""
    method: Distiller
    step_fn: Any                 # the distiller, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    sched: Any
    loader: Any
    cfg: TrainConfig
    device: torch.device
    precision: str
    world: int
    clip_params: list
    constrain: Any
    fixed_names: tuple[str, ...]  # teacher outputs batched with the samples
    plan_names: tuple[str, ...]   # teacher outputs stored per plan epoch
    epochs: int                   # of the schedule (cfg.epochs, also when stopped early)


def train_step(loop: _Loop, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, i: int):
    """One optimiser step on a batch; returns (logits, loss terms, total loss, the lr it used)."""
    with autocast(loop.device, loop.precision):
        logits, losses = loop.step_fn(x, y, ctx)
    loss = sum(losses.values())
    if loop.world > 1:  # DDP averages over processes; weight by share so a ragged batch counts like one process
        global_n = min(loop.cfg.batch_size, loop.loader.num_samples - i * loop.cfg.batch_size)
        loss_for_grad = loss * (y.shape[0] * loop.world / global_n)
    else:
        loss_for_grad = loss
    loop.opt.zero_grad(set_to_none=True)
    loss_for_grad.backward()
    if loop.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(loop.clip_params, loop.cfg.grad_clip)
    loop.opt.step()
    lr = loop.opt.param_groups[0]["lr"]  # the rate this step used (logged; the schedule moves on)
    loop.sched.step()
    if loop.constrain is not None:
        loop.constrain()
    return logits, losses, loss, lr


def train_epoch(loop: _Loop, epoch: int) -> dict[str, float]:
    """One pass over the plan's epoch ``epoch``: the history row's training part (losses per term,
    accuracy, the last lr). Sums stay on the device: no host sync inside the loop."""
    loop.method.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=loop.device)
    seen, steps, lr = 0, len(loop.loader), loop.opt.param_groups[0]["lr"]
    for i, (x, y, index, *outs) in enumerate(loop.loader):
        teacher = dict(zip(loop.fixed_names + loop.plan_names, outs))
        ctx = StepContext(epoch=epoch, step=(epoch - 1) * steps + i, epochs=loop.epochs, steps_per_epoch=steps,
                          index=index, teacher=teacher)
        logits, losses, loss, lr = train_step(loop, x, y, ctx, i)
        n = y.shape[0]
        for k, v in {"loss": loss, **losses}.items():
            sums[k] = sums.get(k, 0) + v.detach().float() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
    if loop.world > 1:  # epoch metrics over all processes' shares
        keys = sorted(sums)
        packed = D.all_reduce_sum(torch.stack([sums[k] for k in keys] + [correct.float(),
                                                                         torch.tensor(float(seen), device=loop.device)]))
        sums, correct, seen = dict(zip(keys, packed[:len(keys)])), packed[-2], int(packed[-1].item())
    terms = {k: (v / seen).item() for k, v in sums.items()}
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"loss became non-finite in epoch {epoch} (steps {(epoch - 1) * steps + 1}"
                               f"-{epoch * steps}): {bad}")
    return {"epoch": epoch, "lr": lr, "train_loss": terms.pop("loss"), **{f"train_{k}": v for k, v in terms.items()},
            "train_acc": (correct / seen).item()}


def _setup(model: nn.Module, data, cfg: TrainConfig, method: Distiller, teacher_outputs: dict, plan_outputs: dict,
           epochs: int) -> _Loop:
    """Device, precision, loader (sample indices and teacher outputs batched with the images), DDP and
    compile wrappers, optimiser and schedule."""
    world, rank = D.world_size(), D.rank()
    device = D.local_device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    channels_last = uses_channels_last(model)
    seed_everything(cfg.seed + rank)  # dropout and any other global randomness (its own stream per process)
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    index = torch.arange(len(data.y_train))
    loader = data.loader("train", batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.plan_seed,
                         device=device, extras=(index, *teacher_outputs.values()), channels_last=channels_last,
                         rank=rank, world_size=world, epoch_extras=tuple(plan_outputs.values()))
    step_fn = method
    if world > 1:  # gradients of the student (and adapters) are averaged; the frozen teacher is left out
        from torch.nn.parallel import DistributedDataParallel as DDP
        if method.teacher is not None:
            DDP._set_params_and_buffers_to_ignore_for_model(
                method, [f"teacher.{k}" for k in method.teacher.state_dict()])
        step_fn = DDP(method, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # forward + loss compiled, backward through AOTAutograd; wraps DDP, as torch advises
        step_fn = torch.compile(step_fn)
    clip_params = list(method.trainable_parameters())
    opt = make_optimizer(clip_params, cfg)
    return _Loop(method, step_fn, opt, make_scheduler(opt, cfg, len(loader)), loader, cfg, device, precision, world,
                 clip_params, getattr(model, "apply_constraints", None), tuple(teacher_outputs), tuple(plan_outputs),
                 epochs)


def _check_fit_args(model, data, cfg, method, teacher_outputs, plan_outputs, stop_after, resume, state_path) -> None:
    if method.student is not model:
        raise ValueError("method.student must be the model being trained")
    if teacher_outputs and cfg.augment is not None:
        raise ValueError(f"teacher_outputs (e.g. cached teacher logits) cannot be used with augment={cfg.augment!r}: "
                         "they would not match the augmented images; use plan_outputs")
    n_train = len(data.y_train)
    for name, e in plan_outputs.items():
        if e.dim() < 2 or e.shape[0] < cfg.epochs or e.shape[1] != n_train:
            raise ValueError(f"plan_outputs[{name!r}] of shape {tuple(e.shape)} do not cover this run: need at least "
                             f"({cfg.epochs}, {n_train}, ...) (epochs, training samples)")
    clash = sorted(set(teacher_outputs) & set(plan_outputs))
    if clash:
        raise ValueError(f"teacher outputs {clash} given both per sample and per plan epoch; give each once")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or not 1 <= stop_after <= cfg.epochs):
        raise ValueError(f"stop_after must be an epoch in 1..{cfg.epochs} (cfg.epochs), got {stop_after!r}")
    if resume and state_path is None:
        raise ValueError("resume=True needs state_path (where the per-epoch training state is kept)")


def _tensorboard(log_dir: str | Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's writer imports the tensorboard package
        raise ImportError(f"fit(..., log_dir={str(log_dir)!r}) needs the tensorboard package: "
                          "pip install 'kd_utils[tensorboard]' (or tensorboard)") from e
    return SummaryWriter(str(log_dir))


def _log_row(log, row: dict[str, float]) -> None:
    """One history row as TensorBoard scalars at step = epoch: train/<term>, val/<metric>, lr, time_s."""
    for k, v in row.items():
        if k != "epoch":
            tag = ("train/" + k[6:]) if k.startswith("train_") else ("val/" + k[4:]) if k.startswith("val_") else k
            log.add_scalar(tag, float(v), int(row["epoch"]))
    log.flush()


def fit(model: nn.Module, data, cfg: TrainConfig, *, method: Distiller | None = None,
        teacher_outputs: dict[str, torch.Tensor] | None = None, plan_outputs: dict[str, torch.Tensor] | None = None,
        checkpoint_path: str | Path | None = None,
        state_path: str | Path | None = None, resume: bool = False, progress: bool = True,
        desc: str | None = None, restore_best: bool = True, stop_after: int | None = None,
        log_dir: str | Path | None = None) -> FitResult:
    """Train ``model`` on ``data`` (a :class:`~kd_utils.data.DataBundle`) following ``cfg``.

    ``method`` is a distiller whose ``student`` is ``model`` (default: plain cross-entropy); each batch
    it gets a :class:`~kd_utils.train_kd.StepContext` (epoch, step, sample indices, named teacher
    outputs). Every epoch the model is validated on the ``val`` split; the best epoch's weights are kept
    (written to ``checkpoint_path`` if given) and restored at the end when ``restore_best``. A bundle
    with no validation split (``val_fraction=0``) keeps the last epoch instead.

    ``state_path``: after every epoch the full training state (weights, distiller state, optimiser,
    schedule, RNG states, history) is written there atomically; with ``resume=True`` a run that was
    interrupted (Ctrl-C, SIGTERM, SIGKILL) continues from its last completed epoch and ends with the
    same numbers as an uninterrupted run. A state written by another config, method, method
    hyper-parameters or data is refused. Returns a :class:`FitResult` with one history row per epoch.

    ``stop_after``: train only the first ``stop_after`` epochs of ``cfg``'s schedule (an early-stopped
    run: the learning rate follows the full run's schedule up to that epoch).

    ``teacher_outputs``: named per-sample tensors batched with the images (cached logits of an
    un-augmented transfer set: ``{"logits": ...}``). ``plan_outputs``: named tensors (epochs, N, ...)
    holding, for every epoch of the run's augmentation plan, the outputs for the samples in the order
    that epoch visits them (:func:`kd_utils.plans.teacher_outputs`); they are valid with augmentation
    because the loader replays the same plan (``cfg.plan_seed``).

    ``log_dir``: also write every history column (each loss term, lr, train and validation accuracy,
    validation loss, epoch time) per epoch as TensorBoard scalars there (``train/loss_kd``, ``val/acc``,
    ...; needs the ``tensorboard`` package: ``pip install kd_utils[tensorboard]``).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    method = method if method is not None else Vanilla(model, label_smoothing=cfg.label_smoothing)
    teacher_outputs, plan_outputs = dict(teacher_outputs or {}), dict(plan_outputs or {})
    _check_fit_args(model, data, cfg, method, teacher_outputs, plan_outputs, stop_after, resume, state_path)
    main = D.rank() == 0  # only rank 0 writes files and shows progress
    for p in (checkpoint_path, state_path):  # fail now, not after hours of training
        if p is not None and main:
            check_writable(Path(p).parent, need_bytes=3 * sum(t.numel() * t.element_size()
                                                               for t in model.state_dict().values()))
    if checkpoint_path is not None and main:  # what save_checkpoint would refuse, refused before the first batch
        check_savable(model, config=cfg.to_dict(), extra={"method": method.describe()})
    loop = _setup(model, data, cfg, method, teacher_outputs, plan_outputs, cfg.epochs)
    if main:
        warn_if_busy(loop.device)  # a busy CPU makes every epoch slower: say so before it starts
    identity = _resume_identity(method, data, cfg) if state_path is not None else {}
    rows: list[dict] = []
    best = {"acc": -1.0, "epoch": 0, "state": None}
    first_epoch = 1
    if resume and Path(state_path).exists():
        st = _load_state(Path(state_path), method, identity)
        loop.opt.load_state_dict(st["optimizer"])
        loop.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng_cpu"])
        if st["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng_cuda"])
        rows, best = [dict(r, epoch=int(r["epoch"])) for r in st["history"]], st["best"]
        first_epoch = st["epoch"] + 1
        loop.loader.set_epoch(st["epoch"])  # the shuffling/augmentation stream continues where it stopped
        if progress and main:
            print(f"resuming {desc or type(method).__name__} after epoch {st['epoch']} from {state_path}")

    start = time.perf_counter()
    last_epoch = cfg.epochs if stop_after is None else stop_after
    bar = progress_bar(range(first_epoch, last_epoch + 1), desc=desc or type(method).__name__, disable=not (progress and main),
               unit="epoch", initial=first_epoch - 1, total=last_epoch)
    has_val = len(data.y_val) > 0
    log = _tensorboard(log_dir) if log_dir is not None and main else None
    for epoch in bar:
        t0 = time.perf_counter()
        try:
            row = train_epoch(loop, epoch)
        except TrainingDiverged as e:  # nothing of this epoch is saved: the last good state and best checkpoint stay
            raise TrainingDiverged(f"{e}; the best checkpoint (epoch {best['epoch']}) and the last good training "
                                   f"state were kept. Try a lower lr (now {cfg.lr}).") from None
        if has_val:
            val = evaluate(model, data, "val", device=loop.device, precision=loop.precision)
            # the logit scale per epoch (Sun et al. 2024): free here, a re-run per epoch afterwards
            row.update(val_loss=val.loss, val_acc=val.accuracy, val_logit_std=float(metrics.logit_std(val.logits).mean()))
            # a cohort validates as its ensemble (what selects its epoch); each member's curve beside it
            for i, member in enumerate(getattr(model, "students", None) or []):
                row[f"val_acc_m{i}"] = evaluate(member, data, "val", device=loop.device, precision=loop.precision).accuracy
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)
        # Without a validation split there is nothing to select on: the last epoch is kept (the paper
        # protocol of training on every image for a fixed number of epochs), so no weights are copied
        # aside (the model is its own last epoch) and best_val_acc is NaN.
        if not has_val or row["val_acc"] > best["acc"]:
            best = {"acc": row["val_acc"] if has_val else math.nan, "epoch": epoch,
                    "state": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
                    if has_val else None}
            if checkpoint_path is not None and main:
                save_checkpoint(checkpoint_path, model, config=cfg.to_dict(), seed=cfg.seed,
                                metrics={"epoch": epoch, "val_acc": row.get("val_acc"), "train_acc": row["train_acc"]},
                                extra={"method": method.describe()})
        if state_path is not None and main:
            _save_state(Path(state_path), method, loop.opt, loop.sched, epoch, rows, best, identity)
        if log is not None:
            _log_row(log, row)
        bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train_loss", "val_acc") if k in row})
    if log is not None:
        log.close()
    if restore_best and best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    if uses_channels_last(model):  # hand back an ordinary contiguous model
        model.to(memory_format=torch.contiguous_format)
    return FitResult(history=pd.DataFrame(rows), best_epoch=best["epoch"], best_val_acc=best["acc"],
                     wall_time_s=time.perf_counter() - start,
                     config={**cfg.to_dict(), **method.describe(), "precision_used": loop.precision,
                             "device_used": str(loop.device), "world_size": loop.world})
