from __future__ import annotations

import math

import pytest
import torch

from kd_utils import build_model
from kd_utils.feature_kd import FeatureHooks, capture, layer_names, pre_relu_layers
from kd_utils.train_kd import StepContext


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


def test_clone_keeps_a_batchnorm_output_that_the_inplace_relu_overwrites():
    m = build_model("vgg8", width=0.125).eval()   # stage2 = conv, BatchNorm, ReLU(inplace=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        bn_out = m.stage2[1](m.stage2[0](m.pool(m.stage1(x))))   # the BatchNorm's output, recomputed
    assert (bn_out < 0).any()
    _, plain = capture(m, x, ["stage2.1"])
    torch.testing.assert_close(plain["stage2.1"], bn_out.clamp(min=0))   # the ReLU overwrote the stored output
    with FeatureHooks(m, ["stage2.1", "stage3"], clone=True) as hooks:
        m(x)
        cloned = hooks.pop()
    torch.testing.assert_close(cloned["stage2.1"], bn_out)
    # full=False stops after the last layer with the same copies; hooks are removed on the early exit too
    none, part = capture(m, x, ["stage2.1", "stage3"], full=False, clone=True)
    assert none is None and all(torch.equal(part[k], cloned[k]) for k in cloned)
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    # the copy keeps the autograd link: gradients reach the BatchNorm and the layers below it
    _, feats = capture(m, x, ["stage2.1"], clone=True)
    feats["stage2.1"].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n in ("stage1", "stage2") for p in getattr(m, n).parameters())
    assert all(p.grad is None for n in ("stage3", "classifier") for p in getattr(m, n).parameters())


def test_pre_relu_layers_name_each_layers_last_batchnorm_or_say_why_not():
    m, t = build_model("vgg8", width=0.125), build_model("vgg13", width=0.25)
    assert pre_relu_layers(m, ["stage2", "stage5"]) == ["stage2.1", "stage5.1"]  # one conv-BN-ReLU per stage
    assert pre_relu_layers(t, ["stage3", "stage3.1"]) == ["stage3.4", "stage3.1"]  # the last BN; a BN is itself
    with pytest.raises(ValueError, match=r"VGG has no layer 'nope'; known layers: stage1"):
        pre_relu_layers(m, ["nope"])
    with pytest.raises(ValueError, match=r"layer 'stage3.0' of VGG holds no BatchNorm"):
        pre_relu_layers(m, ["stage3", "stage3.0"])


# ------------------------------------------------------------- the methods ----
from kd_utils.config import TrainConfig  # noqa: E402
from kd_utils.experiments import distill  # noqa: E402
from kd_utils.feature_kd import (AttentionTransfer, CosineMatching, FitNets, FitNetsTwoStage, HintStage, PKT,  # noqa: E402
                                 attention_loss, attention_map, cosine_loss, hint_loss, linear_cka, pkt_loss)


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg11", width=0.25).eval()


def test_hint_loss_is_elementwise_mse():
    a, b = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    assert hint_loss(a, b).item() == pytest.approx(float(((a - b) ** 2).sum() / a.numel()), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(3, 4, 5, 5\).*\(3, 2, 5, 5\)"):
        hint_loss(a, b[:, :2])


def test_attention_against_the_formula():
    fs, ft = torch.randn(2, 3, 4, 4), torch.randn(2, 7, 4, 4)
    def at(f):  # sum of squares over channels / C, flattened, unit L2 norm per sample (written out)
        q = [[sum(f[n, c, i, j] ** 2 for c in range(f.shape[1])) / f.shape[1] for i in range(4) for j in range(4)]
             for n in range(f.shape[0])]
        q = torch.tensor(q)
        return q / q.norm(dim=1, keepdim=True)
    torch.testing.assert_close(attention_map(fs), at(fs))
    expected = ((at(fs) - at(ft)) ** 2).mean()
    torch.testing.assert_close(attention_loss([fs], [ft]), expected)
    assert attention_loss([fs, fs], [ft, ft]).item() == pytest.approx(2 * expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"equal spatial sizes.*\(2, 3, 4, 4\).*\(2, 7, 2, 2\)"):
        attention_loss([fs], [ft[:, :, :2, :2]])


def test_cosine_and_pkt_against_independent_computations():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    cos = [float(s[i] @ t[i, :5] / (s[i].norm() * t[i, :5].norm())) for i in range(6)]
    assert cosine_loss(s, t[:, :5]).item() == pytest.approx(sum(1 - c for c in cos) / 6, rel=1e-5)
    with pytest.raises(ValueError, match="project the student"):
        cosine_loss(s, t)

    def cond(v):  # P(j|i) from the cosine kernel (1 + cos) / 2, loops only
        n = len(v)
        k = [[(1 + float(v[i] @ v[j] / (v[i].norm() * v[j].norm()))) / 2 for j in range(n)] for i in range(n)]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]
    ps, pt = cond(s), cond(t)
    expected = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(6) for j in range(6)) / 36
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-4)
    assert pkt_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_linear_cka_matches_the_feature_space_formula_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 30, generator=g, dtype=torch.float64), torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = y + x[:, :12]  # related representations
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = float((yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    assert linear_cka(x @ q * 3.0 + 1.0, y) == pytest.approx(expected, rel=1e-9)  # rotation, scale, shift
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x.reshape(40, 5, 6), y) == pytest.approx(expected, rel=1e-9)  # flattened per sample


def test_capture_can_stop_after_the_last_hint_with_the_same_features():
    _, t = _pair()
    x = torch.randn(3, 3, 32, 32)
    out, full = capture(t, x, ["stage2", "stage3"])
    none, part = capture(t, x, ["stage2", "stage3"], full=False)
    assert none is None and out.shape == (3, 10)
    for k in full:
        torch.testing.assert_close(part[k], full[k])


@pytest.mark.parametrize("cls,kw,term", [(FitNets, {}, "loss_hint"), (FitNets, {"alpha": 0.9}, "loss_hint"),
                                         (AttentionTransfer, {}, "loss_at"), (AttentionTransfer, {"alpha": 0.9}, "loss_at"),
                                         (CosineMatching, {}, "loss_cos"), (PKT, {"alpha": 0.9}, "loss_pkt")])
def test_gradients_reach_student_and_adapters_never_the_teacher(cls, kw, term):
    s, t = _pair()
    t_state = {k: v.clone() for k, v in t.state_dict().items()}
    d = cls(s, t, **kw).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits, losses = d(x, y)
    assert logits.shape == (8, 10) and term in losses
    assert ("loss_kd" in losses) == ("alpha" in kw) and "loss_ce" in losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert d.extra_parameters == sum(p.numel() for p in d.adapters.parameters())
    assert {id(p) for p in d.adapters.parameters()} <= {id(p) for p in d.trainable_parameters()}
    assert not t.training and all(torch.equal(v, t.state_dict()[k]) for k, v in t_state.items())


def test_feature_losses_equal_the_hand_written_ones_on_the_hooked_features():
    s, t = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    s.eval()
    fit_d = FitNets(s, t, beta=2.0)
    _, losses = fit_d(x, y)
    _, fs = capture(s, x, ["stage3"])
    _, ft = capture(t, x, ["stage3"])
    expected = 2.0 * ((fit_d.adapters[0](fs["stage3"]) - ft["stage3"]) ** 2).mean()
    torch.testing.assert_close(losses["loss_hint"], expected)
    at_d = AttentionTransfer(s, t, beta=3.0)
    _, losses = at_d(x, y)
    _, fs = capture(s, x, [f"stage{i}" for i in range(1, 5)])
    _, ft = capture(t, x, [f"stage{i}" for i in range(1, 5)])
    expected = 3.0 * sum(((attention_map(fs[k]) - attention_map(ft[k])) ** 2).mean() for k in fs)
    torch.testing.assert_close(losses["loss_at"], expected)


def test_reference_settings_of_fitnets_at_and_pkt():
    s, t = _pair()
    s.eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    # FitNets with RepDistiller's 1x1 regressor: s_C * t_C weights plus BatchNorm's 2 * t_C
    one = FitNets(s, t, beta=2.0, regressor="conv1x1")
    (s_c, t_c) = (capture(s, x, ["stage3"])[1]["stage3"].shape[1], capture(t, x, ["stage3"])[1]["stage3"].shape[1])
    assert one.extra_parameters == s_c * t_c + 2 * t_c
    assert FitNets(s, t).extra_parameters == 9 * s_c * t_c + 2 * t_c
    assert one.describe()["regressor"] == "conv1x1" and "regressor" not in FitNets(s, t).describe()
    _, losses = one(x, y)
    _, fs = capture(s, x, ["stage3"])
    _, ft = capture(t, x, ["stage3"])
    conv = one.adapters[0][0]
    assert conv.kernel_size == (1, 1)
    expected = 2.0 * ((one.adapters[0](fs["stage3"]) - ft["stage3"]) ** 2).mean()
    torch.testing.assert_close(losses["loss_hint"], expected)
    with pytest.raises(ValueError, match=r"regressor must be one of \['conv1x1', 'conv3x3'\], got 'conv5x5'"):
        FitNets(s, t, regressor="conv5x5")
    # attention transfer on the references' blocks: stages 2-5 (stage 5 at 2x2)
    layers = AttentionTransfer.REFERENCE_LAYERS
    at_d = AttentionTransfer(s, t, beta=1.0, student_layers=layers, teacher_layers=layers)
    _, losses = at_d(x, y)
    _, fs = capture(s, x, list(layers))
    _, ft = capture(t, x, list(layers))
    expected = 0.0
    for k in layers:  # written out: normalised channel mean of squares, mean squared difference
        a = (fs[k] ** 2).mean(1).flatten(1)
        b = (ft[k] ** 2).mean(1).flatten(1)
        expected += ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).mean()
    torch.testing.assert_close(losses["loss_at"], expected)
    # PKT at the reference's batch strength: the loss times N / reference_batch
    plain, scaled = PKT(s, t, beta=1.0), PKT(s, t, beta=1.0, reference_batch=3)
    torch.testing.assert_close(scaled(x, y)[1]["loss_pkt"], plain(x, y)[1]["loss_pkt"] * 6 / 3)
    with pytest.raises(ValueError, match="reference_batch must be None or an int >= 1, got 0"):
        PKT(s, t, reference_batch=0)


def test_pooled_methods_read_cached_teacher_outputs_exactly_like_the_online_teacher():
    s, t = _pair()
    s.eval()
    x, y = torch.randn(5, 3, 32, 32), torch.randint(0, 10, (5,))
    t_out, feats = capture(t, x, ["stage5"])
    for cls in (PKT, CosineMatching):
        d = cls(s, t, alpha=0.5)
        _, online = d(x, y)
        _, cached = d(x, y, StepContext(teacher={"logits": t_out, "embedding": feats["stage5"].mean((2, 3))}))
        for k in online:
            torch.testing.assert_close(cached[k], online[k])


def test_unmatched_shapes_and_unknown_layers_give_clear_errors():
    s, t = _pair()
    with pytest.raises(ValueError, match=r"'stage3' has shape \(32, 8, 8\).*'stage4' has shape \(128, 4, 4\)"):
        FitNets(s, t, teacher_layers=["stage4"])
    with pytest.raises(ValueError, match=r"'stage2' has shape \(16, 16, 16\).*'stage3' has shape \(64, 8, 8\)"):
        AttentionTransfer(s, t, student_layers=["stage2"], teacher_layers=["stage3"])
    with pytest.raises(ValueError, match=r"no layer\(s\) \['block9'\]; known layers: stage1"):
        FitNets(s, t, student_layers=["block9"])
    with pytest.raises(ValueError, match="as many student layers"):
        AttentionTransfer(s, t, student_layers=["stage1"])
    with pytest.raises(ValueError, match="needs the teacher"):
        PKT(s, None)
    with pytest.raises(ValueError, match="beta"):
        PKT(s, t, beta=-1.0)


def test_hint_stage_trains_only_the_guided_layers_and_the_regressor():
    s, t = _pair()
    d = HintStage(s, t).train()
    _, losses = d(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"loss_hint"}
    losses["loss_hint"].backward()
    assert all(p.grad is not None for n in ("stage1", "stage2", "stage3") for p in getattr(s, n).parameters())
    assert all(p.grad is None for n in ("stage4", "stage5", "classifier") for p in getattr(s, n).parameters())


def test_two_stage_fitnets_describes_its_hint_stage_and_caches_the_teacher_logits():
    s, t = _pair()
    d = FitNetsTwoStage(s, t, hint_epochs=2, alpha=0.0)
    assert list(d.describe().items()) == [("method", "FitNetsTwoStage"), ("temperature", 4.0), ("alpha", 0.0),
                                          ("hint_epochs", 2), ("hint_beta", 1.0), ("extra_parameters", 0)]
    assert d.logits_only and d.stage1 is None and d.hint_epochs == 2
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="hint_epochs must be an int >= 1"):
            FitNetsTwoStage(s, t, hint_epochs=bad)


def test_distill_serves_pooled_methods_from_the_plan_cache_and_runs_the_hint_stage(toy_cifar):
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, augment="crop_flip", seed=0, device="cpu",
                      precision="fp32")
    s, t = _pair()
    res = distill(s, t, toy_cifar, cfg, method="pkt", alpha=0.9, progress=False)
    assert res.config["teacher_outputs"].startswith("plan cache built")
    assert set(res.history.columns) >= {"train_loss_pkt", "train_loss_kd", "train_loss_ce"}
    s2, _ = _pair()
    online = distill(s2, t, toy_cifar, cfg, method="pkt", alpha=0.9, cache=False, progress=False)
    assert online.config["teacher_outputs"] == "online teacher"
    for a, b in zip(s.parameters(), s2.parameters()):  # fp16 cache vs fp32 teacher: close, not bit-equal
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    s3, _ = _pair()
    two = distill(s3, t, toy_cifar, cfg, method="fitnets_two_stage", hint_epochs=1, progress=False)
    assert two.config["extra_parameters"] > 0 and two.config["stage1_time_s"] > 0
    assert two.config["teacher_outputs"].startswith("plan cache")
    with pytest.raises(ValueError, match="cannot be\\s+cached"):
        distill(s3, t, toy_cifar, cfg, method="at", cache=True, progress=False)


def test_cka_matrix_and_pca_and_plots(tmp_path):
    from kd_utils.analysis import pca_2d
    from kd_utils.feature_kd import centred_grams, cka_matrix, collect_features
    from kd_utils.plots import plot_attention_maps, plot_embedding_2d
    s, t = _pair()
    x = torch.randn(30, 3, 32, 32)
    gs, gt = centred_grams(s, x, ["stage1", "stage3"]), centred_grams(t, x, ["stage2", "stage3", "stage5"])
    m = cka_matrix(gs, gs)
    torch.testing.assert_close(m.diagonal(), torch.ones(2, dtype=m.dtype))   # a model is identical to itself
    torch.testing.assert_close(m, m.T)
    fs, ft = collect_features(s, x, ["stage3"]), collect_features(t, x, ["stage5"])
    assert cka_matrix(gs, gt).shape == (2, 3)
    assert cka_matrix(gs, gt)[1, 2].item() == pytest.approx(linear_cka(fs["stage3"], ft["stage5"]), rel=1e-6)
    f = collect_features(t, x, ["stage5"], batch_size=7, pool=True)["stage5"]
    _, direct = capture(t, x, ["stage5"])
    torch.testing.assert_close(f, direct["stage5"].mean((2, 3)))
    z = torch.randn(50, 6) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    p = pca_2d(z)
    assert p.shape == (50, 2) and p[:, 0].var() > p[:, 1].var() > 10 * z[:, 2:].var(0).max()
    fig = plot_attention_maps(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8),
                              {"teacher": torch.rand(2, 8, 8), "student": torch.rand(2, 8, 8)}, path=tmp_path / "at.png")
    assert len(fig.axes) == 6 and (tmp_path / "at.png").exists()
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        plot_attention_maps(torch.zeros(2, 3, 32, 32), {"t": torch.rand(3, 8, 8)})
    fig = plot_embedding_2d({"a": p, "b": p}, torch.arange(50) % 3, ["x", "y", "z"], path=tmp_path / "e.png")
    assert len(fig.axes) == 2


def test_ce_weight_gives_the_references_ce_plus_kd_plus_feature_sum():
    """RepDistiller adds KD to a feature method as CE + KD + beta * feature (-r 1 -a 1): ce_weight=1 with
    alpha=1, checked against each term computed by hand; the default keeps the convex 1 - alpha."""
    import torch.nn.functional as F
    s, t = _pair()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with torch.no_grad():
        t_logits, s_logits = t.eval()(x), s.eval()(x)
        T = 4.0
        kl = (F.softmax(t_logits / T, 1) * (F.log_softmax(t_logits / T, 1) - F.log_softmax(s_logits / T, 1))).sum(1).mean()
        ce = F.cross_entropy(s_logits, y)
    for kw, want_ce, want_kd in [({"alpha": 1.0, "ce_weight": 1.0}, ce, kl * T ** 2),
                                 ({"alpha": 0.9}, 0.1 * ce, 0.9 * kl * T ** 2),
                                 ({"alpha": 0.5, "ce_weight": 2.0}, 2.0 * ce, 0.5 * kl * T ** 2)]:
        d = AttentionTransfer(s, t, temperature=T, **kw).eval()
        with torch.no_grad():
            _, losses = d(x, y)
        torch.testing.assert_close(losses["loss_ce"], want_ce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses["loss_kd"], want_kd, rtol=1e-5, atol=1e-6)
        assert d.describe()["ce_weight"] == pytest.approx(want_ce.item() / ce.item())
    assert "loss_ce" not in AttentionTransfer(s, t, alpha=1.0)(x, y)[1]   # alpha 1 alone: no CE, as before
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match=r"ce_weight must be a finite number >= 0 or None \(None: 1 - alpha\), got"):
            AttentionTransfer(s, t, alpha=1.0, ce_weight=bad)
