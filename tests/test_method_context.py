"""The method context: a distiller sees the schedule position and the batch's sample indices, keeps
state across batches, and resumes exactly -- with no change outside its own file (tests/warmup_bank.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kd_utils import build_model, fit, seed_everything
from kd_utils.checkpoint import CheckpointError
from kd_utils.config import TrainConfig
from kd_utils.train_kd import HintonKD

from conftest import make_bundle
from warmup_bank import WarmupBank

TESTS = Path(__file__).resolve().parent
CFG = dict(epochs=6, batch_size=32, optimizer="sgd", lr=0.05, schedule="cosine", augment="jitter", device="cpu",
           precision="fp32", seed=2)
N = 1024
SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import make_bundle
    from warmup_bank import WarmupBank
    from kd_utils import build_model, fit, seed_everything
    from kd_utils.config import TrainConfig
    torch.set_num_threads(1)
    data = make_bundle(n_train={n}, n_val=64, n_test=64)
    seed_everything(2)
    model = build_model("mnist_mlp")
    method = WarmupBank(model, {n})
    fit(model, data, TrainConfig(**{cfg!r}), method=method, state_path={state!r}, resume={resume}, progress=False)
    torch.save({{"model": model.state_dict(), "bank": method.bank, "visits": method.visits}}, {out!r})
""")


def _train(epochs=CFG["epochs"]):
    torch.set_num_threads(1)
    data = make_bundle(n_train=N, n_val=64, n_test=64)
    seed_everything(2)
    model = build_model("mnist_mlp")
    method = WarmupBank(model, N)
    res = fit(model, data, TrainConfig(**{**CFG, "epochs": epochs}), method=method, progress=False)
    return model, method, res


def test_a_distiller_sees_epoch_and_sample_indices():
    threads = torch.get_num_threads()
    try:
        _, method, res = _train(epochs=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(method.visits, torch.full((N,), 3))  # every sample seen once per epoch, by index
    assert method.bank.abs().sum() > 0
    # the warm-up weight follows ctx.epoch: zero bank term before training, scaled by epoch / warmup after
    h = res.history
    assert (h["train_loss_bank"] > 0).all()
    assert h["train_loss"].tolist() == pytest.approx((h["train_loss_ce"] + h["train_loss_bank"]).tolist())


def _saved_epoch(state: Path) -> int:
    try:
        return int(torch.load(state, weights_only=True)["epoch"])
    except Exception:
        return 0


def test_a_stateful_distiller_resumes_bit_identically_after_sigkill(tmp_path):
    threads = torch.get_num_threads()
    try:
        ref_model, ref_method, _ = _train()
    finally:
        torch.set_num_threads(threads)
    state, out, script = tmp_path / "s.pth", tmp_path / "final.pt", tmp_path / "train.py"

    def write(resume):
        script.write_text(SCRIPT.format(tests=str(TESTS), n=N, cfg=CFG, state=str(state), resume=resume, out=str(out)))

    write(False)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _saved_epoch(state) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= _saved_epoch(state) < CFG["epochs"] and not out.exists()
    write(True)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = torch.load(out, weights_only=True)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(resumed["model"][k], v), k
    assert torch.equal(resumed["bank"], ref_method.bank) and torch.equal(resumed["visits"], ref_method.visits)


def test_resume_refuses_other_hyper_parameters_other_data_and_a_state_that_does_not_fit(tmp_path):
    data = make_bundle(n_train=256, n_val=64, n_test=64)
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", precision="fp32")
    teacher = build_model("mnist_mlp").eval()
    model = build_model("mnist_mlp")
    fit(model, data, cfg, method=HintonKD(model, teacher, temperature=4.0), state_path=tmp_path / "s.pth", progress=False)
    with pytest.raises(CheckpointError, match=r"different method_hparams .*'temperature': \(4.0, 8.0\)"):
        fit(model, data, cfg, method=HintonKD(model, teacher, temperature=8.0), state_path=tmp_path / "s.pth",
            resume=True, progress=False)
    other = make_bundle(n_train=256, n_val=64, n_test=64, seed=9)
    with pytest.raises(CheckpointError, match="different data"):
        fit(model, other, cfg, method=HintonKD(model, teacher, temperature=4.0), state_path=tmp_path / "s.pth",
            resume=True, progress=False)
    # a state whose distiller had other buffers (another bank size) is refused, not loaded loosely
    fit(model, data, cfg, method=WarmupBank(model, 256), state_path=tmp_path / "b.pth", progress=False)
    state = torch.load(tmp_path / "b.pth", weights_only=True)
    del state["method"]["visits"]
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="does not fit this method .*missing \\['visits'\\]"):
        fit(model, data, cfg, method=WarmupBank(model, 256), state_path=tmp_path / "b.pth", resume=True, progress=False)
