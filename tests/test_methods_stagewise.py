"""AB, FSP (methods with a pre-training stage) and KDSVD: losses against hand-written computations,
what each stage trains, the teacher left alone, clear errors, and 1-epoch smoke runs through ``distill``."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import kd_utils.methods.ab  # noqa: F401  (registers "ab")
import kd_utils.methods.fsp  # noqa: F401  (registers "fsp")
import kd_utils.methods.kdsvd  # noqa: F401  (registers "kdsvd")
from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.feature_kd import capture
from kd_utils.methods.ab import AB, ABStage, ab_criterion, ab_loss
from kd_utils.methods.fsp import FSP, FSPStage, fsp_loss, fsp_matrix
from kd_utils.methods.kdsvd import (KDSVD, align_signs, kdsvd_loss, rbf_correlation, svd_matrix, teacher_vectors,
                                    top_right_singular_vectors)
from kd_utils.train_kd import DISTILLERS, StepContext

CFG = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")


def _pair(seed=0):
    """The suite's test pair: teacher vgg13 w0.25 (channels 16..128), student vgg8 w0.125 (8..64)."""
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg13", width=0.25).eval()


def _matched(seed=0):
    """A width-matched pair (both 16, 32, 64, 128, 128 channels), for FSP and KDSVD's default layout."""
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.25), build_model("vgg13", width=0.25).eval()


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _manual_preacts(model, x):
    """Each stage's last pre-ReLU map (and post-ReLU output), by running the VGG's modules one by one."""
    pre, post = {}, {}
    h = x
    for i in range(1, 6):
        stage = getattr(model, f"stage{i}")
        for j in range(0, len(stage), 3):
            conv, bn = stage[j], stage[j + 1]
            z = bn(conv(h))
            pre[f"stage{i}"] = z.clone()
            h = torch.relu(z)
        post[f"stage{i}"] = h
        if i < 5:
            h = F.max_pool2d(h, 2)
    return pre, post


# ===================================================================== AB ====
def _ab_elementwise(s: torch.Tensor, t: torch.Tensor, m: float) -> float:
    total = 0.0
    for a, b in zip(s.flatten().tolist(), t.flatten().tolist()):
        if b <= 0:  # teacher off: push the student below -m
            total += (a + m) ** 2 if a > -m else 0.0
        else:       # teacher on: push the student above +m
            total += (a - m) ** 2 if a <= m else 0.0
    return total


def test_ab_criterion_against_the_elementwise_cases():
    m = 1.0
    # every case, with the boundaries: s = -m, s = m, t = 0
    s = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 0.3, -0.3])
    t = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert ab_criterion(s, t, m).item() == pytest.approx(_ab_elementwise(s, t, m))
    # spot values: t off & s=-0.5 -> 0.25; t on & s=0.5 -> 0.25; t off & s=-2 -> 0; t on & s=2 -> 0
    assert ab_criterion(torch.tensor([-0.5, 0.5, -2.0, 2.0]), torch.tensor([-1.0, 1.0, -1.0, 1.0])).item() == 0.5
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, generator=g) * 2, torch.randn(2, 3, 4, 4, generator=g)
    for margin in (0.5, 1.0, 2.0):
        assert ab_criterion(s, t, margin).item() == pytest.approx(_ab_elementwise(s, t, margin), rel=1e-5)


def test_ab_loss_weights_layers_as_repdistiller():
    g = torch.Generator().manual_seed(2)
    sources = [torch.randn(3, c, h, h, generator=g) for c, h in ((2, 8), (3, 4), (4, 2))]
    targets = [torch.randn(3, c, h, h, generator=g) for c, h in ((2, 8), (3, 4), (4, 2))]
    # deepest layer weight 1, each shallower one half; each layer's sum / batch * 3 / 1000
    expected = sum(w * _ab_elementwise(s, t, 1.0) for w, s, t in zip((0.25, 0.5, 1.0), sources, targets)) / 3 * 3 / 1000
    assert ab_loss(sources, targets).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="as many student as teacher"):
        ab_loss(sources, targets[:2])
    with pytest.raises(ValueError, match="differ"):
        ab_criterion(sources[0], targets[1])


def test_ab_stage_reads_pre_relu_maps_and_equals_the_hand_computation():
    s, t = _pair()
    stage = ABStage(s, t)
    assert stage.s_layers == ("stage2.1", "stage3.1", "stage4.1", "stage5.1")  # vgg8: one conv-BN-ReLU per stage
    assert stage.t_layers == ("stage2.4", "stage3.4", "stage4.4", "stage5.4")  # vgg13: the second unit's BN
    s.eval(), stage.adapters.eval()
    x = torch.randn(4, 3, 32, 32)
    _, losses = stage(x, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        pre_s, _ = _manual_preacts(s, x)
        pre_t, _ = _manual_preacts(t, x)
        assert (pre_s["stage3"] < 0).any()  # really pre-activations, not the ReLU's output
        conn = [stage.adapters[i](pre_s[f"stage{i + 2}"]) for i in range(4)]
        expected = sum(w * _ab_elementwise(c, pre_t[f"stage{i + 2}"], 1.0)
                       for i, (w, c) in enumerate(zip((1 / 8, 1 / 4, 1 / 2, 1.0), conn))) / 4 * 3 / 1000
    assert set(losses) == {"loss_ab"}
    assert losses["loss_ab"].item() == pytest.approx(expected, rel=1e-4)


def test_ab_stage_gradients_reach_connectors_and_the_layers_below_never_the_teacher_or_classifier():
    s, t = _pair()
    t_state = _snapshot(t)
    stage = ABStage(s, t).train()
    _, losses = stage(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    losses["loss_ab"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.adapters.parameters())
    assert all(p.grad is not None for i in range(1, 6) for p in getattr(s, f"stage{i}").parameters())
    assert all(p.grad is None for p in s.classifier.parameters())
    assert all(p.grad is None for p in t.parameters()) and not t.training and _same(t_state, t.state_dict())
    # with only stage2 and stage3 matched, stage4 and stage5 get nothing
    s2, t2 = _pair(1)
    short = ABStage(s2, t2, student_layers=["stage2.1", "stage3.1"], teacher_layers=["stage2.4", "stage3.4"]).train()
    short(torch.randn(4, 3, 32, 32), None)[1]["loss_ab"].backward()
    assert all(p.grad is not None for n in ("stage1", "stage2", "stage3") for p in getattr(s2, n).parameters())
    assert all(p.grad is None for n in ("stage4", "stage5", "classifier") for p in getattr(s2, n).parameters())


def test_ab_extra_parameters_are_exactly_the_connectors():
    s, t = _pair()
    d = AB(s, t)
    cs, ct = s.feature_channels[1:], t.feature_channels[1:]
    assert d.extra_parameters == sum(a * b + 2 * b for a, b in zip(cs, ct))  # 1x1 conv (no bias) + BN affine
    assert AB(s, t, connector_bias=True).extra_parameters == sum(a * b + 3 * b for a, b in zip(cs, ct))
    # no connector parameter belongs to the main stage: it trains the student alone
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in s.parameters()}
    s2, t2 = _matched()  # equal shapes: identity connectors, as RepDistiller
    assert AB(s2, t2).extra_parameters == 0
    assert AB(s2, t2, identity_when_equal=False).extra_parameters == sum(c * c + 2 * c for c in t2.feature_channels[1:])
    desc = d.describe()
    assert desc["method"] == "AB" and desc["init_epochs"] == 30 and desc["margin"] == 1.0 and desc["alpha"] == 0.0
    assert DISTILLERS["ab"] is AB and AB.family == "ab"


def test_ab_bad_arguments_give_clear_errors():
    s, t = _pair()
    for kw, msg in [({"margin": 0}, "margin must be"), ({"margin": float("nan")}, "margin must be"),
                    ({"init_epochs": -1}, "init_epochs must be"), ({"init_epochs": 1.5}, "init_epochs must be"),
                    ({"init_schedule": "linear"}, "init_schedule must be"), ({"alpha": 1.5}, "alpha must be"),
                    ({"student_layers": ["stage9"], "teacher_layers": ["stage2.4"]}, r"no layer\(s\) \['stage9'\]")]:
        with pytest.raises(ValueError, match=msg):
            AB(s, t, **kw)
    with pytest.raises(ValueError, match="equal H and W"):
        AB(s, t, student_layers=["stage2.1"], teacher_layers=["stage3.4"])
    with pytest.raises(ValueError, match="needs the teacher"):
        AB(s, None)
    with pytest.raises(ValueError, match="has no layer 'stage2'; known layers: 0"):
        AB(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), t)


def test_ab_main_stage_is_ce_plus_kd_and_reads_cached_logits_like_the_online_teacher():
    s, t = _pair()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    ce_only = AB(s, t)
    assert not ce_only.logits_only  # CE alone reads no teacher output: nothing to cache
    s.eval()
    _, losses = ce_only(x, y)
    assert set(losses) == {"loss_ce"}
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(s(x), y).item(), rel=1e-6)
    d = AB(s, t, alpha=0.9)
    assert d.logits_only
    _, online = d(x, y)
    with torch.no_grad():
        t_logits = t(x)
    _, cached = d(x, y, StepContext(teacher={"logits": t_logits}))
    assert set(online) == {"loss_ce", "loss_kd"}
    for k in online:
        torch.testing.assert_close(online[k], cached[k])
    log_p_t, log_p_s = F.log_softmax(t_logits.double() / 4, 1), F.log_softmax(s(x).double() / 4, 1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * 16  # T^2 KL(p_t || p_s), T = 4
    assert online["loss_kd"].item() == pytest.approx(0.9 * kd.item(), rel=1e-3)


def test_ab_prepare_trains_the_connectors_and_student_layers_only(toy_cifar):
    s, t = _pair()
    t_state, s_state = _snapshot(t), _snapshot(s)
    d = AB(s, t, init_epochs=1)
    stage = d._stage[0]
    c_state = _snapshot(stage.adapters)
    d.prepare(toy_cifar, CFG, progress=False)
    assert "train_loss_ab" in d.stage1.history.columns and len(d.stage1.history) == 1
    assert math.isfinite(d.stage1.history["train_loss_ab"].iloc[0])
    after = s.state_dict()
    assert torch.equal(after["classifier.weight"], s_state["classifier.weight"])
    assert torch.equal(after["classifier.bias"], s_state["classifier.bias"])
    for i in range(1, 6):  # every conv below the deepest matched BN moved
        assert not torch.equal(after[f"stage{i}.0.weight"], s_state[f"stage{i}.0.weight"])
    assert not _same(c_state, stage.adapters.state_dict())
    assert _same(t_state, t.state_dict()) and not t.training
    with pytest.raises(RuntimeError, match="already run"):
        d.prepare(toy_cifar, CFG, progress=False)
    s2, t2 = _pair()  # init_epochs=0: no stage
    s2_state = _snapshot(s2)
    none = AB(s2, t2, init_epochs=0)
    none.prepare(toy_cifar, CFG, progress=False)
    assert none.stage1 is None and _same(s2_state, s2.state_dict())


def test_ab_smoke_through_distill(toy_cifar):
    s, t = _pair()
    res = distill(s, t, toy_cifar, CFG, method="ab", init_epochs=1, progress=False)
    assert res.config["stage1_time_s"] > 0 and res.config["teacher_outputs"] == "online teacher"
    assert res.config["extra_parameters"] == AB(*_pair()).extra_parameters > 0
    assert {"train_loss_ce"} <= set(res.history.columns) and "train_loss_kd" not in res.history.columns
    assert res.history["train_loss_ce"].map(math.isfinite).all()
    s2, _ = _pair()
    kd = distill(s2, t, toy_cifar, CFG, method="ab", init_epochs=1, alpha=0.9, progress=False)
    assert kd.config["teacher_outputs"].startswith("cached logits")
    assert {"train_loss_ce", "train_loss_kd"} <= set(kd.history.columns)
    assert kd.history[["train_loss_ce", "train_loss_kd"]].map(math.isfinite).all().all()


# ==================================================================== FSP ====
def _fsp_loops(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, ca, h, w = a.shape
    out = torch.zeros(n, ca, b.shape[1], dtype=torch.float64)
    for k in range(n):
        for i in range(ca):
            for j in range(b.shape[1]):
                out[k, i, j] = sum(float(a[k, i, p, q]) * float(b[k, j, p, q])
                                   for p in range(h) for q in range(w)) / (h * w)
    return out


def _pool_loops(f: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, _ = f.shape
    r = h // size
    out = torch.zeros(n, c, size, size)
    for p in range(size):
        for q in range(size):
            out[:, :, p, q] = f[:, :, p * r:(p + 1) * r, q * r:(q + 1) * r].mean(dim=(2, 3))
    return out


def test_fsp_matrix_against_loops_over_channels_and_positions():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    torch.testing.assert_close(fsp_matrix(a, b).double(), _fsp_loops(a, b), rtol=1e-5, atol=1e-6)
    # different sizes: the larger map is average-pooled to the smaller one (either order)
    big = torch.randn(2, 3, 8, 8, generator=g)
    torch.testing.assert_close(fsp_matrix(big, b).double(), _fsp_loops(_pool_loops(big, 4), b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fsp_matrix(b, big).double(), _fsp_loops(b, _pool_loops(big, 4)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fsp_matrix(a.flatten(2), b)


def test_fsp_loss_sums_the_mean_squared_differences_of_consecutive_pairs():
    g = torch.Generator().manual_seed(4)
    shapes = [(2, 8), (3, 4), (3, 2)]
    s_feats = [torch.randn(2, c, h, h, generator=g) for c, h in shapes]
    t_feats = [torch.randn(2, c, h, h, generator=g) for c, h in shapes]
    expected = 0.0
    for i in range(2):
        pool_s = _pool_loops(s_feats[i], shapes[i + 1][1])
        pool_t = _pool_loops(t_feats[i], shapes[i + 1][1])
        gs, gt = _fsp_loops(pool_s, s_feats[i + 1]), _fsp_loops(pool_t, t_feats[i + 1])
        expected += float(((gs - gt) ** 2).sum()) / gs.numel()
    assert fsp_loss(s_feats, t_feats).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        fsp_loss(s_feats[:1], t_feats[:1])
    with pytest.raises(ValueError, match="channel counts must match"):
        fsp_loss(s_feats, [torch.randn(2, 4, 8, 8)] + t_feats[1:])


def test_fsp_stage_equals_the_hand_computation_and_trains_the_student_layers_only():
    s, t = _matched()
    t_state = _snapshot(t)
    stage = FSPStage(s, t)
    assert stage.s_layers == ("stage1", "stage2", "stage3", "stage4", "stage5") == stage.t_layers
    x = torch.randn(3, 3, 32, 32)
    s.eval()
    _, losses = stage(x, None)
    with torch.no_grad():
        _, post_s = _manual_preacts(s, x)
        _, post_t = _manual_preacts(t, x)
        def gram(a, b):  # block-mean pooling by reshape, then a matrix product (the loops are tested above)
            n, c, h, w = a.shape
            size = b.shape[-1]
            a = a.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))
            return a.flatten(2) @ b.flatten(2).transpose(1, 2) / (size * size)

        expected = 0.0
        for i in range(1, 5):
            gs = gram(post_s[f"stage{i}"], post_s[f"stage{i + 1}"])
            gt = gram(post_t[f"stage{i}"], post_t[f"stage{i + 1}"])
            expected += float(((gs - gt) ** 2).mean())
    assert set(losses) == {"loss_fsp"} and losses["loss_fsp"].item() == pytest.approx(expected, rel=1e-4)
    s.train()
    _, losses = stage(x, None)
    losses["loss_fsp"].backward()
    assert all(p.grad is not None for i in range(1, 6) for p in getattr(s, f"stage{i}").parameters())
    assert all(p.grad is None for p in s.classifier.parameters())
    assert all(p.grad is None for p in t.parameters()) and not t.training and _same(t_state, t.state_dict())
    assert FSP(s, t).extra_parameters == 0 and stage.extra_parameters == 0


def test_fsp_refuses_mismatched_channels_and_bad_arguments():
    s, t = _pair()  # vgg8 w0.125 vs vgg13 w0.25: every channel count differs by 2x
    with pytest.raises(ValueError, match=r"same channel count C.*'stage1' \(8, 32, 32\) vs 'stage1' \(16, 32, 32\)"):
        FSP(s, t)
    s2, t2 = _matched()
    with pytest.raises(ValueError, match="at least two layers"):
        FSP(s2, t2, student_layers=["stage3"], teacher_layers=["stage3"])
    with pytest.raises(ValueError, match="as many student layers as teacher"):
        FSP(s2, t2, student_layers=["stage2", "stage3"], teacher_layers=["stage3"])
    for kw, msg in [({"init_epochs": -2}, "init_epochs must be"), ({"init_schedule": "warm"}, "init_schedule must be"),
                    ({"init_beta": -1.0}, "beta"), ({"temperature": 0.0}, "temperature")]:
        with pytest.raises(ValueError, match=msg):
            FSP(s2, t2, **kw)
    d = FSP(s2, t2)
    desc = d.describe()
    assert desc["method"] == "FSP" and desc["init_epochs"] == 30 and desc["alpha"] == 0.0
    assert DISTILLERS["fsp"] is FSP and FSP.family == "fsp"


def test_fsp_prepare_leaves_the_classifier_and_teacher_alone(toy_cifar):
    s, t = _matched()
    s_state, t_state = _snapshot(s), _snapshot(t)
    d = FSP(s, t, init_epochs=1)
    d.prepare(toy_cifar, CFG, progress=False)
    assert "train_loss_fsp" in d.stage1.history.columns
    after = s.state_dict()
    assert torch.equal(after["classifier.weight"], s_state["classifier.weight"])
    assert all(not torch.equal(after[f"stage{i}.0.weight"], s_state[f"stage{i}.0.weight"]) for i in range(1, 6))
    assert _same(t_state, t.state_dict()) and not t.training


def test_fsp_smoke_through_distill(toy_cifar):
    s, t = _matched()
    res = distill(s, t, toy_cifar, CFG, method="fsp", init_epochs=1, alpha=0.9, progress=False)
    assert "stage1_time_s" in res.config and res.config["extra_parameters"] == 0
    assert {"train_loss_ce", "train_loss_kd"} <= set(res.history.columns)
    assert res.history[["train_loss_ce", "train_loss_kd"]].map(math.isfinite).all().all()


# ================================================================== KDSVD ====
def test_svd_matrix_layouts_index_the_map_as_the_references_do():
    f = torch.randn(2, 3, 2, 4)
    x = svd_matrix(f, "hw_c")   # RepDistiller: rows = positions h*W + w, columns = channels
    y = svd_matrix(f, "ch_w")   # mdistiller: rows = c*H + h, columns = w
    assert x.shape == (2, 8, 3) and y.shape == (2, 6, 4) and x.dtype == torch.float64
    for n, c, h, w in itertools.product(range(2), range(3), range(2), range(4)):
        assert x[n, h * 4 + w, c] == f[n, c, h, w].double() and y[n, c * 2 + h, w] == f[n, c, h, w].double()
    with pytest.raises(ValueError, match="unknown KDSVD layout"):
        svd_matrix(f, "nhwc")


@pytest.mark.parametrize("shape,n", [((3, 9, 5), 4), ((3, 4, 7), 4), ((2, 6, 6), 2), ((2, 16, 8), 4)])
def test_top_singular_vectors_and_their_gradient_match_torch_svd(shape, n):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(shape[0], shape[2], n, dtype=torch.float64, generator=g)
    w_s = torch.randn(shape[0], min(shape[1:]), dtype=torch.float64, generator=g)
    _, s_ref, vh = torch.linalg.svd(x, full_matrices=False)
    v_ref = vh.transpose(-2, -1)[..., :n]
    g_ref = torch.autograd.grad((v_ref * w).sum() + (s_ref * w_s).sum(), x)[0]
    for eps, tol in ((1e-10, 1e-7), (1e-4, 2e-3)):  # (near-)exact when eps is tiny; the default within 0.2%
        v, s = top_right_singular_vectors(x, n, eps)
        sign = torch.sign((v * v_ref).sum(-2, keepdim=True)).detach()  # singular vectors: up to sign
        torch.testing.assert_close(v * sign, v_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=0)
        grad = torch.autograd.grad((v * sign * w).sum() + (s * w_s).sum(), x)[0]
        assert (grad - g_ref).abs().max() <= tol * g_ref.abs().max()


def test_singular_vector_gradient_is_guarded_at_repeated_singular_values():
    x = torch.rand(2, 4, 8, dtype=torch.float64)
    x[:, 2:] = 0  # two dead positions: singular values 0, 0 (as a post-ReLU stage5 map at 2x2 can have)
    x.requires_grad_(True)
    v, s = top_right_singular_vectors(x, 4)
    grad = torch.autograd.grad((v * torch.randn(2, 8, 4, dtype=torch.float64)).sum(), x)[0]
    assert torch.isfinite(grad).all() and grad.abs().max() < 1e3
    assert torch.isfinite(v).all()


def test_align_signs_against_an_explicit_search():
    g = torch.Generator().manual_seed(6)
    v_s = F.normalize(torch.randn(3, 5, 4, generator=g), dim=1)
    v_t = F.normalize(torch.randn(3, 5, 2, generator=g), dim=1)
    out = align_signs(v_s, v_t)
    for n in range(3):
        for k in range(2):
            cos = [float(v_s[n, :, j] @ v_t[n, :, k]) for j in range(4)]
            j = max(range(4), key=lambda i: abs(cos[i]))
            torch.testing.assert_close(out[n, :, k], v_s[n, :, j] * math.copysign(1.0, cos[j]))


def test_teacher_vectors_are_the_canonically_signed_top_singular_vectors():
    f = torch.relu(torch.randn(3, 6, 3, 3))
    v, s = teacher_vectors(f, 2)
    _, s_ref, vh = torch.linalg.svd(svd_matrix(f), full_matrices=False)
    v_ref = vh.transpose(-2, -1)[..., :2]
    for n in range(3):
        for k in range(2):
            sign = 1.0 if float(v_ref[n, :, k].sum()) >= 0 else -1.0
            torch.testing.assert_close(v[n, :, k], sign * v_ref[n, :, k], atol=1e-9, rtol=0)
        torch.testing.assert_close(s[n], s_ref[n, :2] / s_ref[n, :2].norm(), atol=1e-12, rtol=0)
    assert (v[..., 0] >= -1e-12).all()  # non-negative map: the top vector is non-negative (Perron-Frobenius)


def test_rbf_correlation_against_loops():
    a, b = torch.randn(2, 3, 1), torch.randn(2, 4, 1)
    r = rbf_correlation(a, b)
    assert r.shape == (2, 3, 4, 1)
    for n, i, j in itertools.product(range(2), range(3), range(4)):
        want = math.exp(-(a[n, i, 0].item() - b[n, j, 0].item()) ** 2 / 8)
        assert r[n, i, j, 0].item() == pytest.approx(want, rel=1e-6)


def _kdsvd_by_hand(s_feats, t_feats, k=1):
    """RepDistiller's steps with torch.linalg.svd and explicit loops (teacher signs canonical)."""
    total, prev = 0.0, None
    for f_s, f_t in zip(s_feats, t_feats):
        n, c = f_s.shape[:2]
        xs = f_s.double().reshape(n, c, -1).transpose(1, 2)
        xt = f_t.double().reshape(n, c, -1).transpose(1, 2)
        _, ss, vhs = torch.linalg.svd(xs, full_matrices=False)
        _, st, vht = torch.linalg.svd(xt, full_matrices=False)
        vs_all, vt = vhs.transpose(1, 2)[..., :k + 3], vht.transpose(1, 2)[..., :k]
        st = st[:, :k] / st[:, :k].norm(dim=1, keepdim=True)
        cur_s, cur_t = torch.zeros(n, c, k, dtype=torch.float64), torch.zeros(n, c, k, dtype=torch.float64)
        for b in range(n):
            for q in range(k):
                t_vec = vt[b, :, q] * (1.0 if float(vt[b, :, q].sum()) >= 0 else -1.0)
                cos = [float(vs_all[b, :, j] @ t_vec) for j in range(vs_all.shape[-1])]
                j = max(range(len(cos)), key=lambda i: abs(cos[i]))
                cur_s[b, :, q] = vs_all[b, :, j] * math.copysign(1.0, cos[j]) * st[b, q]
                cur_t[b, :, q] = t_vec * st[b, q]
        if prev is not None:
            ps, pt = prev
            for b in range(n):
                for i in range(c):
                    for j in range(ps.shape[1]):
                        for q in range(k):
                            rs = math.exp(-(float(cur_s[b, i, q]) - float(ps[b, j, q])) ** 2 / 8)
                            rt = math.exp(-(float(cur_t[b, i, q]) - float(pt[b, j, q])) ** 2 / 8)
                            total += (rs - rt) ** 2 / n
        prev = (cur_s, cur_t)
    return total


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_loss_against_the_hand_written_pipeline(k):
    g = torch.Generator().manual_seed(7)
    shapes = [(4, 4), (5, 2), (6, 2)]  # (channels, spatial size)
    s_feats = [torch.relu(torch.randn(2, c, h, h, generator=g)) for c, h in shapes]
    t_feats = [torch.relu(torch.randn(2, c, h, h, generator=g)) for c, h in shapes]
    assert kdsvd_loss(s_feats, t_feats, k).item() == pytest.approx(_kdsvd_by_hand(s_feats, t_feats, k), rel=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        kdsvd_loss(s_feats[:1], t_feats[:1])


def test_kdsvd_loss_is_zero_for_identical_maps_and_finite_with_dead_positions():
    f = [torch.relu(torch.randn(3, c, 2, 2)) for c in (4, 6)]
    assert kdsvd_loss(f, f).item() == pytest.approx(0.0, abs=1e-10)
    s_feats = [torch.relu(torch.randn(3, c, 2, 2)) for c in (4, 6)]
    for m in s_feats:
        m[:, :, 1, :] = 0  # half the positions dead
        m[0] = 0           # and one sample's maps all zero
    s_feats = [m.requires_grad_(True) for m in s_feats]
    loss = kdsvd_loss(s_feats, f)
    grads = torch.autograd.grad(loss, s_feats)
    assert torch.isfinite(loss) and all(torch.isfinite(gr).all() for gr in grads)


def test_kdsvd_distiller_gradients_reach_the_student_never_the_teacher():
    s, t = _matched()
    t_state = _snapshot(t)
    d = KDSVD(s, t).train()
    assert d.s_layers == ("stage2", "stage3", "stage4", "stage5") and d.extra_parameters == 0
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits, losses = d(x, y)
    assert set(losses) == {"loss_ce", "loss_kdsvd"} and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        _, post_t = _manual_preacts(t, x)
    # the distiller's term is the loss of the post-ReLU stage outputs (student BN in train mode: recapture)
    _, feats = capture(s, x, d.s_layers)
    assert losses["loss_kdsvd"].item() == pytest.approx(
        kdsvd_loss([feats[n] for n in d.s_layers], [post_t[n] for n in d.t_layers]).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n in ("stage2", "stage5")
               for p in getattr(s, n).parameters())
    assert all(torch.isfinite(p.grad).all() for p in s.parameters())
    assert all(p.grad is None for p in t.parameters()) and not t.training and _same(t_state, t.state_dict())
    desc = d.describe()
    assert desc["k"] == 1 and desc["beta"] == 1.0 and desc["layout"] == "hw_c" and desc["alpha"] == 0.0
    assert DISTILLERS["kdsvd"] is KDSVD and KDSVD.family == "kdsvd" and not KDSVD.logits_only


def test_kdsvd_refuses_mismatched_channels_and_bad_arguments():
    s, t = _pair()
    msg = r"same channel count C.*'stage2' \(16, 16, 16\) vs 'stage2' \(32, 16, 16\).*ch_w"
    with pytest.raises(ValueError, match=msg):
        KDSVD(s, t)
    d = KDSVD(s, t, layout="ch_w")  # mdistiller's reshape: widths only need to match
    _, losses = d(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert torch.isfinite(losses["loss_kdsvd"]) and losses["loss_kdsvd"] > 0
    s2, t2 = _matched()
    for kw, msg in [({"k": 0}, "k .*must be an int"), ({"k": True}, "k .*must be an int"),
                    ({"layout": "nhwc"}, "unknown KDSVD layout"), ({"eps": 0.0}, "eps"), ({"beta": -1.0}, "beta"),
                    ({"student_layers": ["stage3"], "teacher_layers": ["stage3"]}, "at least two layers")]:
        with pytest.raises(ValueError, match=msg):
            KDSVD(s2, t2, **kw)


def test_kdsvd_smoke_through_distill(toy_cifar):
    s, t = _pair()  # the suite's pair differs in width: mdistiller's layout
    res = distill(s, t, toy_cifar, CFG, method="kdsvd", layout="ch_w", progress=False)
    assert res.config["teacher_outputs"] == "online teacher" and res.config["extra_parameters"] == 0
    assert "stage1_time_s" not in res.config
    assert {"train_loss_ce", "train_loss_kdsvd"} <= set(res.history.columns)
    assert res.history[["train_loss_ce", "train_loss_kdsvd"]].map(math.isfinite).all().all()

