"""Tests for kd_utils.metrics against independent, hand-written computations."""
import json
import math
import random

import pytest
import torch

from kd_utils import metrics as M


def _two_class_logits(confidences, preds):
    """Logits whose softmax max-probability is exactly ``conf`` on class ``pred``."""
    rows = []
    for c, p in zip(confidences, preds):
        row = [math.log(1 - c), math.log(1 - c)]
        row[p] = math.log(c)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def random_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    return logits, labels


# --------------------------------------------------------------------------- accuracy


def test_accuracy_and_errors_match_loop(random_batch):
    logits, labels = random_batch
    preds = [max(range(7), key=lambda k: row[k]) for row in logits.tolist()]
    correct = sum(int(p == y) for p, y in zip(preds, labels.tolist()))
    assert M.accuracy(logits, labels) == pytest.approx(correct / 200)
    assert M.error_count(logits, labels) == 200 - correct
    assert isinstance(M.accuracy(logits, labels), float)
    assert isinstance(M.error_count(logits, labels), int)


def test_accuracy_small_example():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    labels = torch.tensor([0, 1, 1, 0])
    assert M.accuracy(logits, labels) == 0.5
    assert M.error_count(logits, labels) == 2


def test_per_class_accuracy_with_absent_class():
    logits = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0]])
    labels = torch.tensor([0, 0, 1, 1])  # class 2 never occurs
    pca = M.per_class_accuracy(logits, labels, 3)
    assert pca.shape == (3,)
    assert pca[0].item() == 1.0
    assert pca[1].item() == 0.5
    assert math.isnan(pca[2].item())


def test_confusion_matrix_matches_loop(random_batch):
    logits, labels = random_batch
    expected = [[0] * 7 for _ in range(7)]
    for row, y in zip(logits.tolist(), labels.tolist()):
        p = max(range(7), key=lambda k: row[k])
        expected[y][p] += 1
    cm = M.confusion_matrix(logits, labels, 7)
    assert cm.dtype == torch.int64 and cm.shape == (7, 7)
    assert cm.tolist() == expected
    # Same result from 1-D predictions.
    assert torch.equal(M.confusion_matrix(logits.argmax(1), labels, 7), cm)
    assert cm.sum().item() == 200
    assert cm.trace().item() == 200 - M.error_count(logits, labels)


def test_confusion_matrix_orientation():
    preds = torch.tensor([1, 1, 0])
    labels = torch.tensor([0, 0, 0])
    cm = M.confusion_matrix(preds, labels, 2)
    assert cm.tolist() == [[1, 2], [0, 0]]  # rows = true, cols = predicted


def test_prediction_distribution():
    logits = torch.tensor([[0.0, 1, 0], [0, 2, 0], [5, 0, 0], [0, 1, 0]])
    dist = M.prediction_distribution(logits, 3)
    assert dist.tolist() == [1, 3, 0]
    assert dist.dtype == torch.int64


# --------------------------------------------------------------------------- teacher vs student


def test_agreement_on_constructed_logits():
    t = torch.zeros(10, 4)
    s = torch.zeros(10, 4)
    t_cls = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    s_cls = [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]  # first 7 agree
    t[range(10), t_cls] = 5.0
    s[range(10), s_cls] = 1.0
    assert M.agreement(t, s) == pytest.approx(0.7)
    assert M.agreement(t, t) == 1.0


def _manual_kl(t_rows, s_rows, temp):
    total = 0.0
    for tr, sr in zip(t_rows, s_rows):
        zt = sum(math.exp(v / temp) for v in tr)
        zs = sum(math.exp(v / temp) for v in sr)
        p = [math.exp(v / temp) / zt for v in tr]
        q = [math.exp(v / temp) / zs for v in sr]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(t_rows)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kl_matches_manual_sum(temp):
    rng = random.Random(1)
    t = [[rng.uniform(-3, 3) for _ in range(5)] for _ in range(20)]
    s = [[rng.uniform(-3, 3) for _ in range(5)] for _ in range(20)]
    got = M.kl_divergence(torch.tensor(t), torch.tensor(s), temperature=temp)
    # float32 inputs: compare at float32 input precision.
    expected = _manual_kl(torch.tensor(t).double().tolist(), torch.tensor(s).double().tolist(), temp)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got > 0


def test_kl_zero_for_identical_logits_and_asymmetric():
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(3))
    assert M.kl_divergence(x, x) == pytest.approx(0.0, abs=1e-12)
    y = torch.randn(50, 10, generator=torch.Generator().manual_seed(4))
    assert M.kl_divergence(x, y) != pytest.approx(M.kl_divergence(y, x), rel=1e-6)


def test_kl_stable_for_extreme_logits():
    t = torch.tensor([[1000.0, -1000.0, 0.0]])
    s = torch.tensor([[-1000.0, 1000.0, 0.0]])
    val = M.kl_divergence(t, s)
    assert math.isfinite(val)
    assert val == pytest.approx(2000.0, rel=1e-6)  # ~ log p0 - log q0 = 0 - (-2000)


def test_kl_bad_temperature():
    x = torch.randn(3, 4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            M.kl_divergence(x, x, temperature=bad)


# --------------------------------------------------------------------------- calibration


def test_ece_hand_built_example():
    # conf/pred/label: (.95 ok), (.95 wrong), (.65 ok), (.75 wrong); none on a bin edge.
    logits = _two_class_logits([0.95, 0.95, 0.65, 0.75], [0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 0])
    # 10 bins: (0.9,1]: acc .5 conf .95 -> 2/4*.45 ; (0.6,0.7]: 1/4*|1-.65| ; (0.7,0.8]: 1/4*|0-.75|
    expected10 = 0.5 * 0.45 + 0.25 * 0.35 + 0.25 * 0.75
    assert M.expected_calibration_error(logits, labels, n_bins=10) == pytest.approx(expected10, abs=1e-9)
    # 1 bin: |mean acc - mean conf| = |0.5 - 0.825|
    assert M.expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(0.325, abs=1e-9)
    # 5 bins: (0.8,1]: .5*|.5-.95| ; (0.6,0.8]: .5*|.5-.7|
    assert M.expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.325, abs=1e-9)


def test_ece_matches_loop(random_batch):
    logits, labels = random_batch
    logits = logits * 3
    n_bins = 15
    probs = torch.softmax(logits.double(), 1).tolist()
    bins = [[] for _ in range(n_bins)]
    for p, y in zip(probs, labels.tolist()):
        conf = max(p)
        pred = p.index(conf)
        b = next(i for i in range(n_bins) if (i / n_bins) < conf <= ((i + 1) / n_bins))
        bins[b].append((conf, pred == y))
    expected = sum(
        len(b) / len(probs) * abs(sum(c for _, c in b) / len(b) - sum(c for c, _ in b) / len(b))
        for b in bins if b
    )
    assert M.expected_calibration_error(logits, labels, n_bins) == pytest.approx(expected, abs=1e-9)


def test_ece_near_zero_when_confident_and_right():
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.full((4, 3), -50.0)
    logits[range(4), labels] = 50.0
    assert M.expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- summary


def test_summarize_is_json_friendly(random_batch):
    logits, labels = random_batch
    teacher = logits + 0.1 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(9))
    out = M.summarize(logits, labels, 7, teacher_logits=teacher)
    assert set(out) == {"accuracy", "errors", "n", "ece", "agreement", "kl"}
    assert out["n"] == 200
    assert out["accuracy"] == pytest.approx(M.accuracy(logits, labels))
    assert out["errors"] == M.error_count(logits, labels)
    assert out["kl"] == pytest.approx(M.kl_divergence(teacher, logits))
    assert out["agreement"] == pytest.approx(M.agreement(teacher, logits))
    for v in out.values():
        assert type(v) in (int, float)
    json.dumps(out)
    assert set(M.summarize(logits, labels, 7)) == {"accuracy", "errors", "n", "ece"}


# --------------------------------------------------------------------------- error paths


def test_shape_errors_name_the_shapes():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        M.accuracy(logits, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(12,\)"):
        M.accuracy(torch.randn(12), torch.zeros(12, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        M.error_count(logits, torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        M.accuracy(logits, torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 5\)"):
        M.agreement(logits, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 3\)"):
        M.kl_divergence(logits, torch.randn(3, 3))


def test_num_classes_and_range_errors():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels must lie"):
        M.confusion_matrix(torch.tensor([0, 1, 2, 0]), labels, 3)
    with pytest.raises(ValueError, match="num_classes=5"):
        M.confusion_matrix(logits, torch.tensor([0, 1, 2, 0]), 5)
    with pytest.raises(ValueError, match="num_classes"):
        M.prediction_distribution(logits, 0)
    with pytest.raises(ValueError, match="preds_or_logits"):
        M.confusion_matrix(torch.zeros(2, 2, 2), labels, 3)
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error(logits, torch.tensor([0, 1, 2, 0]), n_bins=0)


def test_accepts_tensors_requiring_grad():
    logits = torch.randn(8, 3, requires_grad=True)
    labels = torch.randint(0, 3, (8,))
    M.summarize(logits, labels, 3, teacher_logits=logits)
