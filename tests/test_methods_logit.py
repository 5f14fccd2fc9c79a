"""The logit methods: DKD, DIST and logit standardisation, each against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kd_utils.methods.dist  # noqa: F401  (registers "dist")
import kd_utils.methods.dkd  # noqa: F401  (registers "dkd")
from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.methods.dist import DIST
from kd_utils.methods.dkd import DKD
from kd_utils.train_kd import DISTILLERS, HintonKD, StepContext, build_distiller, kd_loss, standardize_logits

from conftest import LINEAR_K as K, linear_batch as _batch, linear_pair as _linear_pair


def _vgg_pair(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg13", width=0.25).eval()


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


# ------------------------------------------------------------------- DKD ----
def dkd_by_hand(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float) -> tuple[float, float]:
    """TCKD and NCKD with explicit per-sample loops over the classes, python floats."""
    tckd = nckd = 0.0
    for zs, zt, target in zip(s.double().tolist(), t.double().tolist(), y.tolist()):
        ps, pt = _softmax(zs, T), _softmax(zt, T)
        bs = [ps[target], sum(ps[c] for c in range(len(zs)) if c != target)]
        bt = [pt[target], sum(pt[c] for c in range(len(zt)) if c != target)]
        tckd += sum(bt[j] * math.log(bt[j] / bs[j]) for j in range(2))
        es = {c: math.exp(zs[c] / T) for c in range(len(zs)) if c != target}
        et = {c: math.exp(zt[c] / T) for c in range(len(zt)) if c != target}
        qs = {c: v / sum(es.values()) for c, v in es.items()}
        qt = {c: v / sum(et.values()) for c, v in et.items()}
        nckd += sum(qt[c] * math.log(qt[c] / qs[c]) for c in qt)
    n = len(y)
    return T * T * tckd / n, T * T * nckd / n


def dkd_mdistiller_formula(s, t, y, alpha, beta, T):
    """The reference's dkd_loss as written in mdistiller/distillers/DKD.py (masked sums, -1000 on the target)."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()
    other = ~gt
    ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    cat = lambda p: torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], dim=1)  # noqa: E731
    tckd = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * T ** 2 / len(y)
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, dim=1), F.softmax(t / T - 1000.0 * gt, dim=1),
                    reduction="sum") * T ** 2 / len(y)
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_terms_match_the_hand_written_tckd_and_nckd(T):
    s, t = _linear_pair()
    x, y = _batch()
    d = DKD(s, t, alpha=1.5, beta=6.0, temperature=T, warmup=0, ce_weight=0.7)
    logits, losses = d(x, y)
    assert set(losses) == {"loss_ce", "loss_tckd", "loss_nckd"}
    tckd, nckd = dkd_by_hand(s(x).detach(), t(x).detach(), y, T)
    assert tckd > 0 and nckd > 0
    assert losses["loss_tckd"].item() == pytest.approx(1.5 * tckd, rel=1e-5)
    assert losses["loss_nckd"].item() == pytest.approx(6.0 * nckd, rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.7 * F.cross_entropy(logits, y).item(), rel=1e-6)


def test_dkd_equals_the_mdistiller_formula_and_warms_up_linearly_from_epoch_one():
    s, t = _linear_pair(3)
    x, y = _batch(8, 4)
    d = DKD(s, t)  # reference defaults: alpha 1, beta 6, T 4, warm-up 20
    assert (d.ce_weight, d.alpha, d.beta, d.temperature, d.warmup) == (1.0, 1.0, 6.0, 4.0, 20)
    ref = dkd_mdistiller_formula(s(x).detach(), t(x).detach(), y, 1.0, 6.0, 4.0).item()
    full = d(x, y, StepContext(epoch=20))[1]
    assert (full["loss_tckd"] + full["loss_nckd"]).item() == pytest.approx(ref, rel=1e-5)
    for epoch, w in [(1, 1 / 20), (10, 0.5), (20, 1.0), (40, 1.0)]:
        losses = d(x, y, StepContext(epoch=epoch))[1]
        assert (losses["loss_tckd"] + losses["loss_nckd"]).item() == pytest.approx(w * ref, rel=1e-5)
        assert losses["loss_ce"].item() == pytest.approx(full["loss_ce"].item(), rel=1e-7)  # CE is not warmed up
    no_ctx = d(x, y)[1]  # a direct call is epoch 1
    assert (no_ctx["loss_tckd"] + no_ctx["loss_nckd"]).item() == pytest.approx(ref / 20, rel=1e-5)
    assert DKD(s, t, warmup=0)(x, y)[1]["loss_nckd"].item() == pytest.approx(full["loss_nckd"].item(), rel=1e-6)


def test_dkd_with_standardize_uses_z_scored_logits_and_dkd_decomposes_kd():
    s, t = _linear_pair(5)
    x, y = _batch(6, 7)
    d = DKD(s, t, alpha=2.0, beta=3.0, temperature=2.0, warmup=0, standardize=True)
    _, losses = d(x, y)
    zs, zt = zscore_by_hand(s(x).detach()), zscore_by_hand(t(x).detach())
    tckd, nckd = dkd_by_hand(zs, zt, y, 2.0)
    assert losses["loss_tckd"].item() == pytest.approx(2.0 * tckd, rel=1e-4)
    assert losses["loss_nckd"].item() == pytest.approx(3.0 * nckd, rel=1e-4)
    assert d.describe()["standardize"] is True and "standardize" not in DKD(s, t).describe()
    # the paper's decomposition, per sample: KD = TCKD + (1 - p_t(target)) * NCKD (all at T, times T^2)
    plain = DKD(s, t, alpha=1.0, beta=1.0, temperature=3.0, warmup=0)
    one = x[:1], y[:1]
    l1 = plain(*one)[1]
    pt_target = F.softmax(t(one[0]) / 3.0, dim=1)[0, one[1][0]].item()
    kd = kd_loss(s(one[0]), t(one[0]), 3.0).item()
    assert kd == pytest.approx(l1["loss_tckd"].item() + (1 - pt_target) * l1["loss_nckd"].item(), rel=1e-5)


# ------------------------------------------------------------------ DIST ----
def test_dist_relations_match_numpy_corrcoef():
    s, t = _linear_pair(2)
    x, y = _batch(7, 3)
    d = DIST(s, t, beta=1.5, gamma=0.5, tau=2.0, ce_weight=0.3)
    logits, losses = d(x, y)
    assert set(losses) == {"loss_ce", "loss_inter", "loss_intra"}
    ps = F.softmax(s(x).detach().double() / 2.0, dim=1).numpy()
    pt = F.softmax(t(x).detach().double() / 2.0, dim=1).numpy()
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(ps))])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(K)])
    assert 0 < inter < 2 and 0 < intra < 2
    assert losses["loss_inter"].item() == pytest.approx(1.5 * 4.0 * inter, rel=1e-4)
    assert losses["loss_intra"].item() == pytest.approx(0.5 * 4.0 * intra, rel=1e-4)
    assert losses["loss_ce"].item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), rel=1e-6)
    d0 = DIST(s, t)
    assert (d0.beta, d0.gamma, d0.tau, d0.ce_weight) == (2.0, 2.0, 4.0, 1.0)


def test_dist_is_zero_for_the_teacher_itself_and_not_otherwise():
    """A student predicting exactly the teacher's probabilities has correlation 1 in both relations."""
    s, t = _linear_pair(1)
    x, y = _batch(6, 2)
    d = DIST(t, t)
    _, same = d(x, y)
    assert same["loss_inter"].item() == pytest.approx(0.0, abs=1e-4)  # tau^2 * beta = 32 times float32 rounding
    assert same["loss_intra"].item() == pytest.approx(0.0, abs=1e-4)
    _, other = DIST(s, t)(x, y)
    assert other["loss_inter"].item() > 1e-3 and other["loss_intra"].item() > 1e-3


# ------------------------------------------------- logit standardisation ----
def zscore_by_hand(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    rows = []
    for row in z.double().tolist():
        m = sum(row) / len(row)
        sd = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))  # unbiased, as the reference
        rows.append([(v - m) / (sd + eps) for v in row])
    return torch.tensor(rows, dtype=torch.float64)


def kl_by_hand(s, t, T):
    total = 0.0
    for zs, zt in zip(s.tolist(), t.tolist()):
        q, p = _softmax(zs, T), _softmax(zt, T)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return T * T * total / len(s)


def test_standardize_logits_is_the_unbiased_z_score():
    z = torch.randn(4, K) * 5 + 2
    torch.testing.assert_close(standardize_logits(z).double(), zscore_by_hand(z), rtol=1e-5, atol=1e-6)
    assert standardize_logits(z).dtype == torch.float32


@pytest.mark.parametrize("T", [2.0, 3.0])
def test_standardised_kd_matches_hand_written_z_score_and_kl(T):
    s, t = _linear_pair(4)
    x, y = _batch(5, 5)
    d = HintonKD(s, t, temperature=T, alpha=0.8, standardize=True)
    _, losses = d(x, y)
    expected = kl_by_hand(zscore_by_hand(s(x).detach()), zscore_by_hand(t(x).detach()), T)
    assert losses["loss_kd"].item() == pytest.approx(0.8 * expected, rel=1e-4)
    # invariant to a per-sample shift and a positive scale of either side's logits; plain KD is not
    t_logits = t(x).detach()
    moved = StepContext(teacher={"logits": 5 * t_logits + 3})
    assert d(x, y, moved)[1]["loss_kd"].item() == pytest.approx(losses["loss_kd"].item(), rel=1e-4)
    plain = HintonKD(s, t, temperature=T, alpha=0.8)
    assert abs(plain(x, y, moved)[1]["loss_kd"].item() - plain(x, y)[1]["loss_kd"].item()) > 1e-2
    assert d.describe() == {"method": "HintonKD", "temperature": T, "alpha": 0.8, "standardize": True}
    assert build_distiller("kd", s, t, standardize=True).standardize is True


def test_hinton_kd_without_standardize_is_the_unchanged_kd_loss_path():
    s, t = _vgg_pair()
    s.eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    default, off = HintonKD(s, t), HintonKD(s, t, standardize=False)
    _, a = default(x, y)
    _, b = off(x, y)
    with torch.no_grad():
        expected = 0.9 * kd_loss(s(x), t(x), 4.0)
        ce = 0.1 * F.cross_entropy(s(x), y)
    assert torch.equal(a["loss_kd"], b["loss_kd"]) and torch.equal(a["loss_kd"], expected)
    assert torch.equal(a["loss_ce"], ce)
    assert default.describe() == off.describe() == {"method": "HintonKD", "temperature": 4.0, "alpha": 0.9}


# -------------------------------------------------- gradients and caching ----
@pytest.mark.parametrize("make", [lambda s, t: DKD(s, t, warmup=0), lambda s, t: DKD(s, t, standardize=True),
                                  lambda s, t: DIST(s, t), lambda s, t: HintonKD(s, t, standardize=True)],
                         ids=["dkd", "dkd_std", "dist", "kd_std"])
def test_gradients_reach_the_student_never_the_teacher(make):
    s, t = _vgg_pair()
    t_state = {k: v.clone() for k, v in t.state_dict().items()}
    d = make(s, t).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits, losses = d(x, y)
    assert logits.shape == (8, 10) and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    soft = sum(v for k, v in losses.items() if k != "loss_ce")
    soft.backward()  # the distillation terms alone reach every student parameter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.classifier.parameters())
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert not t.training and all(torch.equal(v, t.state_dict()[k]) for k, v in t_state.items())
    assert getattr(d, "extra_parameters", 0) == 0 and d.logits_only
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in s.parameters()}


@pytest.mark.parametrize("make", [lambda s, t: DKD(s, t), lambda s, t: DIST(s, t),
                                  lambda s, t: HintonKD(s, t, standardize=True)], ids=["dkd", "dist", "kd_std"])
def test_cached_teacher_logits_give_the_online_loss(make):
    s, t = _vgg_pair()
    s.eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    d = make(s, t)
    with torch.no_grad():
        t_logits = t(x)
    _, online = d(x, y, StepContext(epoch=3))
    _, cached = d(x, y, StepContext(epoch=3, teacher={"logits": t_logits}))
    assert set(online) == set(cached)
    for k in online:
        torch.testing.assert_close(cached[k], online[k])
    _, no_teacher = make(s, None)(x, y, StepContext(epoch=3, teacher={"logits": t_logits}))
    for k in online:
        torch.testing.assert_close(no_teacher[k], online[k])
    with pytest.raises(ValueError, match="needs a teacher or cached teacher logits"):
        make(s, None)(x, y)


# ---------------------------------------------------------------- errors ----
@pytest.mark.parametrize("cls,kw,match", [
    (DKD, {"alpha": -1.0}, r"alpha must be a finite number >= 0, got -1.0"),
    (DKD, {"beta": float("nan")}, r"beta .* got nan"),
    (DKD, {"ce_weight": "1"}, r"ce_weight .* got '1'"),
    (DKD, {"temperature": 0.0}, r"temperature must be a finite number > 0, got 0.0"),
    (DKD, {"warmup": -2}, r"warmup .* got -2"),
    (DKD, {"warmup": 2.5}, r"warmup .* got 2.5"),
    (DKD, {"standardize": "yes"}, r"standardize must be True or False, got 'yes'"),
    (DIST, {"tau": -4.0}, r"tau must be a finite number > 0, got -4.0"),
    (DIST, {"gamma": float("inf")}, r"gamma .* got inf"),
    (DIST, {"beta": -0.5}, r"beta .* got -0.5"),
    (HintonKD, {"standardize": 1}, r"standardize must be True or False, got 1"),
    (HintonKD, {"temperature": -1.0}, r"temperature .* got -1.0"),
])
def test_bad_arguments_raise_value_errors_naming_the_value(cls, kw, match):
    s, t = _linear_pair()
    with pytest.raises(ValueError, match=match):
        cls(s, t, **kw)


def test_bad_logits_raise_value_errors():
    from kd_utils.methods.dist import dist_relations
    from kd_utils.methods.dkd import dkd_terms
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 5\)"):
        dkd_terms(torch.randn(3, 4), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), 4.0)
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2, 4\)"):
        dist_relations(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="eps must be .* got -1"):
        standardize_logits(torch.randn(2, 3), eps=-1)


# ----------------------------------------------------------------- smoke ----
@pytest.mark.parametrize("method,terms", [("dkd", {"train_loss_tckd", "train_loss_nckd"}),
                                          ("dist", {"train_loss_inter", "train_loss_intra"})])
def test_distill_one_epoch_on_toy_cifar(toy_cifar, method, terms):
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")
    s, t = _vgg_pair()
    assert method in DISTILLERS
    res = distill(s, t, toy_cifar, cfg, method=method, progress=False)
    cols = terms | {"train_loss_ce"}
    assert set(res.history.columns) >= cols
    assert all(np.isfinite(res.history[c]).all() and (res.history[c] > 0).all() for c in cols)
    assert res.config["teacher_outputs"].startswith("cached logits") and res.config["extra_parameters"] == 0
