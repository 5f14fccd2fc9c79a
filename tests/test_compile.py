"""fit with TrainConfig(compile=True): the torch.compile'd training step trains like the eager one.

Real compilation (inductor, C++ via gcc on the CPU) takes tens of seconds; the benchmark figure's
bookkeeping is tested with a stand-in in test_bench.py.
"""
from __future__ import annotations

import pytest
import torch

from kd_utils import build_model, fit, seed_everything
from kd_utils.config import TrainConfig


@pytest.fixture
def fresh_dynamo():
    """Nothing compiled before this test is reused, and nothing it compiles outlives it; one torch thread."""
    import torch._dynamo
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def _fit(data, compile: bool):
    seed_everything(0)
    model = build_model("vgg8", width=0.125)
    # 256 images in batches of 128: one shape, one compilation (a ragged last batch would compile again)
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, nesterov=True, schedule="onecycle",
                      augment="crop_flip", precision="fp32", device="cpu", seed=0, compile=compile)
    res = fit(model, data, cfg, progress=False, restore_best=False)
    return model, res


def test_compiled_fit_matches_eager_fit(toy_cifar, fresh_dynamo):
    from torch._dynamo.exc import BackendCompilerFailed
    eager, eager_res = _fit(toy_cifar, compile=False)
    try:
        compiled, compiled_res = _fit(toy_cifar, compile=True)
    except BackendCompilerFailed as e:  # e.g. no working C++ compiler for inductor's CPU kernels
        pytest.skip(f"torch.compile is unavailable here: {str(e).strip().splitlines()[0]}")
    assert type(compiled).__name__ == "VGG"  # fit compiles the step, not the model it hands back
    e_state, c_state = eager.state_dict(), compiled.state_dict()
    assert e_state.keys() == c_state.keys()
    for k, v in e_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(c_state[k], v, rtol=1e-3, atol=1e-4, msg=f"{k} differs")
        else:
            assert torch.equal(c_state[k], v), k
    for col in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert compiled_res.history[col].iloc[0] == pytest.approx(eager_res.history[col].iloc[0], rel=1e-3, abs=1e-4)
    assert compiled_res.config["compile"] is True and eager_res.config["compile"] is False
