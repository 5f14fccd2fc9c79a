"""ReviewKD (kd_utils.methods.reviewkd) and FT (kd_utils.methods.ft) against hand-written computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kd_utils.methods.ft  # noqa: F401  (registers "ft")
import kd_utils.methods.reviewkd  # noqa: F401  (registers "reviewkd")
from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.methods.ft import FactorTransfer, Paraphraser, ParaphrasedTeacher, ft_factor, ft_loss
from kd_utils.methods.reviewkd import ABF, ReviewKD, hcl_loss
from kd_utils.train_kd import DISTILLERS, StepContext

CFG = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg13", width=0.25).eval()


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return all(torch.equal(v, b[k]) for k, v in a.items())


# ------------------------------------------------------------------- by hand ----
def _block_means(f, k):
    """Adaptive average pooling to k x k for sizes divisible by k, with explicit loops."""
    n, c, h, w = f.shape
    bh, bw = h // k, w // k
    out = torch.zeros(n, c, k, k, dtype=f.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = f[:, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].sum((2, 3)) / (bh * bw)
    return out


def _mse(a, b):
    return float(((a - b) ** 2).sum()) / a.numel()


def _hcl_by_hand(fs, ft):
    """Full-size MSE weight 1, then each pooled level k in (4, 2, 1) smaller than H with weights 1/2, 1/4, 1/8
    (halving per level used), divided by the sum of the weights used."""
    h = fs.shape[2]
    used = [k for k in (4, 2, 1) if k < h]
    weights = [0.5 ** (i + 1) for i in range(len(used))]
    num = _mse(fs, ft) + sum(w * _mse(_block_means(fs, k), _block_means(ft, k)) for w, k in zip(weights, used))
    return num / (1 + sum(weights))


def _vgg_stage_features(model, x):
    """Per stage, by running the stages by hand: (pre-ReLU output of the last BN, post-ReLU output)."""
    pre, post, h = [], [], x
    for i, stage in enumerate(model.stages):
        p = stage[:-1](h)          # conv-BN-ReLU units up to the last BatchNorm
        q = F.relu(p)
        pre.append(p.clone())
        post.append(q)
        h = model.pool(q) if i < 4 else q
    return pre, post


def _nearest_up(f, factor):
    return f.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


# ----------------------------------------------------------------- ReviewKD ----
def test_hcl_against_hand_written_pooled_levels():
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(2, 3, s, s, generator=g, dtype=torch.float64),
              torch.randn(2, 3, s, s, generator=g, dtype=torch.float64)) for s in (8, 4, 2, 1)]
    for fs, ft in pairs:
        assert hcl_loss([fs], [ft]).item() == pytest.approx(_hcl_by_hand(fs, ft), rel=1e-6)
    # the weights written out for 8x8 (levels 4, 2, 1) and 2x2 (level 1 only); 1x1 is the plain MSE
    fs, ft = pairs[0]
    explicit = (_mse(fs, ft) + _mse(_block_means(fs, 4), _block_means(ft, 4)) / 2
                + _mse(_block_means(fs, 2), _block_means(ft, 2)) / 4 + _mse(_block_means(fs, 1), _block_means(ft, 1)) / 8)
    assert hcl_loss([fs], [ft]).item() == pytest.approx(explicit / 1.875, rel=1e-6)
    fs, ft = pairs[2]
    assert hcl_loss([fs], [ft]).item() == pytest.approx(
        (_mse(fs, ft) + _mse(_block_means(fs, 1), _block_means(ft, 1)) / 2) / 1.5, rel=1e-6)
    assert hcl_loss(*zip(*pairs[3:])).item() == pytest.approx(_mse(*pairs[3]), rel=1e-6)
    total = sum(_hcl_by_hand(a, b) for a, b in pairs)
    assert hcl_loss([a for a, _ in pairs], [b for _, b in pairs]).item() == pytest.approx(total, rel=1e-6)
    with pytest.raises(ValueError, match=r"equal shape.*\(2, 3, 8, 8\).*\(2, 3, 4, 4\)"):
        hcl_loss([pairs[0][0]], [pairs[1][1]])
    with pytest.raises(ValueError, match="as many student as teacher"):
        hcl_loss([pairs[0][0]], [])


def test_abf_fuses_with_two_sigmoid_attention_maps_and_resizes():
    torch.manual_seed(0)
    abf = ABF(3, 4, 5, fuse=True).eval()
    x, res = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out, fused = abf(x, res, out_size=(8, 8))
    assert out.shape == (2, 5, 8, 8) and fused.shape == (2, 4, 8, 8)
    # by hand: z_k = sigmoid(sum_c W[k, c] [x_mid; up(res)]_c + b_k) per position, fused = x_mid z_0 + up(res) z_1
    x_mid, up = abf.conv1(x), _nearest_up(res, 2)
    w, b = abf.att_conv[0].weight[:, :, 0, 0], abf.att_conv[0].bias
    z = torch.sigmoid(torch.einsum("kc,nchw->nkhw", w, torch.cat([x_mid, up], 1)) + b.view(1, 2, 1, 1))
    expected = _nearest_up(x_mid * z[:, :1] + up * z[:, 1:], 2)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(out, abf.conv2(expected))
    assert ((z > 0) & (z < 1)).all()
    # the maps are independent sigmoids, not a softmax: constant logits 3 give weights ~0.95 each
    with torch.no_grad():
        abf.att_conv[0].weight.zero_()
        abf.att_conv[0].bias.copy_(torch.tensor([3.0, -1.0]))
    _, fused = abf(x, res)
    torch.testing.assert_close(fused, x_mid * torch.sigmoid(torch.tensor(3.0)) + up * torch.sigmoid(torch.tensor(-1.0)))
    z = abf.attention(x_mid, up)
    assert z.shape == (2, 2, 4, 4) and not torch.allclose(z.sum(1), torch.ones(2, 4, 4))
    # the deepest level does not fuse: no attention, the residual is not used
    deep = ABF(3, 4, 5, fuse=False).eval()
    assert deep.att_conv is None and not deep.fuse
    out, fused = deep(x)
    torch.testing.assert_close(fused, deep.conv1(x))
    torch.testing.assert_close(out, deep.conv2(deep.conv1(x)))
    with pytest.raises(ValueError, match="does not fuse"):
        deep.attention(x_mid, up)
    with pytest.raises(ValueError, match="needs the residual"):
        abf(x)
    with pytest.raises(ValueError, match="mid_channels must be an int >= 1, got 0"):
        ABF(3, 0, 5, fuse=True)


def test_reviewkd_levels_and_loss_equal_the_hand_computed_review():
    s, t = _pair()
    s.eval()
    d = ReviewKD(s, t, beta=2.0).eval()
    assert d.s_layers == ("stage2", "stage3", "stage4", "stage5")
    assert d.t_layers == ("stage2.4", "stage3.4", "stage4.4", "stage5.4")   # vgg13: conv-BN-ReLU-conv-BN-ReLU
    assert d.mid_channels == min(512, s.feature_channels[-1])
    assert [a.fuse for a in d.adapters] == [True, True, True, True, False]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d(x, y, StepContext(epoch=20))   # warm-up complete: weight beta
    with torch.no_grad():
        s_pre, s_post = _vgg_stage_features(s, x)
        t_pre, t_post = _vgg_stage_features(t, x)
        s_lv = s_post[1:] + [s_post[-1].mean((2, 3), keepdim=True)]   # student: post-ReLU, + pooled
        t_lv = t_pre[1:] + [t_post[-1].mean((2, 3), keepdim=True)]    # teacher: pre-ReLU, + pooled (post-ReLU)
        # review from deep to shallow, each ABF fed the residual of the level below
        outs = [None] * 5
        outs[4], res = d.adapters[4](s_lv[4])
        for i in (3, 2, 1, 0):
            outs[i], res = d.adapters[i](s_lv[i], res, out_size=t_lv[i].shape[-2:])
        expected = 2.0 * sum(_hcl_by_hand(a.double(), b.double()) for a, b in zip(outs, t_lv))
    assert set(losses) == {"loss_ce", "loss_reviewkd"}
    assert losses["loss_reviewkd"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(s(x), y).item(), rel=1e-6)
    # the review really mixes levels: changing only the deepest student level changes the shallowest output
    lv2 = [f.clone() for f in s_lv]
    lv2[4] = lv2[4] + 1.0
    with torch.no_grad():
        assert not torch.allclose(d.review(lv2)[0], d.review(s_lv)[0])


def test_reviewkd_warmup_weight_follows_the_epoch():
    s, t = _pair()
    s.eval()
    d = ReviewKD(s, t, beta=5.0).eval()
    assert d.warmup_epochs == 20
    for epoch, w in [(1, 0.25), (4, 1.0), (10, 2.5), (20, 5.0), (21, 5.0), (100, 5.0)]:
        assert d.loss_weight(StepContext(epoch=epoch)) == pytest.approx(w)
    assert d.loss_weight(None) == pytest.approx(0.25)   # no context: epoch 1
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,))
    with torch.no_grad():
        l1 = d(x, y, StepContext(epoch=1))[1]["loss_reviewkd"]
        l20 = d(x, y, StepContext(epoch=20))[1]["loss_reviewkd"]
        l_none = d(x, y)[1]["loss_reviewkd"]
    assert l20.item() == pytest.approx(20 * l1.item(), rel=1e-5)
    torch.testing.assert_close(l_none, l1)
    no_warm = ReviewKD(s, t, beta=5.0, warmup_epochs=0)
    assert no_warm.loss_weight(StepContext(epoch=1)) == 5.0
    short = ReviewKD(s, t, beta=1.0, warmup_epochs=3)
    assert [short.loss_weight(StepContext(epoch=e)) for e in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])


def _abf_params(c_in, mid, c_out, fuse):
    return c_in * mid + 2 * mid + mid * c_out * 9 + 2 * c_out + (2 * mid * 2 + 2 if fuse else 0)


def _paraphraser_params(c, k):
    conv = lambda a, b: a * b * 9 + b  # noqa: E731  3x3 (transposed) conv with bias
    return conv(c, c) + conv(c, k) + conv(k, k) + conv(k, k) + conv(k, c) + conv(c, c)


def _translator_params(c, k):
    return (c * c * 9 + c + 2 * c) + (c * k * 9 + k + 2 * k) + (k * k * 9 + k + 2 * k)


@pytest.mark.parametrize("widths", [(0.25, 0.125), (0.5, 0.25)])
def test_extra_parameters_are_counted_exactly(widths):
    t, s = build_model("vgg13", width=widths[0]).eval(), build_model("vgg8", width=widths[1])
    cs, ct = s.feature_channels, t.feature_channels
    d = ReviewKD(s, t)
    s_lv, t_lv = cs[1:] + [cs[-1]], ct[1:] + [ct[-1]]
    mid = min(512, cs[-1])
    expected = sum(_abf_params(a, mid, b, i < 4) for i, (a, b) in enumerate(zip(s_lv, t_lv)))
    assert d.extra_parameters == expected == sum(p.numel() for p in d.adapters.parameters())
    assert d.describe()["extra_parameters"] == expected
    f = FactorTransfer(s, t)
    k = int(ct[-1] * 0.5)
    assert f.paraphraser.factor_channels == k
    assert f.extra_parameters == _paraphraser_params(ct[-1], k) + _translator_params(cs[-1], k)
    assert f.describe()["paraphraser_parameters"] == _paraphraser_params(ct[-1], k)
    assert f.describe()["translator_parameters"] == _translator_params(cs[-1], k)


# ----------------------------------------------------------------------- FT ----
def test_ft_factor_normalisation_and_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)

    def att(f):  # per sample: channel mean of squares at each position, divided by its L2 norm (loops)
        rows = []
        for n in range(f.shape[0]):
            v = [sum(float(f[n, c, i, j]) ** 2 for c in range(f.shape[1])) / f.shape[1]
                 for i in range(f.shape[2]) for j in range(f.shape[3])]
            norm = math.sqrt(sum(q * q for q in v))
            rows.append([q / norm for q in v])
        return rows

    fa, fb = att(a), att(b)
    torch.testing.assert_close(ft_factor(a), torch.tensor(fa, dtype=torch.float32))
    l1 = sum(abs(p - q) for ra, rb in zip(fa, fb) for p, q in zip(ra, rb)) / 8
    assert ft_loss(a, b).item() == pytest.approx(l1, rel=1e-5)
    l2 = sum((p - q) ** 2 for ra, rb in zip(fa, fb) for p, q in zip(ra, rb)) / 8
    assert ft_loss(a, b, p2=2).item() == pytest.approx(l2, rel=1e-5)
    for row in ft_factor(b):
        assert row.norm().item() == pytest.approx(1.0, rel=1e-6)
    # the paper's normalisation: the whole factor flattened, unit L2 norm
    c = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    flat = lambda f: [[float(v) / math.sqrt(sum(float(u) ** 2 for u in f[n].flatten())) for v in f[n].flatten()]  # noqa: E731
                      for n in range(len(f))]
    expected = sum(abs(p - q) for ra, rb in zip(flat(a), flat(c)) for p, q in zip(ra, rb)) / 24
    assert ft_loss(a, c, mode="flat").item() == pytest.approx(expected, rel=1e-5)
    # a larger map is average-pooled to the smaller's size first
    big = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    pooled = _block_means(big, 2)
    fp = att(pooled)
    assert ft_loss(big, a).item() == pytest.approx(
        sum(abs(p - q) for ra, rb in zip(fp, fa) for p, q in zip(ra, rb)) / 8, rel=1e-5)
    with pytest.raises(ValueError, match="unknown factor_norm 'x'; allowed: attention, flat"):
        ft_factor(a, mode="x")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ft_loss(a.flatten(1), b)
    with pytest.raises(ValueError, match="equal factor channels"):
        ft_loss(a, b, mode="flat")


def test_ft_loss_on_the_models_features_and_the_paraphraser_shapes():
    s, t = _pair()
    s.eval()
    d = FactorTransfer(s, t, beta=3.0).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d(x, y)
    assert set(losses) == {"loss_ce", "loss_ft"}
    with torch.no_grad():
        _, s_post = _vgg_stage_features(s, x)
        _, t_post = _vgg_stage_features(t, x)
        fs, ft = d.translator(s_post[-1]), d.paraphraser.encoder(t_post[-1])
        a = fs.pow(2).mean(1).flatten(1)
        b = ft.pow(2).mean(1).flatten(1)
        expected = 3.0 * (a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).abs().mean()
    assert losses["loss_ft"].item() == pytest.approx(expected.item(), rel=1e-5)
    c = t.feature_channels[-1]
    factor, rec = d.paraphraser(t_post[-1])
    assert factor.shape == (4, c // 2, 2, 2) and rec.shape == t_post[-1].shape
    # the paraphrased teacher: the teacher's head on the reconstruction
    with torch.no_grad():
        wrapped = ParaphrasedTeacher(d.paraphraser, t, "stage5")
        logits, feat, rec = wrapped.run(x)
        torch.testing.assert_close(feat, t_post[-1])
        torch.testing.assert_close(logits, t.classifier(rec.mean((2, 3))))
    assert [n for n, _ in wrapped.named_parameters()] == [f"paraphraser.{n}" for n, _ in d.paraphraser.named_parameters()]


def test_ft_stage_one_trains_only_the_paraphraser(toy_cifar):
    s, t = _pair()
    d = FactorTransfer(s, t, init_epochs=1)
    before_s, before_t = _state(s), _state(t)
    before_tr, before_p = _state(d.translator), _state(d.paraphraser)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        rec_before = ParaphrasedTeacher(d.paraphraser, t, "stage5").run(x)
    d.prepare(toy_cifar, CFG, progress=False)
    assert _same(before_s, _state(s)) and _same(before_t, _state(t)) and _same(before_tr, _state(d.translator))
    assert not _same(before_p, _state(d.paraphraser))
    assert not t.training and all(not p.requires_grad for p in d.paraphraser.parameters())
    hist = d.stage1.history
    assert len(hist) == 1 and "train_loss_rec" in hist.columns and math.isfinite(hist["train_loss_rec"].iloc[0])
    with torch.no_grad():
        _, f, rec_after = ParaphrasedTeacher(d.paraphraser, t, "stage5").run(x)
    assert F.mse_loss(rec_after, f) < F.mse_loss(rec_before[2], rec_before[1])   # it learnt to reconstruct
    # stage 2 optimises the student and the translator, never the (frozen) paraphraser
    trainable = {id(p) for p in d.trainable_parameters()}
    assert {id(p) for p in d.translator.parameters()} <= trainable
    assert not {id(p) for p in d.paraphraser.parameters()} & trainable
    d.train()
    assert s.training and d.translator.training and not d.paraphraser.training and not t.training


@pytest.mark.parametrize("cls,kw,term", [(ReviewKD, {}, "loss_reviewkd"), (ReviewKD, {"alpha": 0.9}, "loss_reviewkd"),
                                         (FactorTransfer, {}, "loss_ft"), (FactorTransfer, {"alpha": 0.9}, "loss_ft")])
def test_gradients_reach_student_and_adapters_never_the_teacher(cls, kw, term):
    s, t = _pair()
    t_state = _state(t)
    d = cls(s, t, **kw).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits, losses = d(x, y, StepContext(epoch=3, epochs=5))
    assert logits.shape == (8, 10) and term in losses and ("loss_kd" in losses) == ("alpha" in kw)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses[term].backward(retain_graph=True)   # the distillation term alone reaches the student's layers up to the deepest level
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.stage5.parameters())
    assert all(p.grad is None for p in t.parameters())
    trained = d.adapters if cls is ReviewKD else d.translator
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    if cls is FactorTransfer:
        assert all(p.grad is None for p in d.paraphraser.parameters())
    sum(v for k, v in losses.items() if k != term).backward()
    assert all(p.grad is not None for p in s.parameters())
    assert {id(p) for p in trained.parameters()} <= {id(p) for p in d.trainable_parameters()}
    assert not t.training and _same(t_state, _state(t))


def test_bad_arguments_and_layers_give_clear_errors():
    s, t = _pair()
    with pytest.raises(ValueError, match="warmup_epochs must be an int >= 0.*-1"):
        ReviewKD(s, t, warmup_epochs=-1)
    with pytest.raises(ValueError, match="warmup_epochs.*2.5"):
        ReviewKD(s, t, warmup_epochs=2.5)
    with pytest.raises(ValueError, match="mid_channels must be an int >= 1 or None, got 0"):
        ReviewKD(s, t, mid_channels=0)
    with pytest.raises(ValueError, match=r"no layer\(s\) \['stage9'\]; known layers: stage1"):
        ReviewKD(s, t, pooled_layer="stage9")
    with pytest.raises(ValueError, match=r"no layer\(s\) \['block2'\]; known layers: stage1"):
        ReviewKD(s, t, student_layers=["block2"], teacher_layers=["stage2"])
    with pytest.raises(ValueError,
                       match="teacher_preact: layer 'stage2.0' of VGG holds no BatchNorm.*teacher_preact=False"):
        ReviewKD(s, t, student_layers=["stage2"], teacher_layers=["stage2.0"])
    with pytest.raises(ValueError, match=r"'classifier' has shape \(10,\).*\(C, H, W\)"):
        ReviewKD(s, t, student_layers=["classifier"], teacher_layers=["stage2"], teacher_preact=False)
    with pytest.raises(ValueError, match="as many student layers"):
        ReviewKD(s, t, student_layers=["stage2"])
    with pytest.raises(ValueError, match="needs the teacher"):
        ReviewKD(s, None)
    with pytest.raises(ValueError, match="beta"):
        ReviewKD(s, t, beta=-1.0)
    d = ReviewKD(s, t, student_layers=["stage3", "stage4"], teacher_layers=["stage3.1", "stage4.4"], mid_channels=8,
                 pooled_layer=None)
    assert d.t_layers == ("stage3.1", "stage4.4") and len(d.adapters) == 2 and d.mid_channels == 8

    with pytest.raises(ValueError, match="rate .* must be a finite number > 0, got 0"):
        FactorTransfer(s, t, rate=0)
    with pytest.raises(ValueError, match=r"rate 0.001 leaves int\(128 \* 0.001\) = 0 factor channels"):
        FactorTransfer(s, t, rate=0.001)
    with pytest.raises(ValueError, match="p2 must be a finite number > 0"):
        FactorTransfer(s, t, p2=0)
    with pytest.raises(ValueError, match="unknown factor_norm 'l2'; allowed: attention, flat"):
        FactorTransfer(s, t, factor_norm="l2")
    with pytest.raises(ValueError, match="init_epochs .* must be an int >= 1, got 0"):
        FactorTransfer(s, t, init_epochs=0)
    with pytest.raises(ValueError, match="init_lr must be None"):
        FactorTransfer(s, t, init_lr=-1.0)
    with pytest.raises(ValueError, match=r"'classifier' has shape \(10,\).*\(C, H, W\)"):
        FactorTransfer(s, t, student_layers=["classifier"])
    with pytest.raises(ValueError, match="needs the teacher"):
        FactorTransfer(s, None)
    with pytest.raises(ValueError, match="no layer 'stage7'"):
        ParaphrasedTeacher(Paraphraser(8), t, "stage7")


def test_neither_method_can_use_cached_teacher_outputs(toy_cifar):
    s, t = _pair()
    assert DISTILLERS["reviewkd"] is ReviewKD and DISTILLERS["ft"] is FactorTransfer
    for method in ("reviewkd", "ft"):
        assert not DISTILLERS[method].logits_only and DISTILLERS[method].cached_layer is None
        with pytest.raises(ValueError, match="cannot be\\s+cached"):
            distill(s, t, toy_cifar, CFG, method=method, cache=True, progress=False)


@pytest.mark.parametrize("method,kw,term", [("reviewkd", {}, "loss_reviewkd"), ("ft", {"init_epochs": 1}, "loss_ft")])
def test_distill_smoke(toy_cifar, method, kw, term):
    s, t = _pair()
    t_state = _state(t)
    res = distill(s, t, toy_cifar, CFG, method=method, progress=False, **kw)
    hist = res.history
    assert len(hist) == 1 and {f"train_{term}", "train_loss_ce"} <= set(hist.columns)
    assert all(math.isfinite(float(v)) for v in hist.iloc[0].values)
    assert res.config["teacher_outputs"] == "online teacher"
    assert res.config["extra_parameters"] > 0 and res.config["method"] == DISTILLERS[method].__name__
    if method == "ft":
        assert res.config["stage1_time_s"] > 0 and res.config["init_epochs"] == 1
    assert _same(t_state, _state(t)) and not t.training
