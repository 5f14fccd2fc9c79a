"""Tests for kd_utils.plots (headless)."""
import matplotlib

matplotlib.use("Agg")  # only here, in the tests: the library never picks a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kd_utils import plots as PL  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(n=5, extra=True, val_every=1):
    ep = np.arange(1, n + 1)
    df = pd.DataFrame({
        "epoch": ep,
        "train_loss": 2.0 / ep,
        "val_loss": 2.2 / ep,
        "train_acc": 1 - 0.5 / ep,
        "val_acc": 1 - 0.6 / ep,
    })
    if val_every > 1:
        df.loc[df["epoch"] % val_every != 0, ["val_loss", "val_acc"]] = np.nan
    if extra:
        df["train_loss_ce"] = 1.0 / ep
        df["train_loss_kd"] = 1.0 / ep
    return df


def _assert_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == [], f"temp files left behind: {leftovers}"


def _bars(ax):
    return [p for c in ax.containers if isinstance(c, BarContainer) for p in c]


# --------------------------------------------------------------------------- save_figure


def test_save_figure_png_and_formats(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    out = PL.save_figure(fig, tmp_path / "sub" / "a.png")
    _assert_png(out)
    PL.save_figure(fig, tmp_path / "b.pdf")
    assert (tmp_path / "b.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="suffix"):
        PL.save_figure(fig, tmp_path / "noext")
    with pytest.raises(ValueError, match="unsupported"):
        PL.save_figure(fig, tmp_path / "c.notaformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pdf", "sub"]
    assert plt.fignum_exists(fig.number)
    PL.save_figure(fig, tmp_path / "d.png", close=True)
    assert not plt.fignum_exists(fig.number)


def test_save_failure_leaves_no_file(tmp_path, monkeypatch):
    fig, _ = plt.subplots()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        PL.save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- history


def test_plot_history_lines_and_styles(tmp_path):
    hists = {"teacher": _history(), "student": _history(val_every=2)}
    path = tmp_path / "hist.png"
    fig = PL.plot_history(hists, title="run", path=path)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == 4  # 2 models x (train, val)
        styles = sorted(line.get_linestyle() for line in lines)
        assert styles == ["-", "-", "--", "--"]
        # one colour per model, shared by its train and val lines
        colours = {line.get_label().split(" ")[0]: line.get_color() for line in lines}
        assert colours["teacher"] != colours["student"]
    # NaN epochs dropped, not plotted as gaps
    student_val = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "student (val)"][0]
    assert list(student_val.get_xdata()) == [2, 4]
    _assert_png(path)


def test_plot_history_skips_missing_columns():
    df = _history().drop(columns=["val_loss", "val_acc"])
    df["train_acc"] = np.nan  # all-NaN: skipped
    fig = PL.plot_history({"m": df}, metrics=("loss", "accuracy", "train_loss_kd"))
    assert len(fig.axes) == 3
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 0, 1]


def test_plot_history_errors():
    with pytest.raises(ValueError, match="empty"):
        PL.plot_history({})
    with pytest.raises(ValueError, match="epoch"):
        PL.plot_history({"m": _history().drop(columns=["epoch"])})
    with pytest.raises(ValueError, match="metrics"):
        PL.plot_history({"m": _history()}, metrics=())


def test_plot_loss_terms(tmp_path):
    fig = PL.plot_loss_terms(_history(), path=tmp_path / "terms.png")
    assert len(fig.axes) == 1
    assert sorted(ln.get_label() for ln in fig.axes[0].get_lines()) == ["ce", "kd"]
    _assert_png(tmp_path / "terms.png")
    with pytest.raises(ValueError, match="train_loss_"):
        PL.plot_loss_terms(_history(extra=False))


def test_plot_loss_terms_of_several_runs_share_colours_and_axis(tmp_path):
    a = _history()
    b = _history().drop(columns=["train_loss_kd"]).assign(train_loss_ce=lambda d: d["train_loss_ce"] * 3)
    fig = PL.plot_loss_terms({"kd": a, "scratch": b}, path=tmp_path / "two.png", title="terms")
    assert [ax.get_title() for ax in fig.axes] == ["kd", "scratch"] and fig.get_suptitle() == "terms"
    ce = [[ln for ln in ax.get_lines() if ln.get_label() == "ce"][0] for ax in fig.axes]
    assert ce[0].get_color() == ce[1].get_color()  # a term keeps its colour across panels
    assert [ln.get_label() for ln in fig.axes[1].get_lines()] == ["ce"]
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()  # shared y axis
    _assert_png(tmp_path / "two.png")
    with pytest.raises(ValueError, match="history 'scratch' has no 'train_loss_\\*' columns"):
        PL.plot_loss_terms({"kd": a, "scratch": _history(extra=False)})
    with pytest.raises(ValueError, match="non-empty"):
        PL.plot_loss_terms({})


# --------------------------------------------------------------------------- comparisons


def test_plot_accuracy_comparison(tmp_path):
    accs = {"teacher": 0.9912, "student": 0.9534, "student+KD": 0.97456}
    fig = PL.plot_accuracy_comparison(accs, title="MNIST", reference={"teacher": 0.992},
                                      path=tmp_path / "acc.png")
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars) == 3
    assert [b.get_height() for b in bars] == pytest.approx([99.12, 95.34, 97.456])
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["99.12%", "95.34%", "97.46%"]
    assert len(ax.collections) == 1  # reference markers
    _assert_png(tmp_path / "acc.png")


def test_plot_accuracy_comparison_errors():
    with pytest.raises(ValueError, match="empty"):
        PL.plot_accuracy_comparison({})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PL.plot_accuracy_comparison({"a": 97.5})
    with pytest.raises(ValueError, match="reference"):
        PL.plot_accuracy_comparison({"a": 0.5}, reference={"b": 0.4})


def test_plot_confusion_matrix(tmp_path):
    cm = torch.tensor([[5, 1, 0], [0, 3, 3], [0, 0, 0]])
    fig = PL.plot_confusion_matrix(cm, class_names=["a", "b", "c"], path=tmp_path / "cm.png")
    assert len(fig.axes) == 2  # matrix + colour bar
    ax = fig.axes[0]
    data = ax.images[0].get_array()
    assert np.allclose(data[0], [5 / 6, 1 / 6, 0])
    assert np.allclose(data[2], 0)  # empty row stays 0, no NaN
    assert len(ax.texts) == 9
    _assert_png(tmp_path / "cm.png")
    fig2 = PL.plot_confusion_matrix(cm.numpy(), normalize=False)
    assert "5" in [t.get_text() for t in fig2.axes[0].texts]


def test_plot_confusion_matrix_errors():
    with pytest.raises(ValueError, match="square"):
        PL.plot_confusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class_names"):
        PL.plot_confusion_matrix(np.eye(3), class_names=["a", "b"])


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("kind", ["uint8_gray", "float_rgb", "normalised"])
def test_plot_prediction_examples(tmp_path, kind):
    g = torch.Generator().manual_seed(0)
    if kind == "uint8_gray":
        images = torch.randint(0, 256, (20, 1, 8, 8), generator=g, dtype=torch.uint8)
    elif kind == "float_rgb":
        images = torch.rand(20, 3, 8, 8, generator=g)
    else:
        images = torch.randn(20, 1, 8, 8, generator=g)
    labels = torch.arange(20) % 10
    preds = {"teacher": labels.clone(), "student": (labels + (torch.arange(20) % 3 == 0).long()) % 10}
    fig = PL.plot_prediction_examples(images, labels, preds, class_names=[f"c{i}" for i in range(10)],
                                      n=12, path=tmp_path / "ex.png")
    assert len(fig.axes) == 12
    first = fig.axes[0]  # index 0: student wrong (0 % 3 == 0)
    texts = {t.get_text(): t.get_color() for t in first.texts}
    assert texts["true: c0"] == "black"
    assert texts["teacher: c0"] == "black"
    assert texts["student: c1"] == "red"
    second = {t.get_text(): t.get_color() for t in fig.axes[1].texts}
    assert second["student: c1"] == "black"
    _assert_png(tmp_path / "ex.png")


def test_plot_prediction_examples_indices_and_logits():
    images = np.random.default_rng(0).random((5, 3, 4, 4))
    labels = np.array([0, 1, 2, 0, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1]), 3).float()
    fig = PL.plot_prediction_examples(images, labels, {"m": logits}, indices=[2, 4])
    assert len(fig.axes) == 2
    assert {t.get_text(): t.get_color() for t in fig.axes[0].texts}["m: 1"] == "red"


def test_plot_prediction_examples_errors():
    images = torch.zeros(4, 1, 8, 8)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        PL.plot_prediction_examples(images, torch.zeros(3, dtype=torch.long), {"m": labels})
    with pytest.raises(ValueError, match=r"predictions\['m'\]"):
        PL.plot_prediction_examples(images, labels, {"m": torch.zeros(5)})
    with pytest.raises(ValueError, match="empty"):
        PL.plot_prediction_examples(images, labels, {})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        PL.plot_prediction_examples(torch.zeros(4, 8, 8), labels, {"m": labels})
    with pytest.raises(ValueError, match="out of range"):
        PL.plot_prediction_examples(images, labels, {"m": labels}, indices=[7])


# --------------------------------------------------------------------------- generic


def test_plot_curve(tmp_path):
    temps = [1, 2, 4, 8, 16]
    ys = {"KD": [0.97, 0.975, 0.98, 0.978, 0.97], "baseline": [0.96] * 5}
    fig = PL.plot_curve(temps, ys, "temperature", "accuracy", logx=True,
                        yerr={"KD": [0.001] * 5}, path=tmp_path / "sweep.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in errorbars] == ["KD"]
    labelled = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labelled == ["baseline"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KD", "baseline"]
    _assert_png(tmp_path / "sweep.png")


def test_plot_curve_labels_every_swept_value_on_a_log_axis():
    """matplotlib's default log axis labels only the decades (1 and 10 of a temperature sweep)."""
    temps = [1, 2, 4, 8, 20]
    fig = PL.plot_curve(temps, {"KD": [0.9, 0.91, 0.92, 0.915, 0.9]}, "temperature", "accuracy", logx=True)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "20"]
    assert list(ax.get_xticks()) == temps
    plt.close(fig)


def test_plot_curve_keeps_whole_number_x_on_whole_ticks():
    """An ensemble of 1..5 students has no tick at 1.5 students."""
    fig = PL.plot_curve([1, 2, 3], {"ensemble": [0.8, 0.82, 0.83]}, "students", "accuracy")
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)
    fig = PL.plot_curve([0.5, 1.5, 2.5], {"a": [1, 2, 3]}, "x", "y")  # fractional x keep the default ticks
    fig.canvas.draw()
    assert any(not float(t).is_integer() for t in fig.axes[0].get_xticks())
    plt.close(fig)


def test_mean_std_bars_say_where_a_truncated_axis_starts():
    table = pd.DataFrame({"mean": [0.80, 0.82], "std": [0.003, 0.004]}, index=["scratch", "kd"])
    fig = PL.plot_mean_std_bars(table)
    ax = fig.axes[0]
    bottom = ax.get_ylim()[0]
    assert bottom > 0 and ax.get_ylabel() == f"test accuracy (%) (mean ± std over seeds), axis from {bottom:.1f}"
    plt.close(fig)
    from_zero = pd.DataFrame({"mean": [0.02, 0.9], "std": [0.01, 0.01]}, index=["a", "b"])
    fig = PL.plot_mean_std_bars(from_zero)
    assert fig.axes[0].get_ylabel() == "test accuracy (%) (mean ± std over seeds)"
    plt.close(fig)


def test_mean_std_bars_can_show_the_standard_error():
    table = pd.DataFrame({"mean": [0.80, 0.82], "std": [0.004, 0.006], "n": [4, 9]}, index=["scratch", "kd"])
    fig = PL.plot_mean_std_bars(table, error="se")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "80.00±0.20" in texts and "82.00±0.20" in texts  # 0.4/sqrt(4), 0.6/sqrt(9) points
    assert "(mean ± standard error)" in ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="error='se' needs an 'n' column"):
        PL.plot_mean_std_bars(table.drop(columns=["n"]), error="se")
    with pytest.raises(ValueError, match="error must be 'std' or 'se', got 'sem'"):
        PL.plot_mean_std_bars(table, error="sem")


def test_plot_curve_errors():
    with pytest.raises(ValueError, match="empty"):
        PL.plot_curve([1, 2], {}, "x", "y")
    with pytest.raises(ValueError, match="shape"):
        PL.plot_curve([1, 2, 3], {"a": [1, 2]}, "x", "y")
    with pytest.raises(ValueError, match="yerr"):
        PL.plot_curve([1, 2], {"a": [1, 2]}, "x", "y", yerr={"b": [0, 0]})
    with pytest.raises(ValueError, match="logx"):
        PL.plot_curve([0, 1], {"a": [1, 2]}, "x", "y", logx=True)


def test_plot_bar_table(tmp_path):
    df = pd.DataFrame({
        "T": [1, 1, 4, 4, 8, 8],
        "model": ["s", "kd"] * 3,
        "acc": [0.95, 0.96, 0.95, 0.97, 0.95, 0.975],
    })
    fig = PL.plot_bar_table(df, x="T", y="acc", hue="model", path=tmp_path / "bt.png")
    assert len(_bars(fig.axes[0])) == 6
    _assert_png(tmp_path / "bt.png")
    fig = PL.plot_bar_table(df[df.model == "s"], x="T", y="acc")
    assert len(_bars(fig.axes[0])) == 3
    with pytest.raises(ValueError, match="duplicate"):
        PL.plot_bar_table(df, x="T", y="acc")
    with pytest.raises(ValueError, match="column"):
        PL.plot_bar_table(df, x="T", y="nope")


def test_no_show_called(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show called"))
    PL.plot_history({"m": _history()})
    PL.plot_accuracy_comparison({"a": 0.5})


def test_mean_std_bars_draw_a_reference_that_is_not_a_bar_as_a_line_inside_the_range():
    table = pd.DataFrame({"mean": [0.80, 0.82], "std": [0.003, 0.004]}, index=["scratch", "kd"])
    fig = PL.plot_mean_std_bars(table, reference={"teacher": 0.90, "kd": 0.825})
    ax = fig.axes[0]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(90.0)
    assert ax.get_ylim()[0] < 80 and ax.get_ylim()[1] > 90.0
    assert any(t.get_text() == "teacher 90.00" for t in ax.texts)
    plt.close(fig)


def test_heatmaps_share_one_colour_scale_when_asked():
    a, b = np.eye(3) * 0.5, np.eye(3) * 2.0
    own = PL.plot_heatmaps({"a": a, "b": b}, ["x", "y", "z"])
    assert [im.get_clim() for ax in own.axes[:2] for im in ax.get_images()] == [(0.0, 0.5), (0.0, 2.0)]
    shared = PL.plot_heatmaps({"a": a, "b": b}, ["x", "y", "z"], shared_scale=True)
    assert [im.get_clim() for ax in shared.axes[:2] for im in ax.get_images()] == [(0.0, 2.0), (0.0, 2.0)]
    plt.close(own)
    plt.close(shared)


def test_scatter_legend_can_sit_outside_the_axes():
    fig = PL.plot_scatter({"students": [(1, 0.8), (2, 0.82)], "teacher": [(10, 0.9)]}, "MFLOPs", "accuracy",
                          legend="outside")
    fig.canvas.draw()
    box = fig.axes[0].get_legend().get_window_extent()
    assert box.x0 >= fig.axes[0].get_window_extent().x1 - 1
    plt.close(fig)


def test_plot_curve_reference_lines_and_point_labels():
    fig = PL.plot_curve([1, 2, 4], {"kd": [10.0, 12.5, float("nan")], "mse": [9.0, 9.5, 9.75]}, "T", "errors",
                        reference={"scratch (mean)": 11.0}, point_labels={"kd": "{:.1f}", "mse": ["a", "b", "c"]})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["10.0", "12.5", "a", "b", "c"]  # no text at a NaN point
    ref = [ln for ln in ax.get_lines() if ln.get_label() == "scratch (mean)"][0]
    assert list(ref.get_ydata()) == [11.0, 11.0] and ref.get_linestyle() == "--"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kd", "mse", "scratch (mean)"]
    with pytest.raises(ValueError, match="point_labels has key 'ce' that is not in ys"):
        PL.plot_curve([1, 2], {"kd": [1, 2]}, "x", "y", point_labels={"ce": "{:.1f}"})
    with pytest.raises(ValueError, match=r"point_labels\['kd'\] has 1 texts but x has 2 points"):
        PL.plot_curve([1, 2], {"kd": [1, 2]}, "x", "y", point_labels={"kd": ["a"]})
    with pytest.raises(ValueError, match=r"reference\['t'\] must be a finite number"):
        PL.plot_curve([1, 2], {"kd": [1, 2]}, "x", "y", reference={"t": float("inf")})
