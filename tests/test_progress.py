"""Progress bars (kd_utils.progress): outside a kernel plain tqdm; in a notebook executed headless (nbconvert's
ExecutePreprocessor, papermill) the saved output of a finished loop reads finished, not tqdm.auto's "0%"."""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from tqdm.std import tqdm as text_tqdm

from kd_utils.progress import in_notebook_kernel, progress

TESTS = Path(__file__).resolve().parent
ZERO = re.compile(r"(?<!\d)0%")  # "0%" but not the end of "100%"
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def _texts(cell) -> list[str]:
    """The text a static viewer shows for a cell: text/plain of display outputs and stream text."""
    out = []
    for o in cell.outputs:
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif "data" in o:
            out.append(o["data"].get("text/plain", ""))
    return out


def test_outside_a_kernel_it_is_plain_tqdm():
    assert not in_notebook_kernel()
    buf = io.StringIO()
    bar = progress(range(7), desc="loop", file=buf, mininterval=0)
    assert isinstance(bar, text_tqdm)
    assert list(bar) == list(range(7))
    assert "loop: 100%" in buf.getvalue() and "7/7" in buf.getvalue()
    quiet = io.StringIO()
    assert list(progress(range(3), disable=True, file=quiet)) == [0, 1, 2] and quiet.getvalue() == ""


CELLS = [
    # a plain loop
    "from kd_utils.progress import progress\nfor i in progress(range(5), desc='loop'):\n    pass",
    # as train_eval.fit uses it: a bar object with set_postfix and a resumed start
    "bar = progress(range(3, 7), desc='fit', unit='epoch', initial=2, total=6)\n"
    "for epoch in bar:\n    bar.set_postfix({'val_acc': f'{epoch / 10:.4f}'})",
    # as plans.py uses it: leave=False leaves no bar behind
    "for _ in progress(range(3), desc='teacher outputs', leave=False):\n    pass",
    # a loop that stops early keeps its true count
    "for i in progress(range(5), desc='stopped'):\n    if i == 2:\n        break",
    # the real call site: fit's epoch bar
    f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import make_bundle\n"
    "from kd_utils import build_model, fit\nfrom kd_utils.config import TrainConfig\n"
    "data = make_bundle(n_train=64, n_val=16, n_test=16)\n"
    "res = fit(build_model('mlp', hidden=[8]), data, TrainConfig(epochs=2, batch_size=32, device='cpu', precision='fp32'),"
    " desc='mlp')",
    # the control: tqdm.auto saves the bar as it was first displayed
    "from tqdm.auto import tqdm\nfor i in tqdm(range(5), desc='auto'):\n    pass",
]


def test_nbconvert_execution_saves_finished_bars(tmp_path):
    from nbconvert.preprocessors import ExecutePreprocessor
    nb = new_notebook(cells=[new_code_cell(c) for c in CELLS], metadata=KERNEL)
    ExecutePreprocessor(timeout=180, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    loop, fit_bar, hidden, stopped, fit_cell, auto = (_texts(c) for c in nb.cells)
    assert len(loop) == 1 and "loop: 100%" in loop[0] and "5/5" in loop[0] and not ZERO.search(loop[0])
    assert "fit: 100%" in fit_bar[0] and "6/6" in fit_bar[0] and "val_acc=0.6000" in fit_bar[0]
    assert hidden == [""]
    assert "stopped:  40%" in stopped[0] and "2/5" in stopped[0]
    bars = [t for t in fit_cell if "mlp:" in t]
    assert len(bars) == 1 and "mlp: 100%" in bars[0] and "2/2" in bars[0] and not ZERO.search(bars[0])
    # every bar is still the live widget in a frontend
    widget_views = [o for c in nb.cells for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widget_views) >= 5
    # what the issue was about: tqdm.auto's saved text is its first moment
    assert ZERO.search(auto[0]) and "0/5" in auto[0]


def test_papermill_execution_saves_finished_bars(tmp_path):
    papermill = pytest.importorskip("papermill")
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(CELLS[0])], metadata=KERNEL), src)
    papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    (text,) = _texts(nbformat.read(dst, as_version=4).cells[0])
    assert "loop: 100%" in text and "5/5" in text and not ZERO.search(text)


def test_progress_refuses_its_own_display_keyword(monkeypatch):
    monkeypatch.setattr(sys.modules["kd_utils.progress"], "in_notebook_kernel", lambda: True)
    with pytest.raises(ValueError, match="drop the 'display' keyword"):
        progress(range(2), display=True)
