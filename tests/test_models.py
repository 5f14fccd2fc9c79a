from __future__ import annotations

import pytest
import torch

from kd_utils.models import MODELS, build_model
from kd_utils.profiling import count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_gives_logits(name):
    shape = (3, 32, 32) if name.startswith(("vgg", "cifar", "cohort")) else (1, 28, 28)
    kw = {"width": 0.125} if name.startswith("vgg") else {}
    m = build_model(name, num_classes=7, **kw)
    out = m(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert m.arch == {"name": name, "kwargs": {"num_classes": 7, **kw}}


def test_mlp_sizes_match_the_papers():
    # 784-800-800-10 and 784-1200-1200-10: weights + biases by hand
    assert count_parameters(build_model("hinton_student")) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert count_parameters(build_model("hinton_teacher")) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 12010
    assert count_parameters(build_model("mnist_mlp")) == 784 * 128 + 128 + 1290


def test_seed_teacher_cnn_layout():
    m = build_model("mnist_cnn")
    assert m.conv.out_channels == 32 and m.conv.kernel_size == (5, 5)
    assert m.fc.out_features == 128 and m.fc.in_features == 32 * 4 * 4


def test_vgg_width_depth_and_stage_names():
    full = build_model("vgg13", width=1.0)
    half = build_model("vgg13", width=0.5)
    assert full.feature_channels == [64, 128, 256, 512, 512]
    assert half.feature_channels == [32, 64, 128, 256, 256]
    n_conv = {d: sum(isinstance(m, torch.nn.Conv2d) for m in build_model(d).modules())
              for d in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")}
    assert n_conv == {"vgg8": 5, "vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}
    names = dict(half.named_modules())
    assert {"stage1", "stage2", "stage3", "stage4", "stage5", "classifier"} <= set(names)
    # hooks on a stage see its output at the documented resolution
    seen = {}
    half.stage3.register_forward_hook(lambda m, i, o: seen.update(s3=o.shape))
    half(torch.randn(1, 3, 32, 32))
    assert seen["s3"] == (1, 128, 8, 8)


def test_vgg13_has_about_the_published_parameter_count():
    # CIFAR VGG-13 with BN and one linear layer: about 9.4M parameters at width 1
    assert 9.3e6 < count_parameters(build_model("vgg13", num_classes=100)) < 9.5e6


def test_max_norm_constraint_caps_incoming_weights():
    m = build_model("hinton_teacher")
    with torch.no_grad():
        m.features[2].weight.mul_(100)
    m.apply_constraints()
    assert m.features[2].weight.norm(dim=1).max().item() <= 3.5 + 1e-4


def test_unknown_names_and_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'vgg7'; known models: .*vgg13"):
        build_model("vgg7")
    with pytest.raises(ValueError, match="bad arguments for model 'vgg8'"):
        build_model("vgg8", depth_multiplier=2)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("vgg8", width=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_model("mlp", dropout=1.0)
