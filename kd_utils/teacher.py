"""The shared CIFAR-10 teacher of the four CIFAR notebooks: trained once, committed, checked on load.

    teacher = cifar_teacher()            # the profile's VGG-13: committed reference, or trained now

For the ``cpu`` profile the reference teacher is committed under ``teachers/`` (weights, training
history and metadata in one ``weights_only`` checkpoint), so no notebook run spends the 30-45
minutes of training again. A teacher is accepted only when its weights checksum verifies and its
recorded specification (architecture, recipe, data) equals the one the profile asks for now;
otherwise it is trained with :func:`train_cifar_teacher` and saved under ``models/<profile>/``.
``retrain=True`` (or ``KD_RETRAIN_TEACHER=1``) trains it from scratch with the same function.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .checkpoint import CheckpointError, _plain, load_checkpoint, load_weights, save_checkpoint
from .config import Profile, get_profile, output_dirs
from .models import build_model

# Committed reference teachers live beside the notebooks (the top-level models/ folder is ignored).
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "teachers"
DATASET = "cifar10"


def teacher_spec(profile: str | Profile | None = None) -> dict[str, Any]:
    """Everything that decides the teacher's weights: architecture, recipe and data."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    arch = prof.model_spec("cifar_teacher")
    return {"dataset": DATASET, "data": {**prof.data_kwargs(), "val_fraction": 0.1, "split_seed": 42},
            "arch": {"name": arch.pop("name"), "kwargs": {**arch, "num_classes": 10}},
            "recipe": prof.train("cifar_teacher").changes()}


def teacher_filename(profile: str | Profile | None = None) -> str:
    spec = teacher_spec(profile)
    width = spec["arch"]["kwargs"].get("width", 1.0)
    return f"cifar10_{spec['arch']['name']}_w{width:g}.pt"


def candidate_paths(profile: str | Profile | None = None, root: str | os.PathLike | None = None) -> list[Path]:
    """Where a ready teacher may be, in order: the committed reference (cpu profile), then models/."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    name = teacher_filename(prof)
    paths = [REFERENCE_DIR / name] if prof.name == "cpu" else []
    return paths + [output_dirs(prof, root=root, create=False)["models"] / name]


def _matches(path: Path, spec: dict) -> tuple[bool, str]:
    try:
        payload = load_checkpoint(path)  # verifies the weights checksum
    except CheckpointError as e:
        return False, str(e)
    saved = payload.get("extra", {}).get("teacher_spec")
    if saved != _plain(spec):
        return False, f"{path} was trained with a different specification"
    return True, ""


def cifar_teacher(profile: str | Profile | None = None, *, retrain: bool | None = None, data=None,
                  root: str | os.PathLike | None = None, progress: bool = True, verbose: bool = True) -> nn.Module:
    """The profile's shared CIFAR-10 teacher in eval mode, with ``.checkpoint`` (metadata) and
    ``.history`` (per-epoch training history as a DataFrame) attached.

    Loads the first candidate (see :func:`candidate_paths`) whose checksum and specification match;
    trains and saves a new one under ``models/<profile>/`` when none does or when ``retrain``.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    spec = teacher_spec(prof)
    if retrain is None:
        retrain = os.environ.get("KD_RETRAIN_TEACHER", "") not in ("", "0")
    if not retrain:
        for path in candidate_paths(prof, root):
            if not path.exists():
                continue
            ok, why = _matches(path, spec)
            if ok:
                model = _load(path, spec)
                if verbose:
                    print(f"loaded teacher {path} (checksum and specification verified)")
                return model
            if verbose:
                print(f"not using {path}: {why}")
    path = candidate_paths(prof, root)[-1]
    if verbose:
        print(f"training the {spec['arch']['name']} teacher for profile {prof.name!r} -> {path}")
    train_cifar_teacher(prof, path, data=data, progress=progress)
    return _load(path, spec)


def _load(path: Path, spec: dict) -> nn.Module:
    payload = load_checkpoint(path)
    model = build_model(spec["arch"]["name"], **spec["arch"]["kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    load_weights(model, {**payload, "state_dict": state}, path)
    model.checkpoint = {k: v for k, v in payload.items() if k != "state_dict"}
    model.history = pd.DataFrame(payload.get("extra", {}).get("history", []))
    model.checkpoint_path = path
    return model.eval()


def train_cifar_teacher(profile: str | Profile | None, path: str | os.PathLike, *, data=None,
                        progress: bool = True) -> Path:
    """Train the profile's teacher with its ``cifar_teacher`` recipe and save it (with history,
    test accuracy, wall time and library versions) to ``path``."""
    from .data import get_data
    from .runtime import seed_everything
    from .train_eval import evaluate, fit
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    spec = teacher_spec(prof)
    cfg = prof.train("cifar_teacher")
    if data is None:
        data = get_data(DATASET, val_fraction=spec["data"]["val_fraction"], seed=spec["data"]["split_seed"],
                        **prof.data_kwargs())
    seed_everything(cfg.seed)
    model = build_model(spec["arch"]["name"], **spec["arch"]["kwargs"])
    res = fit(model, data, cfg, progress=progress, desc=f"teacher {spec['arch']['name']}")
    test = evaluate(model, data, "test", device=cfg.device, precision=cfg.precision)
    history = [{k: float(v) for k, v in row.items()} for row in res.history.to_dict("records")]
    save_checkpoint(path, model, config=cfg.to_dict(), seed=cfg.seed,
                    metrics={"test_accuracy": test.accuracy, "test_errors": test.errors, "best_epoch": res.best_epoch,
                             "best_val_acc": res.best_val_acc, "wall_time_s": res.wall_time_s,
                             "precision_used": res.config["precision_used"], "profile": prof.name},
                    extra={"teacher_spec": _plain(spec), "history": history})
    return Path(path)
