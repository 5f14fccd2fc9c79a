"""Matplotlib figures for distillation experiments.

Every plotting function builds a new figure, returns it, and saves it atomically
when ``path=`` is given (format taken from the file suffix). Nothing here calls
``plt.show()``, selects a backend or closes figures: the caller decides whether
to display or close them (``save_figure(..., close=True)`` helps in loops).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, NullLocator, PercentFormatter

from .fileio import atomic_path

__all__ = [
    "save_figure",
    "plot_history",
    "plot_loss_terms",
    "plot_accuracy_comparison",
    "plot_confusion_matrix",
    "plot_prediction_examples",
    "plot_curve",
    "plot_bar_table",
    "plot_mean_std_bars",
    "plot_reliability",
    "plot_heatmaps",
    "plot_soft_targets",
    "plot_scatter",
]

# Short metric names map to the history column stem (train_<stem>, val_<stem>).
_METRIC_ALIASES = {"accuracy": "acc", "acc": "acc", "loss": "loss", "error": "err"}


# --------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, close: bool = False) -> Path:
    """Save ``fig`` atomically to ``path``; the format comes from the suffix (.png, .pdf, .svg, ...).

    The figure is drawn into a temporary file beside ``path`` and renamed over it,
    so readers never see a half-written image. ``close=True`` also releases the
    figure from pyplot afterwards (useful when making many figures in a loop).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if not fmt:
        raise ValueError(f"cannot infer an image format from {str(path)!r}: it has no suffix")
    if fmt not in supported:
        raise ValueError(f"unsupported image format {fmt!r}; choose one of {sorted(supported)}")
    with atomic_path(path) as tmp:
        # The temp file ends in .tmp, so the format must be passed explicitly.
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return path


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensor / array / sequence -> numpy array on CPU, without a torch import at module level."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - only for truly odd inputs
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _check_nonempty_mapping(d: Any, name: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(d).__name__}")
    if len(d) == 0:
        raise ValueError(f"{name} must not be empty")


# --------------------------------------------------------------------------- training curves


def _label_x(ax, xs: np.ndarray, logx: bool) -> None:
    """Readable x ticks: on a log axis, one labelled tick at every x value (matplotlib's default labels
    only the decades, e.g. 1 and 10 of a temperature sweep); on a linear axis of whole numbers
    (ensemble sizes, epochs), whole-number ticks only (never 1.5 students)."""
    values = np.unique(xs[np.isfinite(xs)])
    if logx:
        ax.set_xscale("log")
        if values.size <= 12:
            ax.xaxis.set_major_locator(FixedLocator(values))
            ax.set_xticklabels([f"{v:g}" for v in values])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
    elif values.size and np.allclose(values, np.round(values)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(
    histories: Mapping[str, Any],
    metrics: Sequence[str] = ("loss", "accuracy"),
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Training curves, one subplot per metric, one colour per model.

    ``histories`` maps model name -> DataFrame with an ``epoch`` column and some of
    ``train_<m>`` / ``val_<m>`` (``accuracy`` means the ``*_acc`` columns). Train is
    drawn solid, validation dashed. Missing or all-NaN columns are skipped, and
    NaN epochs are dropped per column (so a sparsely evaluated ``val_*`` still
    draws as a line). A metric may also be a full column name, e.g.
    ``"train_loss_kd"``. A metric with no data for any model gets an empty panel
    with a "no data" note, so the figure always has ``len(metrics)`` axes.
    """
    _check_nonempty_mapping(histories, "histories")
    if isinstance(metrics, str):
        metrics = (metrics,)
    if len(metrics) == 0:
        raise ValueError("metrics must not be empty")
    for name, df in histories.items():
        if not hasattr(df, "columns"):
            raise ValueError(f"history for {name!r} must be a pandas DataFrame, got {type(df).__name__}")
        if "epoch" not in df.columns:
            raise ValueError(f"history for {name!r} has no 'epoch' column (columns: {list(df.columns)})")

    colors = dict(zip(histories, _colors(len(histories))))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.0 * len(metrics), 3.8), layout="constrained", squeeze=False
    )
    for ax, metric in zip(axes[0], metrics):
        stem = _METRIC_ALIASES.get(metric, metric)
        drew_any = False
        all_fraction = True  # accuracy-like values in [0, 1] get a percent axis
        for name, df in histories.items():
            candidates = [(f"train_{stem}", "-", "train"), (f"val_{stem}", "--", "val")]
            if not any(c in df.columns for c, _, _ in candidates) and metric in df.columns:
                candidates = [(metric, "-", None)]
            for col, style, split in candidates:
                if col not in df.columns:
                    continue
                sub = df[["epoch", col]].dropna()
                if sub.empty:
                    continue
                y = sub[col].to_numpy(dtype=float)
                all_fraction &= bool(np.all((y >= 0) & (y <= 1)))
                label = name if split is None else f"{name} ({split})"
                ax.plot(sub["epoch"].to_numpy(), y, linestyle=style, color=colors[name], label=label)
                drew_any = True
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if drew_any:
            if stem == "acc" and all_fraction:
                ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(metric)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_loss_terms(
    history: Any,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Every ``train_loss_*`` column (e.g. CE and KD terms) against ``epoch``: of one history, or of
    several side by side (``{name: history}``, one panel each, a shared y axis so terms compare across
    runs; a term keeps its colour in every panel).

    Columns that are entirely NaN are skipped. Raises ``ValueError`` naming the history that has no
    ``epoch`` column or no ``train_loss_*`` column.
    """
    histories = dict(history) if isinstance(history, Mapping) else {None: history}
    if not histories:
        raise ValueError("plot_loss_terms needs a history or a non-empty {name: history} mapping")
    terms: list[str] = []
    for name, h in histories.items():
        which = "history" if name is None else f"history {name!r}"
        if not hasattr(h, "columns"):
            raise ValueError(f"{which} must be a pandas DataFrame, got {type(h).__name__}")
        if "epoch" not in h.columns:
            raise ValueError(f"{which} has no 'epoch' column (columns: {list(h.columns)})")
        cols = [c for c in h.columns if str(c).startswith("train_loss_")]
        if not cols:
            raise ValueError(f"{which} has no 'train_loss_*' columns (columns: {list(h.columns)})")
        terms += [c for c in cols if c not in terms]
    color = dict(zip(terms, _colors(len(terms))))
    n = len(histories)
    fig, axes = plt.subplots(1, n, figsize=(6.0 if n == 1 else 4.2 * n, 4.0), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, (name, h) in zip(axes[0], histories.items()):
        for col in [c for c in terms if c in h.columns]:
            sub = h[["epoch", col]].dropna()
            if sub.empty:
                continue
            ax.plot(sub["epoch"].to_numpy(), sub[col].to_numpy(dtype=float), color=color[col],
                    label=col[len("train_loss_"):])
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        if name is not None:
            ax.set_title(str(name), fontsize="medium")
    axes[0][0].set_ylabel("loss term")
    if n == 1 and None in histories:
        axes[0][0].set_title(title or "training loss terms")
    else:
        fig.suptitle(title or "training loss terms")
    return _finish(fig, path)


# --------------------------------------------------------------------------- comparisons


def plot_accuracy_comparison(
    accuracies: Mapping[str, float],
    title: str | None = None,
    path: str | os.PathLike | None = None,
    reference: Mapping[str, float] | None = None,
) -> Figure:
    """Bar chart of accuracies (fractions in [0, 1]) shown in percent with 2-decimal labels.

    ``reference`` optionally maps some of the same names to a reference accuracy
    (e.g. a published number), drawn as a black marker across the bar.
    """
    _check_nonempty_mapping(accuracies, "accuracies")
    names = list(accuracies)
    values = np.array([float(accuracies[k]) for k in names])
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
        raise ValueError(f"accuracies must be finite fractions in [0, 1], got {dict(zip(names, values.tolist()))}")
    if reference is not None:
        unknown = [k for k in reference if k not in accuracies]
        if unknown:
            raise ValueError(f"reference names {unknown} are not in accuracies {names}")
        ref_vals = np.array([float(v) for v in reference.values()])
        if not np.all(np.isfinite(ref_vals)) or np.any(ref_vals < 0) or np.any(ref_vals > 1):
            raise ValueError(f"reference accuracies must be finite fractions in [0, 1], got {dict(reference)}")

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 4.0), layout="constrained")
    x = np.arange(len(names))
    pct = values * 100.0
    bars = ax.bar(x, pct, color=_colors(len(names)), width=0.7)
    ax.bar_label(bars, labels=[f"{v:.2f}%" for v in pct], padding=2, fontsize="small")
    if reference:
        idx = [names.index(k) for k in reference]
        ref_pct = [float(reference[k]) * 100.0 for k in reference]
        ax.scatter(x[idx], ref_pct, marker="_", s=900, linewidths=2.0, color="black", zorder=3,
                   label="reference")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("accuracy (%)")
    top = max(pct.max(), max((float(v) * 100 for v in (reference or {}).values()), default=0.0))
    ax.set_ylim(0, min(100.0, top) * 1.08 + 1e-9 if top > 0 else 1.0)  # headroom for the labels
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_confusion_matrix(
    cm: Any,
    class_names: Sequence[str] | None = None,
    normalize: bool = True,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Heat map of a (K, K) confusion matrix (rows true, columns predicted) with a colour bar.

    With ``normalize`` each row is divided by its total (per-class recall); rows
    with no samples stay 0. Cell values are written in when K <= 20.
    """
    m = _to_numpy(cm, "cm")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square (K, K) matrix, got shape {m.shape}")
    m = m.astype(float)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("cm must contain finite non-negative counts")
    k = m.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} entries but cm is {k}x{k}")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    side = min(12.0, max(4.0, 0.5 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(m.max(), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        thresh = (1.0 if normalize else max(m.max(), 1.0)) / 2
        for i in range(k):
            for j in range(k):
                text = f"{m[i, j]:.2f}" if normalize else f"{int(round(m[i, j]))}"
                ax.text(j, i, text, ha="center", va="center", fontsize="x-small" if k > 10 else "small",
                        color="white" if m[i, j] > thresh else "black")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    return _finish(fig, path)


# --------------------------------------------------------------------------- examples


def _image_for_display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 or float -> (H, W) or (H, W, 3) float in [0, 1] for imshow."""
    img = img.astype(float) / 255.0 if img.dtype == np.uint8 else img.astype(float)
    lo, hi = float(np.min(img)), float(np.max(img))
    if lo < 0.0 or hi > 1.0:
        # Normalised (mean/std) inputs: rescale this image to [0, 1] for viewing only.
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.shape[0] == 1:
        return img[0]
    return np.transpose(img, (1, 2, 0))


def plot_prediction_examples(
    images: Any,
    labels: Any,
    predictions: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    n: int = 12,
    path: str | os.PathLike | None = None,
    indices: Sequence[int] | None = None,
    ncols: int = 6,
) -> Figure:
    """Grid of example images, each captioned with its true label and every model's prediction.

    ``images`` is (N, C, H, W) with C in {1, 3}, uint8 (0..255) or float (shown as
    [0, 1], or rescaled per image when outside that range). ``predictions`` maps
    model name -> predicted classes (N,) (or logits (N, K), reduced by argmax).
    Wrong predictions are written in red. Shows the first ``n`` images, or the
    given ``indices``. The figure has exactly one axes per shown image.
    """
    imgs = _to_numpy(images, "images")
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {imgs.shape}")
    num = imgs.shape[0]
    y = _to_numpy(labels, "labels")
    if y.shape != (num,):
        raise ValueError(f"labels must have shape ({num},) to match images {imgs.shape}, got {y.shape}")
    _check_nonempty_mapping(predictions, "predictions")
    preds: dict[str, np.ndarray] = {}
    for name, p in predictions.items():
        p = _to_numpy(p, f"predictions[{name!r}]")
        if p.ndim == 2 and p.shape[0] == num:
            p = p.argmax(axis=1)
        if p.shape != (num,):
            raise ValueError(f"predictions[{name!r}] must have shape ({num},) or ({num}, K), got {p.shape}")
        preds[name] = p
    if indices is None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        indices = list(range(min(n, num)))
    else:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not -num <= i < num]
        if bad:
            raise ValueError(f"indices {bad} are out of range for {num} images")
    if not indices:
        raise ValueError("no images to show")

    def name_of(c: Any) -> str:
        c = int(c)
        if class_names is not None and 0 <= c < len(class_names):
            return str(class_names[c])
        return str(c)

    cols = max(1, min(ncols, len(indices)))
    rows = math.ceil(len(indices) / cols)
    fig = plt.figure(figsize=(1.9 * cols, (1.9 + 0.28 * (1 + len(preds))) * rows), layout="constrained")
    gray = imgs.shape[1] == 1
    for k, idx in enumerate(indices):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(_image_for_display(imgs[idx]), cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        true = int(y[idx])
        # One text per caption line so each model's prediction can be coloured on its own.
        caption = [(f"true: {name_of(true)}", "black")]
        for name, p in preds.items():
            ok = int(p[idx]) == true
            caption.append((f"{name}: {name_of(p[idx])}", "black" if ok else "red"))
        for j, (text, color) in enumerate(reversed(caption)):
            # Offsets in points keep the line spacing independent of the image size.
            ax.annotate(text, xy=(0.5, 1.0), xycoords="axes fraction", xytext=(0, 2 + 9 * j),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7, color=color)
    return _finish(fig, path)


# --------------------------------------------------------------------------- generic


def plot_curve(
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    path: str | os.PathLike | None = None,
    yerr: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
    reference: Mapping[str, float] | None = None,
    point_labels: Mapping[str, Sequence[str] | str] | None = None,
) -> Figure:
    """Line plot of one or more series against shared ``x`` (e.g. accuracy vs temperature).

    ``yerr`` optionally maps some series names to symmetric error bars of the same
    length. Every series must have ``len(x)`` points; NaN points are left as gaps.
    ``reference``: ``{label: y}`` drawn as labelled dashed horizontal lines (e.g. the scratch student's
    mean), not as flat series. ``point_labels``: ``{series: texts}`` written beside each point, one text
    per point, or a format string applied to every y value (``"{:.1f}"``).
    """
    xs = _to_numpy(x, "x").astype(float)
    if xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"x must be a non-empty 1-D sequence, got shape {xs.shape}")
    _check_nonempty_mapping(ys, "ys")
    series = {}
    for name, v in ys.items():
        v = _to_numpy(v, f"ys[{name!r}]").astype(float)
        if v.shape != xs.shape:
            raise ValueError(f"ys[{name!r}] has shape {v.shape} but x has shape {xs.shape}")
        series[name] = v
    errs = {}
    for name, e in (yerr or {}).items():
        if name not in series:
            raise ValueError(f"yerr has key {name!r} that is not in ys {list(series)}")
        e = _to_numpy(e, f"yerr[{name!r}]").astype(float)
        if e.shape != xs.shape:
            raise ValueError(f"yerr[{name!r}] has shape {e.shape} but x has shape {xs.shape}")
        errs[name] = e
    if logx and np.any(xs <= 0):
        raise ValueError("logx=True needs all x values > 0")
    texts = {}
    for name, t in (point_labels or {}).items():
        if name not in series:
            raise ValueError(f"point_labels has key {name!r} that is not in ys {list(series)}")
        if isinstance(t, str):
            try:
                t = ["" if not np.isfinite(v) else t.format(v) for v in series[name]]
            except (ValueError, IndexError, KeyError) as e:
                raise ValueError(f"point_labels[{name!r}] = {t!r} is not a format for one number ({e})") from None
        t = [str(v) for v in t]
        if len(t) != xs.size:
            raise ValueError(f"point_labels[{name!r}] has {len(t)} texts but x has {xs.size} points")
        texts[name] = t
    refs = {}
    for k, v in (reference or {}).items():
        if not np.isfinite(float(v)):
            raise ValueError(f"reference[{k!r}] must be a finite number, got {v!r}")
        refs[str(k)] = float(v)

    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    handles = []  # explicit, so the legend follows the order of ``ys`` even with error bars
    for (name, v), color in zip(series.items(), _colors(len(series))):
        if name in errs:
            h = ax.errorbar(xs, v, yerr=errs[name], color=color, marker="o", markersize=4, capsize=3, label=name)
        else:
            (h,) = ax.plot(xs, v, color=color, marker="o", markersize=4, label=name)
        handles.append(h)
        for xv, yv, t in zip(xs, v, texts.get(name, [])):
            if t and np.isfinite(yv):
                ax.annotate(t, (xv, yv), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize="x-small", color=color)
    for (k, v), color in zip(refs.items(), _colors(len(series) + len(refs))[len(series):]):
        handles.append(ax.axhline(v, color=color, linestyle="--", linewidth=1.2, label=k))
    _label_x(ax, xs, logx)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize="small")
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_bar_table(
    df: Any,
    x: str,
    y: str,
    hue: str | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    fmt: str = "{:.2f}",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Bar chart straight from a long-format DataFrame: bars at each ``x``, grouped by ``hue``.

    Values are labelled on the bars with ``fmt``. Duplicate (x, hue) pairs are an
    error rather than silently averaged.
    """
    if not hasattr(df, "columns"):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    needed = [c for c in (x, y, hue) if c is not None]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column(s) {missing} (columns: {list(df.columns)})")
    if len(df) == 0:
        raise ValueError("df is empty")
    keys = [x] if hue is None else [x, hue]
    if df.duplicated(subset=keys).any():
        raise ValueError(f"df has duplicate rows for {keys}; aggregate first")
    xs = list(dict.fromkeys(df[x].tolist()))
    hues = [None] if hue is None else list(dict.fromkeys(df[hue].tolist()))
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(xs) * max(1, len(hues) * 0.6) + 1.5), 4.0),
                           layout="constrained")
    pos = np.arange(len(xs))
    for j, (h, color) in enumerate(zip(hues, _colors(len(hues)))):
        sub = df if h is None else df[df[hue] == h]
        lookup = dict(zip(sub[x].tolist(), sub[y].astype(float).tolist()))
        heights = [lookup.get(v, np.nan) for v in xs]
        bars = ax.bar(pos + (j - (len(hues) - 1) / 2) * width, heights, width=width, color=color,
                      label=None if h is None else str(h))
        ax.bar_label(bars, labels=["" if np.isnan(v) else fmt.format(v) for v in heights],
                     padding=2, fontsize="x-small")
    ax.set_xticks(pos, [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, axis="y", alpha=0.3)
    if hue is not None:
        ax.legend(title=hue, fontsize="small")
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# --------------------------------------------------------------------------- research figures


def plot_mean_std_bars(
    table: Any,
    ylabel: str = "test accuracy (%)",
    scale: float = 100.0,
    title: str | None = None,
    reference: Mapping[str, float] | None = None,
    path: str | os.PathLike | None = None,
    error: str = "std",
) -> Figure:
    """Bars of ``table["mean"]`` with error bars (one row per method, e.g. from
    :func:`kd_utils.analysis.seed_table`), every seed's value drawn as a dot on its bar. ``error``:
    ``"std"`` (the spread over seeds, ``table["std"]``) or ``"se"`` (the standard error of the mean,
    std / sqrt(n), which needs an ``n`` column); the choice is named in the y label. ``reference``:
    values to mark, ``{name: value}``: on the bar of that name, or as a labelled dashed line across the
    chart when no bar has the name (e.g. ``{"teacher": 0.90}``); the y range includes them."""
    if not hasattr(table, "columns") or not {"mean", "std"} <= set(table.columns):
        raise ValueError("table must be a DataFrame with 'mean' and 'std' columns")
    if error not in ("std", "se"):
        raise ValueError(f"error must be 'std' or 'se', got {error!r}")
    if error == "se" and "n" not in table.columns:
        raise ValueError("error='se' needs an 'n' column (runs per row), as seed_table gives")
    if len(table) == 0:
        raise ValueError("table is empty")
    names = [str(i) for i in table.index]
    mean = table["mean"].to_numpy(float) * scale
    std = np.nan_to_num(table["std"].to_numpy(float) * scale)
    if error == "se":
        std = std / np.sqrt(table["n"].to_numpy(float))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 4.0), layout="constrained")
    x = np.arange(len(names))
    bars = ax.bar(x, mean, yerr=std, capsize=4, color=_colors(len(names)), width=0.7)
    ax.bar_label(bars, labels=[f"{m:.2f}±{s:.2f}" for m, s in zip(mean, std)], padding=3, fontsize="x-small")
    if "per_seed" in table.columns:
        for xi, seeds in zip(x, table["per_seed"]):
            ax.scatter(np.full(len(seeds), xi), np.asarray(seeds, float) * scale, s=10, color="black", zorder=3)
    lines = []  # references that are not a bar (e.g. the teacher): a labelled horizontal line
    for k, v in (reference or {}).items():
        if k in names:
            ax.scatter([names.index(k)], [v * scale], marker="_", s=900, color="red", zorder=4)
        else:
            ax.axhline(v * scale, color="red", linestyle="--", linewidth=1, zorder=4)
            ax.annotate(f"{k} {v * scale:.2f}", (1.0, v * scale), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize="x-small", color="red")
            lines.append(v * scale)
    lo = min([np.nanmin(mean - std), *lines])
    hi = max([np.nanmax(mean + std), *lines])
    pad = max(0.5, 0.15 * (hi - lo))
    bottom = lo - 2 * pad
    ax.set_ylim(bottom, hi + 2 * pad)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    # the axis starts near the bars' tops so that differences of a point stay visible: say so, since
    # bar heights are then not proportional to the values
    bars_are = "mean ± std over seeds" if error == "std" else "mean ± standard error"
    ax.set_ylabel(f"{ylabel} ({bars_are}), axis from {bottom:.1f}" if bottom > 0 else f"{ylabel} ({bars_are})")
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_reliability(
    bins: Mapping[str, Any],
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Reliability diagrams side by side: accuracy against mean confidence per bin for each model
    (``bins`` maps a name to :func:`kd_utils.analysis.reliability_bins`); the diagonal is perfect
    calibration, and the bar under each panel shows how many samples fall in each bin."""
    _check_nonempty_mapping(bins, "bins")
    fig, axes = plt.subplots(1, len(bins), figsize=(3.3 * len(bins), 3.6), layout="constrained", squeeze=False)
    for ax, ((name, df), color) in zip(axes[0], zip(bins.items(), _colors(len(bins)))):
        centers = (df["lo"] + df["hi"]) / 2
        width = float((df["hi"] - df["lo"]).iloc[0])
        ax.bar(centers, df["accuracy"].fillna(0), width=width * 0.95, color=color, alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.plot(df["confidence"], df["accuracy"], "k.", ms=4)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(name, fontsize="medium")
        share = df["count"] / df["count"].sum()
        ax.text(0.03, 0.92, f"top bin holds {share.iloc[-1]:.0%}", transform=ax.transAxes, fontsize="x-small")
    axes[0][0].set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_heatmaps(
    matrices: Mapping[str, Any],
    labels: Sequence[str],
    title: str | None = None,
    fmt: str = "{:.2f}",
    path: str | os.PathLike | None = None,
    shared_scale: bool = False,
) -> Figure:
    """Square matrices side by side (e.g. the teacher's class similarity beside a model-free one),
    annotated when small. ``shared_scale``: one colour scale for all (the range of every matrix), so
    matrices that are compared read alike; otherwise each has its own."""
    _check_nonempty_mapping(matrices, "matrices")
    arrays = {}
    for name, m in matrices.items():
        m = _to_numpy(m, name).astype(float)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
            raise ValueError(f"matrix {name!r} has shape {m.shape}, expected ({len(labels)}, {len(labels)})")
        arrays[name] = m
    lim = {}
    if shared_scale:
        lim = {"vmin": min(float(np.nanmin(m)) for m in arrays.values()),
               "vmax": max(float(np.nanmax(m)) for m in arrays.values())}
    fig, axes = plt.subplots(1, len(arrays), figsize=(4.6 * len(arrays), 4.2), layout="constrained",
                             squeeze=False)
    for ax, (name, m) in zip(axes[0], arrays.items()):
        im = ax.imshow(m, cmap="viridis", **lim)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
        ax.set_title(name, fontsize="medium")
        if len(labels) <= 12:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] < np.nanmean(m) else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_soft_targets(
    images: Any,
    probs: Mapping[float, Any],
    classes: Sequence[str],
    true_labels: Sequence[int],
    path: str | os.PathLike | None = None,
) -> Figure:
    """One row per image: the image, then its softened distribution at each temperature (bars,
    true class in red)."""
    imgs = _to_numpy(images, "images")
    n = imgs.shape[0]
    temps = list(probs)
    fig, axes = plt.subplots(n, 1 + len(temps), figsize=(2.2 + 2.6 * len(temps), 1.9 * n), layout="constrained",
                             squeeze=False)
    for i in range(n):
        axes[i][0].imshow(_image_for_display(imgs[i]), cmap="gray" if imgs.shape[1] == 1 else None)
        axes[i][0].set_axis_off()
        axes[i][0].set_title(classes[int(true_labels[i])], fontsize="small")
        for j, t in enumerate(temps):
            p = _to_numpy(probs[t], f"probs[{t}]")[i]
            colors = ["tab:red" if k == int(true_labels[i]) else "tab:blue" for k in range(len(classes))]
            ax = axes[i][j + 1]
            ax.bar(range(len(classes)), p, color=colors)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(len(classes)), classes if i == n - 1 else [], rotation=90, fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            if i == 0:
                ax.set_title(f"T = {t:g}", fontsize="small")
    return _finish(fig, path)


def plot_attention_maps(
    images: Any,
    maps: Mapping[str, Any],
    path: str | os.PathLike | None = None,
) -> Figure:
    """One row per image: the image, then each model's spatial attention map (H, W) over it
    (``maps[name]`` is (N, H, W), upsampled for display)."""
    imgs = _to_numpy(images, "images")
    _check_nonempty_mapping(maps, "maps")
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(1.9 * (1 + len(maps)), 1.9 * n), layout="constrained",
                             squeeze=False)
    for i in range(n):
        axes[i][0].imshow(_image_for_display(imgs[i]), cmap="gray" if imgs.shape[1] == 1 else None)
        for j, (name, m) in enumerate(maps.items()):
            a = _to_numpy(m, f"maps[{name!r}]")
            if a.ndim != 3 or a.shape[0] != n:
                raise ValueError(f"maps[{name!r}] must be (N, H, W) with N = {n}, got shape {a.shape}")
            axes[i][j + 1].imshow(a[i], cmap="inferno", extent=(0, imgs.shape[3], imgs.shape[2], 0))
            if i == 0:
                axes[i][j + 1].set_title(name, fontsize="small")
        for ax in axes[i]:
            ax.set_axis_off()
    return _finish(fig, path)


def plot_embedding_2d(
    points: Mapping[str, Any],
    labels: Any,
    classes: Sequence[str],
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter plots of 2-D projections (one panel per model), coloured by class."""
    _check_nonempty_mapping(points, "points")
    y = _to_numpy(labels, "labels")
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 4.0), layout="constrained", squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, p) in zip(axes[0], points.items()):
        xy = _to_numpy(p, f"points[{name!r}]")
        if xy.shape != (len(y), 2):
            raise ValueError(f"points[{name!r}] must be ({len(y)}, 2), got shape {xy.shape}")
        for k, cls in enumerate(classes):
            sel = y == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.6, color=cmap(k % 10), label=cls)
        ax.set_title(name, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=4, fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_scatter(
    points: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    logx: bool = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    legend: str = "best",
) -> Figure:
    """One marker per (x, y) point, one colour per series; ``labels`` optionally names each point of a
    series (written beside it), e.g. student accuracy against teacher size, one point per teacher.
    ``legend``: a matplotlib location, or ``"outside"`` (right of the axes, hiding no point)."""
    _check_nonempty_mapping(points, "points")
    fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    for (name, pts), color in zip(points.items(), _colors(len(points))):
        xy = _to_numpy(list(pts), f"points[{name!r}]").astype(float).reshape(-1, 2)
        if logx and np.any(xy[:, 0] <= 0):
            raise ValueError(f"logx=True needs all x values > 0 (series {name!r})")
        ax.scatter(xy[:, 0], xy[:, 1], color=color, label=name, s=30, zorder=3)
        names = (labels or {}).get(name)
        if names is not None:
            if len(names) != len(xy):
                raise ValueError(f"labels[{name!r}] has {len(names)} entries for {len(xy)} points")
            for (x, y), text in zip(xy, names):
                ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", **({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if legend == "outside"
                                   else {"loc": legend}))
    if title:
        ax.set_title(title)
    return _finish(fig, path)
