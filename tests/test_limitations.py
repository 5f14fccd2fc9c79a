"""Helpers of LogitMatching_Limitations.ipynb (Task 2), each against a hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from kd_utils import build_model, fit, get_data, seed_everything
from kd_utils.analysis import add_logit_bias, choose_logit_bias, wrong_class_information
from kd_utils.config import TrainConfig
from kd_utils.experiments import fidelity


@pytest.fixture(scope="module")
def mnist():
    return get_data("mnist", train_subset=600, test_subset=100)


def test_keep_train_classes_filters_only_the_training_split(mnist):
    no3 = mnist.keep_train_classes([c for c in range(10) if c != 3])
    assert 3 not in set(no3.y_train.tolist()) and len(no3.y_train) == int((mnist.y_train != 3).sum())
    keep = (mnist.y_train != 3).nonzero().flatten()
    assert torch.equal(no3.x_train, mnist.x_train[keep]) and torch.equal(no3.train_idx, mnist.train_idx[keep])
    assert torch.equal(no3.y_val, mnist.y_val) and torch.equal(no3.x_test, mnist.x_test)
    only = mnist.keep_train_classes([8, 7, 7])
    assert set(only.y_train.tolist()) == {7, 8}
    with pytest.raises(ValueError, match=r"non-empty subset of 0..9, got \[10\]"):
        mnist.keep_train_classes([10])


def _errors_by_hand(logits, labels, classes, b):
    n = 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        row = [v + (b if j in classes else 0.0) for j, v in enumerate(row)]
        n += max(range(len(row)), key=lambda j: row[j]) != y
    return n


def test_logit_bias_is_chosen_by_errors_with_ties_to_the_smallest_bias():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    logits = torch.randn(200, 5, generator=g) + 3 * torch.nn.functional.one_hot(labels, 5)
    logits[:, 3] -= 4.0  # a student that never learned class 3
    grid = [x / 2 for x in range(0, 17)]
    bias, table = choose_logit_bias(logits, labels, [3], grid)
    hand = [_errors_by_hand(logits, labels, {3}, b) for b in grid]
    assert table["errors"].tolist() == hand
    best = min(hand)
    assert bias == min((b for b, e in zip(grid, hand) if e == best), key=abs)
    on3 = labels == 3
    assert table.loc[0, "errors_on_classes"] == int(((logits.argmax(1) != labels) & on3).sum())
    assert torch.equal(add_logit_bias(logits, [3], 0.0), logits)
    with pytest.raises(ValueError, match="non-empty subset of 0..4"):
        add_logit_bias(logits, [7], 1.0)


def test_wrong_class_information_against_a_loop():
    logits = torch.tensor([[4.0, 1.0, 1.0, 1.0], [0.0, 3.0, 2.0, -1.0]])
    labels = torch.tensor([0, 1])
    got = wrong_class_information(logits, labels, temperature=2.0)
    masses, ents = [], []
    for row, y in zip(logits.tolist(), labels.tolist()):
        e = [math.exp(v / 2.0) for v in row]
        p = [v / sum(e) for v in e]
        wrong = [p[j] for j in range(4) if j != y]
        masses.append(sum(wrong))
        q = [w / sum(wrong) for w in wrong]
        ents.append(-sum(v * math.log(v) for v in q) / math.log(3))
    assert got["wrong_class_mass"] == pytest.approx(sum(masses) / 2)
    assert got["wrong_class_entropy"] == pytest.approx(sum(ents) / 2)
    assert ents[0] == pytest.approx(1.0)  # equal wrong-class logits: no structure left


def test_fidelity_of_a_model_with_itself_and_with_another(mnist):
    torch.manual_seed(0)
    a, b = build_model("mnist_mlp").eval(), build_model("mnist_mlp").eval()
    same = fidelity(a, a, mnist, device="cpu", precision="fp32")
    assert list(same.index) == ["train", "test"]
    assert (same["agreement"] == 1.0).all() and same["kl"].abs().max() < 1e-9
    other = fidelity(a, b, mnist, splits=("test",), device="cpu", precision="fp32")
    x = mnist.normalize(mnist.x_test)
    with torch.no_grad():
        pa, pb = a(x).argmax(1), b(x).argmax(1)
    assert other.loc["test", "agreement"] == pytest.approx(float((pa == pb).float().mean()))
    assert other.loc["test", "kl"] > 0


def test_fidelity_evaluates_a_teacher_once_and_never_serves_stale_logits(mnist):
    torch.manual_seed(1)
    teacher, s1, s2 = (build_model("mnist_mlp").eval() for _ in range(3))
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    first = fidelity(teacher, s1, mnist, device="cpu", precision="fp32")
    n = len(calls)
    second = fidelity(teacher, s2, mnist, device="cpu", precision="fp32")
    assert n > 0 and len(calls) == n  # the second student's comparison reused the teacher's logits
    assert first.loc["train", "teacher_accuracy"] == second.loc["train", "teacher_accuracy"]
    with torch.no_grad():  # new weights: new logits, equal to a fresh forward pass
        next(teacher.parameters()).mul_(-1.0)
    changed = fidelity(teacher, s1, mnist, splits=("test",), device="cpu", precision="fp32")
    assert len(calls) > n
    with torch.no_grad():
        fresh = teacher(mnist.normalize(mnist.x_test)).argmax(1)
    assert changed.loc["test", "teacher_accuracy"] == pytest.approx(float((fresh == mnist.y_test).float().mean()))


def test_stop_after_is_the_start_of_the_full_schedule(mnist):
    cfg = TrainConfig(epochs=4, batch_size=128, optimizer="sgd", lr=0.1, schedule="cosine", device="cpu",
                      precision="fp32")
    seed_everything(0)
    full = fit(build_model("mnist_mlp"), mnist, cfg, progress=False)
    seed_everything(0)
    early = fit(build_model("mnist_mlp"), mnist, cfg, progress=False, stop_after=2)
    assert len(early.history) == 2
    for col in ("lr", "train_loss", "val_acc"):
        assert early.history[col].tolist() == full.history[col].iloc[:2].tolist()
    with pytest.raises(ValueError, match=r"stop_after must be an epoch in 1..4 \(cfg.epochs\), got 5"):
        fit(build_model("mnist_mlp"), mnist, cfg, progress=False, stop_after=5)


def test_scatter_plot_draws_every_point_and_checks_labels(tmp_path):
    from kd_utils import plots
    fig = plots.plot_scatter({"a": [(1, 2), (3, 4)], "b": [(2, 2)]}, "x", "y", labels={"a": ["p", "q"]},
                             path=tmp_path / "s.png")
    offsets = [c.get_offsets() for c in fig.axes[0].collections]
    assert [len(o) for o in offsets] == [2, 1] and offsets[0].tolist() == [[1, 2], [3, 4]]
    assert [t.get_text() for t in fig.axes[0].texts] == ["p", "q"] and (tmp_path / "s.png").exists()
    with pytest.raises(ValueError, match=r"labels\['a'\] has 1 entries for 2 points"):
        plots.plot_scatter({"a": [(1, 2), (3, 4)]}, "x", "y", labels={"a": ["p"]})
