from __future__ import annotations

import pandas as pd
import pytest
import torch

from kd_utils import build_model, evaluate, fit, get_data, seed_everything
from kd_utils.config import TrainConfig
from kd_utils.train_eval import TrainingDiverged, make_scheduler

CPU = dict(device="cpu", precision="fp32")


def test_a_few_epochs_lower_the_loss_and_learn(toy_mnist):
    seed_everything(0)
    model = build_model("mnist_mlp")
    before = evaluate(model, toy_mnist, "test", device="cpu")
    res = fit(model, toy_mnist, TrainConfig(epochs=4, batch_size=64, **CPU), progress=False)
    h = res.history
    assert isinstance(h, pd.DataFrame) and list(h["epoch"]) == [1, 2, 3, 4]
    assert {"train_loss", "train_loss_ce", "train_acc", "val_loss", "val_acc", "lr", "time_s"} <= set(h.columns)
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    after = evaluate(model, toy_mnist, "test", device="cpu")
    assert after.loss < before.loss and after.accuracy > 0.9
    assert res.best_val_acc == h["val_acc"].max() and res.best_epoch == int(h.loc[h["val_acc"].idxmax(), "epoch"])


def test_same_seed_same_numbers_on_cpu(toy_cifar):
    def run():
        seed_everything(3)
        m = build_model("vgg8", width=0.125)
        res = fit(m, toy_cifar, TrainConfig(epochs=2, batch_size=32, augment="crop_flip", optimizer="sgd", lr=0.05,
                                            schedule="onecycle", seed=3, **CPU), progress=False)
        return res.history.drop(columns="time_s"), evaluate(m, toy_cifar, device="cpu").logits
    (h1, l1), (h2, l2) = run(), run()
    pd.testing.assert_frame_equal(h1, h2)
    assert torch.equal(l1, l2)


def test_history_records_the_validation_logit_scale_of_each_epoch(toy_mnist):
    """val_logit_std is the mean over validation images of the unbiased std of each image's logits,
    computed here by hand from the final (last-epoch) model's validation logits."""
    seed_everything(0)
    model = build_model("mnist_mlp")
    res = fit(model, toy_mnist, TrainConfig(epochs=2, batch_size=64, **CPU), progress=False, restore_best=False)
    z = evaluate(model, toy_mnist, "val", device="cpu").logits.double()
    k = z.shape[1]
    by_hand = (((z - z.sum(1, keepdim=True) / k) ** 2).sum(1) / (k - 1)).sqrt().mean().item()
    assert res.history["val_logit_std"].iloc[-1] == pytest.approx(by_hand, rel=1e-5)
    assert res.history["val_logit_std"].iloc[0] != pytest.approx(by_hand, rel=1e-3)  # one value per epoch


def test_restores_best_epoch_weights(toy_mnist, tmp_path):
    seed_everything(0)
    model = build_model("mnist_mlp")
    res = fit(model, toy_mnist, TrainConfig(epochs=3, batch_size=64, **CPU), progress=False,
              checkpoint_path=tmp_path / "best.pth")
    val = evaluate(model, toy_mnist, "val", device="cpu")
    assert val.accuracy == pytest.approx(res.best_val_acc)
    from kd_utils.checkpoint import load_model
    again = load_model(tmp_path / "best.pth")
    assert again.checkpoint["metrics"]["epoch"] == res.best_epoch
    assert evaluate(again, toy_mnist, "val", device="cpu").accuracy == pytest.approx(res.best_val_acc)


def test_evaluate_reports_counts_and_matrices(toy_mnist):
    seed_everything(0)
    model = build_model("mnist_mlp")
    r = evaluate(model, toy_mnist, "test", device="cpu", batch_size=100)
    assert r.n == 256 and r.errors == int((r.preds != toy_mnist.y_test).sum())
    assert r.confusion.sum() == 256 and r.prediction_distribution.sum() == 256
    assert torch.allclose(r.probs.sum(1), torch.ones(256))
    s = r.summary()
    assert s["errors"] == r.errors and len(s["per_class_accuracy"]) == 10


def test_divergence_is_reported_with_epoch_and_terms(toy_mnist):
    model = build_model("mnist_mlp")
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"epoch 1 \(steps 1-8\): .*loss_ce"):
        fit(model, toy_mnist, TrainConfig(epochs=2, batch_size=64, **CPU), progress=False)


def test_schedules_follow_their_shapes():
    def lrs(cfg, steps=10):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        s = make_scheduler(opt, cfg, steps)
        out = []
        for _ in range(cfg.epochs * steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return out
    cos = lrs(TrainConfig(epochs=2, lr=0.1, schedule="cosine"))
    assert cos[0] == pytest.approx(0.1) and cos[-1] < 0.01 and all(a >= b for a, b in zip(cos, cos[1:]))
    step = lrs(TrainConfig(epochs=3, lr=0.1, schedule="step", milestones=(1, 2)))
    assert step[0] == pytest.approx(0.1) and step[10] == pytest.approx(0.01) and step[25] == pytest.approx(0.001)
    one = lrs(TrainConfig(epochs=4, lr=0.1, schedule="onecycle"))
    assert max(one) == pytest.approx(0.1) and one[0] < 0.01 and one[-1] < 0.001


def test_bad_fit_arguments(toy_mnist):
    model = build_model("mnist_mlp")
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        fit(model, toy_mnist, {"epochs": 1})
    with pytest.raises(ValueError, match="would not match the augmented images"):
        fit(model, toy_mnist, TrainConfig(augment="jitter", **CPU), teacher_outputs={"logits": torch.zeros(512, 10)})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            fit(model, toy_mnist, TrainConfig(device="cuda"))


def test_grad_clip_bounds_the_update(toy_mnist):
    """One SGD step (no momentum) moves the weights by lr * clipped gradient: its norm is at most lr * clip."""
    seed_everything(0)
    model = build_model("mnist_mlp")
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = TrainConfig(epochs=1, batch_size=512, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=0.01, **CPU)
    fit(model, toy_mnist, cfg, progress=False, restore_best=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-3)  # 512 samples = one step
    with pytest.raises(ValueError, match="grad_clip must be None or a finite number > 0, got 0"):
        TrainConfig(grad_clip=0)


def test_without_a_validation_split_the_last_epoch_is_kept(tmp_path):
    """The paper protocol: no hold-out, a fixed number of epochs, the last one reported."""
    import math
    from kd_utils.checkpoint import load_checkpoint
    from kd_utils.train_eval import STATE_FORMAT
    data = get_data("mnist", train_subset=400, test_subset=50, val_fraction=0)
    cfg = TrainConfig(epochs=3, batch_size=64, device="cpu", precision="fp32", lr=0.05, optimizer="sgd")
    seed_everything(0)
    model = build_model("mnist_mlp")
    res = fit(model, data, cfg, progress=False, state_path=tmp_path / "state.pt")
    assert res.best_epoch == 3 and math.isnan(res.best_val_acc) and "val_acc" not in res.history
    last = load_checkpoint(tmp_path / "state.pt", format=STATE_FORMAT)["method"]  # the state written after epoch 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, last[f"student.{k}"])


def test_fit_logs_every_history_column_to_tensorboard(toy_mnist, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from kd_utils.train_kd import HintonKD
    teacher = build_model("mnist_mlp").eval()
    model = build_model("mnist_mlp")
    res = fit(model, toy_mnist, TrainConfig(epochs=2, batch_size=128, **CPU), method=HintonKD(model, teacher),
              log_dir=tmp_path / "tb", progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_ce", "train/loss_kd", "train/acc", "val/acc", "val/loss", "lr", "time_s"} <= tags
    for tag, col in (("train/loss_kd", "train_loss_kd"), ("val/acc", "val_acc"), ("lr", "lr")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        want = list(zip(res.history["epoch"], res.history[col]))
        assert [s for s, _ in got] == [int(s) for s, _ in want]
        assert [v for _, v in got] == pytest.approx([float(v) for _, v in want], rel=1e-6)
