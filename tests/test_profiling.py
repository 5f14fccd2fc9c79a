"""Tests for kd_utils.profiling."""
import pandas as pd
import pytest
import torch
from torch import nn

from kd_utils import profiling as P


class SmallConvNet(nn.Module):
    """conv(1->4, 3x3, pad 1) -> relu -> maxpool 2 -> conv(4->8, 3x3) -> flatten -> linear(8*5*5 -> 10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)  # 14x14 -> 7x7
        x = torch.relu(self.conv2(x))  # 7x7 -> 5x5
        return self.fc(x.flatten(1))


def test_count_parameters():
    assert P.count_parameters(nn.Linear(784, 128)) == 100480
    m = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    m[0].requires_grad_(False)
    assert P.count_parameters(m) == 55 + 12
    assert P.count_parameters(m, trainable_only=True) == 12


def test_count_parameters_shared_weight_counted_once():
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert P.count_parameters(m) == 20


def test_flops_linear_two_per_mac():
    # torch's FlopCounterMode counts a multiply-accumulate as 2 FLOPs (bias add not counted).
    assert P.flops_per_image(nn.Linear(784, 10), (784,)) == 2 * 784 * 10


def test_flops_conv_net_hand_formula():
    model = SmallConvNet()
    conv1 = 2 * (14 * 14) * 4 * (1 * 3 * 3)  # out pixels * out ch * (in ch * kh * kw), x2 per MAC
    conv2 = 2 * (5 * 5) * 8 * (4 * 3 * 3)
    fc = 2 * 200 * 10
    assert P.flops_per_image(model, (1, 14, 14)) == conv1 + conv2 + fc


def test_flops_restores_training_mode_and_uses_eval():
    model = SmallConvNet()
    model.train()
    model.bn.eval()  # a deliberately frozen sub-module must stay frozen
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, torch.is_grad_enabled())))
    before = model.bn.running_mean.clone()
    P.flops_per_image(model, (1, 14, 14))
    assert seen == [(False, False)]
    assert model.training and not model.bn.training and model.conv1.training
    assert torch.equal(model.bn.running_mean, before)  # eval: BN statistics untouched
    model.eval()
    P.flops_per_image(model, (1, 14, 14))
    assert not model.training


def test_checkpoint_size_close_to_params():
    model = nn.Linear(784, 128)
    size = P.checkpoint_size_bytes(model)
    raw = 4 * P.count_parameters(model)
    assert raw <= size < raw + 4096


def test_latency_positive_and_restores_mode():
    model = SmallConvNet().train()
    out = P.latency(model, (1, 14, 14), batch_size=4, repeats=5, warmup=1)
    assert set(out) == {"median_s", "mean_s", "std_s", "images_per_s"}
    assert out["median_s"] > 0 and out["mean_s"] > 0 and out["std_s"] >= 0
    assert out["images_per_s"] == pytest.approx(4 / out["median_s"])
    assert model.training


def test_latency_bad_args():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="batch_size"):
        P.latency(model, (3,), batch_size=0)
    with pytest.raises(ValueError, match="repeats"):
        P.latency(model, (3,), repeats=0)
    with pytest.raises(ValueError, match="input_shape"):
        P.latency(model, (0, 3))


def test_profile_model_keys():
    row = P.profile_model(nn.Linear(784, 10), (784,), name="lin", batch_sizes=(1, 8), repeats=3, warmup=1)
    for key in ("name", "params", "flops", "size_mb", "latency_b1_ms", "latency_b8_ms", "throughput"):
        assert key in row
    assert row["name"] == "lin"
    assert row["params"] == 7850
    assert row["flops"] == 15680
    assert row["size_mb"] == pytest.approx(P.checkpoint_size_bytes(nn.Linear(784, 10)) / 1e6)
    assert row["latency_b1_ms"] > 0 and row["throughput"] > 0
    assert row["throughput"] == row["throughput_b8"]


def test_compare_models_dataframe():
    models = {"teacher": nn.Linear(784, 128), "student": nn.Linear(784, 10)}
    df = P.compare_models(models, (784,), batch_sizes=(1, 16), repeats=3, warmup=1)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == ["teacher", "student"]
    assert "speedup_vs_teacher" in df.columns and "param_ratio" in df.columns
    assert df.loc["teacher", "speedup_vs_teacher"] == pytest.approx(1.0)
    assert df.loc["teacher", "param_ratio"] == pytest.approx(1.0)
    assert df.loc["student", "param_ratio"] == pytest.approx(7850 / 100480)
    assert {"latency_b1_ms", "latency_b16_ms", "flops", "params"} <= set(df.columns)

    df2 = P.compare_models(models, (784,), baseline="student", batch_sizes=(1,), repeats=2, warmup=0)
    assert df2.loc["student", "speedup_vs_student"] == pytest.approx(1.0)
    assert df2.loc["teacher", "param_ratio"] == pytest.approx(100480 / 7850)


def test_compare_models_errors():
    with pytest.raises(ValueError, match="at least one"):
        P.compare_models({}, (3,))
    with pytest.raises(ValueError, match="baseline"):
        P.compare_models({"a": nn.Linear(3, 2)}, (3,), baseline="b")
