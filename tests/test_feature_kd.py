from __future__ import annotations

import pytest
import torch

from kd_utils import build_model
from kd_utils.feature_kd import FeatureHooks, layer_names


def test_hooks_capture_named_stages_and_are_removed():
    m = build_model("vgg8", width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureHooks(m, ["stage2", "stage4"]) as hooks:
        out = m(x)
        feats = hooks.pop()
        assert feats["stage2"].shape == (2, 16, 16, 16) and feats["stage4"].shape == (2, 64, 4, 4)
        # the stage output really is what the next layer sees: recompute stage3 by hand from stage2
        torch.testing.assert_close(m.stage4(m.pool(m.stage3(m.pool(feats["stage2"])))), feats["stage4"])
        with pytest.raises(RuntimeError, match="run a forward pass first"):
            hooks.pop()
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    torch.testing.assert_close(m(x), out)


def test_unknown_layer_names_are_rejected_with_the_known_ones():
    m = build_model("vgg8", width=0.125)
    with pytest.raises(ValueError, match=r"VGG has no layer\(s\) \['stage9'\]; known layers: stage1, stage1.0"):
        FeatureHooks(m, ["stage9"])
    with pytest.raises(ValueError, match="at least one layer"):
        FeatureHooks(m, [])
    assert "classifier" in layer_names(m)
