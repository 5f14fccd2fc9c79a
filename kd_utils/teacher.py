"""The suite's shared teachers: trained once, committed, checked on load.

    teacher = cifar_teacher()     # the profile's VGG-13 of the four CIFAR-10 notebooks
    teacher = hinton_teacher()    # Hinton et al.'s 1200-1200 MNIST net, trained on all 60,000 images

For the ``cpu`` profile the reference teachers are committed under ``teachers/`` (weights, training
history and metadata in one ``weights_only`` checkpoint), so no notebook run spends their training
time again. A teacher is accepted only when its weights checksum verifies and its recorded
specification (architecture, recipe, data) equals the one the profile asks for now; otherwise it is
trained with :func:`train_teacher` and saved under ``models/<profile>/``. ``retrain=True`` (or
``KD_RETRAIN_TEACHER=1``) trains it from scratch with the same function.

No long training starts unasked: before training, the time it will take on this machine is estimated
from one to three timed training steps (:func:`estimate_training_s`) and printed; a training estimated above :data:`LONG_TRAINING_S` (5
minutes) is refused with :class:`TeacherNotFound`, which says where the teacher was looked for, why
each candidate was not used and the estimate, unless ``train=True`` or ``KD_TRAIN_TEACHER=1`` asks for
it (``train=False`` / ``KD_TRAIN_TEACHER=0`` never trains; ``retrain=True`` is a request to train).
Committed teachers are looked for under the suite's root (``<root>/teachers``, see
:mod:`kd_utils.locations`) and in the checkout the package was installed from.

The CIFAR-10 teacher keeps the best validation epoch of a 45,000 / 5,000 split; the Hinton teacher
follows the paper's protocol: its recipe was chosen on the 54,000 / 6,000 split, then it trains on all
60,000 images for a fixed number of epochs and the last epoch is kept (no test-set selection).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .checkpoint import CheckpointError, _plain, load_checkpoint, load_weights, save_checkpoint
from .config import Profile, get_profile, output_dirs
from .locations import shown
from .models import build_model
from .profiling import LONG_TRAINING_S  # a training estimated above it (5 minutes) needs train=True
from .runs import RunError, run_mode

# Committed reference teachers live beside the notebooks (the top-level models/ folder is ignored): in the
# checkout this package is imported from; reference_dirs() adds the suite's root and an install's checkout.
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "teachers"
TRAIN_ENV = "KD_TRAIN_TEACHER"


class TeacherNotFound(RuntimeError):
    """No stored teacher matches, and training one was not asked for (or was refused)."""


# kind -> data set, validation share of its training set, profile model role (or fixed architecture), recipe
KINDS: dict[str, dict[str, Any]] = {
    "cifar": {"dataset": "cifar10", "val_fraction": 0.1, "role": "cifar_teacher", "recipe": "cifar_teacher"},
    "hinton": {"dataset": "mnist", "val_fraction": 0.0, "arch": {"name": "hinton_teacher"}, "recipe": "hinton_teacher"},
}


def _profile(profile: str | Profile | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def _kind(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]


def teacher_spec(profile: str | Profile | None = None, kind: str = "cifar") -> dict[str, Any]:
    """Everything that decides the teacher's weights: architecture, recipe and data."""
    prof, k = _profile(profile), _kind(kind)
    arch = dict(k["arch"]) if "arch" in k else prof.model_spec(k["role"])
    return {"dataset": k["dataset"], "data": {**prof.data_kwargs(), "val_fraction": k["val_fraction"], "split_seed": 42},
            "arch": {"name": arch.pop("name"), "kwargs": {**arch, "num_classes": 10}},
            "recipe": prof.train(k["recipe"]).changes()}


def teacher_filename(profile: str | Profile | None = None, kind: str = "cifar") -> str:
    spec = teacher_spec(profile, kind)
    width = spec["arch"]["kwargs"].get("width", 1.0)
    return f"{spec['dataset']}_{spec['arch']['name']}_w{width:g}.pt"


def reference_dirs() -> list[Path]:
    """Where committed reference teachers are looked for, in order: ``<root>/teachers`` (the suite's
    root, :func:`kd_utils.locations.home`), the imported package's checkout, the checkout a plain
    ``pip install <folder>`` was made from."""
    from .locations import reference_teacher_dirs
    dirs = reference_teacher_dirs()
    return dirs + ([REFERENCE_DIR] if REFERENCE_DIR.resolve() not in dirs else [])


def candidate_paths(profile: str | Profile | None = None, root: str | os.PathLike | None = None,
                    kind: str = "cifar") -> list[Path]:
    """Where a ready teacher may be, in order: the committed references (cpu profile), then models/."""
    prof = _profile(profile)
    name = teacher_filename(prof, kind)
    paths = [d / name for d in reference_dirs()] if prof.name == "cpu" else []
    return paths + [output_dirs(prof, root=root, create=False)["models"] / name]


def find_teacher(kind: str = "cifar", profile: str | Profile | None = None,
                 root: str | os.PathLike | None = None) -> Path | None:
    """The first stored teacher of ``kind`` that loads without training (checksum and specification
    verified), or None."""
    spec = teacher_spec(profile, kind)
    for path in candidate_paths(profile, root, kind):
        if path.exists() and _matches(path, spec)[0]:
            return path
    return None


def _matches(path: Path, spec: dict) -> tuple[bool, str]:
    try:
        payload = load_checkpoint(path)  # verifies the weights checksum
    except CheckpointError as e:
        return False, str(e)
    saved = payload.get("extra", {}).get("teacher_spec")
    if saved != _plain(spec):
        return False, f"{path} was trained with a different specification"
    return True, ""


def _env_switch(name: str) -> bool | None:
    """An on/off environment variable: True, False, or None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"${name}={value!r}: expected 1 or 0")


def estimate_training_s(kind: str = "cifar", profile: str | Profile | None = None, steps: int = 2) -> dict[str, Any]:
    """How long training the profile's teacher of ``kind`` would take on this machine
    (:func:`kd_utils.profiling.estimate_training_s` with the recipe, the teacher's architecture and the
    sizes of its split). Needs no data set; takes one to a few training steps."""
    from .data import dataset_info
    from .profiling import estimate_training_s as estimate
    prof, k = _profile(profile), _kind(kind)
    spec = teacher_spec(prof, kind)
    info = dataset_info(spec["dataset"])
    n_all = min(info["train_size"], prof.train_subset or info["train_size"])
    n_val = int(round(spec["data"]["val_fraction"] * n_all))
    model = build_model(spec["arch"]["name"], **spec["arch"]["kwargs"])
    return estimate(model, info["shape"], prof.train(k["recipe"]), n_all - n_val, n_val, num_classes=10, steps=steps,
                    bound_s=LONG_TRAINING_S)


def load_teacher(kind: str = "cifar", profile: str | Profile | None = None, *, retrain: bool | None = None,
                 train: bool | None = None, data=None, root: str | os.PathLike | None = None, progress: bool = True,
                 verbose: bool = True) -> nn.Module:
    """The profile's teacher of ``kind`` (``"cifar"`` or ``"hinton"``) in eval mode, with
    ``.checkpoint`` (metadata) and ``.history`` (per-epoch training history as a DataFrame) attached.

    Loads the first candidate (see :func:`candidate_paths`) whose checksum and specification match;
    trains and saves a new one under ``models/<profile>/`` when none does or when ``retrain``.
    ``data``: the bundle to train on if training is needed (it must be the split the spec names).

    ``train``: whether training is allowed when no stored teacher matches (default
    ``$KD_TRAIN_TEACHER``, else: only when estimated under :data:`LONG_TRAINING_S`; ``retrain=True``
    allows it). The estimate (:func:`estimate_training_s`) is printed before any training; a refused
    training raises :class:`TeacherNotFound` naming every place looked at.
    """
    prof = _profile(profile)
    spec = teacher_spec(prof, kind)
    if retrain is None:
        retrain = os.environ.get("KD_RETRAIN_TEACHER", "") not in ("", "0")
    allowed = train if train is not None else _env_switch(TRAIN_ENV)
    if allowed is None and retrain:
        allowed = True
    looked: list[str] = []
    for path in candidate_paths(prof, root, kind):
        if retrain:
            break
        if not path.exists():
            looked.append(f"{path} (missing)")
            continue
        ok, why = _matches(path, spec)
        if ok:
            model = _load(path, spec)
            if verbose:
                print(f"loaded teacher {shown(path)} (checksum and specification verified)")
            return model
        looked.append(f"{path} ({why})")
        if verbose:
            print(f"not using {shown(path)}: {why}")
    path = candidate_paths(prof, root, kind)[-1]
    if run_mode() == "replay":
        raise RunError(f"no committed {kind} teacher matches the {prof.name!r} profile's specification and replay "
                       f"mode trains nothing: commit one (`make run FRESH=1`)")
    what = (f"the {prof.name!r} profile's {kind} teacher ({spec['arch']['name']} "
            f"{spec['arch']['kwargs'].get('width', 1.0):g}x, {prof.train(KINDS[kind]['recipe']).epochs} epochs)")
    where = ("retrain requested" if retrain else "looked for " + "; ".join(looked))
    if allowed is False:
        raise TeacherNotFound(f"no stored {what}: {where}; training was not allowed (train=False or "
                              f"${TRAIN_ENV}=0)")
    from .profiling import describe_estimate
    est = estimate_training_s(kind, prof)
    estimate = describe_estimate(est)
    if allowed is None and est["seconds"] > LONG_TRAINING_S:
        from .locations import home_and_reason
        home, reason = home_and_reason()
        hint = (f"; or let it find the committed teachers: run inside a checkout of the suite or set $KD_HOME to "
                f"one (the suite's root is now {home}: {reason})" if prof.name == "cpu" else "")
        raise TeacherNotFound(f"no stored {what}: {where}. Training it is {estimate}: pass train=True (or set "
                              f"{TRAIN_ENV}=1) to train it now{hint}")
    if verbose:
        print(f"training the {spec['arch']['name']} teacher for profile {prof.name!r} -> {shown(path)} ({estimate})")
    train_teacher(kind, prof, path, data=data, progress=progress, root=root)
    return _load(path, spec)


def cifar_teacher(profile: str | Profile | None = None, **kwargs: Any) -> nn.Module:
    """The shared CIFAR-10 teacher (VGG-13 with BN) of the profile: ``load_teacher("cifar", ...)``.
    Trains one only when none is stored and the training is short or asked for (``train=True``)."""
    return load_teacher("cifar", profile, **kwargs)


def hinton_teacher(profile: str | Profile | None = None, **kwargs: Any) -> nn.Module:
    """Hinton et al.'s MNIST teacher (784-1200-1200-10, dropout, max-norm, jitter) trained on the
    whole training set for the recipe's epochs, last epoch kept: ``load_teacher("hinton", ...)``."""
    return load_teacher("hinton", profile, **kwargs)


def _load(path: Path, spec: dict) -> nn.Module:
    payload = load_checkpoint(path)
    model = build_model(spec["arch"]["name"], **spec["arch"]["kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    load_weights(model, {**payload, "state_dict": state}, path)
    model.checkpoint = {k: v for k, v in payload.items() if k != "state_dict"}
    model.history = pd.DataFrame(payload.get("extra", {}).get("history", []))
    model.checkpoint_path = path
    return model.eval()


def _check_data(data, spec: dict) -> None:
    """A bundle handed in must be the split the specification names (else the record would lie)."""
    n_all = len(data.y_train) + len(data.y_val)
    want_val = int(round(spec["data"]["val_fraction"] * n_all))
    if data.name != spec["dataset"] or len(data.y_val) != want_val:
        raise ValueError(f"data {data.name!r} with {len(data.y_train)} training / {len(data.y_val)} validation "
                         f"images is not the teacher's split: {spec['dataset']!r} with val_fraction "
                         f"{spec['data']['val_fraction']} ({want_val} validation images)")


def train_teacher(kind: str, profile: str | Profile | None, path: str | os.PathLike, *, data=None,
                  progress: bool = True, root: str | os.PathLike | None = None) -> Path:
    """Train the profile's teacher of ``kind`` with its recipe and save it (with history, test
    accuracy, wall time and library versions) to ``path``. Without a validation split the last
    epoch is kept. The training state is saved every epoch under ``root``'s training store
    (:func:`state_path`), so a training cut off part-way resumes there."""
    from .data import get_data
    from .runtime import seed_everything
    from .train_eval import evaluate, fit
    prof = _profile(profile)
    spec = teacher_spec(prof, kind)
    cfg = prof.train(KINDS[kind]["recipe"])
    if data is None:
        data = get_data(spec["dataset"], val_fraction=spec["data"]["val_fraction"], seed=spec["data"]["split_seed"],
                        **prof.data_kwargs())
    _check_data(data, spec)
    seed_everything(cfg.seed)
    model = build_model(spec["arch"]["name"], **spec["arch"]["kwargs"])
    # The state is saved every epoch (and banked by `make bank`): a training cut off by a session's end
    # continues from its last epoch, bit for bit, the next time the teacher is asked for.
    state = state_path(kind, prof, root)
    from . import runs
    runs.banked_state(state, prof, root)
    done_before = runs.epochs_in_state(state)
    res = fit(model, data, cfg, progress=progress, desc=f"teacher {spec['arch']['name']}", state_path=state,
              resume=True)
    test = evaluate(model, data, "test", device=cfg.device, precision=cfg.precision)
    history = [{k: float(v) for k, v in row.items()} for row in res.history.to_dict("records")]
    save_checkpoint(path, model, config=cfg.to_dict(), seed=cfg.seed,
                    metrics={"test_accuracy": test.accuracy, "test_errors": test.errors, "best_epoch": res.best_epoch,
                             "best_val_acc": res.best_val_acc,
                             # a resumed training's time includes the epochs trained before the cut
                             "wall_time_s": res.wall_time_s + float(res.history["time_s"].iloc[:done_before].sum()),
                             **({"resumed_after_epoch": done_before} if done_before else {}),
                             "precision_used": res.config["precision_used"], "profile": prof.name,
                             "train_images": len(data.y_train)},
                    extra={"teacher_spec": _plain(spec), "history": history})
    for done in (state, runs.stores(prof, root)["bank"] / "_state" / state.name):  # it will never resume again
        done.unlink(missing_ok=True)
    return Path(path)


def state_path(kind: str = "cifar", profile: str | Profile | None = None,
               root: str | os.PathLike | None = None) -> Path:
    """Where the training state of the profile's ``kind`` teacher is saved every epoch: the training
    store's ``_state/`` (:mod:`kd_utils.runs`), named by a digest of its specification and recipe, so
    a changed recipe never resumes an old state."""
    import hashlib
    import json
    from . import runs
    prof = _profile(profile)
    ident = {"spec": _plain(teacher_spec(prof, kind)), "config": prof.train(KINDS[kind]["recipe"]).to_dict()}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return runs.stores(prof, root)["training"] / "_state" / f"teacher-{kind}-{digest}.pth"
