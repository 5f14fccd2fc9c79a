"""Users' own architectures: register_model, checkpoints of any nn.Module, save checks before training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_utils import fit
from kd_utils.checkpoint import CheckpointError, load_model, load_weights, save_checkpoint
from kd_utils.config import TrainConfig
from kd_utils.models import DESCRIPTIONS, MODELS, build_model, register_model


class TinyNet(nn.Module):
    """A user's network: one conv, global pooling, a linear head."""

    def __init__(self, num_classes: int = 10, channels: int = 8, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.head = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def registry():
    """Leave the global registry as it was."""
    saved, saved_d = dict(MODELS), dict(DESCRIPTIONS)
    yield
    MODELS.clear(), MODELS.update(saved)
    DESCRIPTIONS.clear(), DESCRIPTIONS.update(saved_d)


def test_register_build_save_load_round_trip(tmp_path, registry):
    register_model("tiny_net", TinyNet)
    assert DESCRIPTIONS["tiny_net"].startswith("A user's network")
    m = build_model("tiny_net", channels=4)
    assert m.arch == {"name": "tiny_net", "kwargs": {"channels": 4}}
    back = load_model(save_checkpoint(tmp_path / "t.pt", m), expected="tiny_net")
    assert isinstance(back, TinyNet) and back.conv.out_channels == 4
    for a, b in zip(m.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_decorator_duplicate_names_and_failing_constructors(registry):
    @register_model("deco_net", description="decorated")
    def make(num_classes=10):
        return TinyNet(num_classes)

    assert isinstance(build_model("deco_net"), TinyNet) and DESCRIPTIONS["deco_net"] == "decorated"
    with pytest.raises(ValueError, match="'deco_net' is already registered"):
        register_model("deco_net", TinyNet)
    with pytest.raises(ValueError, match="'vgg8' is already registered"):
        register_model("vgg8", TinyNet)
    register_model("deco_net", TinyNet, overwrite=True)
    assert isinstance(build_model("deco_net"), TinyNet)

    @register_model("broken_net")
    def broken(num_classes=10):
        raise ZeroDivisionError("bad init")

    with pytest.raises(RuntimeError, match=r"constructor of model 'broken_net' failed: ZeroDivisionError: bad init"):
        build_model("broken_net")
    with pytest.raises(ValueError, match="bad arguments for model 'deco_net'"):
        build_model("deco_net", nonsense=1)
    with pytest.raises(ValueError, match="model name must be"):
        register_model("has space", TinyNet)


def test_unregistered_model_loads_with_load_weights_and_mismatches_are_listed(tmp_path):
    m = TinyNet(channels=4)
    p = save_checkpoint(tmp_path / "u.pt", m)
    with pytest.raises(CheckpointError, match="load_weights\\(TinyNet"):
        load_model(p)
    back = load_weights(TinyNet(channels=4), p)
    assert torch.equal(back.conv.weight, m.conv.weight)
    with pytest.raises(CheckpointError) as err:
        load_weights(TinyNet(channels=6), p)
    msg = str(err.value)
    assert "shape mismatch" in msg and "conv.weight: model (6, 1, 3, 3) vs checkpoint (4, 1, 3, 3)" in msg
    with pytest.raises(CheckpointError, match="missing in the checkpoint: extra.weight"):
        wider = TinyNet(channels=4)
        wider.extra = nn.Linear(2, 2)
        load_weights(wider, p)


def test_fit_refuses_an_unsavable_model_before_the_first_batch(toy_mnist, tmp_path):
    m = TinyNet()
    m.arch = {"name": "tiny", "kwargs": {"act": nn.ReLU()}}  # an object a checkpoint cannot store
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", precision="fp32")
    with pytest.raises(CheckpointError, match=r"holds ReLU at 'kwargs.act'"):
        fit(m, toy_mnist, cfg, checkpoint_path=tmp_path / "m.pt", progress=False)
    assert calls == [] and not (tmp_path / "m.pt").exists()
    # an ordinary user model without .arch trains and checkpoints
    plain = TinyNet()
    fit(plain, toy_mnist, cfg, checkpoint_path=tmp_path / "p.pt", progress=False)
    assert torch.equal(load_weights(TinyNet(), tmp_path / "p.pt").head.weight, plain.head.weight)


def test_cli_imports_a_user_module_and_trains_its_registered_student(tmp_path, monkeypatch, registry, capsys):
    from kd_utils.cli import main
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "from kd_utils.models import register_model\n\n"
        "@register_model('user_mlp')\n"
        "def user_mlp(num_classes=10):\n"
        "    '''A user MLP 784-32-10.'''\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["--import", "my_models", "pipeline", "--profile", "smoke", "--epochs", "1", "--quiet",
               "--student-arch", "user_mlp", "--out", str(tmp_path / "out")])
    assert rc == 0
    student = load_model(tmp_path / "out" / "models" / "smoke" / "student_distilled.pth")
    assert student.arch["name"] == "user_mlp"
    assert main(["--import", "no_such_module_here", "info"]) == 2
    assert "--import no_such_module_here" in capsys.readouterr().err
