"""Two CPU processes (gloo, torchrun) give the same weights as one process with the same global batch."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from kd_utils import HintonKD, build_model, fit, seed_everything
from kd_utils.config import TrainConfig

from conftest import make_bundle

TESTS = Path(__file__).resolve().parent
CFG = dict(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", augment="jitter",
           device="cpu", precision="fp32", seed=1)
SCRIPT = textwrap.dedent("""
    import os
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import make_bundle
    from kd_utils import HintonKD, build_model, fit, seed_everything
    from kd_utils import distributed
    from kd_utils.config import TrainConfig
    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == 2
    data = make_bundle(n_train=519, n_val=64, n_test=64)   # 8 batches of 64 + 7: a ragged, odd last batch
    seed_everything(0)
    teacher = build_model("mlp", hidden=(32,))
    seed_everything(1)
    student = build_model("mlp", hidden=(48,))
    fit(student, data, TrainConfig(**{cfg!r}), method=HintonKD(student, teacher, 4.0, 0.7), progress=False,
        checkpoint_path={ckpt!r})
    if distributed.is_main():
        torch.save(student.state_dict(), {out!r})
    distributed.cleanup()
    print("rank", os.environ["RANK"], "left the process group", file=sys.stderr, flush=True)
    # Skip interpreter finalisation: gloo threads torn down there aborted rank 1 ("terminate called without
    # an active exception") after it had left the group, in 2 of 40 runs on a loaded 2-core machine (and
    # once in CI); 0 of 60 with this exit. kd_utils/__main__.py does the same under torchrun.
    os._exit(0)
""")


def test_two_gloo_processes_match_one_process(tmp_path):
    out, ckpt = tmp_path / "ddp.pt", tmp_path / "ckpt" / "best.pth"
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), cfg=CFG, out=str(out), ckpt=str(ckpt)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("left the process group") == 2, r.stderr[-3000:]

    data = make_bundle(n_train=519, n_val=64, n_test=64)
    seed_everything(0)
    teacher = build_model("mlp", hidden=(32,))
    seed_everything(1)
    student = build_model("mlp", hidden=(48,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(student, data, TrainConfig(**CFG), method=HintonKD(student, teacher, 4.0, 0.7), progress=False)
    finally:
        torch.set_num_threads(threads)
    ddp = torch.load(out, weights_only=True)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the comparison is not vacuous: training moved the weights far more than the tolerance
    seed_everything(1)
    init = build_model("mlp", hidden=(48,)).state_dict()
    assert max((student.state_dict()[k] - init[k]).abs().max().item() for k in init) > 1e-2
    assert ckpt.exists()  # rank 0 wrote the checkpoint
