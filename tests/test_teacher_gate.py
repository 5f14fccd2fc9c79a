"""cifar_teacher()/hinton_teacher() never start a long training unasked: they say where they looked, and
the estimate, first. Training itself is replaced by a recorder: only the decision is under test."""
from __future__ import annotations

import pytest

from kd_utils import teacher as T


@pytest.fixture
def trained(monkeypatch):
    """Record train_teacher calls instead of training; _load returns a marker."""
    calls = []
    monkeypatch.setattr(T, "train_teacher", lambda kind, prof, path, **kw: calls.append((kind, prof.name, path)))
    monkeypatch.setattr(T, "_load", lambda path, spec: ("loaded", path))
    monkeypatch.delenv(T.TRAIN_ENV, raising=False)
    monkeypatch.delenv("KD_RETRAIN_TEACHER", raising=False)
    monkeypatch.delenv("KD_RUNS", raising=False)
    return calls


def _estimate(seconds):
    return lambda kind, prof, steps=2: {"seconds": seconds, "step_s": 1.5, "steps_per_epoch": 176, "epochs": 30,
                                        "train_images": 45000, "device": "cpu", "precision": "fp32",
                                        "upper_bound": False}


def test_a_long_training_is_refused_with_what_was_looked_for_and_the_estimate(tmp_path, monkeypatch, trained):
    monkeypatch.setenv("KD_HOME", str(tmp_path / "home"))  # no committed teachers there
    monkeypatch.setattr(T, "reference_dirs", lambda: [tmp_path / "home" / "teachers"])
    monkeypatch.setattr(T, "estimate_training_s", _estimate(7920.0))
    with pytest.raises(T.TeacherNotFound) as e:
        T.cifar_teacher("cpu", root=tmp_path / "out", progress=False)
    msg = str(e.value)
    for needle in ("home/teachers/cifar10_vgg13_w0.5.pt (missing)", "out/models/cifar10_vgg13_w0.5.pt (missing)",
                   "estimated 2.2 h on this machine", "30 epoch(s) x 176 steps of 1.50 s", "train=True",
                   "KD_TRAIN_TEACHER=1", "KD_HOME"):
        assert needle in msg, needle
    assert trained == [] and not (tmp_path / "out").exists()  # nothing trained, no folder made


def test_asking_trains_and_prints_the_estimate_first(tmp_path, monkeypatch, trained, capsys):
    monkeypatch.setattr(T, "estimate_training_s", _estimate(7920.0))
    T.hinton_teacher("gpu", root=tmp_path, train=True, progress=False)
    assert "estimated 2.2 h" in capsys.readouterr().out and trained[-1][:2] == ("hinton", "gpu")
    monkeypatch.setenv(T.TRAIN_ENV, "1")
    T.cifar_teacher("gpu", root=tmp_path, progress=False)
    assert trained[-1][:2] == ("cifar", "gpu")
    monkeypatch.setenv(T.TRAIN_ENV, "0")  # never train: not even a short one, and no estimate is spent
    monkeypatch.setattr(T, "estimate_training_s", lambda *a, **k: pytest.fail("estimated although refused"))
    with pytest.raises(T.TeacherNotFound, match="training was not allowed"):
        T.cifar_teacher("smoke", root=tmp_path, progress=False)
    monkeypatch.setenv(T.TRAIN_ENV, "maybe")
    with pytest.raises(ValueError, match="expected 1 or 0"):
        T.cifar_teacher("smoke", root=tmp_path, progress=False)


def test_short_trainings_and_retrain_requests_go_ahead(tmp_path, monkeypatch, trained, capsys):
    monkeypatch.setattr(T, "estimate_training_s", _estimate(12.0))
    T.cifar_teacher("smoke", root=tmp_path, progress=False)
    assert "estimated 12 s" in capsys.readouterr().out and len(trained) == 1
    monkeypatch.setattr(T, "estimate_training_s", _estimate(7920.0))
    T.cifar_teacher("gpu", root=tmp_path, retrain=True, progress=False)  # an explicit request to train
    assert len(trained) == 2


def test_the_estimate_is_measured_and_scaled_to_the_recipe():
    est = T.estimate_training_s("hinton", "smoke")
    assert est["epochs"] == 1 and est["train_images"] == 2000 and est["steps_per_epoch"] == 16
    assert est["step_s"] > 0 and est["seconds"] >= est["steps_per_epoch"] * est["step_s"]
