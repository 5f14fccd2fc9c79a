"""kd_utils.logit_analysis against independent hand computations: similarity inheritance, temperature
scaling, DKD's coupling of the KD loss and the logit scale."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_utils import build_model
from kd_utils.checkpoint import save_checkpoint
from kd_utils.logit_analysis import (calibration_report, dkd_coupling, dkd_terms_per_sample, fit_temperature,
                                     logit_scale, logit_scale_curve, logit_scale_table, similarity_inheritance)
from kd_utils.methods.dkd import dkd_terms
from kd_utils.train_eval import predict
from kd_utils.train_kd import kd_loss


def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _data(n=300, k=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k  # every class present
    t = torch.randn(n, k, generator=g) * scale
    t[torch.arange(n), y] += 2.0
    s = t + torch.randn(n, k, generator=g)
    return t, s, y


# ------------------------------------------------------ similarity inheritance ----
def _similarity_by_hand(z, y, k, T):
    rows = [[0.0] * k for _ in range(k)]
    counts = [0] * k
    for row, c in zip(z.double().tolist(), y.tolist()):
        p = _softmax(row, T)
        counts[c] += 1
        for j in range(k):
            rows[c][j] += p[j]
    out = []
    for i in range(k):
        r = [rows[i][j] / counts[i] if j != i else 0.0 for j in range(k)]
        out.append([v / sum(r) for v in r])
    return out


def _spearman_by_hand(a, b):
    k = len(a)
    xa = [a[i][j] for i in range(k) for j in range(k) if i != j]
    xb = [b[i][j] for i in range(k) for j in range(k) if i != j]
    rank = lambda v: [sorted(v).index(x) for x in v]  # noqa: E731 (no ties in continuous data)
    ra, rb = np.array(rank(xa), float), np.array(rank(xb), float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float(ra @ rb / math.sqrt((ra @ ra) * (rb @ rb)))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_similarity_inheritance_is_spearman_of_the_hand_similarity_matrices(T):
    t, s, y = _data()
    want = _spearman_by_hand(_similarity_by_hand(t, y, 5, T), _similarity_by_hand(s, y, 5, T))
    got = similarity_inheritance(t, s, y, 5, temperature=T)
    assert got == pytest.approx(want, abs=1e-9) and 0 < got < 1
    assert similarity_inheritance(t, t, y, 5, temperature=T) == pytest.approx(1.0)
    unrelated = torch.randn(t.shape, generator=torch.Generator().manual_seed(9))
    assert abs(similarity_inheritance(t, unrelated, y, 5, temperature=T)) < got


def test_similarity_inheritance_refuses_bad_input():
    t, s, y = _data()
    with pytest.raises(ValueError, match=r"num_classes must be the logits' class count 5, got 4"):
        similarity_inheritance(t, s, y, 4)
    with pytest.raises(ValueError, match=r"classes \[4\] have no image"):
        similarity_inheritance(t[y < 4], s[y < 4], y[y < 4], 5)
    with pytest.raises(ValueError, match=r"differ in shape"):
        similarity_inheritance(t, s[:10], y, 5)


# -------------------------------------------------------- temperature scaling ----
def _calibrated(n=20000, k=10, seed=0):
    """Logits z and labels drawn from softmax(z): calibrated by construction, so 3 z is best at T = 3."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, y


def _nll_by_hand(z, y, T):
    return -float(np.mean([math.log(_softmax(row, T)[c]) for row, c in zip(z.tolist(), y.tolist())]))


def _ece_by_hand(z, y, bins=15):
    p = torch.softmax(z.double(), 1)
    conf, pred = p.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += float(sel.sum()) / len(y) * abs(float((pred[sel] == y[sel]).double().mean() - conf[sel].mean()))
    return total


def test_fit_temperature_recovers_the_known_optimum():
    z, y = _calibrated()
    t = fit_temperature((3 * z).float(), y)
    assert t == pytest.approx(3.0, abs=0.12)
    # the minimum of the NLL by a plain grid, computed independently
    grid = np.linspace(2.5, 3.5, 51)
    small = slice(0, 1000)
    zz, yy = 3 * z[small], y[small]
    best = grid[int(np.argmin([_nll_by_hand(zz, yy, g) for g in grid]))]
    assert fit_temperature(zz, yy) == pytest.approx(best, abs=0.0101)
    assert fit_temperature((z / 2).float(), y) == pytest.approx(0.5, abs=0.03)  # under-confident: T < 1


def test_calibration_report_fits_on_val_and_judges_on_test():
    z, y = _calibrated(n=8000)
    val, test = slice(0, 4000), slice(4000, None)
    over = 3 * z
    rep = calibration_report(over[val], y[val], over[test], y[test])
    assert set(rep) == {"T", "ece_before", "ece_after", "nll_before", "nll_after"}
    assert rep["T"] == pytest.approx(fit_temperature(over[val], y[val]))
    assert rep["ece_before"] == pytest.approx(_ece_by_hand(over[test], y[test]), abs=1e-9)
    assert rep["ece_after"] == pytest.approx(_ece_by_hand(over[test] / rep["T"], y[test]), abs=1e-9)
    assert rep["nll_before"] == pytest.approx(_nll_by_hand(over[test], y[test], 1.0), rel=1e-9)
    assert rep["nll_after"] == pytest.approx(_nll_by_hand(over[test], y[test], rep["T"]), rel=1e-9)
    assert rep["ece_after"] <= rep["ece_before"] and rep["nll_after"] <= rep["nll_before"]
    assert rep["ece_before"] > 0.1 and rep["ece_after"] < 0.03


def test_fit_temperature_warns_at_a_bound_and_refuses_bad_input():
    z = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    with pytest.warns(UserWarning, match="at the search bound"):
        assert fit_temperature(z, torch.tensor([0, 1])) == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ValueError, match=r"bounds must be .* got \(2.0, 1.0\)"):
        fit_temperature(z, torch.tensor([0, 1]), bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"val_labels must be an integer tensor of shape \(2,\)"):
        fit_temperature(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        fit_temperature(torch.tensor([[math.nan, 0.0]]), torch.tensor([0]))


# --------------------------------------------------------- DKD's coupling of KD ----
def test_tckd_plus_weighted_nckd_is_the_projects_kd_loss_per_sample():
    t, s, y = _data(n=40, k=6, seed=3)
    for T in (1.0, 4.0):
        terms = dkd_terms_per_sample(t, s, y, T)
        for i in range(40):
            kd = kd_loss(s[i:i + 1], t[i:i + 1], T).item()  # the project's KD (float32), one sample
            pt, ps = _softmax(t[i].double().tolist(), T), _softmax(s[i].double().tolist(), T)
            kd64 = T * T * sum(a * math.log(a / b) for a, b in zip(pt, ps))  # and by hand, float64
            p = pt[int(y[i])]
            assert terms["p_target"][i].item() == pytest.approx(p, rel=1e-12)
            assert terms["kd"][i].item() == pytest.approx(kd64, rel=1e-9)
            decomposed = (terms["tckd"][i] + (1 - p) * terms["nckd"][i]).item()
            assert decomposed == pytest.approx(kd64, rel=1e-9)
            assert decomposed == pytest.approx(kd, rel=1e-4, abs=1e-6)  # float32 KL of a near-zero divergence
        # the batch means are the project's DKD terms
        tckd, nckd = dkd_terms(s, t, y, T)
        assert terms["tckd"].mean().item() == pytest.approx(tckd.item(), rel=1e-5)
        assert terms["nckd"].mean().item() == pytest.approx(nckd.item(), rel=1e-5)


def test_dkd_coupling_bins_by_teacher_confidence():
    t, s, y = _data(n=500, k=6, seed=4, scale=3.0)
    T = 2.0
    table = dkd_coupling(t, s, y, temperature=T, bins=5)
    assert list(table.columns) == ["lo", "hi", "count", "p_target", "nckd_weight", "tckd", "nckd", "kd", "nckd_share"]
    assert table["count"].sum() == 500 and len(table) == 5
    full = table[table["count"] > 0]
    assert np.allclose(full["nckd_weight"], 1 - full["p_target"])
    # by hand: each sample's teacher target probability, its bin (lo, hi], and the bin's means
    terms = dkd_terms_per_sample(t, s, y, T)
    p = [_softmax(row, T)[c] for row, c in zip(t.double().tolist(), y.tolist())]
    for b, row in table.iterrows():
        members = [i for i, v in enumerate(p) if (row["lo"] < v <= row["hi"]) or (b == 0 and v == 0)]
        assert row["count"] == len(members)
        if members:
            assert row["p_target"] == pytest.approx(np.mean([p[i] for i in members]), rel=1e-9)
            share = sum((1 - p[i]) * terms["nckd"][i].item() for i in members) / sum(terms["kd"][i].item()
                                                                                     for i in members)
            assert row["nckd_share"] == pytest.approx(share, rel=1e-9)
            assert row["kd"] == pytest.approx(row["tckd"] + np.mean([(1 - p[i]) * terms["nckd"][i].item()
                                                                     for i in members]), rel=1e-9)
    # the coupling: where the teacher is confident, the non-target term's weight is small
    assert full["nckd_weight"].is_monotonic_decreasing


def test_dkd_coupling_with_dkd_weights_reports_the_non_target_share_of_dkd():
    t, s, y = _data(n=300, k=5, seed=7, scale=3.0)
    table = dkd_coupling(t, s, y, temperature=4.0, bins=4, alpha=1.0, beta=8.0)
    assert list(table.columns)[-1] == "nckd_share_dkd"
    terms = dkd_terms_per_sample(t, s, y, 4.0)
    for _, row in table.iterrows():
        members = [i for i, v in enumerate(terms["p_target"].tolist()) if row["lo"] < v <= row["hi"]]
        if members:  # by hand: beta * NCKD over alpha * TCKD + beta * NCKD, summed over the bin
            nc = sum(terms["nckd"][i].item() for i in members)
            tc = sum(terms["tckd"][i].item() for i in members)
            assert row["nckd_share_dkd"] == pytest.approx(8.0 * nc / (tc + 8.0 * nc), rel=1e-9)
        else:
            assert math.isnan(row["nckd_share_dkd"])
    assert "nckd_share_dkd" not in dkd_coupling(t, s, y, bins=4).columns
    with pytest.raises(ValueError, match="pass both of DKD's alpha and beta or neither, got alpha=1.0, beta=None"):
        dkd_coupling(t, s, y, alpha=1.0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        dkd_coupling(t, s, y, alpha=1.0, beta=-1)


def test_dkd_coupling_custom_edges_are_right_closed_and_empty_bins_are_nan():
    t = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 0.0]])  # p_target 0.5, 0.75, ~0.993 at T = 1
    y = torch.zeros(3, dtype=torch.long)
    table = dkd_coupling(t, torch.zeros(3, 2), y, temperature=1.0, bins=[0.0, 0.5, 0.8, 0.9, 1.0])
    assert table["count"].tolist() == [1, 1, 0, 1]  # p = 0.5 exactly: in (0, 0.5], not (0.5, 0.8]
    assert math.isnan(table.loc[2, "p_target"]) and math.isnan(table.loc[2, "nckd_share"])
    assert table.loc[0, "p_target"] == pytest.approx(0.5) and table.loc[1, "p_target"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"bin edges must be at least two increasing numbers in \[0, 1\]"):
        dkd_coupling(t, torch.zeros(3, 2), y, bins=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"bins must be a whole number >= 1 .* got 0"):
        dkd_coupling(t, torch.zeros(3, 2), y, bins=0)


# ---------------------------------------------------------------- logit scale ----
def test_logit_scale_is_the_unbiased_per_sample_std():
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0], [-1.0, 1.0, -1.0, 1.0]])
    by_hand = []
    for row in z.tolist():
        m = sum(row) / 4
        by_hand.append(math.sqrt(sum((v - m) ** 2 for v in row) / 3))
    got = logit_scale(z)
    assert got.per_sample.tolist() == pytest.approx(by_hand, rel=1e-12)
    assert got.mean == pytest.approx(sum(by_hand) / 3, rel=1e-12)
    assert logit_scale(3 * z + 7).mean == pytest.approx(3 * got.mean)  # scale, not shift
    table = logit_scale_table({"teacher": 3 * z, "student": z})
    assert table.loc["teacher", "mean_logit_std"] == pytest.approx(3 * table.loc["student", "mean_logit_std"])
    assert table.loc["student", "median_logit_std"] == pytest.approx(sorted(by_hand)[1])


def test_logit_scale_curve_from_logits_models_and_checkpoints(toy_mnist, tmp_path):
    torch.manual_seed(0)
    models = [build_model("mnist_mlp", num_classes=10) for _ in range(2)]
    with torch.no_grad():
        models[1].apply(lambda m: m.weight.mul_(2.0) if isinstance(m, torch.nn.Linear) else None)
    want = [logit_scale(predict(m, toy_mnist.loader("test", batch_size=128), "cpu")[0]).mean for m in models]
    path = save_checkpoint(tmp_path / "epoch2.pt", models[1])
    curve = logit_scale_curve({1: models[0], 2: path}, toy_mnist)
    assert curve.index.tolist() == [1, 2] and curve["mean_logit_std"].tolist() == pytest.approx(want, rel=1e-5)
    logits = [predict(m, toy_mnist.loader("test", batch_size=128), "cpu")[0] for m in models]
    from_logits = logit_scale_curve(logits)  # a sequence: epochs 1, 2, ...; no data needed
    assert from_logits["mean_logit_std"].tolist() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="needs data"):
        logit_scale_curve([models[0]])
    with pytest.raises(ValueError, match=r"epochs must be whole numbers >= 0, got \['a'\]"):
        logit_scale_curve({"a": logits[0]})


def test_error_inheritance_counts_shared_mistakes_by_hand():
    from kd_utils.logit_analysis import error_inheritance
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    t_pred = torch.tensor([1, 0, 1, 2, 2, 0, 0, 1])   # teacher wrong on images 0, 3, 5
    s_pred = torch.tensor([1, 2, 1, 0, 2, 0, 0, 1])   # wrong on 0 (same class), 1, 3 (other class), 5 (same)
    r_pred = torch.tensor([0, 0, 0, 2, 2, 2, 0, 1])   # wrong on 2 and 3 (same class as the teacher)
    one_hot = lambda p: torch.nn.functional.one_hot(p, 3).float() * 5  # noqa: E731
    df = error_inheritance(one_hot(t_pred), one_hot(s_pred), y, reference_logits=one_hot(r_pred))
    st, ref = df.loc["student"], df.loc["reference"]
    assert st["errors"] == 4 and ref["errors"] == 2
    assert st["wrong_given_teacher_wrong"] == pytest.approx(3 / 3) and st["wrong_given_teacher_right"] == pytest.approx(1 / 5)
    assert st["same_wrong_class"] == pytest.approx(2 / 3)
    assert ref["wrong_given_teacher_wrong"] == pytest.approx(1 / 3) and ref["wrong_given_teacher_right"] == pytest.approx(1 / 5)
    assert ref["same_wrong_class"] == pytest.approx(1.0)
    # identical predictions rank the confusion counts identically
    same = error_inheritance(one_hot(t_pred), one_hot(t_pred), y)
    assert list(same.index) == ["student"] and same.loc["student", "confusion_rank_correlation"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        error_inheritance(one_hot(t_pred), one_hot(s_pred)[:4], y)
