"""Distillation losses and distillers, checked against independent hand-written formulas."""
from __future__ import annotations

import math

import pytest
import torch

from kd_utils import HintonKD, LogitMatching, Vanilla, build_distiller, build_model, kd_loss
from kd_utils.config import TrainConfig
from kd_utils.experiments import cache_teacher_logits, distill
from kd_utils.train_kd import StepContext, logit_mse_loss


def kd_by_hand(s: torch.Tensor, t: torch.Tensor, T: float) -> float:
    """T^2 * mean_n sum_i p_i (log p_i - log q_i), with explicit exp/sum softmax, in float64 python."""
    total = 0.0
    for row_s, row_t in zip(s.double().tolist(), t.double().tolist()):
        zs = [math.exp(v / T) for v in row_s]
        zt = [math.exp(v / T) for v in row_t]
        q = [v / sum(zs) for v in zs]
        p = [v / sum(zt) for v in zt]
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return T * T * total / len(s.tolist())


@pytest.mark.parametrize("T", [1.0, 2.5, 5.0, 20.0])
def test_kd_loss_matches_hand_formula(T):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 10, generator=g) * 3, torch.randn(7, 10, generator=g) * 3
    assert kd_loss(s, t, T).item() == pytest.approx(kd_by_hand(s, t, T), rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    s = torch.randn(4, 10)
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, s + torch.randn(4, 10), 4.0).item() > 0


def test_kd_loss_is_shift_invariant():
    """Softmax ignores a constant added to every logit, so the loss must too."""
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    assert kd_loss(s + 7.0, t - 3.0, 3.0).item() == pytest.approx(kd_loss(s, t, 3.0).item(), rel=1e-5)


def _soft_grad(s, t, T):
    s = s.clone().requires_grad_(True)
    kd_loss(s, t, T).backward()
    return s.grad


def test_t_squared_keeps_gradient_scale_roughly_constant():
    """Without T^2 the soft gradients shrink like 1/T^2; with it their size stays within a small factor."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g) * 2
    norms = {T: _soft_grad(s, t, T).norm().item() for T in (2.0, 5.0, 10.0, 20.0, 50.0)}
    assert max(norms.values()) / min(norms.values()) < 2.0
    # and the unscaled KL's gradient really would have shrunk by ~T^2 (so the factor is doing the work)
    raw = {T: n / T**2 for T, n in norms.items()}
    assert raw[2.0] / raw[50.0] > 100


def test_high_temperature_gradient_approaches_logit_matching():
    """Hinton 2015, sec. 2.1: for zero-mean logits and T >> logits, dC/dz_i -> (z_i - v_i) / (N T^2) per
    sample, i.e. T^2 * KD is logit matching 1/(2N) sum (z_i - v_i)^2 (N = number of classes)."""
    g = torch.Generator().manual_seed(3)
    B, K = 16, 10
    s = torch.randn(B, K, generator=g)
    t = torch.randn(B, K, generator=g)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    expected = (s - t) / (K * B)  # gradient of (1/B) sum_b 1/(2K) ||z_b - v_b||^2
    for T, tol in ((5.0, 0.2), (100.0, 0.01), (1000.0, 0.001)):
        grad = _soft_grad(s, t, T)
        rel = ((grad - expected).norm() / expected.norm()).item()
        assert rel < tol, (T, rel)


def test_logit_mse_matches_formula():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    assert logit_mse_loss(s, t).item() == pytest.approx(((s - t) ** 2).sum().item() / 15, rel=1e-6)


def test_loss_shape_mismatch_and_bad_temperature_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(torch.randn(2, 10), torch.randn(2, 5), 2.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        kd_loss(torch.randn(2, 10), torch.randn(2, 10), 0.0)


def _pair(k_student=10, k_teacher=10):
    torch.manual_seed(0)
    return build_model("mlp", hidden=(16,), num_classes=k_student), build_model("mlp", hidden=(32,), num_classes=k_teacher)


def test_hinton_kd_terms_combine_with_alpha():
    student, teacher = _pair()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    T, a = 4.0, 0.3
    logits, losses = HintonKD(student, teacher, temperature=T, alpha=a)(x, y)
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    kd = kd_by_hand(logits.detach(), teacher(x).detach(), T)
    assert losses["loss_ce"].item() == pytest.approx((1 - a) * ce, rel=1e-5)
    assert losses["loss_kd"].item() == pytest.approx(a * kd, rel=1e-4)


def test_special_cases_soft_only_and_hard_only():
    student, teacher = _pair()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    assert set(HintonKD(student, teacher, 2.0, alpha=1.0)(x, y)[1]) == {"loss_kd"}
    assert set(HintonKD(student, teacher, 2.0, alpha=0.0)(x, y)[1]) == {"loss_ce"}
    assert set(LogitMatching(student, teacher, alpha=1.0)(x, y)[1]) == {"loss_mse"}


def test_cached_logits_are_used_instead_of_the_teacher():
    student, teacher = _pair()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    fake = torch.zeros(4, 10)
    d = HintonKD(student, teacher, 3.0, alpha=1.0)
    with_cache = d(x, y, StepContext(teacher={"logits": fake}))[1]["loss_kd"].item()
    fresh = d(x, y)[1]["loss_kd"].item()
    assert with_cache == pytest.approx(kd_by_hand(student(x).detach(), fake, 3.0), rel=1e-4)
    assert with_cache != pytest.approx(fresh)


def test_teacher_stays_in_eval_mode_and_is_excluded_from_trainable_parameters():
    student, teacher = _pair()
    d = HintonKD(student, teacher).train()
    assert d.student.training and not d.teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    ids = {id(p) for p in d.trainable_parameters()}
    assert ids == {id(p) for p in student.parameters()}


def test_class_count_mismatch_and_unknown_method_are_rejected():
    student, teacher = _pair(10, 100)
    with pytest.raises(ValueError, match="teacher predicts 100 classes but student predicts 10"):
        HintonKD(student, teacher)
    with pytest.raises(ValueError, match="unknown distillation method 'fitnet'"):
        build_distiller("fitnet", student, teacher)
    with pytest.raises(ValueError, match="alpha must be in"):
        HintonKD(*_pair(), alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        HintonKD(*_pair(), temperature=-1)
    assert isinstance(build_distiller("ce", student), Vanilla)


def test_cached_teacher_logits_equal_fresh_ones(toy_mnist):
    torch.manual_seed(0)
    teacher = build_model("mnist_cnn")
    cached = cache_teacher_logits(teacher, toy_mnist, "train", batch_size=100, device="cpu", precision="fp32")
    # fresh: the teacher on the same images, through a shuffled loader, matched back by label-aligned extras
    loader = toy_mnist.loader("train", batch_size=64, shuffle=True, seed=5, extras=(cached,))
    teacher.eval()
    with torch.no_grad():
        for x, y, c in loader:
            torch.testing.assert_close(teacher(x), c, rtol=1e-5, atol=1e-5)


def test_distill_leaves_teacher_unchanged_and_caches_by_plan(toy_mnist, tmp_path):
    torch.manual_seed(0)
    teacher, student = build_model("mnist_cnn"), build_model("mnist_mlp")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", precision="fp32")
    res = distill(student, teacher, toy_mnist, cfg, temperature=4.0, alpha=0.7, progress=False)
    assert {"train_loss_ce", "train_loss_kd"} <= set(res.history.columns)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    res = distill(student, teacher, toy_mnist, cfg.replace(augment="jitter"), progress=False,
                  temperature=4.0, cache_dir=tmp_path)
    assert res.config["teacher_outputs"].startswith("plan cache built")
    with pytest.raises(ValueError, match="cannot be cached"):
        distill(student, teacher, toy_mnist, cfg.replace(augment="jitter"), method="ce", cache=True, progress=False)
