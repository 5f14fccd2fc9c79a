"""The numerics guard: a tiny deterministic fp32 run of every code family, compared with values
recorded for the family's current version in ``kd_utils.numerics.NUMERICS``.

A change to training behaviour (a loss, the augmentation, the optimiser step, a model's
initialisation) moves these values far beyond the tolerance and fails here until the family's
version is bumped -- which changes the keys of exactly the runs of that family -- and the values are
re-recorded::

    KD_RECORD_NUMERICS=1 .venv/bin/python -m pytest tests/test_numerics.py

The tolerance (2e-3 of a probe's scale) absorbs what differs between our CPUs (AMX, AVX512-BF16,
AVX2-only fp32 kernels) and thread counts: 1 vs 2 threads moved the probes by at most 9e-5 of their scale
on an AMD EPYC. The changes a bump is for move them further: a 2% larger KD loss 2.9e-3 (the test below
uses 5%), a 2% larger lr 6e-3 to 1.5e-2, a 3 px instead of 4 px crop padding 1.3.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kd_utils.train_kd as train_kd
from kd_utils import build_model, fit, seed_everything
from kd_utils import train_eval
from kd_utils.config import TrainConfig
from kd_utils.experiments import cache_teacher_logits, distill
from kd_utils.numerics import NUMERICS
from kd_utils.plans import AugmentationPlan, teacher_outputs

from conftest import make_bundle

REFERENCE = Path(__file__).with_name("numerics_reference.json")
RTOL, ATOL = 2e-3, 1e-6
RECORD = os.environ.get("KD_RECORD_NUMERICS", "") not in ("", "0")


def _cifar():
    return make_bundle(n_train=192, n_val=32, n_test=32, shape=(3, 32, 32), seed=3)


def _mnist():
    return make_bundle(n_train=256, n_val=32, n_test=32, seed=4)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                          "schedule": "onecycle", "device": "cpu", "precision": "fp32", "seed": 0, **kw})


def _fingerprint(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """Logits on a few fixed images plus the mean absolute weight: what a run's numbers come from."""
    model.eval()
    with torch.no_grad():
        logits = model(x).float().reshape(-1)
        weights = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    return [float(v) for v in logits] + [float(weights.abs().mean())]


def _student(name="vgg8", seed=0, **kw):
    seed_everything(seed)
    return build_model(name, **({"width": 0.125} if name.startswith("vgg") else {}), **kw)


def _teacher(data):
    t = _student("vgg8", seed=7)
    fit(t, data, _cfg(epochs=1), progress=False)
    return t.eval()


# ------------------------------------------------------------------ probes ----
def probe_data() -> dict[str, list[float]]:
    out = {}
    for data, augment in ((_cifar(), "crop_flip"), (_cifar(), "crop"), (_mnist(), "jitter"), (_mnist(), None)):
        xs = [x for x, _ in data.loader("train", batch_size=64, shuffle=True, augment=augment, seed=5)]
        x = torch.cat(xs)
        flat = x.reshape(-1)
        out[f"{augment}"] = [float(v) for v in flat[torch.arange(0, flat.numel(), max(1, flat.numel() // 48))]]
    return out


def probe_models() -> dict[str, list[float]]:
    out = {}
    for name, shape in (("vgg8", (3, 32, 32)), ("vgg13", (3, 32, 32)), ("mnist_cnn", (1, 28, 28)),
                        ("mnist_mlp", (1, 28, 28)), ("hinton_teacher", (1, 28, 28)), ("hinton_student", (1, 28, 28))):
        m = _student(name)
        x = torch.linspace(-1, 1, 2 * torch.Size(shape).numel()).reshape(2, *shape)
        out[name] = _fingerprint(m, x)
    return out


def probe_loop() -> dict[str, list[float]]:
    data, out = _cifar(), {}
    x = data.x_test[:4].float() / 255
    for label, kw in {"sgd_onecycle_crop_flip": dict(augment="crop_flip", weight_decay=5e-4, nesterov=True),
                      "adam_cosine_smoothing": dict(optimizer="adam", lr=1e-3, schedule="cosine", label_smoothing=0.1),
                      "sgd_step_clip": dict(schedule="step", milestones=(1,), grad_clip=1.0)}.items():
        m = _student()
        fit(m, data, _cfg(**kw), progress=False)
        out[label] = _fingerprint(m, x)
    return out


def probe_teacher_outputs() -> dict[str, list[float]]:
    data = _cifar()
    t = _teacher(data)
    outs = teacher_outputs(t, data, AugmentationPlan("crop_flip", 64, 3, 2), embed_layer="stage5", cache_dir=None,
                           device="cpu", precision="fp32", progress=False)
    fixed = cache_teacher_logits(t, data, "train", device="cpu", precision="fp32")
    return {"plan_logits": [float(outs.logits.float().sum()), float(outs.logits.float().abs().sum())],
            "plan_embedding": [float(outs.embedding.float().abs().sum())],
            "fixed_logits": [float(fixed.sum()), float(fixed.abs().sum())]}


def _distilled(method: str, **kw) -> list[float]:
    data = _cifar()
    t = _teacher(data)
    m = _student()
    distill(m, t, data, _cfg(augment="crop_flip", schedule="constant", lr=0.02), method=method, progress=False,
            cache_dir=None, **kw)
    return _fingerprint(m, data.x_test[:4].float() / 255)


def probe_logit() -> dict[str, list[float]]:
    return {"kd": _distilled("kd", temperature=4.0, alpha=0.9), "mse": _distilled("mse", alpha=0.5)}


def probe_feature() -> dict[str, list[float]]:
    # weights below the references' so that 6 steps stay far from chaos (the guard tests code, not recipes)
    return {"fitnets": _distilled("fitnets", beta=10.0), "at": _distilled("at", beta=100.0),
            "cosine": _distilled("cosine", beta=1.0, alpha=0.9), "pkt": _distilled("pkt", beta=1.0),
            "fitnets_two_stage": _distilled("fitnets_two_stage", hint_epochs=1)}


def probe_ensemble() -> dict[str, list[float]]:
    data = _cifar()
    x = data.x_test[:4].float() / 255
    out = {}
    for label, kw in {"independent": dict(beta=0.0, alpha=0.0), "dml": dict(beta=1.0, alpha=0.0)}.items():
        seed_everything(0)
        cohort = build_model("cohort", members=[{"name": "vgg8", "width": 0.125}] * 2)
        fit(cohort, data, _cfg(), method=train_kd.build_distiller("cohort", cohort, None, **kw), progress=False)
        out[label] = _fingerprint(cohort, x)
    return out


def probe_kdcl() -> dict[str, list[float]]:
    """KDCL trains a teacher-free cohort (not a teacher/student pair): both targets, and own plans. Each peer's
    own logits are fingerprinted (the cohort's ensemble is near uniform after 6 steps), with the KL weighted
    10x so that it moves them: a 5% change of its scale then moves the probe 10 tolerances."""
    importlib.import_module("kd_utils.methods.kdcl")
    data = _cifar()
    x = data.x_test[:4].float() / 255
    out = {}
    for label, kw in {"minlogit": {}, "mean": dict(ensemble="mean"), "minlogit_own": dict(plans="own")}.items():
        seed_everything(0)
        cohort = build_model("cohort", members=[{"name": "vgg8", "width": 0.125}] * 2)
        cfg = _cfg(augment="crop_flip")
        method = train_kd.build_distiller("kdcl", cohort, None, kd_weight=10.0, **kw)
        method.prepare(data, cfg)
        fit(cohort, data, cfg, method=method, progress=False)
        out[label] = [v for peer in cohort.students for v in _fingerprint(peer, x)]
    return out


# kd_utils.methods: one probe per method family, at weights small enough for 6 steps to stay smooth and with
# one epoch of any pre-training stage
METHOD_PROBES = {"dkd": dict(warmup=2), "dist": {}, "crd": dict(nce_k=32, beta=0.8), "rkd": {}, "sp": dict(beta=100.0),
                 "cc": {}, "vid": {}, "nst": dict(beta=5.0), "ofd": {}, "reviewkd": {}, "ab": dict(init_epochs=1),
                 "ft": dict(init_epochs=1), "fsp": dict(init_epochs=1), "kdsvd": {}}
# a module that registers several methods probes each, under its own name: {"methods": {name: kwargs}}
METHOD_PROBES["controls"] = {"methods": {"label_smoothing": dict(epsilon=0.1), "kd_permuted": dict(seed=0),
                                         "pseudo_label": {}}}


def _method_probe(family: str):
    def probe() -> dict[str, list[float]]:
        importlib.import_module(f"kd_utils.methods.{family}")
        spec = METHOD_PROBES[family]
        methods = spec["methods"] if "methods" in spec else {family: spec}
        return {name: _distilled(name, **kw) for name, kw in methods.items()}
    probe.__name__ = f"probe_{family}"
    return probe


PROBES = {"data": probe_data, "models": probe_models, "loop": probe_loop, "teacher_outputs": probe_teacher_outputs,
          "logit": probe_logit, "feature": probe_feature, "ensemble": probe_ensemble,
          **{f: _method_probe(f) for f in METHOD_PROBES}}
PROBES["kdcl"] = probe_kdcl  # a cohort without a teacher, so not one of METHOD_PROBES' teacher/student runs


def _run(family: str) -> dict[str, list[float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return PROBES[family]()
    finally:
        torch.set_num_threads(threads)


def _differences(got: dict, want: dict) -> list[str]:
    bad = []
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want or len(got[name]) != len(want[name]):
            bad.append(f"{name}: probe changed shape")
            continue
        g, w = torch.tensor(got[name], dtype=torch.float64), torch.tensor(want[name], dtype=torch.float64)
        tol = ATOL + RTOL * float(w.abs().max())  # relative to the probe's scale
        if not bool(((g - w).abs() <= tol).all()):
            bad.append(f"{name}: max |difference| {float((g - w).abs().max()):.3g}")
    return bad


def _reference() -> dict:
    return json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}


def test_every_family_has_a_probe():
    assert set(PROBES) == set(NUMERICS)


@pytest.mark.parametrize("family", sorted(PROBES))
def test_training_numerics_match_the_recorded_version(family):
    got = _run(family)
    ref = _reference()
    if RECORD:
        ref[family] = {"version": NUMERICS[family], "values": got, "torch": str(torch.__version__)}
        REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
        return
    assert family in ref, f"no recorded numerics for {family!r}: record them (see this module's docstring)"
    entry = ref[family]
    assert entry["version"] == NUMERICS[family], (
        f"NUMERICS[{family!r}] is {NUMERICS[family]} but the values were recorded for {entry['version']}: "
        "re-record them (KD_RECORD_NUMERICS=1 pytest tests/test_numerics.py)")
    bad = _differences(got, entry["values"])
    assert not bad, (f"the training numerics of family {family!r} changed ({'; '.join(bad)}): bump "
                     f"NUMERICS[{family!r}] in kd_utils/numerics.py (stored runs of this family are then retrained) "
                     "and re-record (KD_RECORD_NUMERICS=1 pytest tests/test_numerics.py)")


# A guard that cannot fail guards nothing: real changes must trip it.
@pytest.mark.skipif(RECORD, reason="recording")
@pytest.mark.parametrize("family, change", [
    ("logit", "kd_loss_scale"), ("loop", "optimizer_step"), ("data", "augmentation"), ("feature", "attention_p"),
])
def test_guard_catches_real_changes(family, change, monkeypatch):
    import kd_utils.data.augment as augment_mod
    import kd_utils.feature_kd as feature_kd
    if change == "kd_loss_scale":  # a loss scaled by 5%
        orig = train_kd.kd_loss
        monkeypatch.setattr(train_kd, "kd_loss", lambda s, t, T: 1.05 * orig(s, t, T))
    elif change == "optimizer_step":  # the learning rate 2% higher
        orig_opt = train_eval.make_optimizer
        monkeypatch.setattr(train_eval, "make_optimizer", lambda params, cfg: orig_opt(params, cfg.replace(lr=cfg.lr * 1.02)))
    elif change == "augmentation":  # CIFAR crops padded by 3 px instead of 4 (jitter unchanged)
        monkeypatch.setitem(augment_mod.AUGMENTATIONS, "crop_flip", (3, True))
    elif change == "attention_p":
        orig_att = feature_kd.attention_map
        monkeypatch.setattr(feature_kd, "attention_map", lambda f, p=2.0: orig_att(f, 1.5))
    bad = _differences(_run(family), _reference()[family]["values"])
    assert bad, f"the guard of {family!r} did not notice {change}"
