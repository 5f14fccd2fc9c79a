"""Python callers: run_experiment explains what a spec is; distill hands the caller's teacher back unchanged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_utils import TrainConfig, build_model, distill, run_experiment


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


CFG = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, device="cpu", precision="fp32")


def test_a_module_instead_of_a_spec_is_refused_with_how_to_register_it(toy_cifar, tmp_path):
    with pytest.raises(TypeError) as e:
        run_experiment("mine", SmallCNN(), toy_cifar, CFG, profile="smoke", root=tmp_path, progress=False)
    msg = str(e.value)
    for needle in ('a spec is a dict {"name": <registered model name>', '{"name": "vgg8", "width": 0.25}',
                   '@register_model("smallcnn")', "kd_utils.models import register_model", "Registered now:",
                   "vgg13"):
        assert needle in msg, needle
    assert "not iterable" not in msg
    with pytest.raises(TypeError, match=r'pass its spec: \{"name": "vgg8", "width": 0.125\}'):
        run_experiment("b", build_model("vgg8", width=0.125), toy_cifar, CFG, profile="smoke", root=tmp_path,
                       progress=False)
    with pytest.raises(TypeError, match="has no 'name'"):
        run_experiment("c", {"width": 0.125}, toy_cifar, CFG, profile="smoke", root=tmp_path, progress=False)
    assert not any(tmp_path.rglob("*.json"))  # refused before any run was stored


@pytest.mark.parametrize("cache", [None, False])  # plan-cached teacher outputs, and the online teacher
def test_distill_hands_the_teacher_back_as_it_was(toy_cifar, cache):
    torch.manual_seed(0)
    teacher = build_model("vgg8", width=0.125)
    teacher.train()
    teacher.stage1.requires_grad_(False)  # a caller's own mix of frozen and trainable parts
    before = {k: p.detach().clone() for k, p in teacher.named_parameters()}
    grads = {k: p.requires_grad for k, p in teacher.named_parameters()}
    assert not all(grads.values()) and any(grads.values())
    student = build_model("vgg8", width=0.125)
    cfg = CFG.replace(augment="crop_flip")
    distill(student, teacher, toy_cifar, cfg, temperature=4.0, alpha=0.9, progress=False, cache=cache)
    assert {k: p.requires_grad for k, p in teacher.named_parameters()} == grads
    assert all(m.training for m in teacher.modules())
    for k, p in teacher.named_parameters():
        assert p.is_contiguous(), f"{k} left in channels_last"
        assert torch.equal(p, before[k]) and p.device.type == "cpu"
    # a teacher that was channels_last stays so
    teacher = build_model("vgg8", width=0.125).eval().to(memory_format=torch.channels_last)
    distill(build_model("vgg8", width=0.125), teacher, toy_cifar, cfg, progress=False, cache=cache)
    conv = teacher.stage1[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not teacher.training
    assert all(p.requires_grad for p in teacher.parameters())


def test_the_teacher_is_restored_when_distill_fails(toy_cifar):
    teacher = build_model("vgg8", width=0.125).train()
    with pytest.raises(ValueError):
        distill(build_model("vgg8", width=0.125), teacher, toy_cifar, CFG, temperature=-1.0, progress=False)
    assert all(p.requires_grad for p in teacher.parameters()) and teacher.training
