"""kd_utils.literature against independent hand computations: Kendall's tau-b by brute-force pair counts
and its exact p-value by enumerating permutations, the bootstrap on rankings whose resampled taus are
known, the share of the teacher-student gap closed (published KD: 2.62 of 4.28 points) with its delta-method
error by finite differences, and the budget line by hand arithmetic."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kd_utils.literature import (PUBLISHED, VGG_PAIR, GapClosed, compute_estimate, epoch_conventions,
                                 gap_closed, kendall_tau_b_rows, load_epoch_ratios, published_gap_closed,
                                 published_reference, published_table, ranking_agreement)

BENCH = Path(__file__).resolve().parents[1] / "results" / "bench" / "method_epoch_cost-2026-12-01-epyc-fp32.json"


def _brute_tau_b(x, y) -> float:
    """(C - D) / sqrt((C + D + ties in x only) * (C + D + ties in y only)), every pair counted once."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx * dy > 0:
            c += 1
        else:
            d += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


# ------------------------------------------------------------------ published numbers ----
def test_published_entries_map_to_registered_methods_and_name_their_epoch():
    import kd_utils.methods  # noqa: F401 (registers every method)
    from kd_utils.train_kd import DISTILLERS
    mapped = {p.method for p in PUBLISHED.values() if p.method is not None}
    assert mapped <= set(DISTILLERS), sorted(mapped - set(DISTILLERS))
    ref = published_reference()
    assert set(ref) == {"kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd",
                        "dkd"}
    assert all(p.epoch in ("last epoch", "best epoch", "not stated") and p.source for p in PUBLISHED.values())
    best = {k for k, p in PUBLISHED.items() if p.epoch == "best epoch"}
    assert best == {"dkd", "kd+dot"} and all("mdistiller" in PUBLISHED[k].source for k in best)
    assert set(published_reference(epoch="last epoch")) == set(ref) - {"dkd"}
    # the table's own differences, as the READMEs print them
    assert PUBLISHED["kd"].top1 - PUBLISHED["student"].top1 == pytest.approx(2.62)
    assert PUBLISHED["teacher"].top1 - PUBLISHED["student"].top1 == pytest.approx(4.28)
    dml = {k: p.top1 for k, p in PUBLISHED.items() if k.startswith("dml")}
    assert dml["dml_peer_1"] - dml["dml_alone"] == pytest.approx(2.20)
    assert dml["dml_peer_2"] - dml["dml_alone"] == pytest.approx(1.76)
    assert "cohort" not in ref and len(published_table(VGG_PAIR)) == 17
    caption = epoch_conventions(["kd", "dkd", "crd"])
    assert "last epoch (RepDistiller) for kd, crd" in caption and "best epoch (mdistiller) for dkd" in caption
    with pytest.raises(ValueError, match="'mse'.*published"):
        epoch_conventions(["kd", "mse"])
    with pytest.raises(ValueError, match="epoch must be one of"):
        published_reference(epoch="final")


# ------------------------------------------------------------------ gap closed ----
def test_gap_closed_of_the_published_kd_is_2_62_of_4_28():
    assert published_gap_closed("kd") == pytest.approx(2.62 / 4.28)
    assert round(published_gap_closed("kd"), 3) == 0.612
    assert published_gap_closed("crd") == pytest.approx((73.94 - 70.36) / (74.64 - 70.36))
    assert gap_closed(70.36, 72.98, 74.64) == pytest.approx(2.62 / 4.28)
    assert gap_closed(0.7036, 0.7298, 0.7464) == pytest.approx(2.62 / 4.28)  # fractions: same share
    with pytest.raises(ValueError, match="'mse'"):
        published_gap_closed("mse")
    with pytest.raises(ValueError, match="no teacher"):
        published_gap_closed("cohort", setting=PUBLISHED["dml_alone"].setting)


def test_gap_closed_refuses_no_gap_mixed_units_and_empty_seeds():
    with pytest.raises(ValueError, match=r"teacher \(70\) must be above the student \(71\)"):
        gap_closed(71.0, 72.0, 70.0)
    with pytest.raises(ValueError, match="teacher .* must be above"):
        gap_closed(70.0, 72.0, 70.0)
    with pytest.raises(ValueError, match="mix fractions"):
        gap_closed(0.70, 72.0, 74.0)
    with pytest.raises(ValueError, match="distilled holds no values"):
        gap_closed(70.0, [], 74.0)
    with pytest.raises(ValueError, match="student must be finite"):
        gap_closed([70.0, float("nan")], 72.0, 74.0)


def test_gap_closed_per_seed_is_ratio_of_means_with_a_delta_method_error():
    s, d, t = [70.0, 71.0, 69.5], [72.5, 73.5, 72.0, 73.0], [75.0, 74.0]
    res = gap_closed(s, d, t)
    assert isinstance(res, GapClosed) and res.n == {"student": 3, "distilled": 4, "teacher": 2}
    ms, md, mt = np.mean(s), np.mean(d), np.mean(t)
    assert res.mean == pytest.approx((md - ms) / (mt - ms))
    # first-order propagation with the gradient taken by central finite differences
    f = lambda a, b, c: (b - a) / (c - a)
    h = 1e-6
    grads = [(f(ms + h, md, mt) - f(ms - h, md, mt)) / (2 * h), (f(ms, md + h, mt) - f(ms, md - h, mt)) / (2 * h),
             (f(ms, md, mt + h) - f(ms, md, mt - h)) / (2 * h)]
    variances = [np.var(g, ddof=1) / len(g) for g in (s, d, t)]
    assert res.se == pytest.approx(math.sqrt(sum(g * g * v for g, v in zip(grads, variances))), rel=1e-6)
    assert "delta method" in res.method
    # only the distilled runs vary: se is their standard error over the gap
    only_d = gap_closed(70.0, d, 74.0)
    assert only_d.se == pytest.approx(np.std(d, ddof=1) / math.sqrt(len(d)) / 4.0)
    assert gap_closed([70.0], [72.0], [74.0]).se == 0.0


# ------------------------------------------------------------------ Kendall's tau-b ----
@pytest.mark.parametrize("x, y", [([1, 2, 2, 3, 4], [1, 3, 2, 2, 5]),
                                  ([3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]),
                                  ([1, 1, 2, 2], [2, 1, 1, 2])])
def test_tau_b_with_ties_matches_a_brute_force_pair_count(x, y):
    expected = _brute_tau_b(x, y)
    assert kendall_tau_b_rows(np.array([x]), np.array(y))[0] == pytest.approx(expected)
    ours = {f"m{i}": [70.0 + v] for i, v in enumerate(x)}  # percents; the ranking is that of x
    ref = {f"m{i}": v for i, v in enumerate(y)}
    res = ranking_agreement(ours, ref, n_boot=50)
    assert res.tau == pytest.approx(expected) and res.p_method == "asymptotic"


def test_exact_p_value_is_the_share_of_permutations_at_least_as_extreme():
    x = [71.0, 73.5, 72.0, 74.5, 70.5]
    y = [1, 3, 4, 5, 2]
    observed = _brute_tau_b(x, y)
    perms = [_brute_tau_b(x, p) for p in itertools.permutations(y)]
    expected = np.mean([abs(t) >= abs(observed) - 1e-12 for t in perms])
    res = ranking_agreement({f"m{i}": [v] for i, v in enumerate(x)}, {f"m{i}": v for i, v in enumerate(y)})
    assert res.p_method == "exact" and res.p_value == pytest.approx(expected)
    # three methods in perfect agreement: 1 of the 3! orders, and its reverse, as extreme
    perfect = ranking_agreement({"a": [0.70], "b": [0.72], "c": [0.75]}, {"a": 70.0, "b": 71.0, "c": 73.0})
    assert perfect.p_value == pytest.approx(2 / 6)


def test_perfect_and_reversed_rankings_give_plus_and_minus_one():
    ref = {"kd": 72.98, "at": 71.43, "crd": 73.94, "fitnets": 71.02}
    order = sorted(ref, key=ref.get)
    up = {m: [0.80 + 0.01 * k, 0.80 + 0.01 * k] for k, m in enumerate(order)}
    down = {m: [0.90 - 0.01 * k] * 3 for k, m in enumerate(order)}
    a, b = ranking_agreement(up, ref), ranking_agreement(down, ref)
    assert a.tau == pytest.approx(1.0) and a.ci == pytest.approx((1.0, 1.0)) and a.share_positive == 1.0
    assert b.tau == pytest.approx(-1.0) and b.ci == pytest.approx((-1.0, -1.0)) and b.share_positive == 0.0
    assert a.ours_mean["fitnets"] == pytest.approx(80.0)  # fractions shown in percent
    table = a.table()
    assert list(table.index) == ["crd", "kd", "at", "fitnets"] and list(table["ours_rank"]) == [1, 2, 3, 4]
    assert "tau-b 1.00 over 4 methods" in a.summary()


def test_bootstrap_resamples_reproduce_the_known_distribution_of_tau():
    # reference a < b < c; a and c fixed. b's two seeds resample to a mean of 60 (1/4), 75 (1/2) or 90 (1/4):
    # b < a < c (tau 1/3), a < b < c (tau 1) or a < c < b (tau 1/3)
    ref = {"a": 1.0, "b": 2.0, "c": 3.0}
    res = ranking_agreement({"a": [70.0], "b": [60.0, 90.0], "c": [80.0]}, ref, n_boot=4000, seed=3)
    assert res.tau == pytest.approx(1.0) and res.seeds == {"a": 1, "b": 2, "c": 1}
    assert set(np.round(res.boot_taus, 9)) == {round(1 / 3, 9), 1.0}
    assert np.mean(res.boot_taus == 1.0) == pytest.approx(0.5, abs=0.04)
    assert res.ci == pytest.approx((1 / 3, 1.0)) and res.share_positive == 1.0
    # a at 80, c at 70: the means run against the reference, every resample is negative
    neg = ranking_agreement({"a": [80.0], "b": [60.0, 90.0], "c": [70.0]}, ref, n_boot=4000, seed=3)
    assert neg.tau == pytest.approx(-1.0) and neg.share_positive == 0.0
    assert np.mean(neg.boot_taus == -1.0) == pytest.approx(0.5, abs=0.04)
    again = ranking_agreement({"a": [80.0], "b": [60.0, 90.0], "c": [70.0]}, ref, n_boot=4000, seed=3)
    assert np.array_equal(again.boot_taus, neg.boot_taus)  # the seed fixes the resamples


def test_bootstrap_ci_contains_the_point_estimate_and_collapses_on_equal_seeds():
    rng = np.random.default_rng(1)
    ref = published_reference(epoch="last epoch")
    ours = {m: list(0.80 + 0.002 * (v - 70) + rng.normal(0, 0.004, size=3)) for m, v in ref.items()}
    res = ranking_agreement(ours, ref, n_boot=2000)
    assert res.ci[0] <= res.tau <= res.ci[1] and res.ci[0] < res.ci[1]
    assert res.n == len(ref) == len(res.methods) and res.n_boot_valid == 2000
    assert 0.0 <= res.share_positive <= 1.0
    equal = {m: [float(np.mean(v))] * 4 for m, v in ours.items()}
    flat = ranking_agreement(equal, ref, n_boot=500)
    assert flat.ci == (pytest.approx(flat.tau), pytest.approx(flat.tau))
    assert flat.share_positive == float(flat.tau > 0)


def test_ranking_agreement_refuses_few_common_methods_and_bad_input():
    with pytest.raises(ValueError, match=r"at least 3 methods.*got 2: \['at', 'kd'\].*only in ours: \['mse'\]"):
        ranking_agreement({"kd": [0.9], "at": [0.8], "mse": [0.85]}, {"kd": 72.98, "at": 71.43, "crd": 73.94})
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        ranking_agreement({"a": [1.0], "b": [2.0], "c": [3.0]}, {"a": 1, "b": 2, "c": 3}, n_boot=0)
    with pytest.raises(ValueError, match="our means are all equal"):
        ranking_agreement({"a": [0.8], "b": [0.8], "c": [0.8]}, {"a": 1, "b": 2, "c": 3})
    with pytest.raises(ValueError, match=r"reference\['b'\] must be one number"):
        ranking_agreement({"a": [0.8], "b": [0.7], "c": [0.9]}, {"a": 1, "b": [2, 3], "c": 3})
    with pytest.raises(ValueError, match="mix fractions"):
        ranking_agreement({"a": [0.8], "b": [70.0], "c": [0.9]}, {"a": 1, "b": 2, "c": 3})


# ------------------------------------------------------------------ budget ----
def test_load_epoch_ratios_reads_the_committed_cost_figure():
    raw = json.loads(BENCH.read_text())
    detail = next(f for f in raw["figures"] if f["name"] == "method_epoch_cost")["detail"]
    base = sum(detail["ce_epoch_s"]) / len(detail["ce_epoch_s"])
    ratios = load_epoch_ratios(BENCH)
    assert ratios["kd"] == pytest.approx(detail["methods"]["kd"]["epoch_s"] / base)
    assert ratios["nst"] == pytest.approx(detail["methods"]["nst"]["epoch_s"] / base)
    assert "fsp" not in ratios and "fsp" in detail["skipped"] and "ce" not in ratios
    stage = load_epoch_ratios(BENCH, stage=True)
    assert set(stage) == {"ab", "ft", "fitnets_two_stage"}
    assert stage["ab"] == pytest.approx(detail["methods"]["ab"]["stage_epoch_s"] / base)


def test_load_epoch_ratios_refuses_files_without_the_figure(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"figures": [{"name": "sweep_throughput", "detail": {}}]}))
    with pytest.raises(ValueError, match=r"no 'method_epoch_cost' figure; its figures: \['sweep_throughput'\]"):
        load_epoch_ratios(other)
    with pytest.raises(FileNotFoundError, match="no benchmark file"):
        load_epoch_ratios(tmp_path / "absent.json")


def test_compute_estimate_by_hand_arithmetic():
    est = compute_estimate(["kd", "at", "fsp", "ce"], epochs={"kd": 10, "at": 20, "fsp": 5, "ce": 10}, seeds=2,
                           ce_epoch_s=36.0, ratios={"kd": 0.5, "at": 2.0})
    # kd 10*2*36*0.5 = 360 s; at 20*2*36*2 = 2880 s; ce 10*2*36*1 = 720 s; fsp unmeasured
    assert est.rows.loc["kd", "hours"] == pytest.approx(0.1)
    assert est.rows.loc["at", "hours"] == pytest.approx(0.8)
    assert est.rows.loc["ce", "hours"] == pytest.approx(0.2)
    assert math.isnan(est.rows.loc["fsp", "hours"]) and math.isnan(est.rows.loc["fsp", "ratio"])
    assert est.total_hours == pytest.approx(1.1) and est.missing == ["fsp"]
    assert est.text() == "about 1.1 h of training for 3 methods (not counted, no measured epoch ratio: fsp)"
    # a pre-training stage: ab 2*36*(10*1.0 + 2*4.0) = 1296 s = 0.36 h; ft's stage has no ratio
    staged = compute_estimate(["ab", "ft"], epochs=10, seeds=2, ce_epoch_s=36.0, ratios={"ab": 1.0, "ft": 1.0},
                              stage_epochs={"ab": 2, "ft": 3}, stage_ratios={"ab": 4.0})
    assert staged.rows.loc["ab", "hours"] == pytest.approx(0.36) and staged.missing == ["ft"]
    assert staged.total_hours == pytest.approx(0.36)


def test_compute_estimate_refuses_bad_input():
    with pytest.raises(ValueError, match=r"epochs must give a value for exactly the methods.*missing: \['at'\]"):
        compute_estimate(["kd", "at"], {"kd": 10}, 2, 30.0, {"kd": 1.0, "at": 1.0})
    with pytest.raises(ValueError, match="seeds for 'kd' must be a non-negative integer, got 1.5"):
        compute_estimate(["kd"], 10, 1.5, 30.0, {"kd": 1.0})
    with pytest.raises(ValueError, match="ce_epoch_s must be a positive number of seconds, got -1"):
        compute_estimate(["kd"], 10, 2, -1.0, {"kd": 1.0})
    with pytest.raises(ValueError, match=r"ratios\['kd'\] must be a positive number, got 0"):
        compute_estimate(["kd"], 10, 2, 30.0, {"kd": 0})
    with pytest.raises(ValueError, match=r"stage_epochs names methods not in methods.*\['ab'\]"):
        compute_estimate(["kd"], 10, 2, 30.0, {"kd": 1.0}, stage_epochs={"ab": 2})
    with pytest.raises(ValueError, match="distinct names"):
        compute_estimate(["kd", "kd"], 10, 2, 30.0, {"kd": 1.0})


def test_compute_estimate_counts_fixed_costs_beside_the_methods():
    est = compute_estimate(["ce", "kd"], epochs=10, seeds=3, ce_epoch_s=12.0, ratios={"kd": 1.5},
                           fixed_s={"teacher, 30 epochs": 5400.0, "teacher-output caches": 360.0})
    # ce 10*3*12 = 360 s, kd 540 s, teacher 5400 s, caches 360 s: 6660 s = 1.85 h
    assert est.rows.loc["teacher, 30 epochs", "hours"] == pytest.approx(1.5)
    assert math.isnan(est.rows.loc["teacher-output caches", "epochs"])
    assert est.total_hours == pytest.approx(1.85) and est.missing == []
    assert est.text() == "about 1.9 h of training for 2 methods and teacher, 30 epochs, teacher-output caches"
    with pytest.raises(ValueError, match=r"fixed_s\['kd'\] must be a non-negative number of seconds under a name"):
        compute_estimate(["kd"], 10, 2, 30.0, {"kd": 1.0}, fixed_s={"kd": 60.0})
    with pytest.raises(ValueError, match=r"fixed_s\['teacher'\].*got -1"):
        compute_estimate(["kd"], 10, 2, 30.0, {"kd": 1.0}, fixed_s={"teacher": -1})
