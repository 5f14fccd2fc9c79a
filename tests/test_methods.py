"""Every registered method through the front doors: ``run_experiment`` on CIFAR-shaped data with a VGG-13
teacher and a VGG-8 student at half its width (the shared pair's ratio, at test widths), and the methods
table (``python -m kd_utils methods``) checked against the distillers themselves."""
from __future__ import annotations

import math

import pytest
import torch

from kd_utils import build_model, runs
from kd_utils.config import TrainConfig
from kd_utils.experiments import run_experiment
from kd_utils.methods import methods_table, teacher_source
from kd_utils.train_kd import DISTILLERS, build_distiller

TEACHER = {"name": "vgg13", "width": 0.25}
STUDENT = {"name": "vgg8", "width": 0.125}
# one epoch of any pre-training stage; CRD with a small bank sample; FSP needs the teacher's widths (as
# RepDistiller), KDSVD's default layout too (mdistiller's ch_w layout runs on unequal widths)
ARGS = {"fitnets_two_stage": {"hint_epochs": 1}, "ab": {"init_epochs": 1}, "ft": {"init_epochs": 1},
        "fsp": {"init_epochs": 1}, "crd": {"nce_k": 64}, "kdsvd": {"layout": "ch_w"}, "dkd": {"warmup": 1}}
STUDENTS = {"fsp": {"name": "vgg8", "width": 0.25},
            "kdcl": {"name": "cohort", "members": [{"name": "vgg8"}] * 2, "width": 0.125}}  # peers, no teacher
METHODS = [m for m in DISTILLERS if m not in ("ce", "cohort")]


def _teacher():
    torch.manual_seed(1)
    return build_model(TEACHER["name"], width=TEACHER["width"]).eval()


@pytest.fixture(autouse=True)
def _own_session(monkeypatch):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_through_run_experiment_and_is_reused(method, toy_cifar, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, augment="crop_flip", seed=0, device="cpu",
                      precision="fp32")
    teacher = _teacher()
    kw = dict(method=method, teacher=teacher, profile="smoke", root=tmp_path, progress=False, **ARGS.get(method, {}))
    student = STUDENTS.get(method, STUDENT)
    run = run_experiment(method, student, toy_cifar, cfg, **kw)
    assert not run.reused and 0 <= run.accuracy <= 1 and math.isfinite(run.metrics["test_loss"])
    terms = [c for c in run.history.columns if c.startswith("train_loss_")]
    assert terms and all(run.history[c].notna().all() for c in terms)
    assert run.spec["numerics"][DISTILLERS[method].family] >= 1  # keyed on its own family's version
    # where the teacher's outputs came from is what the methods table says
    d = build_distiller(method, build_model(student["name"], width=student["width"]), teacher, **ARGS.get(method, {}))
    source = teacher_source(d)
    if source == "none":  # teacher-free: nothing cached, nothing computed online
        assert run.metrics["teacher_outputs"] == "none"
    else:
        cached = source != "online teacher"
        assert run.metrics["teacher_outputs"].startswith("plan cache") == cached, run.metrics["teacher_outputs"]
    assert run_experiment(method, student, toy_cifar, cfg, **kw).reused


def test_methods_table_lists_every_method_with_its_own_counts():
    teacher = _teacher()
    student = lambda: build_model(STUDENT["name"], width=STUDENT["width"])
    table = methods_table(teacher, student, kwargs={"crd": {"n_data": 256, "negatives": "uniform"}})
    assert set(table.index) == set(METHODS)
    for m in ("vid", "ofd", "crd", "reviewkd", "at", "kd"):
        torch.manual_seed(0)
        s = student()
        d = build_distiller(m, s, teacher, **({"n_data": 256, "negatives": "uniform"} if m == "crd" else {}))
        own = {id(p) for p in s.parameters()} | {id(p) for p in teacher.parameters()}
        trained_besides = sum(p.numel() for p in d.parameters() if id(p) not in own)
        assert table.loc[m, "extra_parameters"] == trained_besides, m
    assert table.loc["at", "extra_parameters"] == 0 and table.loc["at", "teacher_outputs"] == "online teacher"
    assert table.loc["pkt", "teacher_outputs"] == "cached (logits + pooled stage5)"
    assert table.loc["dkd", "teacher_outputs"] == "cached (logits)" and "beta=6" in table.loc["dkd", "defaults"]
    # FSP cannot be built on unequal widths: the row says why and what to do instead
    assert "same channel count" in table.loc["fsp", "note"] and "Use a student" in table.loc["fsp", "note"]
    assert bool(table.loc["ab", "pre_training_stage"]) and not bool(table.loc["kd", "pre_training_stage"])


@pytest.mark.skipif(not __import__("kd_utils.data", fromlist=["cache_path"]).cache_path("cifar10").exists(),
                    reason="CIFAR-10 cache not built (make data)")
def test_every_method_runs_on_cifar10_with_the_shared_teacher_and_student(tmp_path):
    """The smoke check on the real thing: CIFAR-10 (a few batches), the committed cpu-profile teacher
    (VGG-13 w0.5) and student (VGG-8 w0.25), every method through run_experiment for one short epoch.
    FSP needs a student as wide as the teacher (as RepDistiller), KDSVD's default layout too (ch_w here)."""
    from kd_utils import get_data
    from kd_utils.config import get_profile
    from kd_utils.teacher import cifar_teacher
    prof = get_profile("cpu")
    teacher = cifar_teacher(prof, train=False)
    data = get_data("cifar10", train_subset=192, test_subset=128)
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, augment="crop_flip", seed=0, device="cpu",
                      precision="fp32")
    student = prof.model_spec("cifar_student")
    for method in METHODS:
        spec = {"name": "vgg8", "width": 0.5} if method == "fsp" else student
        spec = {"name": "cohort", "members": [student] * 2} if method == "kdcl" else spec
        run = run_experiment(method, spec, data, cfg, method=method, teacher=teacher, profile="smoke", root=tmp_path,
                             progress=False, **ARGS.get(method, {}))
        terms = [c for c in run.history.columns if c.startswith("train_loss_")]
        assert terms and all(math.isfinite(v) for c in terms for v in run.history[c]), method
        assert 0 <= run.accuracy <= 1 and math.isfinite(run.metrics["test_loss"]), method
