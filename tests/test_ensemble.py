"""Ensembles, students trained together, mutual learning: against hand computations."""
from __future__ import annotations

import pytest
import torch

from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils.ensemble import (Cohort, CohortDistiller, Ensemble, disagreement_matrix, ensemble_curve, ensemble_logits, mutual_loss,
                               pairwise_disagreement, pairwise_kl)
from kd_utils.train_eval import fit
from kd_utils.train_kd import HintonKD


def _logits(s, n=16, k=5, seed=0):
    return torch.randn(s, n, k, generator=torch.Generator().manual_seed(seed)) * 2


def test_ensemble_against_hand_computation():
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(7, 4)
    outs = [m(x) for m in models]
    with torch.no_grad():
        mean_p = sum(o.softmax(1) for o in outs) / 3
        torch.testing.assert_close(Ensemble(models, "probs")(x).exp(), mean_p)
        torch.testing.assert_close(Ensemble(models, "logits")(x), sum(outs) / 3)
        torch.testing.assert_close(ensemble_logits(outs, "probs"), Ensemble(models)(x))
    with pytest.raises(ValueError, match="unknown combine"):
        Ensemble(models, "median")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_ensemble_curve_and_disagreement():
    labels = torch.tensor([0, 1, 2, 0])
    a = torch.eye(3)[[0, 1, 2, 1]] * 5   # 3 of 4 right
    b = torch.eye(3)[[0, 1, 0, 0]] * 5   # 3 of 4 right, differs from a on samples 2 and 3
    assert ensemble_curve([a, b], labels)[0] == 0.75
    assert pairwise_disagreement([a, b]) == 0.5
    assert pairwise_disagreement([a, a, b]) == pytest.approx((0 + 0.5 + 0.5) / 3)
    torch.testing.assert_close(disagreement_matrix([a, a, b]), torch.tensor([[0, 0, .5], [0, 0, .5], [.5, .5, 0]]))
    c = torch.eye(3)[[2, 2, 2, 2]] * 5   # 1 of 4 right
    # subsets of size 1: mean of the single accuracies; size 3: the whole ensemble
    curve = ensemble_curve([a, b, c], labels, subsets=True)
    assert curve[0] == pytest.approx((0.75 + 0.75 + 0.25) / 3)
    assert curve[2] == ensemble_curve([a, b, c], labels)[2]
    pair = [ensemble_curve([a, b], labels)[1], ensemble_curve([a, c], labels)[1], ensemble_curve([b, c], labels)[1]]
    assert curve[1] == pytest.approx(sum(pair) / 3)


def test_pairwise_kl_against_hand_computation():
    lg = _logits(3, seed=1).double()
    p = lg.softmax(-1)
    kl = lambda a, b: float((p[a] * (p[a].log() - p[b].log())).sum(-1).mean())
    expected = sum(kl(i, j) for i in range(3) for j in range(3) if i != j) / 6
    assert pairwise_kl(list(lg)) == pytest.approx(expected, rel=1e-9)
    assert pairwise_kl([lg[0], lg[0]]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        pairwise_kl([lg[0]])


def test_mutual_loss_against_the_formula():
    lg = _logits(3)
    p = lg.softmax(-1)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:  # KL(p_j || p_i), batch mean, averaged over the two peers
                expected += (p[j] * (p[j].log() - p[i].log())).sum(-1).mean() / 2
    torch.testing.assert_close(mutual_loss(lg), expected)
    z = lg.clone().requires_grad_(True)
    mutual_loss(z).backward()
    # peers are detached: student 0's gradient comes only from its own KL terms
    z0 = lg[0].clone().requires_grad_(True)
    own = sum((p[j] * (p[j].log() - z0.log_softmax(-1))).sum(-1).mean() / 2 for j in (1, 2))
    own.backward()
    torch.testing.assert_close(z.grad[0], z0.grad)
    with pytest.raises(ValueError, match="at least two"):
        mutual_loss(lg[:1])


def test_mutual_loss_sums_the_peers_as_the_paper_when_asked():
    lg = _logits(3)
    p = lg.softmax(-1)
    summed = sum((p[j] * (p[j].log() - p[i].log())).sum(-1).mean() for i in range(3) for j in range(3) if i != j)
    torch.testing.assert_close(mutual_loss(lg, peers="sum"), summed)
    two = lg[:2]  # with two students the paper's sum and our mean are the same loss
    torch.testing.assert_close(mutual_loss(two, peers="sum"), mutual_loss(two))
    with pytest.raises(ValueError, match=r"peers must be one of \('mean', 'sum'\), got 'max'"):
        mutual_loss(lg, peers="max")
    cohort = Cohort([torch.nn.Linear(4, 10) for _ in range(3)])
    d = CohortDistiller(cohort, None, beta=1.0, peers="sum")
    assert d.describe()["peers"] == "sum" and "peers" not in CohortDistiller(cohort, None, beta=1.0).describe()
    x, y = torch.randn(6, 4), torch.randint(0, 10, (6,))
    _, losses = d(x, y)
    torch.testing.assert_close(losses["loss_dml"], mutual_loss(cohort.all_logits(x).float(), peers="sum"))


@pytest.mark.parametrize("peers", ["mean", "sum"])
def test_four_peers_mutual_term_by_hand(peers):
    """Four students: each KL(p_j || p_i) over its three peers, averaged (ours) or summed (the paper's)."""
    torch.manual_seed(3)
    cohort = Cohort([torch.nn.Linear(4, 10) for _ in range(4)])
    x, y = torch.randn(8, 4), torch.randint(0, 10, (8,))
    d = CohortDistiller(cohort, None, beta=0.5, mutual_temperature=2.0, peers=peers)
    _, losses = d(x, y)
    with torch.no_grad():
        p = [(m(x) / 2.0).softmax(1).double() for m in cohort.students]
    by_hand = 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                by_hand += 4.0 * float((p[j] * (p[j].log() - p[i].log())).sum(1).mean())
    by_hand *= 0.5 * (1 / 3 if peers == "mean" else 1.0)
    assert losses["loss_dml"].item() == pytest.approx(by_hand, rel=1e-5)
    lg = cohort.all_logits(x).float()
    torch.testing.assert_close(mutual_loss(lg, 2.0, "sum"), 3 * mutual_loss(lg, 2.0, "mean"))


def test_students_trained_together_equal_students_trained_one_by_one(toy_cifar):
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", lr=0.02, momentum=0.9, device="cpu",
                      precision="fp32", augment="crop_flip", seed=0)
    torch.manual_seed(5)
    teacher = build_model("vgg8", width=0.125).eval()
    inits = []
    for s in range(3):
        torch.manual_seed(100 + s)
        inits.append(build_model("vgg8", width=0.125))
    together = Cohort([_copy(m) for m in inits])
    fit(together, toy_cifar, cfg, method=CohortDistiller(together, teacher, temperature=4.0, alpha=0.9),
        progress=False, restore_best=False)
    for s, init in enumerate(inits):
        alone = _copy(init)
        fit(alone, toy_cifar, cfg, method=HintonKD(alone, teacher, temperature=4.0, alpha=0.9), progress=False,
            restore_best=False)
        for (k, a), b in zip(alone.state_dict().items(), together.students[s].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"student {s} {k}")


def test_mutual_learning_changes_the_students(toy_cifar):
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, device="cpu", precision="fp32", seed=0)
    torch.manual_seed(0)
    inits = [build_model("vgg8", width=0.125) for _ in range(2)]
    runs = {}
    for beta in (0.0, 1.0):
        c = Cohort([_copy(m) for m in inits])
        res = fit(c, toy_cifar, cfg, method=CohortDistiller(c, None, beta=beta), progress=False, restore_best=False)
        runs[beta] = (c, res)
    assert "train_loss_dml" in runs[1.0][1].history and "train_loss_dml" not in runs[0.0][1].history
    a, b = runs[0.0][0].students[0].classifier.weight, runs[1.0][0].students[0].classifier.weight
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="at least two students"):
        CohortDistiller(Cohort([inits[0]]), None, beta=1.0)


def _copy(m):
    import copy
    return copy.deepcopy(m)


def test_multi_teacher_distillation_uses_the_averaged_teachers(toy_cifar, tmp_path):
    from kd_utils.experiments import distill
    from kd_utils.plans import AugmentationPlan, teacher_outputs
    torch.manual_seed(0)
    teachers = [build_model("vgg8", width=0.125).eval() for _ in range(2)]
    ens = Ensemble(teachers, "probs")
    cfg = TrainConfig(epochs=1, batch_size=64, augment="crop", device="cpu", precision="fp32", seed=0)
    outs = teacher_outputs(ens, toy_cifar, AugmentationPlan.of(cfg), cache_dir=tmp_path, device="cpu",
                           precision="fp32", progress=False)
    x, *_ = next(iter(AugmentationPlan.of(cfg).loader(toy_cifar)))
    with torch.no_grad():
        mean_p = sum(t(x).softmax(1) for t in teachers) / 2
    torch.testing.assert_close(outs.logits[0, :len(x)].float().softmax(1), mean_p, rtol=2e-3, atol=2e-3)
    student = build_model("vgg8", width=0.125)
    res = distill(student, ens, toy_cifar, cfg, cache_dir=tmp_path, temperature=4.0, progress=False)
    assert res.config["teacher_outputs"].startswith("plan cache read")  # the same plan: the cache built above


def test_a_cohort_history_has_each_members_validation_accuracy(toy_cifar):
    """Beside the ensemble's val_acc (which selects the epoch), one val_acc_m<i> per member: at the last
    epoch (kept, restore_best=False) each equals that member evaluated afresh; a single model gets none."""
    from kd_utils.train_eval import evaluate
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", lr=0.02, device="cpu", precision="fp32", seed=0)
    torch.manual_seed(0)
    c = Cohort([build_model("vgg8", width=0.125) for _ in range(2)])
    h = fit(c, toy_cifar, cfg, method=CohortDistiller(c, None, beta=1.0), progress=False, restore_best=False).history
    assert {"val_acc", "val_acc_m0", "val_acc_m1"} <= set(h.columns) and len(h) == 2
    for i, s in enumerate(c.students):
        assert h[f"val_acc_m{i}"].iloc[-1] == pytest.approx(evaluate(s, toy_cifar, "val", device="cpu").accuracy)
    assert h["val_acc"].iloc[-1] == pytest.approx(evaluate(c, toy_cifar, "val", device="cpu").accuracy)
    single = build_model("vgg8", width=0.125)
    h1 = fit(single, toy_cifar, cfg.replace(epochs=1), progress=False).history
    assert not any(col.startswith("val_acc_m") for col in h1.columns)
