"""Analysis helpers against independent computations."""
from __future__ import annotations

import statistics

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from kd_utils import analysis as A  # noqa: E402
from kd_utils import metrics, plots  # noqa: E402


def _logits(n=64, k=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale


def test_kd_gradient_is_T_times_probability_difference():
    s, t = _logits(seed=1), _logits(seed=2)
    for temp in (1.0, 4.0, 20.0):
        q = torch.softmax(s.double() / temp, 1)
        p = torch.softmax(t.double() / temp, 1)
        expected = temp * (q - p) / s.shape[0]
        torch.testing.assert_close(A.kd_logit_gradient(s, t, temp), expected)


def test_high_temperature_limit_approaches_zero_mean_matching_only():
    s, t = _logits(seed=3), _logits(seed=4)
    t = t + 5.0  # teacher logits with a non-zero mean: only centred matching is the limit
    df = A.high_temperature_limit(s, t, [1, 4, 16, 64, 256])
    err = df["rel_error_zero_mean"].to_numpy()
    assert np.all(np.diff(err) < 0) and err[-1] < 0.01 and err[0] > 0.3
    assert df["cosine_zero_mean"].iloc[-1] > 0.9999
    assert df["rel_error_raw_logits"].iloc[-1] > 0.5  # a shift the KD loss cannot see, MSE can


def test_class_similarity_against_a_loop():
    logits, labels = _logits(n=200, k=4, seed=5), torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(0))
    m = A.class_similarity(logits, labels, 4, temperature=2.0)
    p = torch.softmax(logits.double() / 2.0, 1)
    for i in range(4):
        row = p[labels == i].mean(0)
        row[i] = 0
        torch.testing.assert_close(m[i], (row / row.sum()).float())
    assert torch.allclose(m.sum(1), torch.ones(4)) and torch.all(m.diagonal() == 0)


def test_second_choices_counts():
    logits = torch.tensor([[5.0, 3.0, 1.0], [5.0, 1.0, 3.0], [5.0, 3.0, 0.0], [0.0, 5.0, 4.0], [9.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])  # last one is wrong: excluded
    df = A.second_choices(logits, labels, ["a", "b", "c"])
    assert df.loc["a", "second_choice"] == "b" and df.loc["a", "share"] == pytest.approx(2 / 3)
    assert df.loc["b", "second_choice"] == "c" and df.loc["b", "share"] == 1.0
    assert pd.isna(df.loc["c", "second_choice"])


def test_mean_image_similarity_and_rank_correlation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (300, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(300) % 3
    m = A.mean_image_similarity(x, y, 3)
    assert torch.allclose(m.diagonal(), torch.ones(3), atol=1e-5) and torch.allclose(m, m.T)
    a = torch.rand(5, 5, generator=g)
    assert A.rank_correlation(a, a) == pytest.approx(1.0)
    assert A.rank_correlation(a, -a) == pytest.approx(-1.0)


def test_reliability_bins_reproduce_ece():
    logits = _logits(n=500, seed=6)
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))
    bins = A.reliability_bins(logits, labels, n_bins=15)
    assert bins["count"].sum() == 500
    used = bins[bins["count"] > 0]
    ece = float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / 500)
    assert ece == pytest.approx(metrics.expected_calibration_error(logits, labels, n_bins=15))


def test_seed_table_mean_and_sample_std():
    df = A.seed_table({"kd": [0.9, 0.92, 0.91], "ce": [0.88]}, extra={"agreement": {"kd": [1, 0, 1], "ce": [0.5]}})
    assert df.loc["kd", "mean"] == pytest.approx(statistics.mean([0.9, 0.92, 0.91]))
    assert df.loc["kd", "std"] == pytest.approx(statistics.stdev([0.9, 0.92, 0.91]))
    assert np.isnan(df.loc["ce", "std"]) and df.loc["kd", "agreement_mean"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no runs"):
        A.seed_table({"x": []})


def test_research_plots_render(tmp_path):
    df = A.seed_table({"ce": [0.8, 0.82], "kd": [0.85, 0.86]})
    plots.plot_mean_std_bars(df, path=tmp_path / "bars.png", reference={"kd": 0.84})
    logits, labels = _logits(n=100, seed=7), torch.randint(0, 10, (100,))
    plots.plot_reliability({"a": A.reliability_bins(logits, labels)}, path=tmp_path / "rel.png")
    names = [str(i) for i in range(10)]
    plots.plot_heatmaps({"m": A.class_similarity(logits, labels, 10)}, names, path=tmp_path / "heat.png")
    imgs = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    plots.plot_soft_targets(imgs, A.soft_targets(logits[:2], [1, 4]), names, [0, 1], path=tmp_path / "soft.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("bars.png", "rel.png", "heat.png", "soft.png"))
    with pytest.raises(ValueError, match="shape"):
        plots.plot_heatmaps({"m": torch.zeros(3, 3)}, names)
