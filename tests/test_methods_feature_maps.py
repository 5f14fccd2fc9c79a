"""VID, NST and OFD (kd_utils.methods.vid / nst / ofd): losses against hand-written computations,
the pre-ReLU features OFD reads (kd_utils.feature_kd.pre_relu_layers, captured with clone=True) against
a conv+BN run by hand, gradients, errors, and a distill smoke run."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kd_utils.methods.nst  # noqa: F401  (registers "nst")
import kd_utils.methods.ofd  # noqa: F401  (registers "ofd")
import kd_utils.methods.vid  # noqa: F401  (registers "vid")
from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.feature_kd import capture, pre_relu_layers
from kd_utils.methods.nst import NST, nst_loss
from kd_utils.methods.ofd import OFD, bn_margin, ofd_partial_l2
from kd_utils.methods.vid import VID, VIDRegressor, gaussian_nll
from kd_utils.train_kd import DISTILLERS, StepContext

STAGES = ["stage2", "stage3", "stage4", "stage5"]


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg13", width=0.25).eval()


def _batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _randomise_bn(model, seed=3):
    """Non-trivial BN affine parameters and running statistics (a fresh model has gamma 1, beta 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.randn(c, generator=g) * 0.8)
                m.bias.copy_(torch.randn(c, generator=g) * 0.7)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _pre_relu_by_hand(model, x, batch_stats=False):
    """Per stage, the output of its last BN before the ReLU: every conv and BN written out with
    F.conv2d and the BN formula (running or batch statistics), non-in-place ReLUs, 2x2 max-pools."""
    out, h = {}, x
    for k in range(1, 6):
        mods = list(getattr(model, f"stage{k}"))
        for m in mods:
            if isinstance(m, torch.nn.Conv2d):
                h = F.conv2d(h, m.weight, padding=1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                if batch_stats:
                    mu, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
                else:
                    mu, var = m.running_mean, m.running_var
                h = (h - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + m.eps)
                h = h * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)
                pre = h
            else:
                h = torch.clamp(h, min=0)
        out[f"stage{k}"] = pre
        if k < 5:
            h = F.max_pool2d(h, 2)
    return out


# ------------------------------------------------------------------- VID ----
def test_vid_nll_against_the_gaussian_formula_written_out():
    g = torch.Generator().manual_seed(0)
    mu, t = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64), torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    var = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    terms = [0.5 * (math.log(float(var[c])) + float(t[n, c, i, j] - mu[n, c, i, j]) ** 2 / float(var[c]))
             for n in range(2) for c in range(3) for i in range(2) for j in range(2)]
    assert gaussian_nll(mu, var, t).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 2\).*\(2, 2, 2, 2\)"):
        gaussian_nll(mu, var, t[:, :2])


def test_vid_regressor_is_three_1x1_convs_and_starts_at_the_initial_variance():
    reg = VIDRegressor(3, 6, 5, init_pred_var=5.0, eps=1e-5)
    w = [c.weight for c in reg.mean if isinstance(c, torch.nn.Conv2d)]
    assert [tuple(v.shape) for v in w] == [(6, 3, 1, 1), (6, 6, 1, 1), (5, 6, 1, 1)]
    assert all(c.bias is None for c in reg.mean if isinstance(c, torch.nn.Conv2d))
    # softplus by hand: log(1 + exp(log_scale)) + eps
    var = [math.log1p(math.exp(v)) + 1e-5 for v in reg.log_scale.tolist()]
    assert var == pytest.approx([5.0] * 5, rel=1e-6)
    torch.testing.assert_close(reg.variance(), torch.tensor(var, dtype=torch.float32))
    x = torch.randn(2, 3, 4, 4)
    by_hand = torch.einsum("oc,nchw->nohw", w[0][:, :, 0, 0], x).clamp(min=0)
    by_hand = torch.einsum("oc,nchw->nohw", w[1][:, :, 0, 0], by_hand).clamp(min=0)
    by_hand = torch.einsum("oc,nchw->nohw", w[2][:, :, 0, 0], by_hand)  # no ReLU on the mean
    torch.testing.assert_close(reg(x), by_hand, rtol=1e-5, atol=1e-6)


def test_vid_distiller_loss_and_layout_match_the_reference_setting():
    s, t = _pair()
    s.eval()
    x, y = _batch()
    d = VID(s, t, beta=2.0)
    assert d.s_layers == d.t_layers == tuple(STAGES) and d.beta == 2.0
    assert VID(s, t).beta == 1.0 and VID(s, t).alpha == 0.0
    with torch.no_grad():  # perturb the variances so each channel has its own
        for reg in d.adapters:
            reg.log_scale.add_(torch.linspace(-1, 1, len(reg.log_scale)))
    _, losses = d(x, y)
    _, fs = capture(s, x, STAGES)
    _, ft = capture(t, x, STAGES)
    expected = 0.0
    for reg, k in zip(d.adapters, STAGES):
        mu = reg(fs[k])
        var = (torch.log(1 + torch.exp(reg.log_scale)) + 1e-5).view(1, -1, 1, 1)
        expected = expected + (0.5 * (torch.log(var) + (ft[k] - mu) ** 2 / var)).mean()
    torch.testing.assert_close(losses["loss_vid"], 2.0 * expected)
    torch.testing.assert_close(losses["loss_ce"], F.cross_entropy(s(x), y))
    # mid channels = the teacher layer's channels; extra parameters counted exactly
    s_c, t_c = s.feature_channels[1:], t.feature_channels[1:]
    assert d.describe()["mid_channels"] == t_c
    assert d.extra_parameters == sum(a * b + 2 * b * b + b for a, b in zip(s_c, t_c))
    assert VID(s, t, mid_channels=8).extra_parameters == sum(a * 8 + 8 * 8 + 8 * b + b for a, b in zip(s_c, t_c))


# ------------------------------------------------------------------- NST ----
def _nst_by_hand(fs, ft):
    def channels(f, n):  # each channel's flattened map, unit L2 norm, as python lists
        rows = [[float(v) for v in f[n, c].flatten()] for c in range(f.shape[1])]
        return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]

    def k_mean(a, b):
        return sum(sum(p * q for p, q in zip(u, v)) ** 2 for u in a for v in b) / (len(a) * len(b))
    total = 0.0
    for n in range(fs.shape[0]):
        a, b = channels(fs, n), channels(ft, n)
        total += k_mean(b, b) + k_mean(a, a) - 2 * k_mean(a, b)
    return total / fs.shape[0]


def test_nst_loss_is_the_poly_kernel_mmd_expanded_by_hand():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    assert nst_loss(fs, ft).item() == pytest.approx(_nst_by_hand(fs, ft), rel=1e-5)
    # an MMD between channel sets: invariant to channel order and per-channel positive scale
    assert nst_loss(ft[:, [4, 2, 0, 1, 3]] * (torch.rand(1, 5, 1, 1, dtype=torch.float64) + 0.5), ft).item() == \
        pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"equal N, H and W.*\(2, 3, 3, 3\).*\(2, 5, 2, 2\)"):
        nst_loss(fs, ft[:, :, :2, :2])


def test_nst_distiller_sums_the_layers_with_beta_50_and_has_no_parameters():
    s, t = _pair()
    s.eval()
    x, y = _batch(3)
    d = NST(s, t)
    assert d.beta == 50.0 and d.s_layers == tuple(STAGES) and d.extra_parameters == 0
    _, losses = d(x, y)
    _, fs = capture(s, x, STAGES)
    _, ft = capture(t, x, STAGES)
    expected = 0.0
    for k in STAGES:  # vectorised, written independently: normalise, Gram, square, means
        a, b = F.normalize(fs[k].flatten(2), dim=2), F.normalize(ft[k].flatten(2), dim=2)
        gram = lambda u, v: (torch.einsum("ncp,ndp->ncd", u, v) ** 2).mean()  # noqa: E731
        expected = expected + gram(b, b) + gram(a, a) - 2 * gram(a, b)
    torch.testing.assert_close(losses["loss_nst"], 50.0 * expected)


# ------------------------------------------------------------------- OFD ----
def _margin_by_hand(gamma, beta):
    s, m = abs(gamma), beta
    cdf = 0.5 * (1 + math.erf((-m / s) / math.sqrt(2)))
    if cdf > 0.001:
        return m - s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / cdf
    return -3 * s


def test_ofd_margin_is_the_mean_of_the_negative_gaussian_part():
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.3, 1.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.4, -1.0, 2.0, 3.5]))  # the last: Phi(-3.5) < 0.001 -> -3|gamma|
    expected = [_margin_by_hand(g, b) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())]
    assert bn_margin(bn).tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi)) and expected[4] == pytest.approx(-3.0)
    # and it is E[x | x < 0] for x ~ N(beta, gamma^2): numerical integration for channel 2
    xs = torch.linspace(-20.0, 0.0, 200001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((xs + 1.0) / 2.0) ** 2)
    assert float(torch.trapezoid(xs * pdf, xs) / torch.trapezoid(pdf, xs)) == pytest.approx(expected[2], rel=1e-5)


def test_ofd_partial_l2_against_a_loop_over_elements():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64), torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64)
    margin = torch.tensor([-0.4, -1.2], dtype=torch.float64)
    total, cases = 0.0, set()
    for n in range(3):
        for c in range(2):
            for i in range(2):
                for j in range(3):
                    target = max(float(t[n, c, i, j]), float(margin[c]))
                    sv = float(s[n, c, i, j])
                    if sv > target or target > 0:
                        total += (sv - target) ** 2
                        cases.add("t>0" if target > 0 else ("margin" if target == float(margin[c]) else "m<t<=0"))
                    else:
                        cases.add("skipped")
    assert cases == {"t>0", "margin", "m<t<=0", "skipped"}  # every branch is exercised
    assert ofd_partial_l2(s, t, margin).item() == pytest.approx(total / 3, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(3, 2, 2, 3\).*\(3, 1, 2, 3\)"):
        ofd_partial_l2(s, t[:, :1], margin)


def _capture_pre_relu(model, x, layers):
    """``(output, {layer: pre-ReLU feature})`` as OFD reads them: each layer's last BN, cloned in the hook."""
    bns = pre_relu_layers(model, layers)
    out, feats = capture(model, x, bns, clone=True)
    return out, {layer: feats[bn] for layer, bn in zip(layers, bns)}


def test_pre_relu_features_equal_the_bn_output_computed_by_hand():
    s, t = _pair()
    for m in (s, t):
        _randomise_bn(m)
        m.eval()
    x, _ = _batch(2)
    assert pre_relu_layers(s, STAGES) == ["stage2.1", "stage3.1", "stage4.1", "stage5.1"]
    assert pre_relu_layers(t, ["stage3", "stage3.1"]) == ["stage3.4", "stage3.1"]
    for m in (s, t):
        out, pre = _capture_pre_relu(m, x, STAGES)
        _, post = capture(m, x, STAGES)
        hand = _pre_relu_by_hand(m, x)
        torch.testing.assert_close(out, m(x))
        for k in STAGES:
            torch.testing.assert_close(pre[k], hand[k], rtol=1e-4, atol=1e-5)
            assert (pre[k] < 0).any() and not torch.equal(pre[k], post[k])   # post-ReLU has no negatives
            torch.testing.assert_close(post[k], pre[k].clamp(min=0))
    # stage2's first conv+BN of the student, written out once more from the stage input
    h = F.max_pool2d(s.stage1(x), 2)
    conv, bn = s.stage2[0], s.stage2[1]
    z = F.conv2d(h, conv.weight, padding=1)
    z = (z - bn.running_mean[None, :, None, None]) / (bn.running_var[None, :, None, None] + bn.eps).sqrt()
    torch.testing.assert_close(_capture_pre_relu(s, x, ["stage2"])[1]["stage2"],
                               z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None], rtol=1e-4, atol=1e-5)


def test_ofd_distiller_loss_against_hand_computed_pre_relu_features_and_margins():
    s, t = _pair()
    _randomise_bn(t)
    s.eval()
    x, y = _batch()
    d = OFD(s, t, beta=0.5).eval()
    _, losses = d(x, y)
    hs, ht = _pre_relu_by_hand(s, x), _pre_relu_by_hand(t, x)
    expected = 0.0
    for i, k in enumerate(STAGES):
        bn = t.get_submodule(f"{k}.4")
        margin = torch.tensor([_margin_by_hand(g, b) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())])
        target = torch.maximum(ht[k], margin.view(1, -1, 1, 1))
        src = d.adapters[i](hs[k])
        mask = ((src > target) | (target > 0)).float()
        expected = expected + ((src - target) ** 2 * mask).sum() / len(x) / 2 ** (3 - i)
    torch.testing.assert_close(losses["loss_ofd"], 0.5 * expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_ce"], F.cross_entropy(s(x), y))
    ref = OFD(s, t)
    assert ref.beta == 1e-3 and ref.layer_weights == [0.125, 0.25, 0.5, 1.0] and ref.alpha == 0.0
    s_c, t_c = s.feature_channels[1:], t.feature_channels[1:]
    assert ref.extra_parameters == sum(a * b + 2 * b for a, b in zip(s_c, t_c))  # conv (no bias) + BN affine


def test_ofd_teacher_batch_stats_use_the_batch_and_leave_the_teacher_untouched():
    s, t = _pair()
    _randomise_bn(t)
    t_state = {k: v.clone() for k, v in t.state_dict().items()}
    x, y = _batch(6)
    d = OFD(s, t, teacher_batch_stats=True).train()
    _, feats = d.teacher_features(x, None)
    hand = _pre_relu_by_hand(t, x, batch_stats=True)
    for f, k in zip(feats, STAGES):
        torch.testing.assert_close(f, hand[k], rtol=1e-4, atol=1e-4)
    _, eval_feats = OFD(s, t).teacher_features(x, None)
    assert not torch.allclose(feats[0], eval_feats[0])
    assert not t.training and all(not m.training for m in t.modules())
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in t_state.items())


# ------------------------------------------------------------- all three ----
@pytest.mark.parametrize("cls,kw,term", [(VID, {}, "loss_vid"), (NST, {}, "loss_nst"), (OFD, {}, "loss_ofd"),
                                         (OFD, {"alpha": 0.5, "teacher_batch_stats": True}, "loss_ofd"),
                                         (VID, {"alpha": 0.9}, "loss_vid")])
def test_gradients_reach_student_and_adapters_never_the_teacher(cls, kw, term):
    s, t = _pair()
    t_state = {k: v.clone() for k, v in t.state_dict().items()}
    d = cls(s, t, **kw).train()
    x, y = _batch(6)
    logits, losses = d(x, y)
    assert logits.shape == (6, 10) and term in losses and "loss_ce" in losses
    assert ("loss_kd" in losses) == ("alpha" in kw)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses[term].backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stage2.parameters())  # via the feature term
    sum(v for k, v in losses.items() if k != term).backward()
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert d.extra_parameters == sum(p.numel() for p in d.adapters.parameters())
    assert {id(p) for p in d.adapters.parameters()} <= {id(p) for p in d.trainable_parameters()}
    assert not t.training and all(torch.equal(v, t.state_dict()[k]) for k, v in t_state.items())
    assert d.describe()["method"] == cls.__name__ and DISTILLERS[cls.__name__.lower()] is cls


@pytest.mark.parametrize("cls", [VID, OFD])
def test_cached_teacher_logits_give_the_online_losses(cls):
    s, t = _pair()
    s.eval()
    x, y = _batch()
    d = cls(s, t, alpha=0.5).eval()
    _, online = d(x, y)
    _, cached = d(x, y, StepContext(teacher={"logits": t(x)}))
    assert set(cached) == set(online) == {"loss_ce", "loss_kd", cls.term}
    for k in online:
        torch.testing.assert_close(cached[k], online[k])


def test_unmatched_spatial_sizes_unknown_layers_and_bad_arguments_give_clear_errors():
    s, t = _pair()
    for cls in (VID, NST, OFD):
        with pytest.raises(ValueError, match=r"'stage2' has shape \(16, 16, 16\).*'stage3' has shape \(64, 8, 8\)"):
            cls(s, t, student_layers=["stage2"], teacher_layers=["stage3"])
        with pytest.raises(ValueError, match=r"no layer\(s\) \['stage9'\]; known layers: stage1"):
            cls(s, t, student_layers=["stage9"], teacher_layers=["stage3"])
        with pytest.raises(ValueError, match="as many student layers"):
            cls(s, t, student_layers=["stage2"])
        with pytest.raises(ValueError, match="beta"):
            cls(s, t, beta=-1.0)
    with pytest.raises(ValueError, match="holds no BatchNorm"):
        OFD(s, t, student_layers=["stage3.0"], teacher_layers=["stage3.0"])
    with pytest.raises(ValueError, match=r"layer_weights must be 4 .*\[1.0, 1.0\]"):
        OFD(s, t, layer_weights=[1, 1])
    with pytest.raises(ValueError, match="layer_weights"):
        OFD(s, t, layer_weights=[1, 1, -1, 1])
    with pytest.raises(ValueError, match="init_pred_var"):
        VID(s, t, init_pred_var=0.0)
    with pytest.raises(ValueError, match="eps"):
        VID(s, t, eps=0.0)
    with pytest.raises(ValueError, match=r"mid_channels .* got \[4, 4\]"):
        VID(s, t, mid_channels=[4, 4])


@pytest.mark.parametrize("method", ["vid", "nst", "ofd"])
def test_distill_smoke_one_epoch(toy_cifar, method):
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")
    torch.manual_seed(0)
    teacher, student = build_model("vgg13", width=0.25), build_model("vgg8", width=0.125)
    res = distill(student, teacher, toy_cifar, cfg, method=method, progress=False)
    assert res.config["teacher_outputs"] == "online teacher"
    col = f"train_loss_{method}"
    assert col in res.history.columns and "train_loss_ce" in res.history.columns
    assert res.history[col].notna().all() and all(math.isfinite(v) for v in res.history[col])
    assert (res.config["extra_parameters"] == 0) == (method == "nst")
