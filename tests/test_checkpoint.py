from __future__ import annotations

import os

import pytest
import torch

from kd_utils import build_model
from kd_utils.checkpoint import CheckpointError, load_checkpoint, load_model, load_weights, save_checkpoint


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    m = build_model("vgg8", width=0.125, num_classes=10)
    p = save_checkpoint(tmp_path / "m.pth", m, config={"lr": 0.1, "milestones": (1, 2)}, metrics={"acc": 0.5}, seed=7)
    back = load_model(p, expected="vgg8")
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    meta = back.checkpoint
    assert meta["seed"] == 7 and meta["metrics"] == {"acc": 0.5} and meta["config"]["milestones"] == [1, 2]
    assert meta["versions"]["torch"] == torch.__version__ and not back.training
    # readable by plain torch with weights_only=True
    assert "state_dict" in torch.load(p, weights_only=True)


def test_wrong_architecture_is_named(tmp_path):
    p = save_checkpoint(tmp_path / "m.pth", build_model("vgg8", width=0.125))
    with pytest.raises(CheckpointError, match="holds a 'vgg8' model, not the expected 'vgg13'"):
        load_model(p, expected="vgg13")
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_weights(build_model("vgg8", width=0.25), p)
    bare = build_model("vgg8", width=0.25)
    del bare.arch  # a model built by hand still gets a clear error, from the state_dict shapes
    with pytest.raises(CheckpointError, match="does not fit VGG"):
        load_weights(bare, p)


def test_truncated_corrupted_and_foreign_files_get_clear_errors(tmp_path):
    p = save_checkpoint(tmp_path / "m.pth", build_model("mnist_mlp"))
    data = p.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pth is truncated or corrupted"):
        load_checkpoint(tmp_path / "trunc.pth")
    (tmp_path / "junk.pth").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="junk.pth is truncated or corrupted"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save(build_model("mnist_mlp").state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="is not a kd_utils checkpoint"):
        load_checkpoint(tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    torch.save({"format": "kd_utils/1", "state_dict": {}, "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")


def test_interrupted_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / "m.pth", build_model("mnist_mlp"), metrics={"v": 1})
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(p, build_model("mnist_mlp"), metrics={"v": 2})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.pth"]  # no temp file left


def test_model_without_arch_is_saved_with_its_class_and_loads_into_an_instance(tmp_path):
    m = torch.nn.Linear(2, 2)
    p = save_checkpoint(tmp_path / "x.pth", m)
    assert load_checkpoint(p)["module_class"] == "torch.nn.modules.linear:Linear"
    with pytest.raises(CheckpointError, match=r"register_model.*load_weights\(Linear\(\.\.\.\)"):
        load_model(p)
    back = load_weights(torch.nn.Linear(2, 2), p)
    assert torch.equal(back.weight, m.weight) and torch.equal(back.bias, m.bias)


def test_float16_storage_keeps_what_float16_cannot_hold(tmp_path):
    """A BatchNorm running variance above float16's range is stored in its own dtype, not as inf."""
    model = build_model("vgg8", width=0.125)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var.fill_(1.0e5)
    path = save_checkpoint(tmp_path / "m.pt", model, state_dtype=torch.float16)
    state = load_checkpoint(path)["state_dict"]
    name = next(f"{m}.running_var" for m, mod in model.named_modules() if mod is bn)
    assert state[name].dtype == torch.float32 and torch.equal(state[name], bn.running_var)
    others = [v for k, v in state.items() if v.is_floating_point() and k != name]
    assert others and all(v.dtype == torch.float16 for v in others)
    again = load_model(path)
    assert torch.isfinite(dict(again.named_buffers())[name]).all()
