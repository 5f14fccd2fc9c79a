"""Embedding / relational methods: CRD, RKD, SP, CC (kd_utils.methods.crd, .rkd, .sp, .cc).

Each loss against a computation written out with loops; cached teacher outputs equal the online teacher where
the method is cacheable; gradients reach the student and heads, never the teacher; CRD's memory banks (update by
index, normalisation constant, negatives, state round trip and resume through the state file)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import kd_utils.methods.cc  # noqa: F401  (registers "cc")
import kd_utils.methods.crd  # noqa: F401
import kd_utils.methods.rkd  # noqa: F401
import kd_utils.methods.sp  # noqa: F401
from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill
from kd_utils.feature_kd import capture
from kd_utils.methods.cc import CC, cc_rbf_loss, cc_repdistiller_loss
from kd_utils.methods.crd import CRD, nce_loss
from kd_utils.methods.rkd import RKD, rkd_angle_loss, rkd_distance_loss
from kd_utils.methods.sp import SP, sp_loss
from kd_utils.train_kd import DISTILLERS, StepContext

CFG = dict(batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg8", width=0.125), build_model("vgg13", width=0.25).eval()


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _pooled_stage5(model, x):
    _, f = capture(model, x, ["stage5"])
    return f["stage5"].mean((2, 3))


def _linear(layer, v):  # W v + b, written out on python floats
    w, b, v = layer.weight.tolist(), layer.bias.tolist(), v.tolist()
    return torch.tensor([[sum(wi * xi for wi, xi in zip(w[o], row)) + b[o] for o in range(len(b))] for row in v])


def _unit_rows(v):
    return torch.tensor([[a / math.sqrt(sum(c * c for c in row)) for a in row] for row in v.tolist()])


def _smooth_l1(a, b):  # Huber with delta 1, mean over entries
    vals = [0.5 * float(d) ** 2 if abs(float(d)) < 1 else abs(float(d)) - 0.5 for d in (a - b).flatten()]
    return sum(vals) / len(vals)


def test_all_four_are_registered_with_their_own_numerics_family():
    for name, cls, fam in (("crd", CRD, "crd"), ("rkd", RKD, "rkd"), ("sp", SP, "sp"), ("cc", CC, "cc")):
        assert DISTILLERS[name] is cls and cls.family == fam
    assert CRD.cached_layer == RKD.cached_layer == CC.cached_layer == "stage5" and SP.cached_layer is None


# -------------------------------------------------------------------- RKD ----
def _rkd_by_hand(s, t):
    n = len(s)

    def dist(e):
        d = [[math.sqrt(float(sum((e[i] - e[j]) ** 2))) if i != j else 0.0 for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return torch.tensor([[d[i][j] / mean for j in range(n)] for i in range(n)])

    def angles(e):
        out = torch.zeros(n, n, n)
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    if b != a and c != a:
                        u, w = e[b] - e[a], e[c] - e[a]
                        out[a, b, c] = float(u @ w) / (float(u.norm()) * float(w.norm()))
        return out

    return _smooth_l1(dist(s), dist(t)), _smooth_l1(angles(s), angles(t))


def test_rkd_distance_and_angle_losses_against_loops():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    want_d, want_a = _rkd_by_hand(s, t)
    assert rkd_distance_loss(s, t).item() == pytest.approx(want_d, rel=1e-5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(want_a, rel=1e-5)
    assert want_d > 0 and want_a > 0
    # invariances of the relations: scaling and shifting the student changes neither term
    assert rkd_distance_loss(s * 4 + 1, t).item() == pytest.approx(want_d, rel=1e-4)
    assert rkd_angle_loss(s * 4 + 1, t).item() == pytest.approx(want_a, rel=1e-4)
    with pytest.raises(ValueError, match="same N >= 2"):
        rkd_distance_loss(s, t[:4])


def test_rkd_distiller_term_is_beta_times_the_weighted_sum_on_pooled_stage5():
    s, t = _pair()
    x, y = _batch()
    d = RKD(s, t, beta=2.0, w_d=3.0, w_a=5.0).eval()
    _, losses = d(x, y)
    want_d, want_a = _rkd_by_hand(_pooled_stage5(s, x).detach(), _pooled_stage5(t, x))
    assert losses["loss_rkd"].item() == pytest.approx(2.0 * (3.0 * want_d + 5.0 * want_a), rel=1e-4)
    assert d.extra_parameters == 0 and d.describe()["w_a"] == 5.0
    _, one = d(x[:1], y[:1])  # no pair in a batch of one: no RKD term, still finite
    assert one["loss_rkd"].item() == 0.0


# --------------------------------------------------------------------- SP ----
def _sp_by_hand(fs, ft):
    b = len(fs)

    def gram(f):
        f = f.reshape(b, -1).tolist()
        g = [[sum(p * q for p, q in zip(f[i], f[j])) for j in range(b)] for i in range(b)]
        return [[g[i][j] / math.sqrt(sum(v * v for v in g[i])) for j in range(b)] for i in range(b)]

    gs, gt = gram(fs), gram(ft)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


def test_sp_loss_against_loops_and_on_the_unpooled_last_stage():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 5, 2, 2, generator=g)
    want = _sp_by_hand(fs, ft)
    assert sp_loss([fs], [ft]).item() == pytest.approx(want, rel=1e-5)
    assert sp_loss([fs, fs], [ft, ft]).item() == pytest.approx(2 * want, rel=1e-5)
    assert sp_loss([fs * 3], [ft]).item() == pytest.approx(want, rel=1e-5)  # row normalisation: scale-free
    with pytest.raises(ValueError, match="same samples"):
        sp_loss([fs], [ft[:3]])
    s, t = _pair()
    x, y = _batch(5)
    d = SP(s, t, beta=7.0).eval()
    _, losses = d(x, y)
    _, f_s = capture(s, x, ["stage5"])
    _, f_t = capture(t, x, ["stage5"])
    assert f_s["stage5"].shape[2:] == (2, 2)
    assert losses["loss_sp"].item() == pytest.approx(7.0 * _sp_by_hand(f_s["stage5"].detach(), f_t["stage5"]), rel=1e-4)
    assert d.extra_parameters == 0 and d.describe()["beta"] == 7.0 and SP(s, t).beta == 3000.0


# --------------------------------------------------------------------- CC ----
def test_cc_repdistiller_term_against_loops():
    g = torch.Generator().manual_seed(0)
    es, et = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    delta = [[abs(float(es[i, k] - et[i, k])) for k in range(3)] for i in range(5)]
    want = sum(sum(delta[i][k] * delta[i + 1][k] for k in range(3)) for i in range(4)) / 4
    assert cc_repdistiller_loss(es, et).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="equal shape"):
        cc_repdistiller_loss(es, et[:, :2])


def _rbf_taylor_by_hand(f, gamma, order):
    f = f.tolist()
    n = len(f)
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            dot = sum(a * b for a, b in zip(f[i], f[j]))
            c = dot / math.sqrt(sum(a * a for a in f[i]) * sum(b * b for b in f[j]))
            out[i, j] = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c ** p
                            for p in range(order + 1))
    return out


def test_cc_rbf_taylor_against_loops_and_close_to_the_exact_kernel():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(5, 4, generator=g), torch.randn(5, 9, generator=g)
    cs, ct = _rbf_taylor_by_hand(fs, 0.4, 2), _rbf_taylor_by_hand(ft, 0.4, 2)
    assert cc_rbf_loss(fs, ft).item() == pytest.approx(float(((cs - ct) ** 2).mean()), rel=1e-5)
    # a high order reaches the Gaussian RBF of the unit vectors, exp(-gamma |a - b|^2)
    u = fs / fs.norm(dim=1, keepdim=True)
    exact = torch.exp(-0.4 * torch.cdist(u, u) ** 2)
    torch.testing.assert_close(_rbf_taylor_by_hand(fs, 0.4, 12), exact, atol=1e-5, rtol=0)


def test_cc_distiller_terms_with_and_without_heads():
    s, t = _pair()
    x, y = _batch(4)
    d = CC(s, t).eval()
    assert d.beta == 0.02 and d.describe()["kernel"] == "repdistiller"
    _, losses = d(x, y)
    with torch.no_grad():
        es, et = _linear(d.adapters[0], _pooled_stage5(s, x)), _linear(d.adapters[1], _pooled_stage5(t, x))
    delta = (es - et).abs()
    want = sum(float((delta[i] * delta[i + 1]).sum()) for i in range(3)) / 3
    assert losses["loss_cc"].item() == pytest.approx(0.02 * want, rel=1e-4)
    r = CC(s, t, kernel="rbf_taylor", gamma=0.3, order=3).eval()
    assert r.beta == 100.0 and r.extra_parameters == 0
    _, losses = r(x, y)
    with torch.no_grad():
        cs, ct = _rbf_taylor_by_hand(_pooled_stage5(s, x), 0.3, 3), _rbf_taylor_by_hand(_pooled_stage5(t, x), 0.3, 3)
    assert losses["loss_cc"].item() == pytest.approx(100.0 * float(((cs - ct) ** 2).mean()), rel=1e-4)
    _, one = d(x[:1], y[:1])
    assert one["loss_cc"].item() == 0.0


# -------------------------------------------------------------------- CRD ----
def test_nce_loss_against_the_formula_written_out():
    p = torch.tensor([[0.5, 0.1, 0.02, 0.3], [0.05, 0.2, 0.6, 0.01]], dtype=torch.float64)
    n, eps = 20, 1e-7
    m = 3 / n
    want = -sum(math.log(p[i, 0] / (p[i, 0] + m + eps)) + sum(math.log(m / (p[i, j] + m + eps)) for j in (1, 2, 3))
                for i in range(2)) / 2
    assert nce_loss(p, n).item() == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="1 \\+ K"):
        nce_loss(p[:, :1], n)


def _crd_by_hand(d, s, t, x, idx, neg, mem_s, mem_t, z=None):
    """Both NCE terms written out: embeddings W v + b / |.|, scores exp(row . v / T), Z from these scores when
    not given, normalised scores in the NCE formula. Returns (loss, (z_s, z_t), (v_s, v_t))."""
    n, k, temp = len(mem_s), neg.shape[1], d.nce_t
    with torch.no_grad():
        v_s = _unit_rows(_linear(d.adapters[0], _pooled_stage5(s, x)))
        v_t = _unit_rows(_linear(d.adapters[1], _pooled_stage5(t, x)))

    def scores(anchor, bank):
        anchor, bank = anchor.tolist(), bank.tolist()
        return [[math.exp(sum(p * q for p, q in zip(bank[r], anchor[i])) / temp)
                 for r in [int(idx[i])] + [int(j) for j in neg[i]]] for i in range(len(idx))]

    e_s, e_t = scores(v_s, mem_t), scores(v_t, mem_s)  # student anchor vs teacher bank; teacher anchor vs student bank
    if z is None:
        z = tuple(n * sum(sum(r) for r in e) / (len(e) * (k + 1)) for e in (e_s, e_t))
    noise, eps = k / n, 1e-7

    def loss(e, zz):
        total = 0.0
        for row in e:
            p = [v / zz for v in row]
            total += math.log(p[0] / (p[0] + noise + eps)) + sum(math.log(noise / (q + noise + eps)) for q in p[1:])
        return -total / len(e)

    return loss(e_s, z[0]) + loss(e_t, z[1]), z, (v_s, v_t)


def test_crd_nce_terms_z_and_bank_update_on_a_tiny_bank_by_hand():
    s, t = _pair()
    labels = torch.arange(12) % 3
    d = CRD(s, t, beta=2.0, feat_dim=3, nce_k=4, nce_t=0.5, nce_m=0.3, labels=labels).eval()
    x, y = _batch(3)
    idx = torch.tensor([7, 0, 5])
    neg = torch.tensor([[0, 2, 5, 9], [1, 4, 8, 11], [3, 4, 6, 10]])
    d.draw_negatives = lambda index: neg  # fixed negatives (the draw is tested on its own)
    mem_s, mem_t = d.memory_s.clone(), d.memory_t.clone()
    assert torch.equal(d.nce_z, torch.tensor([-1.0, -1.0]))
    _, losses = d(x, y, StepContext(index=idx))
    want, z, (v_s, v_t) = _crd_by_hand(d, s, t, x, idx, neg, mem_s, mem_t)
    assert losses["loss_crd"].item() == pytest.approx(2.0 * want, rel=1e-4)
    assert d.nce_z.tolist() == pytest.approx(list(z), rel=1e-5)
    # the banks: only the batch's rows move, to normalise(m * old + (1 - m) * v); the rest is untouched
    others = torch.tensor([i for i in range(12) if i not in idx.tolist()])
    for bank, old, v in ((d.memory_s, mem_s, v_s), (d.memory_t, mem_t, v_t)):
        assert torch.equal(bank[others], old[others])
        for r, i in enumerate(idx.tolist()):
            moved = [0.3 * float(old[i, c]) + 0.7 * float(v[r, c]) for c in range(3)]
            norm = math.sqrt(sum(a * a for a in moved))
            assert bank[i].tolist() == pytest.approx([a / norm for a in moved], rel=1e-5)
    # a second batch keeps Z from the first and reads the updated banks
    mem_s2, mem_t2 = d.memory_s.clone(), d.memory_t.clone()
    x2, y2 = _batch(3, seed=5)
    idx2 = torch.tensor([1, 2, 11])
    _, losses2 = d(x2, y2, StepContext(index=idx2))
    want2, _, _ = _crd_by_hand(d, s, t, x2, idx2, neg, mem_s2, mem_t2, z=z)
    assert losses2["loss_crd"].item() == pytest.approx(2.0 * want2, rel=1e-4)
    assert d.nce_z.tolist() == pytest.approx(list(z), rel=1e-5)


def test_crd_negatives_other_class_uniform_shared_and_seeded():
    s, t = _pair()
    labels = torch.arange(40) % 4  # 30 samples of other classes per anchor
    idx = torch.tensor([0, 5, 10, 39])
    d = CRD(s, t, nce_k=20, labels=labels)
    torch.manual_seed(3)
    a = d.draw_negatives(idx)
    torch.manual_seed(3)
    assert torch.equal(a, d.draw_negatives(idx))  # a seed reproduces
    assert a.shape == (4, 20)
    for i, row in zip(idx.tolist(), a):
        assert (labels[row] != labels[i]).all() and len(set(row.tolist())) == 20  # other classes, no repeats
    big = CRD(s, t, nce_k=50, labels=labels).draw_negatives(idx)  # more than the 30 others: with replacement
    assert big.shape == (4, 50) and all((labels[row] != labels[i]).all() for i, row in zip(idx.tolist(), big))
    uneven = torch.tensor([0] * 30 + [1] * 10)  # class 0 sees 10 others, class 1 sees 30; nce_k=20
    u = CRD(s, t, nce_k=20, labels=uneven).draw_negatives(torch.tensor([0, 35]))
    assert (uneven[u[0]] == 1).all() and (uneven[u[1]] == 0).all() and len(set(u[1].tolist())) == 20
    uni = CRD(s, t, nce_k=20, n_data=40, negatives="uniform").draw_negatives(idx)
    assert uni.shape == (4, 20) and uni.min() >= 0 and uni.max() < 40
    shared = CRD(s, t, nce_k=20, n_data=40, shared_negatives=True)
    assert shared.negatives == "uniform"
    sh = shared.draw_negatives(idx)
    assert sh.shape == (20,) and len(set(sh.tolist())) == 20 and sh.max() < 40


def test_crd_shared_negatives_score_every_anchor_against_one_set():
    s, t = _pair()
    d = CRD(s, t, feat_dim=3, nce_k=4, nce_t=0.5, n_data=12, shared_negatives=True).eval()
    x, y = _batch(3)
    idx = torch.tensor([7, 0, 5])
    shared = torch.tensor([2, 9, 4, 11])
    d.draw_negatives = lambda index: shared
    mem_s, mem_t = d.memory_s.clone(), d.memory_t.clone()
    _, losses = d(x, y, StepContext(index=idx))
    want, _, _ = _crd_by_hand(d, s, t, x, idx, shared.expand(3, 4), mem_s, mem_t)
    assert losses["loss_crd"].item() == pytest.approx(0.8 * want, rel=1e-4)


def test_crd_cached_teacher_outputs_equal_the_online_teacher():
    s, t = _pair()
    x, y = _batch(6)
    idx = torch.tensor([3, 1, 4, 15, 9, 2])
    d = CRD(s, t, alpha=0.5, nce_k=8, labels=torch.arange(16) % 4).eval()
    d_cached = copy.deepcopy(d)
    t_out, feats = capture(t, x, ["stage5"])
    torch.manual_seed(4)
    _, online = d(x, y, StepContext(index=idx))

    def refuse(*_):
        raise AssertionError("the cached path ran the teacher")
    d_cached.teacher.register_forward_pre_hook(refuse)
    torch.manual_seed(4)
    _, cached = d_cached(x, y, StepContext(index=idx, teacher={"logits": t_out, "embedding": feats["stage5"].mean((2, 3))}))
    assert set(online) == {"loss_ce", "loss_kd", "loss_crd"}
    for k in online:
        torch.testing.assert_close(cached[k], online[k])
    for name in ("memory_s", "memory_t", "nce_z"):
        torch.testing.assert_close(getattr(d_cached, name), getattr(d, name))


@pytest.mark.parametrize("cls,kw", [(RKD, {"alpha": 0.5}), (CC, {}), (CC, {"kernel": "rbf_taylor", "alpha": 0.5})])
def test_pooled_relational_methods_read_the_cache_like_the_online_teacher(cls, kw):
    s, t = _pair()
    x, y = _batch(5)
    d = cls(s, t, **kw).eval()
    t_out, feats = capture(t, x, ["stage5"])
    _, online = d(x, y)
    _, cached = d(x, y, StepContext(teacher={"logits": t_out, "embedding": feats["stage5"].mean((2, 3))}))
    assert set(cached) == set(online)
    for k in online:
        torch.testing.assert_close(cached[k], online[k])


@pytest.mark.parametrize("cls,kw,term", [
    (CRD, {"nce_k": 8}, "loss_crd"), (CRD, {"nce_k": 8, "shared_negatives": True, "alpha": 0.9}, "loss_crd"),
    (RKD, {}, "loss_rkd"), (SP, {"alpha": 0.9}, "loss_sp"), (CC, {}, "loss_cc"), (CC, {"kernel": "rbf_taylor"}, "loss_cc")])
def test_gradients_reach_student_and_heads_never_the_teacher(cls, kw, term):
    s, t = _pair()
    t_state = {k: v.clone() for k, v in t.state_dict().items()}
    if cls is CRD:
        kw = {**kw, "labels": torch.arange(32) % 10}
    d = cls(s, t, **kw).train()
    x, y = _batch(8)
    _, losses = d(x, y, StepContext(index=torch.arange(8) * 3))
    assert term in losses and "loss_ce" in losses and ("loss_kd" in losses) == ("alpha" in kw)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses[term].backward()
    assert all(p.grad is not None for n in ("stage4", "stage5") for p in getattr(s, n).parameters())
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    heads = {id(p) for p in d.adapters.parameters()}
    assert heads <= {id(p) for p in d.trainable_parameters()}
    assert not t.training and all(torch.equal(v, t.state_dict()[k]) for k, v in t_state.items())


def test_extra_parameters_are_exactly_the_heads():
    s, t = _pair()
    cs, ct = s.feature_channels[-1], t.feature_channels[-1]
    crd = CRD(s, t, feat_dim=32, n_data=10, negatives="uniform")
    assert crd.extra_parameters == (cs + 1) * 32 + (ct + 1) * 32 == sum(p.numel() for p in crd.adapters.parameters())
    assert CC(s, t, feat_dim=16).extra_parameters == (cs + 1) * 16 + (ct + 1) * 16
    assert CC(s, t, kernel="rbf_taylor").extra_parameters == RKD(s, t).extra_parameters == SP(s, t).extra_parameters == 0
    # the banks are buffers (saved state), not parameters; the labels are data, not state
    names = {n for n, _ in crd.named_parameters()}
    assert not any(n.startswith(("memory", "nce_z")) for n in names)
    state = crd.state_dict()
    assert state["memory_s"].shape == state["memory_t"].shape == (10, 32) and "nce_z" in state and "labels" not in state


def test_crd_state_dict_round_trip_continues_identically():
    s, t = _pair()
    labels = torch.arange(24) % 3
    d = CRD(s, t, nce_k=6, labels=labels).train()
    for step in range(2):
        x, y = _batch(4, seed=step)
        d(x, y, StepContext(index=torch.arange(4) + 4 * step))
    assert (d.nce_z > 0).all()
    twin = CRD(copy.deepcopy(s), t, nce_k=6, labels=labels).train()
    assert not torch.equal(twin.memory_s, d.memory_s)
    twin.load_state_dict(d.state_dict())
    x, y = _batch(4, seed=9)
    ctx = StepContext(index=torch.tensor([20, 3, 11, 7]))
    torch.manual_seed(5)
    _, a = d(x, y, ctx)
    torch.manual_seed(5)
    _, b = twin(x, y, ctx)
    assert torch.equal(a["loss_crd"], b["loss_crd"])
    for name in ("memory_s", "memory_t", "nce_z"):
        assert torch.equal(getattr(twin, name), getattr(d, name))


def test_bad_arguments_and_missing_indices_give_clear_errors():
    s, t = _pair()
    x, y = _batch(4)
    for kw, msg in (({"nce_k": 0}, "nce_k"), ({"nce_t": 0.0}, "nce_t"), ({"nce_m": 1.0}, "nce_m"),
                    ({"feat_dim": 0}, "feat_dim"), ({"negatives": "hard"}, "negatives must be one of"),
                    ({"shared_negatives": True, "negatives": "other_class"}, "shared_negatives=True"),
                    ({"n_data": 10}, "needs the training\\s+labels"), ({"n_data": 5, "labels": torch.arange(6)}, "n_data=5"),
                    ({"labels": torch.zeros(6)}, "integer tensor"), ({"labels": torch.zeros(6, dtype=torch.long)}, "two classes"),
                    ({"n_data": 0, "negatives": "uniform"}, "n_data"), ({"beta": -1.0}, "beta")):
        with pytest.raises(ValueError, match=msg):
            CRD(s, t, **kw)
    d = CRD(s, t, nce_k=4, n_data=8, negatives="uniform")
    with pytest.raises(ValueError, match="ctx.index"):
        d(x, y)
    with pytest.raises(ValueError, match="ctx.index"):
        d(x, y, StepContext())
    with pytest.raises(ValueError, match=r"\[0, 8\).*\[5, 8\]"):
        d(x, y, StepContext(index=torch.tensor([5, 6, 7, 8])))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        d(x, y, StepContext(index=torch.arange(3)))
    with pytest.raises(ValueError, match="not allocated"):
        CRD(s, t)(x, y, StepContext(index=torch.arange(4)))
    with pytest.raises(ValueError, match="n_data=8 but the training split holds 256"):
        d.prepare(type("D", (), {"y_train": torch.zeros(256, dtype=torch.long)})(), TrainConfig(**CFG))
    with pytest.raises(ValueError, match="needs the teacher"):
        RKD(s, None)
    with pytest.raises(ValueError, match="w_d"):
        RKD(s, t, w_d=-1.0)
    with pytest.raises(ValueError, match="w_a"):
        RKD(s, t, w_a=float("nan"))
    with pytest.raises(ValueError, match="kernel must be one of"):
        CC(s, t, kernel="gauss")
    with pytest.raises(ValueError, match="order"):
        CC(s, t, kernel="rbf_taylor", order=0)
    with pytest.raises(ValueError, match="gamma"):
        CC(s, t, kernel="rbf_taylor", gamma=-0.1)
    with pytest.raises(ValueError, match="as many student layers"):
        SP(s, t, student_layers=["stage4", "stage5"])
    with pytest.raises(ValueError, match=r"no layer\(s\) \['block9'\]"):
        SP(s, t, teacher_layers=["block9"])


# ------------------------------------------------------------- training ----
@pytest.mark.parametrize("method,kw,term,cached", [
    ("crd", {"nce_k": 64}, "loss_crd", True), ("crd", {"nce_k": 64, "shared_negatives": True}, "loss_crd", True),
    ("rkd", {}, "loss_rkd", True), ("sp", {}, "loss_sp", False), ("cc", {}, "loss_cc", True),
    ("cc", {"kernel": "rbf_taylor"}, "loss_cc", True)])
def test_one_epoch_distill_smoke(toy_cifar, method, kw, term, cached):
    torch.manual_seed(0)
    student, teacher = build_model("vgg8", width=0.125), build_model("vgg13", width=0.25)
    res = distill(student, teacher, toy_cifar, TrainConfig(epochs=1, **CFG), method=method, progress=False, **kw)
    h = res.history
    assert len(h) == 1 and {f"train_{term}", "train_loss_ce"} <= set(h.columns)
    assert all(math.isfinite(v) for v in h.iloc[0].tolist())
    assert h[f"train_{term}"].iloc[0] > 0
    assert res.config["teacher_outputs"].startswith("plan cache") == cached
    heads = (student.feature_channels[-1] + 1 + teacher.feature_channels[-1] + 1) * 128
    assert res.config["extra_parameters"] == (heads if method == "crd" or (method == "cc" and not kw) else 0)


def test_crd_resumes_from_the_state_file_with_its_banks_exactly(toy_cifar, tmp_path):
    cfg = TrainConfig(epochs=2, **CFG)

    def run(state, **fit_kw):
        torch.manual_seed(0)
        student, teacher = build_model("vgg8", width=0.125), build_model("vgg13", width=0.25)
        distill(student, teacher, toy_cifar, cfg, method="crd", nce_k=64, progress=False, state_path=state, **fit_kw)
        return torch.load(state, weights_only=True)

    full = run(tmp_path / "full.pth")
    half = run(tmp_path / "half.pth", stop_after=1)
    assert half["epoch"] == 1 and not torch.equal(half["method"]["memory_s"], full["method"]["memory_s"])
    resumed = run(tmp_path / "half.pth", resume=True)
    assert resumed["epoch"] == full["epoch"] == 2
    assert set(resumed["method"]) == set(full["method"]) >= {"memory_s", "memory_t", "nce_z", "adapters.0.weight"}
    for k, v in full["method"].items():
        assert torch.equal(resumed["method"][k], v), k
    # every training sample was visited: each bank row is a unit vector; Z was fixed once, from a positive mean
    n = len(toy_cifar.y_train)
    assert full["method"]["memory_s"].shape == (n, 128)
    torch.testing.assert_close(full["method"]["memory_t"].norm(dim=1), torch.ones(n))
    assert (full["method"]["nce_z"] > 0).all() and torch.equal(full["method"]["nce_z"], half["method"]["nce_z"])
