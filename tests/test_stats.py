"""kd_utils.stats against scipy's t-tests and hand arithmetic."""
from __future__ import annotations

import math

import pytest
from scipy import stats as st

from kd_utils.stats import difference, differences_table, pairs_table, seed_entry, share_of_gain

KD = [0.8312, 0.8290, 0.8345]
CE = [0.8201, 0.8190, 0.8242]


def test_paired_difference_is_the_paired_t_test():
    d = difference(KD, CE, names=("KD", "scratch"), paired=True)
    diffs = [100 * (a - b) for a, b in zip(KD, CE)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    assert d.diff == pytest.approx(mean) and d.se == pytest.approx(sd / math.sqrt(3)) and d.dof == 2
    assert d.p_value == pytest.approx(st.ttest_rel(KD, CE).pvalue)
    assert d.ci95[0] == pytest.approx(mean - 4.302652729911275 * sd / math.sqrt(3))
    assert not d.noise and d.text().startswith("KD - scratch = +1.05 ± ")
    assert "paired over 3 seeds" in d.text() and "inside the noise" not in d.text()


def test_difference_to_dict_is_json_safe_and_holds_the_computed_fields():
    import json
    d = difference(KD, CE, names=("KD", "scratch"), paired=True)
    out = d.to_dict()
    assert out["difference"] == d.diff and out["se"] == d.se and out["ci95"] == list(d.ci95)
    assert out["names"] == ["KD", "scratch"] and out["n"] == [3, 3] and out["paired"] is True
    assert out["inside_noise"] is False and out["unit"] == "points" and out["p_value"] == d.p_value
    flat = difference([0.5, 0.5], [0.5, 0.5], paired=True).to_dict()  # zero spread: any non-finite field is None
    json.dumps(flat, allow_nan=False)
    assert flat["inside_noise"] is True and flat["difference"] == 0


def test_unpaired_difference_is_welchs_t_test():
    a, b = [0.80, 0.81, 0.83, 0.79], [0.80, 0.82, 0.815]
    d = difference(a, b)
    assert d.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    qa = st.tvar([100 * x for x in a]) / 4
    qb = st.tvar([100 * x for x in b]) / 3
    assert d.se == pytest.approx(math.sqrt(qa + qb))
    assert d.dof == pytest.approx((qa + qb) ** 2 / (qa ** 2 / 3 + qb ** 2 / 2))
    assert d.noise and d.text().endswith("-- inside the noise") and "Welch, 4 and 3 seeds" in d.text()


def test_constant_groups_and_bad_input():
    same = difference([0.5, 0.5], [0.5, 0.5], paired=True)
    assert same.diff == 0 and same.se == 0 and same.p_value == 1.0 and same.noise
    shifted = difference([0.6, 0.6], [0.5, 0.5], paired=True)
    assert shifted.diff == pytest.approx(10) and shifted.p_value == 0.0 and not shifted.noise
    with pytest.raises(ValueError, match="at least 2 values"):
        difference([0.5], [0.4, 0.5])
    with pytest.raises(ValueError, match=r"as many values each, got 3 \(a\) and 2 \(b\)"):
        difference([0.1, 0.2, 0.3], [0.1, 0.2], paired=True)
    with pytest.raises(ValueError, match="non-finite"):
        difference([0.1, float("nan")], [0.1, 0.2])


def test_differences_table_compares_every_group_with_the_baseline():
    t = differences_table({"ce": CE, "kd": KD, "ls": [0.821, 0.818, 0.826]}, baseline="ce", paired=True)
    assert list(t.index) == ["kd", "ls"]
    assert t.loc["kd", "difference"] == pytest.approx(difference(KD, CE, paired=True).diff)
    assert t.loc["kd", "inside_noise"] == bool(difference(KD, CE, paired=True).noise)
    with pytest.raises(ValueError, match="baseline 'dkd' is not one of the groups"):
        differences_table({"ce": CE}, baseline="dkd")


def test_seed_entry_is_the_results_files_shape():
    e = seed_entry(KD)
    assert e["accuracy_per_seed"] == KD and e["mean"] == pytest.approx(sum(KD) / 3)
    assert e["std"] == pytest.approx(st.tstd(KD))
    assert seed_entry([0.5])["std"] == 0.0
    with pytest.raises(ValueError, match="non-empty list of finite numbers"):
        seed_entry([])


def test_pairs_table_compares_the_chosen_pairs():
    g = {"ls": [0.801, 0.803, 0.800], "kd": [0.812, 0.815, 0.811], "ce": [0.795, 0.799, 0.796]}
    t = pairs_table(g, [("kd", "ls"), ("ls", "ce")], paired=True)
    assert list(t.index) == ["kd - ls", "ls - ce"]
    d = difference(g["kd"], g["ls"], paired=True)
    assert t.loc["kd - ls", "difference"] == pytest.approx(d.diff) and t.loc["kd - ls", "se"] == pytest.approx(d.se)
    with pytest.raises(ValueError, match=r"unknown: \['dkd'\]"):
        pairs_table(g, [("dkd", "ce")])


def test_share_of_gain_by_the_delta_method_in_vector_form():
    import numpy as np
    part, whole, base = [0.805, 0.809, 0.803], [0.812, 0.818, 0.811], [0.795, 0.799, 0.797]
    s = share_of_gain(part, whole, base)
    gp = 100 * (np.array(part) - base)
    gw = 100 * (np.array(whole) - base)
    assert s.share == pytest.approx(gp.mean() / gw.mean())
    grad = np.array([1 / gw.mean(), -gp.mean() / gw.mean() ** 2])  # d(m_p/m_w)/d(m_p, m_w)
    sigma = np.cov(np.vstack([gp, gw]), ddof=1) / 3                  # covariance of the two means
    assert s.se == pytest.approx(math.sqrt(grad @ sigma @ grad))
    assert s.part_gain == pytest.approx(gp.mean()) and "paired over 3 seeds" in s.text(("LS", "KD"))
    same = share_of_gain(whole, whole, base)
    assert same.share == pytest.approx(1.0) and same.se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="no gain to take a share of"):
        share_of_gain(part, base, base)
    with pytest.raises(ValueError, match="need as many values each"):
        share_of_gain(part, whole, base[:2])
