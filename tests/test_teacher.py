"""The shared CIFAR-10 teacher: trained by one function, verified on load, retrained on mismatch."""
from __future__ import annotations

import pytest
import torch

from kd_utils import teacher as T
from kd_utils.checkpoint import load_checkpoint
from kd_utils.config import PROFILES, Profile
from kd_utils.data import get_data
from kd_utils.train_eval import evaluate


def test_smoke_teacher_is_trained_once_then_loaded_and_retrained_on_mismatch(tmp_path, capsys, monkeypatch):
    first = T.cifar_teacher("smoke", root=tmp_path, progress=False)
    assert "training" in capsys.readouterr().out
    assert first.arch == {"name": "vgg13", "kwargs": {"width": 0.25, "num_classes": 10}}
    assert len(first.history) == PROFILES["smoke"].recipes["cifar_teacher"]["epochs"]
    again = T.cifar_teacher("smoke", root=tmp_path, progress=False)
    assert "loaded teacher" in capsys.readouterr().out
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # a different recipe must not be served the old teacher
    smoke = PROFILES["smoke"]
    changed = Profile("smoke", smoke.train_subset, smoke.test_subset, smoke.seeds,
                      {**smoke.recipes, "cifar_teacher": {**smoke.recipes["cifar_teacher"], "lr": 0.01}}, smoke.models)
    T.cifar_teacher(changed, root=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "different specification" in out and "training" in out


def test_corrupt_teacher_is_not_used(tmp_path, capsys):
    T.cifar_teacher("smoke", root=tmp_path, progress=False)
    path = T.candidate_paths("smoke", tmp_path)[-1]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    T.cifar_teacher("smoke", root=tmp_path, progress=False)
    assert "not using" in capsys.readouterr().out


def test_retrain_switch(tmp_path, capsys, monkeypatch):
    T.cifar_teacher("smoke", root=tmp_path, progress=False)
    monkeypatch.setenv("KD_RETRAIN_TEACHER", "1")
    capsys.readouterr()
    T.cifar_teacher("smoke", root=tmp_path, progress=False)
    assert "training" in capsys.readouterr().out


REFERENCE = T.REFERENCE_DIR / T.teacher_filename("cpu")


@pytest.mark.skipif(not REFERENCE.exists(), reason="no committed cpu reference teacher")
def test_committed_reference_teacher_matches_its_record():
    payload = load_checkpoint(REFERENCE)  # checksum verified
    assert REFERENCE.stat().st_size <= 10.5 * 2**20
    assert payload["extra"]["teacher_spec"] == T._plain(T.teacher_spec("cpu"))
    model = T._load(REFERENCE, T.teacher_spec("cpu"))
    data = get_data("cifar10")
    acc = evaluate(model, data, "test", device="cpu", precision="fp32").accuracy
    assert acc >= 0.85  # a trained teacher, not a corrupted or untrained file (its target was 0.90: 0.8982 reached)
    assert abs(acc - payload["metrics"]["test_accuracy"]) < 0.005  # recorded under bf16/fp32: a few images apart
