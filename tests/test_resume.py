"""Interrupted runs resume from their last epoch and end exactly where an uninterrupted run ends."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd_utils import build_model, fit, seed_everything
from kd_utils.checkpoint import CheckpointError
from kd_utils.config import TrainConfig

from conftest import make_bundle

TESTS = Path(__file__).resolve().parent
CFG = dict(epochs=8, batch_size=32, optimizer="sgd", lr=0.05, schedule="cosine", augment="jitter", device="cpu",
           precision="fp32", seed=4)
SCRIPT = textwrap.dedent("""
    import signal, sys
    # A shell's background jobs inherit SIGINT as ignored; restore what a terminal or a notebook does
    # with Ctrl-C (raise KeyboardInterrupt), which this test sends.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import make_bundle
    from kd_utils import build_model, fit, seed_everything
    from kd_utils.config import TrainConfig
    torch.set_num_threads(1)
    data = make_bundle(n_train=2048, n_val=128, n_test=128)
    seed_everything(4)
    model = build_model("hinton_teacher", hidden=(64, 64))
    fit(model, data, TrainConfig(**{cfg!r}), state_path={state!r}, resume={resume}, progress=False)
    torch.save(model.state_dict(), {out!r})
""")


def _reference(state_path=None):
    torch.set_num_threads(1)
    data = make_bundle(n_train=2048, n_val=128, n_test=128)
    seed_everything(4)
    model = build_model("hinton_teacher", hidden=(64, 64))  # dropout + jitter: RNG state matters
    res = fit(model, data, TrainConfig(**CFG), state_path=state_path, progress=False)
    return model, res


def _saved_epoch(state: Path) -> int:
    try:
        return int(torch.load(state, weights_only=True)["epoch"])
    except Exception:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])  # SIGINT = Ctrl-C
def test_killed_subprocess_resumes_to_identical_result(tmp_path, sig):
    threads = torch.get_num_threads()
    try:
        ref_model, ref = _reference()
    finally:
        torch.set_num_threads(threads)
    state, out = tmp_path / "run.state.pth", tmp_path / "final.pt"
    script = tmp_path / "train.py"

    def write(resume):
        script.write_text(SCRIPT.format(tests=str(TESTS), cfg=CFG, state=str(state), resume=resume, out=str(out)))

    write(False)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _saved_epoch(state) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    killed_at = _saved_epoch(state)
    assert 2 <= killed_at < CFG["epochs"], f"the run was not interrupted mid-way (state at epoch {killed_at})"
    assert not out.exists()

    write(True)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = torch.load(out, weights_only=True)
    for k, v in ref_model.state_dict().items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0, msg=k)
    hist = pd.DataFrame(torch.load(state, weights_only=True)["history"])
    pd.testing.assert_frame_equal(hist.drop(columns="time_s"), ref.history.drop(columns="time_s").astype(float),
                                  check_dtype=False)


def test_resume_refuses_a_different_config_and_needs_a_path(tmp_path):
    data = make_bundle(n_train=256, n_val=64, n_test=64)
    model = build_model("mnist_mlp")
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", precision="fp32")
    fit(model, data, cfg, state_path=tmp_path / "s.pth", progress=False)
    with pytest.raises(CheckpointError, match="different config .*lr"):
        fit(model, data, cfg.replace(lr=0.1), state_path=tmp_path / "s.pth", resume=True, progress=False)
    with pytest.raises(ValueError, match="resume=True needs state_path"):
        fit(model, data, cfg, resume=True, progress=False)


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path):
    data = make_bundle(n_train=256, n_val=64, n_test=64)
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu", precision="fp32")
    seed_everything(0)
    model = build_model("mnist_mlp")
    first = fit(model, data, cfg, state_path=tmp_path / "s.pth", progress=False)
    again = fit(model, data, cfg, state_path=tmp_path / "s.pth", resume=True, progress=False)
    pd.testing.assert_frame_equal(first.history, again.history)
