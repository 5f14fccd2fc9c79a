"""Augmentation plans and cached teacher outputs: distillation with augmentation at the cost of plain training.

An *augmentation plan* is the complete, seeded description of what a training run sees: the sample
order of every epoch and each sample's crop offsets and flip. :class:`~kd_utils.data.BatchLoader`
draws both from a generator seeded per (plan seed, epoch) (:func:`kd_utils.data.loader.epoch_seed`), so the plan is fixed by (data, batch size,
augmentation, plan seed, epochs) and two runs with the same plan see bit-identical batches whatever
their model seed.

The teacher's outputs for every sample of every epoch of a plan are computed once (batched, no
gradients) and stored on disk (FKD, Shen & Xing 2022); a run that replays the plan reads them
instead of running the teacher::

    outs = teacher_outputs(teacher, data, AugmentationPlan.of(cfg, data))
    fit(student, data, cfg, method=HintonKD(student, None), plan_outputs={"logits": outs.logits})

``distill`` does this by itself when the data are augmented and the method needs only logits.

Cache key: teacher weights checksum, data set (name, split indices, pixel and label checksums,
normalisation), the plan, the embedding layer, the device type and precision of the teacher pass,
and the storage format: a stale cache cannot be found. Plans that differ only in length share their
first epochs: a longer plan computes only the epochs a cached shorter one lacks, and a shorter plan is
served from a longer one. Each model seed replays its own plan by
default (``TrainConfig.data_seed=None``), so seeds differ in data as well as initialisation; sharing
one plan across seeds (``data_seed=k``) makes them cheaper (one cache) but hides the variance that
comes from the data order and augmentation, so the spread over seeds then understates the real one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from .progress import progress as progress_bar

from .digests import data_fingerprint, state_digest, tensor_digest  # noqa: F401 (tensor_digest re-exported)

FORMAT = "kd_utils/teacher-outputs/2"  # 2: plans of seeds > 0 draw other batches (data numerics v2)
STORAGE_DTYPE = torch.float16  # logits need ~3 significant digits; fp16 halves the cache (see BENCHMARKS.md)


@dataclass(frozen=True)
class AugmentationPlan:
    """What a run sees: ``epochs`` passes over the train split in batches of ``batch_size``,
    shuffled and augmented from generators seeded per (seed, epoch) (``kd_utils.data.loader.epoch_seed``)."""
    augment: str | None
    batch_size: int
    seed: int
    epochs: int

    @classmethod
    def of(cls, cfg, data=None) -> "AugmentationPlan":
        """The plan a :class:`~kd_utils.config.TrainConfig` replays (its ``plan_seed``)."""
        return cls(augment=cfg.augment, batch_size=cfg.batch_size, seed=cfg.plan_seed, epochs=cfg.epochs)

    def loader(self, data, device=None, channels_last: bool = False):
        """A loader that replays this plan over ``data``'s train split."""
        return data.loader("train", batch_size=self.batch_size, shuffle=True, augment=self.augment, seed=self.seed,
                           device=device, channels_last=channels_last)


@dataclass
class TeacherOutputs:
    """Teacher outputs for every epoch of a plan, in the order the plan visits the samples:
    ``logits[e, i]`` belongs to the i-th sample of epoch ``e`` (float16 on the CPU)."""
    logits: torch.Tensor
    embedding: torch.Tensor | None
    path: Path
    key: str
    built: bool  # False when read from disk

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logits, self.embedding) if t is not None)

    def __repr__(self) -> str:
        return (f"TeacherOutputs(epochs={self.logits.shape[0]}, samples={self.logits.shape[1]}, "
                f"embedding={None if self.embedding is None else self.embedding.shape[-1]}, "
                f"{self.nbytes / 2**20:.1f} MiB, {'built' if self.built else 'read from'} {self.path})")


def default_cache_dir() -> Path:
    """``$KD_CACHE_DIR`` or ``<data root>/teacher_cache`` (ignored by git, like the data)."""
    from .data import default_root
    return Path(os.environ.get("KD_CACHE_DIR") or default_root() / "teacher_cache")


def teacher_digest(teacher: nn.Module) -> str:
    return state_digest(teacher.state_dict())


def cache_key(teacher: nn.Module, data, plan: AugmentationPlan, embed_layer: str | None, device: torch.device,
              precision: str) -> tuple[str, dict]:
    fields = {"format": FORMAT, "teacher_sha256": teacher_digest(teacher), "data": data_fingerprint(data),
              "plan": asdict(plan), "embed_layer": embed_layer, "device_type": device.type, "precision": precision,
              "storage": str(STORAGE_DTYPE)}
    return _digest(fields), fields


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _with_epochs(fields: dict, epochs: int) -> dict:
    """The cache fields of the same plan at another length (no teacher or data digest recomputed)."""
    return {**fields, "plan": {**fields["plan"], "epochs": epochs}}


def teacher_outputs(teacher: nn.Module, data, plan: AugmentationPlan, *, embed_layer: str | None = None,
                    cache_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
                    precision: str = "auto", progress: bool = True) -> TeacherOutputs:
    """The teacher's outputs for every batch of ``plan`` over ``data``'s train split: read from the
    cache when a valid entry exists, else computed once and written atomically.

    ``embed_layer``: also keep that layer's output, global-average-pooled to one vector per sample
    (for methods that need a small teacher embedding). A corrupt or foreign cache file is reported
    and rebuilt. Several processes asking for one entry at once build it once (a lock file beside
    it, :mod:`kd_utils.locks`): the others wait and read it.
    """
    from .runtime import resolve_device, resolve_precision
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    key, fields = cache_key(teacher, data, plan, embed_layer, dev, prec)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    lineage = _digest(_with_epochs(fields, 0))  # plans that differ only in length share their first epochs
    path = _entry(folder, data, plan, lineage)
    existed = path.exists()
    if existed:
        try:
            return _read(path, key)
        except ValueError as e:
            warnings.warn(f"rebuilding the teacher-output cache: {e}", stacklevel=2)
    longer = _other_length(folder, data, plan, fields, lineage, longer=True)
    if longer is not None:  # a longer plan of the same seed begins with this one's epochs
        return TeacherOutputs(longer.logits[:plan.epochs], None if longer.embedding is None else
                              longer.embedding[:plan.epochs], longer.path, key, built=False)
    from .locks import FileLock
    # one process builds an entry; the others (a sweep's workers on the same plan) wait, then read it
    with FileLock(path.with_name(path.name + ".lock"), what=f"teacher outputs {path.name}",
                  notify=print if progress else None) as lock:
        if path.exists() and (lock.waited or not existed):
            try:
                return _read(path, key)
            except ValueError as e:
                warnings.warn(f"rebuilding the teacher-output cache: {e}", stacklevel=2)
        # a shorter plan of the same seed: only the epochs it lacks are computed
        shorter = _other_length(folder, data, plan, fields, lineage, longer=False)
        start = 0 if shorter is None else shorter.logits.shape[0]
        logits, embedding = _compute(teacher, data, plan, embed_layer, dev, prec, progress, start=start)
        if shorter is not None:
            logits = torch.cat([shorter.logits, logits])
            embedding = None if embedding is None else torch.cat([shorter.embedding, embedding])
        _write(path, key, fields, logits, embedding)
    return TeacherOutputs(logits, embedding, path, key, built=True)


def _entry(folder: Path, data, plan: AugmentationPlan, lineage: str) -> Path:
    return folder / f"{data.name}-plan{plan.seed}-e{plan.epochs}-{lineage[:16]}.pt"


def _other_length(folder: Path, data, plan: AugmentationPlan, fields: dict, lineage: str, *,
                  longer: bool) -> TeacherOutputs | None:
    """The valid cache entry of the same lineage (the cache key without the plan's length: epoch e of a
    plan is drawn from its own seeded stream, whatever the length) closest in length: the shortest longer
    plan, or the longest shorter one (None if there is none)."""
    lengths = []
    for p in folder.glob(f"{data.name}-plan{plan.seed}-e*-{lineage[:16]}.pt"):
        try:
            lengths.append(int(p.name.split("-e")[-1].split("-")[0]))
        except ValueError:
            continue
    lengths = sorted((e for e in lengths if (e > plan.epochs if longer else e < plan.epochs)), reverse=not longer)
    for e in lengths:
        try:
            return _read(_entry(folder, data, dataclasses.replace(plan, epochs=e), lineage),
                         _digest(_with_epochs(fields, e)))
        except ValueError:
            continue  # corrupt or foreign: the next candidate, else a full build
    return None


@torch.no_grad()
def _compute(teacher, data, plan, embed_layer, dev, prec, progress, start: int = 0):
    """The teacher's outputs for epochs ``start .. plan.epochs - 1`` of the plan."""
    from .feature_kd import FeatureHooks, pooled
    from .runtime import autocast
    from .train_eval import uses_channels_last
    was_training = teacher.training
    teacher.eval().to(dev)
    channels_last = uses_channels_last(teacher)
    loader = plan.loader(data, device=dev, channels_last=channels_last)
    loader.set_epoch(start)
    hooks = FeatureHooks(teacher, [embed_layer]) if embed_layer else None
    logits, embedding = [], []
    try:
        for _ in progress_bar(range(start, plan.epochs), desc="teacher outputs", unit="epoch", disable=not progress, leave=False):
            ep_logits, ep_emb = [], []
            for x, _y in loader:
                with autocast(dev, prec):
                    out = teacher(x)
                ep_logits.append(out.float().to("cpu", STORAGE_DTYPE))
                if hooks is not None:
                    ep_emb.append(pooled(hooks.pop()[embed_layer]).to("cpu", STORAGE_DTYPE))
            logits.append(torch.cat(ep_logits))
            if hooks is not None:
                embedding.append(torch.cat(ep_emb))
    finally:
        if hooks is not None:
            hooks.close()
        teacher.train(was_training)
        if channels_last:
            teacher.to(memory_format=torch.contiguous_format)
    return torch.stack(logits), (torch.stack(embedding) if embedding else None)


def _write(path: Path, key: str, fields: dict, logits: torch.Tensor, embedding: torch.Tensor | None) -> None:
    from .fileio import atomic_path
    tensors = (logits,) if embedding is None else (logits, embedding)
    payload = {"format": FORMAT, "key": key, "fields": json.dumps(fields, sort_keys=True), "logits": logits,
               "embedding": embedding, "sha256": tensor_digest(*tensors)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _read(path: Path, key: str) -> TeacherOutputs:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, foreign: all mean "rebuild"
        raise ValueError(f"{path} cannot be read ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("key") != key:
        raise ValueError(f"{path} is not the cache entry for this teacher, data and plan")
    logits, embedding = payload["logits"], payload.get("embedding")
    tensors = (logits,) if embedding is None else (logits, embedding)
    if tensor_digest(*tensors) != payload.get("sha256"):
        raise ValueError(f"{path} is corrupted: its contents do not match the stored checksum")
    return TeacherOutputs(logits, embedding, path, key, built=False)


def cache_size_bytes(cache_dir: str | os.PathLike | None = None) -> int:
    """Bytes used by the teacher-output cache folder."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return sum(p.stat().st_size for p in folder.glob("*.pt")) if folder.exists() else 0
