"""The controls of "what in the logits does the work" (kd_utils.methods.controls) and DKD's two halves,
each against an independent hand computation, and every new method once through run_experiment."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_utils import build_model, runs
from kd_utils.config import TrainConfig
from kd_utils.experiments import distill, run_experiment, uses_teacher
from kd_utils.methods import PAPERS, controls
from kd_utils.methods.controls import (LabelSmoothingCE, PermutedKD, PseudoLabelKD, matched_smoothing,
                                       non_target_permutations, permute_non_target)
from kd_utils.methods.dkd import DKD
from kd_utils.numerics import NUMERICS
from kd_utils.train_kd import DISTILLERS, HintonKD, StepContext, build_distiller

from conftest import LINEAR_K as K, linear_batch as _batch, linear_pair as _linear_pair


def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# -------------------------------------------------------------- registration ----
def test_the_controls_are_registered_as_one_numerics_family_with_papers():
    for name, cls in {"label_smoothing": LabelSmoothingCE, "kd_permuted": PermutedKD,
                      "pseudo_label": PseudoLabelKD}.items():
        assert DISTILLERS[name] is cls and cls.family == "controls" and name in PAPERS
    assert NUMERICS["controls"] >= 1
    assert "(control)" in PAPERS["kd_permuted"][0] and "Szegedy" in PAPERS["label_smoothing"][0]
    assert not uses_teacher("label_smoothing") and not uses_teacher("ce")
    assert uses_teacher("kd_permuted") and uses_teacher("pseudo_label") and uses_teacher("kd")


# ------------------------------------------------------------ label smoothing ----
def test_matched_smoothing_equals_the_teachers_mean_wrong_class_mass_by_hand():
    t = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5], [1.0, 1.0, 1.0, 4.0]])
    y = torch.tensor([0, 2, 1])  # the third image the teacher gets wrong: its whole misplaced mass counts
    for T in (1.0, 3.0):
        mass = sum(1 - _softmax(row, T)[c] for row, c in zip(t.tolist(), y.tolist())) / 3
        eps = matched_smoothing(t, y, temperature=T, decimals=None)
        assert eps == pytest.approx(4 * mass / 3, rel=1e-12)
        assert matched_smoothing(t, y, temperature=T) == round(4 * mass / 3, 4)  # the default, for run keys
        # with that eps the smoothed target's wrong-class mass is the teacher's: 4 - 1 classes of eps / 4 each
        target = [1 - eps + eps / 4] + [eps / 4] * 3
        assert sum(target) == pytest.approx(1.0) and sum(target[1:]) == pytest.approx(mass, rel=1e-12)
    with pytest.raises(ValueError, match=r"no smoothing epsilon in \[0, 1\)"):
        matched_smoothing(torch.zeros(3, 4), y)  # a uniform teacher: mass (K-1)/K, eps would be 1
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got 0"):
        matched_smoothing(t, y, temperature=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got range \[0, 7\]"):
        matched_smoothing(t, torch.tensor([0, 7, 1]))


def test_label_smoothing_loss_is_the_hand_smoothed_cross_entropy_and_ignores_any_teacher():
    s, t = _linear_pair()
    x, y = _batch()
    d = build_distiller("label_smoothing", s, t, epsilon=0.2)
    assert isinstance(d, LabelSmoothingCE) and d.teacher is None and d.teacher_free
    assert all(p.requires_grad for p in t.parameters())  # not frozen: the method never took it
    logits, losses = d(x, y)
    assert set(losses) == {"loss_ce"}
    want = 0.0
    for row, c in zip(logits.detach().double().tolist(), y.tolist()):
        p = _softmax(row)
        q = [0.8 * (j == c) + 0.2 / K for j in range(K)]
        want -= sum(qj * math.log(pj) for qj, pj in zip(q, p))
    assert losses["loss_ce"].item() == pytest.approx(want / len(y), rel=1e-5)
    assert LabelSmoothingCE(s).epsilon == 0.1 and d.describe() == {"method": "LabelSmoothingCE", "epsilon": 0.2}
    for bad in (1.0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"epsilon must be a number in \[0, 1\), got"):
            LabelSmoothingCE(s, epsilon=bad)


# ------------------------------------------------------- permuted non-target KD ----
def test_permutations_are_a_fixed_function_of_the_image_and_seed():
    index = torch.arange(200)
    p = non_target_permutations(index, 10, seed=3)
    assert p.shape == (200, 9) and p.dtype == torch.long
    assert all(sorted(row) == list(range(9)) for row in p.tolist())
    assert len({tuple(row) for row in p.tolist()}) > 190  # differs between images (9! permutations)
    # the same image gets the same permutation in any batch, order, call and cache
    some = torch.tensor([150, 7, 7, 199])
    again = non_target_permutations(some, 10, seed=3, cache={})
    assert torch.equal(again, p[some]) and torch.equal(again[1], again[2])
    far = torch.tensor([5, 5 + controls._BLOCK, 3 * controls._BLOCK + 1])  # indices in other blocks
    far_p = non_target_permutations(far, 10, 3)
    assert torch.equal(far_p, non_target_permutations(far.flip(0), 10, 3).flip(0))
    assert not torch.equal(far_p[1], p[5])  # another block is not a copy of the first
    assert not torch.equal(non_target_permutations(index, 10, seed=4), p)
    with pytest.raises(ValueError, match=r"seed must be a whole number in \[0, 2\*\*31\), got -1"):
        non_target_permutations(index, 10, seed=-1)
    with pytest.raises(ValueError, match=r"sample indices must be >= 0, got -2"):
        non_target_permutations(torch.tensor([1, -2]), 10)


def test_permuting_keeps_the_target_probability_and_the_multiset_of_the_others():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(40, 10, generator=g) * 3, torch.randint(0, 10, (40,), generator=g)
    perm = non_target_permutations(torch.arange(40), 10)
    zp = permute_non_target(z, y, perm)
    for T in (1.0, 4.0):
        p, pp = torch.softmax(z.double() / T, 1), torch.softmax(zp.double() / T, 1)
        for i in range(40):
            c = int(y[i])
            assert pp[i, c].item() == pytest.approx(p[i, c].item(), rel=1e-12)
            rest = lambda q: sorted(q[i, j].item() for j in range(10) if j != c)  # noqa: E731
            assert rest(pp) == pytest.approx(rest(p), rel=1e-12)
            # and by hand: the j-th non-target slot holds the perm[i, j]-th non-target value
            others = [j for j in range(10) if j != c]
            for j, src in enumerate(perm[i].tolist()):
                assert zp[i, others[j]].item() == z[i, others[src]].item()
    assert (zp != z).any(dim=1).float().mean() > 0.9  # the structure is actually moved


def test_permuted_kd_is_kd_against_the_hand_permuted_teacher_and_stable_across_epochs():
    s, t = _linear_pair(2)
    x, y = _batch(7, 3)
    index = torch.tensor([11, 4, 900, 4096, 3, 250, 5000])
    d = PermutedKD(s, t, temperature=2.0, alpha=0.7, seed=5)
    assert (d.temperature, d.alpha) == (2.0, 0.7) and PermutedKD(s, t).temperature == HintonKD(s, t).temperature
    assert PermutedKD(s, t).alpha == HintonKD(s, t).alpha and d.logits_only
    logits, losses = d(x, y, StepContext(epoch=1, index=index))
    zs, zt = s(x).detach().double().tolist(), t(x).detach().double().tolist()
    perm = non_target_permutations(index, K, seed=5).tolist()
    kd = 0.0
    for i, c in enumerate(y.tolist()):
        pt = _softmax(zt[i], 2.0)
        others = [j for j in range(K) if j != c]
        q = list(pt)
        for j, src in enumerate(perm[i]):  # the hand permutation, in probability space
            q[others[j]] = pt[others[src]]
        kd += 4.0 * _kl(q, _softmax(zs[i], 2.0))
    assert losses["loss_kd"].item() == pytest.approx(0.7 * kd / 7, rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), rel=1e-6)
    # another epoch, the cached teacher logits, a batch in another order: the same targets per image
    later = d(x, y, StepContext(epoch=9, index=index, teacher={"logits": t(x).detach()}))[1]
    torch.testing.assert_close(later["loss_kd"], losses["loss_kd"])
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    shuffled = d(x[order], y[order], StepContext(index=index[order]))[1]
    torch.testing.assert_close(shuffled["loss_kd"], losses["loss_kd"])
    # and it is not plain KD
    plain = HintonKD(s, t, temperature=2.0, alpha=0.7)(x, y)[1]["loss_kd"]
    assert abs(plain.item() - losses["loss_kd"].item()) > 1e-3
    assert d.describe() == {"method": "PermutedKD", "temperature": 2.0, "alpha": 0.7, "seed": 5}
    with pytest.raises(ValueError, match="needs the batch's sample indices"):
        d(x, y)
    with pytest.raises(ValueError, match=r"seed must be .* got 1.5"):
        PermutedKD(s, t, seed=1.5)


# -------------------------------------------------------------- pseudo-labels ----
def test_pseudo_label_is_cross_entropy_on_the_teachers_argmax_only():
    s, t = _linear_pair(4)
    x, y = _batch(9, 5)
    d = build_distiller("pseudo_label", s, t)
    logits, losses = d(x, y)
    assert set(losses) == {"loss_pseudo"}
    want = 0.0
    for zs, zt in zip(logits.detach().double().tolist(), t(x).detach().double().tolist()):
        top = max(range(K), key=lambda j: zt[j])
        want -= math.log(_softmax(zs)[top])
    assert losses["loss_pseudo"].item() == pytest.approx(want / 9, rel=1e-5)
    other_labels = (y + 1) % K  # the ground truth plays no part
    torch.testing.assert_close(d(x, other_labels)[1]["loss_pseudo"], losses["loss_pseudo"])
    cached = PseudoLabelKD(s, None)(x, y, StepContext(teacher={"logits": t(x).detach().half()}))[1]
    assert cached["loss_pseudo"].item() == pytest.approx(losses["loss_pseudo"].item(), rel=1e-6)
    assert d.logits_only and d.describe() == {"method": "PseudoLabelKD"}


# ------------------------------------------------------------- DKD's halves ----
def _tckd_nckd_by_hand(zs, zt, y, T):
    tckd = nckd = 0.0
    for a, b, c in zip(zs, zt, y):
        ps, pt = _softmax(a, T), _softmax(b, T)
        tckd += _kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        qs = _softmax([a[j] for j in range(len(a)) if j != c], T)
        qt = _softmax([b[j] for j in range(len(b)) if j != c], T)
        nckd += _kl(qt, qs)
    return T * T * tckd / len(y), T * T * nckd / len(y)


def test_dkd_halves_are_reachable_as_configurations():
    s, t = _linear_pair(6)
    x, y = _batch(8, 7)
    tckd, nckd = _tckd_nckd_by_hand(s(x).detach().double().tolist(), t(x).detach().double().tolist(), y.tolist(), 4.0)
    target_only = DKD(s, t, beta=0.0, warmup=0, ce_weight=0.0)(x, y)[1]
    assert target_only["loss_nckd"].item() == 0.0
    assert sum(target_only.values()).item() == pytest.approx(tckd, rel=1e-5)
    non_target_only = DKD(s, t, alpha=0.0, beta=1.0, warmup=0, ce_weight=0.0)(x, y)[1]
    assert non_target_only["loss_tckd"].item() == 0.0
    assert sum(non_target_only.values()).item() == pytest.approx(nckd, rel=1e-5)
    assert build_distiller("dkd", s, t, alpha=0, beta=8.0).alpha == 0.0  # by name, as run_experiment builds it


# ----------------------------------------------------------- through the doors ----
CFG = dict(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, device="cpu", precision="fp32")


@pytest.fixture
def _own_session(monkeypatch):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV):
        monkeypatch.delenv(k, raising=False)


def _mlp_teacher(data):
    torch.manual_seed(1)
    return build_model("mnist_mlp", num_classes=data.num_classes).eval()


@pytest.mark.parametrize("method,kwargs,augment", [("label_smoothing", {"epsilon": 0.15}, None),
                                                   ("kd_permuted", {"seed": 2}, "jitter"),
                                                   ("pseudo_label", {}, None)])
def test_each_control_trains_through_run_experiment_and_is_reused(method, kwargs, augment, toy_mnist, tmp_path,
                                                                   _own_session):
    cfg = TrainConfig(**CFG, augment=augment)
    teacher = _mlp_teacher(toy_mnist)
    kw = dict(method=method, teacher=teacher, profile="smoke", root=tmp_path, progress=False, **kwargs)
    run = run_experiment(method, {"name": "mnist_mlp"}, toy_mnist, cfg, **kw)
    assert not run.reused and 0 <= run.accuracy <= 1 and math.isfinite(run.metrics["test_loss"])
    assert run.spec["method"] == method and run.spec["method_kwargs"] == kwargs
    assert run.spec["numerics"]["controls"] == NUMERICS["controls"]
    term = {"label_smoothing": "train_loss_ce", "kd_permuted": "train_loss_kd", "pseudo_label": "train_loss_pseudo"}
    assert math.isfinite(run.history[term[method]].iloc[0]) and run.history[term[method]].iloc[0] > 0
    assert "agreement" in run.metrics  # measured against the teacher passed, whatever the method
    if method == "label_smoothing":  # keyed, trained and recorded without a teacher, as plain CE is
        assert run.spec["teacher_sha256"] is None and "teacher_outputs" not in run.spec["numerics"]
        assert run.metrics["teacher_outputs"] == "none" and run.record["metrics"]["teacher_outputs"] == "none"
        no_teacher = run_experiment(method, {"name": "mnist_mlp"}, toy_mnist, cfg, **{**kw, "teacher": None})
        assert no_teacher.reused and no_teacher.key == run.key
    else:
        assert run.spec["teacher_sha256"] is not None and "teacher_outputs" in run.spec["numerics"]
        source = run.metrics["teacher_outputs"]
        assert source.startswith("plan cache" if augment else "cached logits"), source
    assert run_experiment(method, {"name": "mnist_mlp"}, toy_mnist, cfg, **kw).reused


def test_permuted_kd_runs_are_reproducible_and_depend_on_the_seed(toy_mnist):
    cfg = TrainConfig(**CFG)
    teacher = _mlp_teacher(toy_mnist)

    def loss(seed):
        torch.manual_seed(0)
        s = build_model("mnist_mlp", num_classes=toy_mnist.num_classes)
        res = distill(s, teacher, toy_mnist, cfg, method="kd_permuted", seed=seed, progress=False)
        return res.history["train_loss_kd"].iloc[0]

    first = loss(0)
    assert loss(0) == first and loss(1) != first


def test_distill_says_a_teacher_free_method_used_no_teacher(toy_mnist):
    torch.manual_seed(0)
    s = build_model("mnist_mlp", num_classes=toy_mnist.num_classes)
    res = distill(s, _mlp_teacher(toy_mnist), toy_mnist, TrainConfig(**CFG), method="label_smoothing", progress=False)
    assert res.config["teacher_outputs"] == "none" and res.config["epsilon"] == 0.1
