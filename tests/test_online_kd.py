"""Online distillation without a teacher (KDCL), cohorts on their own augmentation plans, and the wide student
with an ensemble's FLOPs: each against hand computations."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_utils import build_model, runs
from kd_utils.config import TrainConfig
from kd_utils.ensemble import CohortDistiller, PeerPlans, peer_plan_seed
from kd_utils.experiments import run_experiment
from kd_utils.methods.kdcl import KDCL, kdcl_target, minlogit_target
from kd_utils.models import Cohort
from kd_utils.numerics import NUMERICS, versions_for
from kd_utils.profiling import spec_flops, width_for_flops
from kd_utils.train_eval import fit
from kd_utils.train_kd import DISTILLERS, StepContext


@pytest.fixture(autouse=True)
def _own_session(monkeypatch):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV):
        monkeypatch.delenv(k, raising=False)


class Fixed(nn.Module):
    """A "peer" whose logits are a parameter (the input is ignored): fixed logits with gradients."""
    num_classes = 5

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(z.clone())

    def forward(self, x):
        return self.z * 1.0


def _logits(s, n=6, k=5, seed=0):
    return torch.randn(s, n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def _softmax(v, t):
    m = max(v)
    e = [math.exp((a - m) / t) for a in v]
    return [a / sum(e) for a in e]


def _hand_kdcl(z, y, t, ce_w, kd_w, ensemble):
    """The paper's loss written out with Python floats: sum over peers of CE + T^2 KL(p_target || p_i)."""
    s, n, k = len(z), len(z[0]), len(z[0][0])
    if ensemble == "minlogit":  # min over peers of the logits shifted so that the label's logit is 0
        target = [[min(z[i][a][c] - z[i][a][y[a]] for i in range(s)) for c in range(k)] for a in range(n)]
    else:
        target = [[sum(z[i][a][c] for i in range(s)) / s for c in range(k)] for a in range(n)]
    ce = kd = 0.0
    for i in range(s):
        for a in range(n):
            p_i, p_t = _softmax(z[i][a], t), _softmax(target[a], t)
            ce += -math.log(_softmax(z[i][a], 1.0)[y[a]]) / n
            kd += t * t * sum(pt * (math.log(pt) - math.log(pi)) for pt, pi in zip(p_t, p_i)) / n
    return ce_w * ce, kd_w * kd, target


# ---------------------------------------------------------------------------------------------- KDCL ----
@pytest.mark.parametrize("peers", [2, 4])
@pytest.mark.parametrize("ensemble,t,ce_w,kd_w", [("minlogit", 4.0, 1.0, 1.0), ("minlogit", 2.0, 0.5, 3.0),
                                                   ("mean", 3.0, 1.0, 1.0)])
def test_kdcl_loss_is_the_papers_formula_on_fixed_logits(peers, ensemble, t, ce_w, kd_w):
    z = _logits(peers, seed=peers).float()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    cohort = Cohort([Fixed(z[i]) for i in range(peers)])
    d = KDCL(cohort, None, ensemble=ensemble, temperature=t, ce_weight=ce_w, kd_weight=kd_w)
    _, losses = d(torch.zeros(6, 1), y)
    ce, kd, target = _hand_kdcl(z.double().tolist(), y.tolist(), t, ce_w, kd_w, ensemble)
    assert set(losses) == {"loss_ce", "loss_kdcl"}
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert losses["loss_kdcl"].item() == pytest.approx(kd, rel=1e-4)
    torch.testing.assert_close(kdcl_target(z, y, ensemble), torch.tensor(target, dtype=torch.float32))
    # the target is detached: each peer's gradient is its own CE's plus T (p_i - p_target) / N, nothing via the target
    sum(losses.values()).backward()
    p_t = F.softmax(torch.tensor(target, dtype=torch.float64) / t, dim=1)
    for i, peer in enumerate(cohort.students):
        zi = z[i].double()
        expected = ce_w * (F.softmax(zi, 1) - F.one_hot(y, 5)) / 6 + kd_w * t * (F.softmax(zi / t, 1) - p_t) / 6
        torch.testing.assert_close(peer.z.grad.double(), expected, rtol=1e-4, atol=1e-6)


def test_minlogit_target_is_at_least_as_good_as_the_best_peer_on_every_image():
    z = _logits(3, n=40, k=10, seed=7)
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(1))
    tgt = minlogit_target(z, y)
    assert torch.all(tgt.gather(1, y[:, None]) == 0)
    ce = lambda lg: F.cross_entropy(lg.double(), y, reduction="none")  # noqa: E731
    best_peer = torch.stack([ce(z[i]) for i in range(3)]).min(0).values
    assert torch.all(ce(tgt) <= best_peer + 1e-6)
    # shifting one peer's logits by a constant per image changes nothing (softmax is shift-invariant)
    shifted = z.clone()
    shifted[1] += torch.randn(40, 1, dtype=z.dtype)
    torch.testing.assert_close(minlogit_target(shifted, y), tgt.float())


def test_kdcl_is_registered_teacher_free_and_checks_its_arguments():
    assert DISTILLERS["kdcl"] is KDCL and KDCL.family == "kdcl" and NUMERICS["kdcl"] >= 1 and KDCL.teacher_free
    assert "teacher_outputs" not in versions_for(KDCL, False) and versions_for(KDCL, False)["kdcl"] == NUMERICS["kdcl"]
    cohort = Cohort([nn.Linear(4, 3) for _ in range(2)])
    teacher = nn.Linear(4, 3)
    d = KDCL(cohort, teacher)
    assert d.teacher is None and teacher.weight.requires_grad  # not kept, not frozen
    assert d.describe() == {"method": "KDCL", "students": 2, "ensemble": "minlogit", "temperature": 4.0,
                            "ce_weight": 1.0, "kd_weight": 1.0}
    with pytest.raises(ValueError, match="cohort of peers, got a Linear"):
        KDCL(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="at least two peers, got a cohort of 1"):
        KDCL(Cohort([nn.Linear(4, 3)]))
    with pytest.raises(ValueError, match=r"ensemble must be one of \('minlogit', 'mean'\), got 'max'"):
        KDCL(cohort, ensemble="max")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        KDCL(cohort, temperature=0)
    with pytest.raises(ValueError, match="kd_weight must be a finite number >= 0, got -1"):
        KDCL(cohort, kd_weight=-1)
    with pytest.raises(ValueError, match=r"plans must be one of \('shared', 'own'\), got 'mine'"):
        KDCL(cohort, plans="mine")
    with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match 2 samples"):
        kdcl_target(torch.zeros(2, 2, 3), torch.zeros(3, dtype=torch.long))


COHORT = {"name": "cohort", "members": [{"name": "vgg8", "width": 0.125}, {"name": "vgg8", "width": 0.125}]}


def test_kdcl_cohort_trains_through_run_experiment_without_a_teacher(toy_cifar, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, augment="crop_flip", seed=0, device="cpu",
                      precision="fp32")
    kw = dict(method="kdcl", profile="smoke", root=tmp_path, progress=False)
    run = run_experiment("kdcl-cohort", COHORT, toy_cifar, cfg, **kw)
    assert not run.reused and 0 <= run.accuracy <= 1 and math.isfinite(run.metrics["test_loss"])
    assert run.spec["teacher_sha256"] is None and run.metrics["teacher_outputs"] == "none"
    assert "teacher_outputs" not in run.spec["numerics"] and run.spec["numerics"]["kdcl"] == NUMERICS["kdcl"]
    assert {"train_loss_ce", "train_loss_kdcl"} <= set(run.history.columns)
    assert all(run.history[c].notna().all() and (run.history[c] > 0).all() for c in ("train_loss_ce", "train_loss_kdcl"))
    assert isinstance(run.model, Cohort) and len(run.model.students) == 2
    # each member's logits are in the record: per-member numbers need no stored weights
    from kd_utils.train_eval import predict
    members = run.member_logits("test")
    assert members.shape == (2, len(toy_cifar.y_test), 10)
    for i, student in enumerate(run.model.students):
        fresh = predict(student, toy_cifar.loader("test", batch_size=1024), "cpu", "fp32")[0]
        assert torch.allclose(members[i], fresh.half().float(), atol=1e-2)
    assert run.member_logits("val").shape[0] == 2
    assert run_experiment("kdcl-cohort", COHORT, toy_cifar, cfg, **kw).reused
    # teacher-free methods are keyed without a teacher passed to them
    assert run_experiment("kdcl-cohort", COHORT, toy_cifar, cfg, teacher=build_model("vgg8", width=0.125), **kw).reused


def test_mutual_learning_on_own_plans_trains_through_run_experiment(toy_cifar, tmp_path):
    """run_experiment prepares a teacher-free distiller (the peers' own plans) before training."""
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, augment="crop_flip", seed=0, device="cpu",
                      precision="fp32")
    kw = dict(method="cohort", profile="smoke", root=tmp_path, progress=False, beta=1.0)
    own = run_experiment("dml-own", COHORT, toy_cifar, cfg, plans="own", **kw)
    shared = run_experiment("dml-shared", COHORT, toy_cifar, cfg, **kw)
    assert own.key != shared.key and not own.reused and not shared.reused
    assert not torch.equal(own.logits(), shared.logits())  # other batches for peer 1: other weights


# ------------------------------------------------------------------------------------------ own plans ----
def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
                          "device": "cpu", "precision": "fp32", "augment": "crop_flip", "seed": 3, **kw})


def test_peer_plan_seeds_keep_peer_zero_and_stay_apart():
    assert peer_plan_seed(7, 0) == 7
    seeds = [peer_plan_seed(s, k) for s in range(4) for k in range(1, 5)]
    assert len(set(seeds)) == len(seeds) and min(seeds) > 10 ** 6  # far from the small seeds runs use
    gaps = [abs(a - b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    assert min(gaps) > 1000  # the loader seeds epoch e with seed + e: no two peers share an epoch
    with pytest.raises(ValueError, match="peer must be an int >= 0, got -1"):
        peer_plan_seed(0, -1)


def test_students_on_their_own_plans_equal_students_trained_alone_on_those_plans(toy_cifar):
    cfg = _cfg()
    inits = []
    for s in range(3):
        torch.manual_seed(100 + s)
        inits.append(build_model("vgg8", width=0.125))
    together = Cohort([copy.deepcopy(m) for m in inits])
    method = CohortDistiller(together, None, plans="own")
    method.prepare(toy_cifar, cfg)
    fit(together, toy_cifar, cfg, method=method, progress=False, restore_best=False)
    shared = Cohort([copy.deepcopy(m) for m in inits])
    fit(shared, toy_cifar, cfg, method=CohortDistiller(shared, None), progress=False, restore_best=False)
    for s, init in enumerate(inits):
        alone = copy.deepcopy(init)
        fit(alone, toy_cifar, cfg.replace(data_seed=peer_plan_seed(cfg.plan_seed, s)), progress=False,
            restore_best=False)
        for (k, a), b in zip(alone.state_dict().items(), together.students[s].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"student {s} {k}")
        w_own, w_shared = together.students[s].classifier.weight, shared.students[s].classifier.weight
        assert torch.allclose(w_own, w_shared) == (s == 0)  # peer 0 keeps the run's plan; the others do not


def _first_batches(data, cfg, peers):
    """Each peer's first batch, from a loader built by hand on that peer's plan seed."""
    out = []
    for k in range(peers):
        x, y = next(iter(data.loader("train", batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                                     seed=peer_plan_seed(cfg.plan_seed, k))))
        out.append((x, y))
    return out


def _one_step(method, data, cfg):
    x, y = next(iter(data.loader("train", batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                                 seed=cfg.plan_seed)))
    steps = math.ceil(len(data.y_train) / cfg.batch_size)
    return method(x, y, StepContext(epoch=1, step=0, epochs=cfg.epochs, steps_per_epoch=steps))


@pytest.mark.parametrize("peers", ["mean", "sum"])
def test_mutual_learning_on_own_plans_compares_peers_on_each_peers_own_batch(toy_cifar, peers):
    cfg = _cfg()
    torch.manual_seed(0)
    cohort = build_model("cohort", members=[{"name": "vgg8", "width": 0.125}] * 3).train()
    ref = copy.deepcopy(cohort)  # the same peers, evaluated by hand
    method = CohortDistiller(cohort, None, beta=2.0, mutual_temperature=3.0, peers=peers, plans="own")
    method.prepare(toy_cifar, cfg)
    _, losses = _one_step(method, toy_cifar, cfg)
    batches = _first_batches(toy_cifar, cfg, 3)
    by_hand = [copy.deepcopy(s) for s in ref.students]
    own = [m(xb) for m, (xb, _) in zip(by_hand, batches)]
    ce = sum(F.cross_entropy(z, yb) for z, (_, yb) in zip(own, batches))
    kl = 0.0
    for i, (xi, _) in enumerate(batches):
        for j, peer in enumerate(ref.students):
            if j != i:  # peer j on peer i's batch, training-mode BatchNorm, no gradient
                p_j = F.softmax(copy.deepcopy(peer)(xi).detach() / 3.0, 1)
                log_p_i = F.log_softmax(own[i] / 3.0, 1)
                kl = kl + 9.0 * (p_j * (p_j.log() - log_p_i)).sum(1).mean() * (0.5 if peers == "mean" else 1.0)
    torch.testing.assert_close(losses["loss_ce"], ce)
    torch.testing.assert_close(losses["loss_dml"], 2.0 * kl)
    # the peers' buffers are put back before any graph saves them; each peer's gradient is its own loss's
    sum(losses.values()).backward()
    (ce + 2.0 * kl).backward()
    for trained, hand in zip(cohort.students, by_hand):
        for a, b in zip(trained.parameters(), hand.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    # each peer's BatchNorm statistics moved with its own batch only
    for trained, hand in zip(cohort.students, by_hand):
        torch.testing.assert_close(trained.stage1[1].running_mean, hand.stage1[1].running_mean)
        assert int(trained.stage1[1].num_batches_tracked) == int(hand.stage1[1].num_batches_tracked) == 1
    assert method.describe()["plans"] == "own" and "plans" not in CohortDistiller(cohort, None).describe()


def test_mutual_learning_on_own_plans_resumes_bit_for_bit(toy_cifar, tmp_path):
    cfg = _cfg()
    torch.manual_seed(2)
    init = build_model("cohort", members=[{"name": "vgg8", "width": 0.125}] * 2)

    def train(**kw):
        cohort = copy.deepcopy(init)
        method = CohortDistiller(cohort, None, beta=1.0, plans="own")
        method.prepare(toy_cifar, cfg)
        res = fit(cohort, toy_cifar, cfg, method=method, progress=False, restore_best=False, **kw)
        return cohort, res

    whole, res = train()
    assert res.history["train_loss_dml"].gt(0).all()
    state = tmp_path / "state.pth"
    train(state_path=state, stop_after=1)
    resumed, _ = train(state_path=state, resume=True)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_kdcl_on_own_plans_builds_each_peers_target_on_its_own_batch(toy_cifar):
    cfg = _cfg()
    torch.manual_seed(1)
    cohort = build_model("cohort", members=[{"name": "vgg8", "width": 0.125}] * 2).train()
    ref = copy.deepcopy(cohort)
    method = KDCL(cohort, None, temperature=2.0, plans="own")
    method.prepare(toy_cifar, cfg)
    out, losses = _one_step(method, toy_cifar, cfg)
    batches = _first_batches(toy_cifar, cfg, 2)
    kd = ce = 0.0
    for i, (xi, yi) in enumerate(batches):
        views = [copy.deepcopy(s)(xi).detach() for s in ref.students]  # every peer on peer i's batch
        z_i = views[i]
        target = torch.stack([v - v.gather(1, yi[:, None]) for v in views]).min(0).values
        p_t = F.softmax(target / 2.0, 1)
        kd = kd + 4.0 * (p_t * (p_t.log() - F.log_softmax(z_i / 2.0, 1))).sum(1).mean()
        ce = ce + F.cross_entropy(z_i, yi)
    torch.testing.assert_close(losses["loss_kdcl"], kd)
    torch.testing.assert_close(losses["loss_ce"], ce)
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cohort.parameters())
    torch.testing.assert_close(out, copy.deepcopy(ref.students[0])(batches[0][0]).detach(), rtol=1e-4, atol=1e-5)


def test_peer_plans_resume_mid_epoch_and_refuse_what_they_cannot_serve(toy_cifar):
    cfg = _cfg()
    x, y = next(iter(toy_cifar.loader("train", batch_size=64)))
    ctx = lambda e, i: StepContext(epoch=e, step=(e - 1) * 4 + i, epochs=2, steps_per_epoch=4)  # noqa: E731
    walked = PeerPlans(3)
    walked.bind(toy_cifar, cfg)
    for e, i in [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]:
        last = walked.batches(x, y, ctx(e, i))
    fresh = PeerPlans(3)  # a resumed run: starts at epoch 2, step 1
    fresh.bind(toy_cifar, cfg)
    resumed = fresh.batches(x, y, ctx(2, 1))
    for (a, ya), (b, yb) in zip(last, resumed):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(last[1][0], last[2][0])  # two peers, two plans
    unbound = PeerPlans(2)
    with pytest.raises(RuntimeError, match=r"call it before training"):
        unbound.batches(x, y, ctx(1, 0))
    with pytest.raises(ValueError, match="needs the step context"):
        walked.batches(x, y, None)
    with pytest.raises(RuntimeError, match="4 batches an epoch but the loop 5"):
        walked.batches(x, y, StepContext(epoch=1, step=0, epochs=2, steps_per_epoch=5))
    cohort = Cohort([nn.Linear(4, 3) for _ in range(2)])
    with pytest.raises(ValueError, match="plans='own' is for teacher-free cohorts"):
        CohortDistiller(cohort, nn.Linear(4, 3), alpha=0.5, plans="own")


# -------------------------------------------------------------------------------- width for FLOPs ----
def _vgg8_flops_by_hand(width: float, k: int = 10) -> int:
    """Conv FLOPs 2 * H * W * C_out * C_in * 9 at 32, 16, 8, 4, 2 px, plus the classifier's 2 * C * K."""
    chans = [max(4, int(round(c * width))) for c in (64, 128, 256, 512, 512)]
    c_in, total = 3, 0
    for c, side in zip(chans, (32, 16, 8, 4, 2)):
        total += 2 * side * side * c * c_in * 9
        c_in = c
    return total + 2 * c_in * k


def test_spec_flops_counts_a_vgg8_as_the_hand_formula_and_leaves_the_random_state_alone():
    state = torch.get_rng_state()
    assert spec_flops("vgg8", width=0.25) == _vgg8_flops_by_hand(0.25)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("members", [2, 5])
def test_width_for_flops_matches_an_ensembles_flops_within_two_percent(members):
    target = members * _vgg8_flops_by_hand(0.25)
    w = width_for_flops("vgg8", target)
    assert 0.25 < w < 0.25 * members
    assert abs(_vgg8_flops_by_hand(w) - target) <= 0.02 * target
    assert spec_flops("vgg8", width=w) == _vgg8_flops_by_hand(w)


def test_width_for_flops_grows_with_the_target():
    base = _vgg8_flops_by_hand(0.25)
    widths = [width_for_flops("vgg8", f * base) for f in (0.5, 1.0, 2.0, 3.5, 5.0)]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    costs = [_vgg8_flops_by_hand(w) for w in widths]
    assert costs == sorted(costs)
    assert abs(_vgg8_flops_by_hand(width_for_flops("vgg8", base)) - base) <= 0.02 * base


def test_width_for_flops_refuses_what_it_cannot_find():
    with pytest.raises(ValueError, match="below vgg8's smallest cost"):
        width_for_flops("vgg8", 1000)
    with pytest.raises(ValueError, match="above vgg8's cost at width 1024"):
        width_for_flops("vgg8", 1e18)
    with pytest.raises(ValueError, match="target_flops must be a finite number > 0, got 0"):
        width_for_flops("vgg8", 0)
    with pytest.raises(ValueError, match="do not pass width"):
        width_for_flops("vgg8", 1e7, width=0.5)
    with pytest.raises(ValueError, match="constructor takes width"):
        width_for_flops("mnist_mlp", 1e6, input_shape=(1, 28, 28))
