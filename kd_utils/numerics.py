"""Versions of the training numerics: what a stored run's key covers besides its specification.

A run's numbers depend on its specification (model, method and hyper-parameters, training config,
data, teacher, plan) and on the code that turns the specification into weights. Keying runs on the
whole source of ``kd_utils`` retrained hours of runs after every cosmetic edit, so the key holds a
version per *family* of training code instead:

* ``data``     -- loading, normalisation, augmentation, batch order (``kd_utils.data``);
* ``models``   -- architectures and their initialisation (``kd_utils.models``);
* ``loop``     -- the training loop: optimiser, schedule, precision, clipping, best-epoch restore,
  and the evaluation that fills a run's record (``kd_utils.train_eval``, ``kd_utils.experiments``);
* ``teacher_outputs`` -- teacher logits computed once for a plan or a fixed transfer set (``kd_utils.plans``);
* one per method family (a distiller's ``family``): ``logit`` (KD, soft targets, logit MSE),
  ``feature`` (FitNets, AT, cosine, PKT), ``ensemble`` (cohorts, mutual learning), and one per module
  of :mod:`kd_utils.methods` (``dkd``, ``crd``, ...), named after it.

A run's key holds the versions of exactly the families it uses (:func:`versions_for`), so bumping
``logit`` invalidates KD runs and no scratch run. ``tests/test_numerics.py`` trains a tiny
deterministic fp32 run of every family and compares it with values recorded for the current
version: a change to training behaviour fails that test until its family's version is bumped here
and the values are re-recorded (``KD_RECORD_NUMERICS=1 pytest tests/test_numerics.py``).
"""
from __future__ import annotations

import hashlib
import inspect

NUMERICS: dict[str, int] = {
    "data": 2,  # 2: epoch streams seeded seed * EPOCH_STRIDE + epoch (1: seed + epoch; see data_version)
    "models": 1,
    "loop": 1,
    "teacher_outputs": 1,
    "logit": 1,
    "feature": 1,
    "ensemble": 2,  # 2: own-plan peers draw data v2 streams
    # kd_utils.methods: one family per method module
    "dkd": 1, "dist": 1, "crd": 1, "rkd": 1, "sp": 1, "cc": 1, "vid": 1, "nst": 1, "ofd": 1, "reviewkd": 1,
    "ab": 1, "ft": 1, "fsp": 1, "kdsvd": 1,
    "kdcl": 2,  # online distillation without a teacher (kd_utils.methods.kdcl)
    "controls": 1,  # label_smoothing, kd_permuted, pseudo_label (kd_utils.methods.controls)
}
BASE_FAMILIES = ("data", "models", "loop")


def family_of(distiller_cls: type) -> str | None:
    """The method family of a distiller class (None for plain cross-entropy)."""
    return getattr(distiller_cls, "family", None)


def data_version(plan_seed: int | None) -> int:
    """The ``data`` version a run on plan ``plan_seed`` depends on. Version 2 changed the batches of plan
    seeds other than 0 only (seed 0's streams are bit-identical), so plan-seed-0 runs keep version 1
    and their keys: a change invalidates exactly the runs whose numbers it moves."""
    v = NUMERICS["data"]
    return 1 if v == 2 and plan_seed == 0 else v


def versions_for(distiller_cls: type, uses_teacher: bool, plan_seed: int | None = None) -> dict[str, int | str]:
    """The numerics versions a run of ``distiller_cls`` depends on.

    A distiller defined outside ``kd_utils`` (a user's own method) is also keyed on a digest of its class
    source (``"external"``), so editing it retrains its runs and nothing else.
    """
    out: dict[str, int | str] = {f: NUMERICS[f] for f in BASE_FAMILIES}
    out["data"] = data_version(plan_seed)
    if uses_teacher:
        out["teacher_outputs"] = NUMERICS["teacher_outputs"]
    fam = family_of(distiller_cls)
    if fam is not None:
        if fam not in NUMERICS:
            raise ValueError(f"{distiller_cls.__name__}.family is {fam!r}, which has no numerics version; "
                             f"known families: {', '.join(NUMERICS)}")
        out[fam] = NUMERICS[fam]
    if not distiller_cls.__module__.startswith("kd_utils."):
        try:
            source = inspect.getsource(distiller_cls)
        except (OSError, TypeError):  # defined interactively: its name is all we can key on
            source = f"{distiller_cls.__module__}.{distiller_cls.__qualname__}"
        out["external"] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return out
