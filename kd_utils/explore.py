"""Interactive explorers for the notebooks, and one table of every stored run.

Explorers
---------
:func:`temperature_explorer` (Task 1), :func:`bias_explorer` (Task 2), :func:`run_explorer` (Task 3) and
:func:`ensemble_explorer` (Task 4) work on what a notebook already holds (logits, labels, runs) and
each return an :class:`Explorer`: an ``ipywidgets.VBox`` of the controls, the figure of the current
choice (an ``Image`` widget) and a table of its numbers (an ``HTML`` widget). Every change of a control
recomputes the numbers into ``explorer.state`` (a dict) and redraws, so code drives an explorer as a
hand does::

    ex = temperature_explorer(t_logits, s_logits, images=data.x_test, labels=data.y_test)
    ex.controls["temperature"].value = 8     # or ex.set(temperature=8)
    ex.state["teacher"]                      # softmax(z / 8) of the chosen images

What a reader sees where
~~~~~~~~~~~~~~~~~~~~~~~~
An explorer shown as a cell's value gives *one* output holding three views of itself: the widget view,
``image/png`` (its figure when it was displayed: the default state) and ``text/plain`` (its table).
Each viewer takes the first view it can show:

- a live Jupyter frontend (JupyterLab, Notebook 7, VS Code) shows the widget, and nothing twice;
- a viewer without widget support shows the PNG (and keeps the text): nbconvert's HTML (so nbviewer)
  of a notebook saved without widget state, LaTeX/PDF export, JupyterLab on a notebook it does not
  trust (a fresh clone: the widget renderer is not "safe", so the PNG is used). nbval compares the
  text (it always skips the widget view and images), so a replayed notebook checks an explorer's
  default numbers like any printed number;
- a notebook saved *with* widget state (nbclient, hence ``nbconvert --execute``, papermill and
  :func:`kd_utils.notebooks.run_notebooks`, save it by default) is drawn by nbconvert's HTML through the
  jupyter-widgets HTML manager, a script fetched from a CDN: online, the controls (inactive) above the
  figure they were saved with; offline, nothing. Execute with ``store_widget_state=False``
  (``--ExecutePreprocessor.store_widget_state=False``) or delete ``metadata.widgets`` for a notebook
  whose explorers read everywhere as their PNG.

Figures are drawn on matplotlib ``Figure`` objects outside pyplot: the inline backend never shows them
a second time and no figure is left open per slider move.

Stored runs
-----------
:func:`run_records` gives one flat DataFrame of every run under the run stores (one row per run:
name, method, hyper-parameters, seed, accuracy, ECE, agreement with a teacher when given, timings,
epochs, path), ready for ``df.query(...)`` or boolean filters; :func:`plot_runs` draws any selection's
training curves, and :func:`run_explorer` accepts a selection too.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

try:
    import ipywidgets as widgets
except ImportError:  # pragma: no cover - the suite's environment installs it
    raise ImportError("kd_utils.explore needs ipywidgets 8: python -m pip install 'ipywidgets>=8,<9' "
                      "(it is in the suite's environment.yml and in pyproject.toml's dev extra)") from None

from . import metrics
from .analysis import add_logit_bias, logit_bias_table
from .ensemble import disagreement_matrix, ensemble_curve, ensemble_logits, pairwise_disagreement
from .plots import _colors, _image_for_display
from .progress import in_notebook_kernel

__all__ = ["Explorer", "temperature_explorer", "bias_explorer", "run_explorer", "ensemble_explorer",
           "run_records", "plot_runs", "DEFAULT_TEMPERATURES", "DEFAULT_BIASES"]

DEFAULT_TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
DEFAULT_BIASES = tuple(b / 2 for b in range(-20, 21))  # -10 ... +10 in steps of 0.5
MAX_IMAGES = 8  # rows of the temperature explorer
MAX_SUBSET_MEMBERS = 8  # mean over all subsets is computed up to 2**8 - 1 ensembles
ALL_SEEDS = "all"  # the run explorer's seed choice that shows every seed


# ------------------------------------------------------------------ helpers ----
def _logits(x: Any, name: str) -> torch.Tensor:
    """(N, K) float64 tensor from a tensor or array, K >= 2, all finite."""
    t = torch.as_tensor(x.detach().cpu() if hasattr(x, "detach") else np.asarray(x)).double()
    if t.ndim != 2 or t.shape[1] < 2 or t.shape[0] < 1:
        raise ValueError(f"{name} must be an (N, K) array of logits with N >= 1 and K >= 2, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds {int((~torch.isfinite(t)).sum())} non-finite values")
    return t


def _labels(x: Any, n: int, k: int, name: str = "labels") -> torch.Tensor:
    t = torch.as_tensor(x.detach().cpu() if hasattr(x, "detach") else np.asarray(x))
    if t.ndim != 1 or len(t) != n or t.is_floating_point():
        raise ValueError(f"{name} must be {n} integer class indices (one per row of the logits), "
                         f"got shape {tuple(t.shape)} of {t.dtype}")
    t = t.long()
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(f"{name} must lie in 0..{k - 1}, got values {int(t.min())}..{int(t.max())}")
    return t


def _class_names(classes: Sequence[str] | None, k: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in classes]
    if len(names) != k:
        raise ValueError(f"classes must name the {k} classes of the logits, got {len(names)} names")
    return names


def _grid(values: Sequence[float], name: str) -> list[float]:
    """Sorted distinct finite floats, at least one."""
    try:
        out = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {list(values)!r}")
    return out


def _initial(value: float | None, grid: list[float], default: float, name: str) -> float:
    if value is None:
        return default if default in grid else grid[0]
    if float(value) not in grid:
        raise ValueError(f"{name}={value!r} is not one of the slider's values {grid}")
    return float(value)


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    """A plain Python number (or the value itself) for tables and state."""
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


# ----------------------------------------------------------------- Explorer ----
class Explorer(widgets.VBox):
    """A widget of named ``controls``, a figure and a table, recomputed on every change.

    Subclasses implement ``compute(values) -> state``, ``draw(fig, state)`` and ``table(state)``
    (a DataFrame). ``state`` is the latest computed dict; ``figure()`` draws the current state on a new
    matplotlib Figure and ``png()`` gives the image the widget shows. The display bundle adds
    ``image/png`` and ``text/plain`` views of the current state to the widget view, for viewers without
    a widget manager (see the module docstring). In a Jupyter kernel every change redraws at once;
    elsewhere (a script, a test) the numbers are recomputed on every change and the figure is drawn
    when ``png()``, ``figure()`` or a display asks for it.
    """

    figsize: tuple[float, float] = (9.0, 4.0)
    dpi = 80

    def __init__(self, title: str, controls: dict[str, widgets.Widget]):
        image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        numbers = widgets.HTML()
        heading = widgets.HTML(f"<b>{html.escape(title)}</b>")
        super().__init__(children=[heading, widgets.HBox(list(controls.values())), image, numbers])
        self.title, self.controls = title, dict(controls)
        self._image, self._numbers = image, numbers
        self._state: dict[str, Any] = {}
        self._busy = False
        # In a Jupyter kernel every change redraws at once (a frontend may show it); elsewhere (scripts,
        # tests) the figure is drawn when it is asked for: png(), figure() or display.
        self._eager, self._stale = in_notebook_kernel(), True
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.refresh()

    # what a subclass provides
    def compute(self, values: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def draw(self, fig: Figure, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def table(self, state: dict[str, Any]) -> pd.DataFrame:
        raise NotImplementedError

    # the machinery
    @property
    def state(self) -> dict[str, Any]:
        """The numbers the explorer shows now (recomputed on every change of a control)."""
        return dict(self._state)

    def values(self) -> dict[str, Any]:
        """The current value of every control."""
        return {k: c.value for k, c in self.controls.items()}

    def set(self, **values: Any) -> "Explorer":
        """Set several controls at once (one recomputation); returns the explorer."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; this explorer has {sorted(self.controls)}")
        self._busy = True
        try:
            for k, v in values.items():
                self.controls[k].value = v
        finally:
            self._busy = False
        self.refresh()
        return self

    def _on_change(self, change: dict) -> None:
        if not self._busy:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the state from the controls and redraw the figure and the table."""
        self._state = self.compute(self.values())
        self._stale = True
        if self._eager:
            self.png()
        self._numbers.value = self.table(self._state).to_html(float_format=lambda v: f"{v:.4g}", na_rep="")

    def figure(self) -> Figure:
        """The current state drawn on a new matplotlib Figure (not registered with pyplot)."""
        fig = Figure(figsize=self.figsize, layout="constrained")
        self.draw(fig, self._state)
        return fig

    def png(self) -> bytes:
        """The PNG of the current state's figure, as the widget shows it."""
        if self._stale:
            self._image.value = _png(self.figure(), self.dpi)
            self._stale = False
        return bytes(self._image.value)

    def summary(self) -> str:
        """The ``text/plain`` view: the title and the table of the current state."""
        return f"{self.title}\n{self.table(self._state).to_string()}"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = dict(super()._repr_mimebundle_(**kwargs) or {})  # the widget view (None once closed)
        data["image/png"] = base64.b64encode(self.png()).decode("ascii")
        data["text/plain"] = self.summary()
        return data


# ---------------------------------------------------- Task 1: temperature ----
class TemperatureExplorer(Explorer):
    """Teacher's (and optionally a student's) ``softmax(z / T)`` for a few images, T on a slider."""

    def __init__(self, teacher: torch.Tensor, student: torch.Tensor | None, images: np.ndarray | None,
                 labels: torch.Tensor | None, classes: list[str], indices: list[int], temperatures: list[float],
                 temperature: float):
        self._t, self._s = teacher[indices], None if student is None else student[indices]
        self._images, self._labels = images, None if labels is None else labels[indices]
        self._classes, self._indices = classes, indices
        self.figsize = (9.0 if images is not None else 7.5, 0.9 + 1.75 * len(indices))
        controls = {
            "temperature": widgets.SelectionSlider(options=[(f"{t:g}", t) for t in temperatures], value=temperature,
                                                   description="T", continuous_update=False),
            "log_scale": widgets.Checkbox(value=False, description="log scale", indent=False),
        }
        who = "teacher and student" if student is not None else "teacher"
        super().__init__(f"Softened distributions softmax(z / T) of the {who}", controls)

    def compute(self, values: dict[str, Any]) -> dict[str, Any]:
        temp = float(values["temperature"])
        log_t = torch.log_softmax(self._t / temp, dim=1)
        p_t = log_t.exp()
        state = {"temperature": temp, "indices": list(self._indices), "log_scale": bool(values["log_scale"]),
                 "teacher": p_t.numpy(), "teacher_entropy": (-(p_t * log_t).sum(1)).numpy(),
                 "student": None, "student_entropy": None, "kl": None}
        if self._s is not None:
            log_s = torch.log_softmax(self._s / temp, dim=1)
            state.update(student=log_s.exp().numpy(), student_entropy=(-(log_s.exp() * log_s).sum(1)).numpy(),
                         kl=(p_t * (log_t - log_s)).sum(1).numpy())
        return state

    def table(self, state: dict[str, Any]) -> pd.DataFrame:
        rows = []
        for r, i in enumerate(state["indices"]):
            p = state["teacher"][r]
            row: dict[str, Any] = {"image": i}
            if self._labels is not None:
                y = int(self._labels[r])
                row.update(label=self._classes[y], teacher_p_label=float(p[y]))
            row.update(teacher_top1=self._classes[int(p.argmax())], teacher_p_top1=float(p.max()),
                       teacher_entropy=float(state["teacher_entropy"][r]))
            if state["student"] is not None:
                q = state["student"][r]
                row.update(student_top1=self._classes[int(q.argmax())], student_p_top1=float(q.max()),
                           kl_teacher_student=float(state["kl"][r]))
            rows.append(row)
        return pd.DataFrame(rows).set_index("image")

    def draw(self, fig: Figure, state: dict[str, Any]) -> None:
        n, k = len(state["indices"]), len(self._classes)
        has_img = self._images is not None
        grid = fig.add_gridspec(n, 2 if has_img else 1, width_ratios=[1, 6] if has_img else [1])
        x, both = np.arange(k), state["student"] is not None
        width = 0.4 if both else 0.8
        floor = max(1e-8, 0.5 * float(min(state["teacher"].min(), state["student"].min() if both else 1.0)))
        for r, i in enumerate(state["indices"]):
            y = None if self._labels is None else int(self._labels[r])
            if has_img:
                ax = fig.add_subplot(grid[r, 0])
                img = self._images[i]
                ax.imshow(_image_for_display(img), cmap="gray" if img.shape[0] == 1 else None)
                ax.set_axis_off()
                ax.set_title(f"#{i}" + ("" if y is None else f": {self._classes[y]}"), fontsize="small")
            ax = fig.add_subplot(grid[r, -1])
            ax.bar(x - (width / 2 if both else 0), state["teacher"][r], width, color="tab:blue", label="teacher")
            if both:
                ax.bar(x + width / 2, state["student"][r], width, color="tab:orange", label="student")
            if state["log_scale"]:
                ax.set_yscale("log")
                ax.set_ylim(floor, 1.5)
            else:
                ax.set_ylim(0, 1)
            ax.set_xticks(x, self._classes if r == n - 1 else [], rotation=90 if k > 10 else 0, fontsize="x-small")
            ax.tick_params(axis="y", labelsize="x-small")
            note = f"teacher entropy {state['teacher_entropy'][r]:.2f} nats"
            if both:
                note += f", KL(teacher || student) {state['kl'][r]:.3f}"
            ax.set_title(("" if has_img else f"#{i}: ") + note, fontsize="small", loc="left")
            if y is not None:
                ax.axvline(y, color="tab:red", alpha=0.25, linewidth=6, zorder=0)
            if r == 0:
                ax.legend(fontsize="x-small", loc="upper right")
        fig.suptitle(f"T = {state['temperature']:g}" + ("  (true class shaded red)" if self._labels is not None else ""),
                     fontsize="medium")


def temperature_explorer(teacher_logits: Any, student_logits: Any = None, images: Any = None,
                         classes: Sequence[str] | None = None, indices: Sequence[int] | None = None,
                         temperatures: Sequence[float] = DEFAULT_TEMPERATURES, *, labels: Any = None,
                         temperature: float | None = None) -> TemperatureExplorer:
    """A slider over the temperature T showing, for a few test images, the teacher's softened
    distribution ``softmax(z / T)`` and, beside it, a KD student's (``student_logits``; omit it to see
    only the teacher's soft targets, as in the MNIST Hinton notebook).

    ``teacher_logits``/``student_logits``: (N, K) logits of the same images; ``images`` (N, C, H, W)
    uint8 or float, shown beside each row; ``labels`` (N,) marks the true class; ``classes`` names
    the K classes; ``indices`` picks the rows shown (default the first four, at most
    :data:`MAX_IMAGES`); ``temperatures`` are the slider's values and ``temperature`` the first one
    shown (default 4 when offered). A "log scale" box shows the small probabilities that carry the
    dark knowledge. ``state``: ``temperature``, ``indices``, ``teacher``/``student`` (rows of
    probabilities), ``teacher_entropy``/``student_entropy`` (nats) and ``kl`` (KL(teacher || student)
    per image, nats, at T, without the T^2 factor of the KD loss).
    """
    t = _logits(teacher_logits, "teacher_logits")
    n, k = t.shape
    s = None if student_logits is None else _logits(student_logits, "student_logits")
    if s is not None and s.shape != t.shape:
        raise ValueError(f"student_logits has shape {tuple(s.shape)}, teacher_logits {tuple(t.shape)}: "
                         "they must be the logits of the same images")
    idx = list(range(min(4, n))) if indices is None else [int(i) for i in indices]
    if not idx or len(idx) > MAX_IMAGES or len(set(idx)) != len(idx) or any(not 0 <= i < n for i in idx):
        raise ValueError(f"indices must be 1 to {MAX_IMAGES} distinct rows in 0..{n - 1}, got {list(indices or [])}")
    imgs = None
    if images is not None:
        imgs = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        if imgs.ndim != 4 or len(imgs) != n:
            raise ValueError(f"images must be (N, C, H, W) or (N, H, W) with N = {n} (one per row of the logits), "
                             f"got shape {imgs.shape}")
    temps = _grid(temperatures, "temperatures")
    if temps[0] <= 0:
        raise ValueError(f"temperatures must be > 0, got {temps}")
    y = None if labels is None else _labels(labels, n, k)
    return TemperatureExplorer(t, s, imgs, y, _class_names(classes, k), idx, temps,
                               _initial(temperature, temps, 4.0, "temperature"))


# ----------------------------------------------------------- Task 2: bias ----
class BiasExplorer(Explorer):
    """Errors, overall and on the omitted class(es), as the bias on their logits moves."""

    figsize = (10.0, 3.8)

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, omitted: list[int], classes: list[str],
                 biases: list[float], bias: float, chosen: float | None):
        self._z, self._y, self._omitted, self._classes, self._chosen = logits, labels, omitted, classes, chosen
        self._on = torch.isin(labels, torch.tensor(omitted))
        self._curve = logit_bias_table(logits, labels, omitted, biases)
        controls = {"bias": widgets.SelectionSlider(options=[(f"{b:+g}", b) for b in biases], value=bias,
                                                    description="bias", continuous_update=False,
                                                    layout=widgets.Layout(width="460px"))}
        super().__init__(f"A bias added to the logit of {self._what()}", controls)

    def _what(self) -> str:
        return " and ".join(self._classes[c] for c in self._omitted)

    def compute(self, values: dict[str, Any]) -> dict[str, Any]:
        b = float(values["bias"])
        pred = add_logit_bias(self._z, self._omitted, b).argmax(1)
        wrong = pred != self._y
        n_on = int(self._on.sum())
        on_wrong = int((wrong & self._on).sum())
        return {"bias": b, "errors": int(wrong.sum()), "errors_on_class": on_wrong,
                "errors_elsewhere": int(wrong.sum()) - on_wrong, "class_images": n_on,
                "class_accuracy": (n_on - on_wrong) / n_on if n_on else float("nan"),
                "predicted_as_class": int(torch.isin(pred, torch.tensor(self._omitted)).sum()),
                "class_predictions": torch.bincount(pred[self._on], minlength=len(self._classes)).numpy()}

    def table(self, state: dict[str, Any]) -> pd.DataFrame:
        keys = ("errors", "errors_on_class", "errors_elsewhere", "class_images", "class_accuracy", "predicted_as_class")
        return pd.DataFrame([{"bias": state["bias"], **{k: state[k] for k in keys}}]).set_index("bias")

    def draw(self, fig: Figure, state: dict[str, Any]) -> None:
        left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
        c = self._curve
        left.plot(c["bias"], c["errors"], color="tab:blue", label="all test images")
        left.plot(c["bias"], c["errors_on_classes"], color="tab:orange", label=f"on {self._what()}")
        left.axvline(state["bias"], color="black", linewidth=1)
        left.plot([state["bias"]] * 2, [state["errors"], state["errors_on_class"]], "o", color="black")
        if self._chosen is not None:
            left.axvline(self._chosen, color="tab:green", linestyle=":", label=f"chosen on validation ({self._chosen:+g})")
        left.set_xlabel(f"bias added to the logit of {self._what()}")
        left.set_ylabel("errors")
        left.grid(True, alpha=0.3)
        left.legend(fontsize="small")
        left.set_title(f"bias {state['bias']:+g}: {state['errors']} errors, {state['errors_on_class']} on "
                       f"{self._what()}", fontsize="medium")
        k = len(self._classes)
        colors = ["tab:green" if j in self._omitted else "tab:grey" for j in range(k)]
        right.bar(np.arange(k), state["class_predictions"], color=colors)
        right.set_xticks(np.arange(k), self._classes, rotation=90 if k > 10 else 0, fontsize="small")
        right.set_ylabel("test images")
        right.set_title(f"what the student calls the {state['class_images']} test images of {self._what()}",
                        fontsize="medium")
        right.grid(True, axis="y", alpha=0.3)


def bias_explorer(logits: Any, labels: Any, omitted_class: int | Sequence[int],
                  biases: Sequence[float] = DEFAULT_BIASES, *, bias: float | None = None,
                  classes: Sequence[str] | None = None, chosen: float | None = None) -> BiasExplorer:
    """A slider for the bias added to the logit of ``omitted_class`` (one class or several: the
    classes a transfer set lacked), with :func:`kd_utils.analysis.add_logit_bias`.

    Shows the test errors overall and on that class over every bias of ``biases`` (the current one
    marked, and ``chosen``, e.g. the bias chosen on validation data, dotted) and how the images of
    the class are classified at the current bias. ``state``: ``bias``, ``errors``,
    ``errors_on_class``, ``errors_elsewhere``, ``class_images``, ``class_accuracy``,
    ``predicted_as_class`` (images of any class predicted as the omitted one) and
    ``class_predictions`` (counts of each predicted class among the omitted class's images).
    """
    z = _logits(logits, "logits").float()
    n, k = z.shape
    y = _labels(labels, n, k)
    omitted = [omitted_class] if isinstance(omitted_class, (int, np.integer)) else list(omitted_class)
    if not omitted or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k for c in omitted):
        raise ValueError(f"omitted_class must be a class index in 0..{k - 1} (or a list of them), got {omitted_class!r}")
    omitted = sorted({int(c) for c in omitted})
    grid = _grid(biases, "biases")
    return BiasExplorer(z, y, omitted, _class_names(classes, k), grid, _initial(bias, grid, 0.0, "bias"),
                        None if chosen is None else float(chosen))


# ----------------------------------------------------------- Task 3: runs ----
@dataclass
class RunView:
    """What the run explorer reads of one run: its name, seed, history and metrics."""
    name: str
    seed: int | None
    history: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def _group_name(name: str) -> str:
    """A run's name without the ``-s<seed>`` suffix :func:`kd_utils.experiments.run_seeds` adds."""
    return re.sub(r"-s\d+$", "", str(name))


def _view_of(run: Any) -> RunView:
    if isinstance(run, RunView):
        return run
    if not all(hasattr(run, a) for a in ("history", "metrics", "name")):
        raise TypeError(f"expected a Run (from run_experiment / run_seeds), got {type(run).__name__}")
    seed = (getattr(run, "spec", {}) or {}).get("config", {}).get("seed")
    return RunView(str(run.name), None if seed is None else int(seed), run.history, dict(run.metrics))


def _views_from_records(df: pd.DataFrame) -> dict[str, list[RunView]]:
    missing = [c for c in ("name", "path") if c not in df.columns]
    if missing:
        raise ValueError(f"a table of runs needs the columns 'name' and 'path' (as run_records gives), missing {missing}")
    groups: dict[str, list[RunView]] = {}
    for _, row in df.iterrows():
        hist = pd.read_csv(Path(row["path"]) / "history.csv")
        seed = row.get("seed")
        m = {"test_accuracy": row.get("accuracy", float("nan"))}
        group = row["group"] if "group" in row and isinstance(row["group"], str) else _group_name(row["name"])
        groups.setdefault(group, []).append(
            RunView(str(row["name"]), None if pd.isna(seed) else int(seed), hist, m))
    return groups


def _run_views(runs: Any) -> dict[str, list[RunView]]:
    """{method: [RunView, ...]} from a mapping method -> run(s), a list of runs, or a run_records table."""
    if isinstance(runs, pd.DataFrame):
        groups = _views_from_records(runs)
    elif isinstance(runs, Mapping):
        groups = {str(k): [_view_of(r) for r in (v if isinstance(v, (list, tuple)) else [v])] for k, v in runs.items()}
    elif isinstance(runs, (list, tuple)):
        groups = {}
        for r in runs:
            view = _view_of(r)
            groups.setdefault(_group_name(view.name), []).append(view)
    else:
        raise TypeError("runs must be a dict {method: [Run, ...]}, a list of Runs or a run_records() table, "
                        f"got {type(runs).__name__}")
    empty = [k for k, v in groups.items() if not v]
    if not groups or empty:
        raise ValueError(f"runs must hold at least one run per method; empty: {empty or 'all'}")
    for k, views in groups.items():
        for v in views:
            if "epoch" not in v.history.columns:
                raise ValueError(f"run {v.name!r} of {k!r} has a history without an 'epoch' column")
    return groups


def _run_numbers(v: RunView) -> dict[str, Any]:
    h = v.history
    out: dict[str, Any] = {"run": v.name, "seed": v.seed, "epochs": int(len(h)),
                           "test_accuracy": _fmt(v.metrics.get("test_accuracy", float("nan")))}
    if "val_acc" in h.columns and h["val_acc"].notna().any():
        best = h["val_acc"].idxmax()
        out.update(final_val_acc=float(h["val_acc"].dropna().iloc[-1]), best_val_acc=float(h["val_acc"].max()),
                   best_epoch=int(h["epoch"].loc[best]))
    if "train_acc" in h.columns:
        out["final_train_acc"] = float(h["train_acc"].dropna().iloc[-1])
    for col in _loss_terms(h):
        out[col] = float(h[col].dropna().iloc[-1]) if h[col].notna().any() else float("nan")
    return out


def _loss_terms(h: pd.DataFrame) -> list[str]:
    return [c for c in h.columns if str(c).startswith("train_loss_")]


class RunExplorer(Explorer):
    """Training curves, per-term losses and (where given) CKA of one method's runs, by seed."""

    def __init__(self, groups: dict[str, list[RunView]], cka: dict[str, np.ndarray], layers: list[str] | None):
        self._groups, self._cka, self._layers = groups, cka, layers
        self.figsize = (12.5 if cka else 9.0, 3.8)
        first = next(iter(groups))
        controls = {"method": widgets.Dropdown(options=list(groups), value=first, description="method"),
                    "seed": widgets.Dropdown(options=self._seed_options(first), value=ALL_SEEDS, description="seed")}
        super().__init__("Stored runs: training curves, loss terms and CKA", controls)

    def _seed_options(self, group: str) -> list[tuple[str, Any]]:
        return [("all seeds", ALL_SEEDS)] + [(str(v.seed), v.seed) for v in self._groups[group] if v.seed is not None]

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.controls["method"]:
            self._busy, was_busy = True, self._busy
            try:
                self.controls["seed"].options = self._seed_options(change["new"])
                self.controls["seed"].value = ALL_SEEDS
            finally:
                self._busy = was_busy
        super()._on_change(change)

    def compute(self, values: dict[str, Any]) -> dict[str, Any]:
        method, seed = values["method"], None if values["seed"] == ALL_SEEDS else values["seed"]
        shown = [v for v in self._groups[method] if seed is None or v.seed == seed]
        per_run = [_run_numbers(v) for v in shown]
        numeric = sorted({k for r in per_run for k, x in r.items() if k not in ("run", "seed")
                          and isinstance(x, (int, float)) and not isinstance(x, bool)})
        state: dict[str, Any] = {"method": method, "seed": seed, "runs": [v.name for v in shown],
                                 "seeds": [v.seed for v in shown], "per_run": per_run}
        for k in numeric:  # one run: its numbers; several: their means
            vals = [float(r[k]) for r in per_run if k in r]
            state[k] = float(np.mean(vals)) if vals else float("nan")
        state["loss_terms"] = {k[len("train_loss_"):]: state[k] for k in numeric if k.startswith("train_loss_")}
        cka = self._cka.get(method)
        diag = None if cka is None else (np.diagonal(cka) if cka.ndim == 2 else cka)
        state.update(cka=cka, cka_same_stage=None if diag is None else [float(x) for x in diag],
                     cka_mean=None if diag is None else float(np.mean(diag)))
        return state

    def table(self, state: dict[str, Any]) -> pd.DataFrame:
        df = pd.DataFrame(state["per_run"]).set_index("run")
        df["seed"] = df["seed"].astype(object)  # whole numbers, also beside the mean row
        if len(df) > 1:
            df.loc["mean"] = df.drop(columns=["seed"]).mean(numeric_only=True)
        if state["cka_mean"] is not None:
            df["cka_same_stage_mean"] = state["cka_mean"]
        return df

    def draw(self, fig: Figure, state: dict[str, Any]) -> None:
        views = [v for v in self._groups[state["method"]] if v.name in state["runs"]]
        axes = fig.subplots(1, 3 if state["cka"] is not None else 2, squeeze=False)[0]
        colors = _colors(len(views))
        for v, color in zip(views, colors):
            h, label = v.history, f"seed {v.seed}" if v.seed is not None else v.name
            for col, style in (("train_acc", "-"), ("val_acc", "--")):
                if col in h.columns and h[col].notna().any():
                    sub = h[["epoch", col]].dropna()
                    axes[0].plot(sub["epoch"], sub[col], style, color=color, label=f"{label} {col[:-4]}",
                                 marker="o" if len(sub) < 12 else None)
        axes[0].set_title(f"{state['method']}: accuracy (train solid, val dashed)", fontsize="medium")
        axes[0].set_xlabel("epoch")
        axes[0].grid(True, alpha=0.3)
        if axes[0].lines:
            axes[0].legend(fontsize="x-small")
        terms = sorted({c for v in views for c in _loss_terms(v.history)})
        term_colors = dict(zip(terms, _colors(len(terms))))
        for j, v in enumerate(views):
            for col in _loss_terms(v.history):
                sub = v.history[["epoch", col]].dropna()
                axes[1].plot(sub["epoch"], sub[col], color=term_colors[col], alpha=1.0 if len(views) == 1 else 0.6,
                             label=col[len("train_loss_"):] if j == 0 else None, marker="o" if len(sub) < 12 else None)
        epochs = sorted({int(e) for v in views for e in v.history["epoch"]})
        for ax in axes[:2]:  # whole epochs only
            if len(epochs) <= 12:
                ax.set_xticks(epochs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1].set_title("training loss terms" + ("" if len(views) == 1 else " (one line per seed)"), fontsize="medium")
        axes[1].set_xlabel("epoch")
        axes[1].grid(True, alpha=0.3)
        if terms:
            axes[1].legend(fontsize="x-small")
        else:
            axes[1].text(0.5, 0.5, "no train_loss_* columns", ha="center", va="center", transform=axes[1].transAxes)
        if state["cka"] is not None:
            self._draw_cka(fig, axes[2], state["cka"])

    def _draw_cka(self, fig: Figure, ax, cka: np.ndarray) -> None:
        n = cka.shape[0]
        names = self._layers or [str(i + 1) for i in range(n)]
        if cka.ndim == 2:
            im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(cka.shape[1]), names[:cka.shape[1]], rotation=90, fontsize="x-small")
            ax.set_yticks(range(n), names[:n], fontsize="x-small")
            ax.set_xlabel("teacher layer")
            ax.set_ylabel("student layer")
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title("linear CKA with the teacher", fontsize="medium")
        else:
            ax.bar(range(n), cka, color="tab:purple")
            ax.set_xticks(range(n), names[:n], rotation=90, fontsize="x-small")
            ax.set_ylim(0, 1)
            ax.set_title("CKA with the teacher's same layer", fontsize="medium")


def run_explorer(runs: Any, *, cka: Mapping[str, Any] | None = None, layers: Sequence[str] | None = None) -> RunExplorer:
    """A method and seed picker over runs, showing training and validation accuracy per epoch, every
    per-term training loss (history columns ``train_loss_*``) and, where ``cka`` has the method, its
    CKA with the teacher.

    ``runs``: ``{method: [Run, ...]}`` (the notebooks' ``runs`` dicts of :func:`run_seeds`), a list of
    runs (grouped by name without the ``-s<seed>`` suffix) or a :func:`run_records` table (histories
    read from each run's folder). ``cka``: ``{method: (L, L) student-by-teacher matrix or (L,) per
    layer}`` with ``layers`` naming the L layers. The seed picker offers "all seeds" (the default:
    every seed's curves, numbers averaged) and each seed. ``state``: ``method``, ``seed``, ``runs``,
    ``per_run`` (each run's numbers), the (mean) ``epochs``, ``final_val_acc``, ``best_val_acc``,
    ``best_epoch``, ``test_accuracy``, ``final_train_acc`` and ``train_loss_<term>`` (final epoch),
    ``loss_terms`` ({term: final value}) and ``cka``/``cka_same_stage``/``cka_mean`` (None without CKA).
    """
    groups = _run_views(runs)
    matrices: dict[str, np.ndarray] = {}
    for k, m in (cka or {}).items():
        if str(k) not in groups:
            raise ValueError(f"cka has method {k!r}, which is not among the runs' methods {sorted(groups)}")
        arr = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m, dtype=float)
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise ValueError(f"cka[{k!r}] must be an (L, L) matrix or (L,) values, got shape {arr.shape}")
        if layers is not None and arr.shape[0] != len(layers):
            raise ValueError(f"cka[{k!r}] has {arr.shape[0]} layers, layers names {len(layers)}")
        matrices[str(k)] = arr
    return RunExplorer(groups, matrices, None if layers is None else [str(x) for x in layers])


# ------------------------------------------------------- Task 4: ensembles ----
class EnsembleExplorer(Explorer):
    """Accuracy and disagreement of an ensemble of the first ``size`` picked members."""

    figsize = (10.5, 4.0)

    def __init__(self, groups: dict[str, list[torch.Tensor]], names: dict[str, list[str]], labels: torch.Tensor,
                 teacher: torch.Tensor | None, combine: str, grouped: bool):
        self._groups, self._names, self._y, self._teacher, self._combine = groups, names, labels, teacher, combine
        self._subset_cache: dict[tuple, list[float] | None] = {}
        first = next(iter(groups))
        m = len(groups[first])
        controls: dict[str, widgets.Widget] = {}
        if grouped:
            controls["group"] = widgets.Dropdown(options=list(groups), value=first, description="students")
        controls["members"] = widgets.SelectMultiple(options=self._member_options(first), value=tuple(range(m)),
                                                     rows=min(m, 6), description="members")
        controls["size"] = widgets.IntSlider(min=1, max=m, value=m, description="size", continuous_update=False)
        super().__init__(f"Ensembles ({combine} averaged): accuracy and disagreement", controls)

    def _member_options(self, group: str) -> list[tuple[str, int]]:
        return [(name, i) for i, name in enumerate(self._names[group])]

    def _group(self, values: dict[str, Any]) -> str:
        return values.get("group", next(iter(self._groups)))

    def _on_change(self, change: dict) -> None:
        c = self.controls
        self._busy, was_busy = True, self._busy
        try:
            if "group" in c and change["owner"] is c["group"]:
                m = len(self._groups[change["new"]])
                c["members"].options = self._member_options(change["new"])
                c["members"].value = tuple(range(m))
                c["size"].max, c["size"].value = m, m
            elif change["owner"] is c["members"]:
                c["size"].max = max(1, len(change["new"]))  # the slider clamps its value to the new maximum
        finally:
            self._busy = was_busy
        super()._on_change(change)

    def compute(self, values: dict[str, Any]) -> dict[str, Any]:
        group = self._group(values)
        names, logits = self._names[group], self._groups[group]
        picked = sorted(int(i) for i in values["members"])
        size = min(int(values["size"]), len(picked))
        members = picked[:size]
        accs = {names[i]: metrics.accuracy(logits[i], self._y) for i in picked}
        state: dict[str, Any] = {"group": group if "group" in self.controls else None, "picked": [names[i] for i in picked],
                                 "members": [names[i] for i in members], "size": size, "member_accuracy": accs}
        if not members:
            return {**state, "accuracy": float("nan"), "mean_member_accuracy": float("nan"), "gain": float("nan"),
                    "disagreement": float("nan"), "curve": [], "subset_curve": None, "matrix": None,
                    "teacher_agreement": None}
        ens = ensemble_logits([logits[i] for i in members], self._combine)
        acc = metrics.accuracy(ens, self._y)
        mean_acc = float(np.mean([accs[names[i]] for i in members]))
        chosen = [logits[i] for i in members]
        with_teacher = ([self._teacher] if self._teacher is not None else []) + chosen
        state.update(accuracy=acc, mean_member_accuracy=mean_acc, gain=acc - mean_acc,
                     disagreement=pairwise_disagreement(chosen) if size > 1 else float("nan"),
                     curve=ensemble_curve([logits[i] for i in picked], self._y, self._combine),
                     subset_curve=self._subsets(group, picked),
                     matrix=disagreement_matrix(with_teacher).numpy() if len(with_teacher) > 1 else None,
                     teacher_agreement=None if self._teacher is None else metrics.agreement(self._teacher, ens))
        return state

    def _subsets(self, group: str, picked: list[int]) -> list[float] | None:
        key = (group, tuple(picked))
        if key not in self._subset_cache:
            logits = [self._groups[group][i] for i in picked]
            self._subset_cache[key] = (ensemble_curve(logits, self._y, self._combine, subsets=True)
                                       if 1 < len(picked) <= MAX_SUBSET_MEMBERS else None)
        return self._subset_cache[key]

    def table(self, state: dict[str, Any]) -> pd.DataFrame:
        row = {"members": ", ".join(state["members"]) or "(none)", "size": state["size"],
               "accuracy": state["accuracy"], "mean_member_accuracy": state["mean_member_accuracy"],
               "gain": state["gain"], "pairwise_disagreement": state["disagreement"]}
        if state["teacher_agreement"] is not None:
            row["teacher_agreement"] = state["teacher_agreement"]
        return pd.DataFrame([row], index=[state["group"] or "ensemble"])

    def draw(self, fig: Figure, state: dict[str, Any]) -> None:
        left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
        if not state["members"]:
            left.text(0.5, 0.5, "pick at least one member", ha="center", va="center", transform=left.transAxes)
            right.set_axis_off()
            return
        ks = np.arange(1, len(state["curve"]) + 1)
        left.plot(ks, state["curve"], "o-", color="tab:blue", label="first k picked members")
        if state["subset_curve"] is not None:
            left.plot(ks, state["subset_curve"], "s--", color="tab:cyan", label="mean over all k-subsets")
        picked_acc = [state["member_accuracy"][n] for n in state["picked"]]
        left.axhline(float(np.mean(picked_acc)), color="grey", linestyle=":", label="mean member")
        left.plot([state["size"]], [state["accuracy"]], "o", color="black", markersize=10, fillstyle="none")
        left.set_xticks(ks)
        left.ticklabel_format(axis="y", useOffset=False)
        left.margins(y=0.15)
        left.set_xlabel("ensemble size k")
        left.set_ylabel("test accuracy")
        left.grid(True, alpha=0.3)
        left.legend(fontsize="small")
        members = f"{state['size']} member{'s' if state['size'] > 1 else ''}"
        left.set_title(f"{members}: accuracy {state['accuracy']:.4f} ({state['gain']:+.4f} over their mean)",
                       fontsize="medium")
        if state["matrix"] is None:
            right.text(0.5, 0.5, "one model: no disagreement", ha="center", va="center", transform=right.transAxes)
            right.set_axis_off()
            return
        labels = (["teacher"] if self._teacher is not None else []) + state["members"]
        m = state["matrix"]
        im = right.imshow(m, cmap="viridis", vmin=0)
        right.set_xticks(range(len(labels)), labels, rotation=90, fontsize="x-small")
        right.set_yticks(range(len(labels)), labels, fontsize="x-small")
        if len(labels) <= 10:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    right.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                               color="white" if m[i, j] < m.max() / 2 else "black")
        fig.colorbar(im, ax=right, shrink=0.8)
        title = "top-1 disagreement" + ("" if math.isnan(state["disagreement"]) else
                                        f" (members' mean {state['disagreement']:.3f})")
        right.set_title(title, fontsize="medium")


def ensemble_explorer(member_logits: Any, labels: Any, *, names: Sequence[str] | None = None,
                      teacher_logits: Any = None, combine: str = "probs") -> EnsembleExplorer:
    """An ensemble-size slider and a member picker: the ensemble is the first ``size`` of the picked
    members; shown are its test accuracy against the accuracy curve of the picked members (first k,
    and the mean over every k-subset for up to :data:`MAX_SUBSET_MEMBERS` members) and the top-1
    disagreement matrix of its members (with the teacher's row when ``teacher_logits`` is given).

    ``member_logits``: a list of (N, K) test logits, one per member, or ``{group: [logits, ...]}``
    (e.g. independent vs distilled students), picked from a drop-down. ``names`` names the members
    (default ``s0``, ``s1``, ...); ``combine``: ``"probs"`` (mean probability) or ``"logits"``, as in
    :func:`kd_utils.ensemble.ensemble_logits`. ``state``: ``group``, ``picked``, ``members``, ``size``,
    ``accuracy``, ``member_accuracy`` ({name: accuracy} of the picked), ``mean_member_accuracy`` and
    ``gain`` (of the ensemble's members), ``disagreement`` (mean pairwise, NaN for one member),
    ``curve``, ``subset_curve``, ``matrix`` and ``teacher_agreement``.
    """
    if combine not in ("probs", "logits"):
        raise ValueError(f"combine must be 'probs' or 'logits', got {combine!r}")
    grouped = isinstance(member_logits, Mapping)
    raw = {str(k): v for k, v in member_logits.items()} if grouped else {"ensemble": member_logits}
    groups: dict[str, list[torch.Tensor]] = {}
    for g, members in raw.items():
        if not isinstance(members, (list, tuple)) or not members:
            raise ValueError(f"members of {g!r} must be a non-empty list of (N, K) logits, got {type(members).__name__}")
        groups[g] = [_logits(lg, f"logits of member {i} of {g!r}").float() for i, lg in enumerate(members)]
    shapes = {tuple(lg.shape) for v in groups.values() for lg in v}
    if len(shapes) != 1:
        raise ValueError(f"every member's logits must have one shape (the same test images), got {sorted(shapes)}")
    n, k = shapes.pop()
    y = _labels(labels, n, k)
    names_of: dict[str, list[str]] = {}
    for g, v in groups.items():
        if names is not None and len(names) != len(v):
            raise ValueError(f"names has {len(names)} entries, group {g!r} has {len(v)} members")
        names_of[g] = [str(x) for x in names] if names is not None else [f"s{i}" for i in range(len(v))]
    t = None
    if teacher_logits is not None:
        t = _logits(teacher_logits, "teacher_logits").float()
        if tuple(t.shape) != (n, k):
            raise ValueError(f"teacher_logits has shape {tuple(t.shape)}, the members' logits {(n, k)}")
    return EnsembleExplorer(groups, names_of, y, t, combine, grouped)


# ------------------------------------------------------------ stored runs ----
CONFIG_COLUMNS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                  "label_smoothing", "augment")
METRIC_COLUMNS = {"test_accuracy": "accuracy", "test_errors": "errors", "test_loss": "test_loss", "ece": "ece",
                  "best_epoch": "best_epoch", "best_val_acc": "best_val_acc", "train_time_s": "train_time_s",
                  "epoch_time_s": "epoch_time_s", "wall_time_s": "wall_time_s", "precision": "precision",
                  "teacher_outputs": "teacher_outputs"}
RECORD_COLUMNS = ("profile", "store", "name", "group", "method", "student", "data", "seed", "epochs_trained",
                  *CONFIG_COLUMNS, "accuracy", "errors", "test_loss", "ece", "agreement", "kl", "best_epoch",
                  "best_val_acc", "train_time_s", "epoch_time_s", "wall_time_s", "precision", "teacher",
                  "teacher_outputs", "weights", "created", "key", "path")


def _scalar(v: Any) -> Any:
    """A value a DataFrame cell can filter on: numbers and strings as they are, others as JSON text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def _student_label(student: dict) -> str:
    kw = ", ".join(f"{k}={_scalar(v)}" for k, v in sorted(student.items()) if k != "name")
    return f"{student.get('name', '?')}({kw})" if kw else str(student.get("name", "?"))


def _record_row(record: dict, folder: Path, profile: str, store: str) -> dict[str, Any]:
    spec, m = record.get("spec", {}), record.get("metrics", {})
    cfg = spec.get("config", {})
    row: dict[str, Any] = {
        "profile": profile, "store": store, "name": record.get("name"), "group": _group_name(record.get("name", "")),
        "method": spec.get("method"), "student": _student_label(spec.get("student", {})),
        "data": spec.get("data", {}).get("name"), "seed": cfg.get("seed"),
        "epochs_trained": spec.get("stop_after", cfg.get("epochs")),
        **{c: _scalar(cfg.get(c)) for c in CONFIG_COLUMNS},
        **{col: _scalar(m.get(k)) for k, col in METRIC_COLUMNS.items()},
        "agreement": float("nan"), "kl": float("nan"),
        "teacher": (spec.get("teacher_sha256") or None) and spec["teacher_sha256"][:12],
        "weights": bool(record.get("weights", True)) and (folder / "model.pt").is_file(),
        "created": record.get("provenance", {}).get("created"), "key": record.get("key", "")[:12], "path": str(folder),
    }
    for k, v in spec.get("method_kwargs", {}).items():  # hyper-parameters of the method, one column each
        row[k if k not in RECORD_COLUMNS else f"method_{k}"] = _scalar(v)
    return row


def _teacher_lookup(teachers: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    out = {}
    for key, logits in (teachers or {}).items():
        if not isinstance(key, str) or len(key) < 12:
            raise ValueError(f"teachers must map a teacher's sha256 (kd_utils.plans.teacher_digest, at least its first "
                             f"12 characters) to its test logits, got key {key!r}")
        out[key[:12]] = _logits(logits, f"teachers[{key[:12]!r}]").float()
    return out


def _add_teacher_numbers(row: dict[str, Any], teachers: dict[str, torch.Tensor]) -> None:
    t = teachers.get(row["teacher"] or "")
    if t is None:
        return
    from .runs import read_logits
    s = read_logits(Path(row["path"]))["test"]
    if s is not None and len(s) == len(t):
        row.update(agreement=metrics.agreement(t, s.float()), kl=metrics.kl_divergence(t, s.float()))


def run_records(root: str | Path | None = None, profile: str | None = None, *,
                teachers: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every stored run as one row of a flat DataFrame.

    Looks in the training store ``models/<profile>/runs/`` and the reference store
    ``results/<profile>/runs/`` (:func:`kd_utils.runs.stores`) of ``profile`` (default: every profile)
    under ``root`` (default: :func:`kd_utils.locations.output_root`); a run in both is one row (``store``
    ``"training+reference"``, ``path`` the training copy). Columns: ``profile``, ``store``, ``name``,
    ``group`` (the name without ``-s<seed>``), ``method``, ``student``, ``data``, ``seed``,
    ``epochs_trained``, the training configuration (``epochs``, ``lr``, ``batch_size``, ...), the
    record's metrics (``accuracy``, ``errors``, ``ece``, ``best_val_acc``, ``train_time_s``,
    ``epoch_time_s``, ...), ``agreement`` and ``kl`` with the teacher, ``teacher`` (its sha256, 12
    characters), ``weights``, ``created``, ``key``, ``path``, then one column per method
    hyper-parameter (``temperature``, ``alpha``, ...; empty for methods without it). Values that are
    not numbers or strings are JSON text, so every column filters with ``==``::

        df = run_records()
        df[(df.method == "kd") & (df.temperature == 4)].groupby("group").accuracy.agg(["mean", "std"])

    Records hold no teacher numbers (a run's key ignores who evaluates it): ``teachers`` maps a
    teacher's sha256 to its test logits, ``{teacher_digest(t): test_logits(t, data)}``, and fills
    ``agreement`` and ``kl`` (KL(teacher || run) at T = 1) of the runs distilled from it.
    """
    from .config import PROFILE_NAMES, get_profile
    from .runs import read_record, stores
    names = list(PROFILE_NAMES) if profile is None else [get_profile(profile).name]
    t_logits = _teacher_lookup(teachers)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for prof in names:
        for store, base in stores(prof, root).items():
            for rec in sorted(Path(base).glob("*/run.json")) if Path(base).is_dir() else []:
                try:
                    record = read_record(rec.parent)
                except (OSError, ValueError):
                    continue  # a record being written, or damaged: not a stored run
                key = (prof, rec.parent.name)  # <name>-<key12>: the same run in both stores
                if key in rows:
                    rows[key]["store"] += f"+{store}"
                    rows[key]["weights"] |= (rec.parent / "model.pt").is_file()
                    continue
                rows[key] = _record_row(record, rec.parent, prof, store)
    for row in rows.values():
        _add_teacher_numbers(row, t_logits)
    df = pd.DataFrame(list(rows.values()))
    extra = [c for c in df.columns if c not in RECORD_COLUMNS]
    df = df.reindex(columns=list(RECORD_COLUMNS) + sorted(extra))
    if len(df):
        df = df.sort_values(["profile", "group", "seed", "name"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


def plot_runs(selection: pd.DataFrame, metric: str = "val_acc", *, label: str = "name", title: str | None = None,
              path: str | Path | None = None):
    """One line per run of ``selection`` (rows of :func:`run_records`): the history column ``metric``
    (``val_acc``, ``train_loss``, ``train_loss_kd``, ``lr``, ...) against the epoch; ``label`` is the
    column naming each line. Returns the figure (saved when ``path`` is given)."""
    import matplotlib.pyplot as plt

    from .plots import _finish
    if not isinstance(selection, pd.DataFrame) or "path" not in selection.columns:
        raise ValueError("selection must be rows of run_records() (a DataFrame with a 'path' column)")
    if selection.empty:
        raise ValueError("selection is empty: no run to plot")
    if label not in selection.columns:
        raise ValueError(f"label {label!r} is not a column of the selection; columns: {list(selection.columns)}")
    histories = [(str(row[label]), pd.read_csv(Path(row["path"]) / "history.csv")) for _, row in selection.iterrows()]
    if not any(metric in h.columns for _, h in histories):
        cols = sorted({c for _, h in histories for c in h.columns if c != "epoch"})
        raise ValueError(f"no selected run's history has a column {metric!r}; columns: {cols}")
    fig, ax = plt.subplots(figsize=(6.5, 4.0), layout="constrained")
    for (name, h), color in zip(histories, _colors(len(histories))):
        if metric in h.columns:
            sub = h[["epoch", metric]].dropna()
            ax.plot(sub["epoch"], sub[metric], color=color, label=name, marker="o" if len(sub) < 12 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title or f"{metric} of {len(histories)} run{'s' if len(histories) != 1 else ''}")
    return _finish(fig, path)
