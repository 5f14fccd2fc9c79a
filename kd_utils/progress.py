"""Progress bars whose saved output says how the loop ended.

``tqdm.auto`` in a Jupyter kernel draws an ipywidgets bar and displays it once, when the loop starts.
The bar's later progress travels to the browser as widget messages only, so the output a notebook
saves keeps the ``text/plain`` of that first moment: executed headless (nbconvert, papermill, nbval)
or read in a static viewer (GitHub, an HTML or PDF export), a finished loop reads ``0%``.

:func:`progress` is the one entry point the package's loops use. In a Jupyter kernel with ipywidgets it
draws the same widget bar, but displays it with a display id and, when the bar closes, replaces that
output (an ``update_display_data`` message) with the finished state: the widget view plus a
``text/plain`` such as ``teacher: 100%|██████████| 30/30 [01:02<00:00, 2.07s/epoch]``. A live frontend
keeps showing the widget; a headless executor (nbclient applies display updates to the saved outputs
as a frontend does) and every static viewer read the finished text. A loop that stops early or fails
leaves its true count (``40%|████      | 2/5``); a bar made with ``leave=False`` leaves an empty output.

Outside a Jupyter kernel (a terminal, a script, pytest) it is plain ``tqdm``, writing to stderr.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm.std import tqdm as _text_tqdm

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

__all__ = ["progress", "in_notebook_kernel"]


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel: JupyterLab, VS Code, nbclient, papermill) where
    ipywidgets can be imported; False in a terminal IPython, a script or a test process."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress(iterable: Iterable | None = None, **tqdm_kwargs: Any):
    """A tqdm bar over ``iterable`` (any ``tqdm`` keyword: ``desc``, ``total``, ``unit``, ``disable``,
    ``leave``, ``initial``, ...; ``set_postfix`` and ``update`` work as on tqdm).

    In a Jupyter kernel: the ipywidgets bar, whose saved output is rewritten with its final text when it
    closes (see the module docstring). Elsewhere, or with ``disable=True``: plain ``tqdm``.
    """
    if tqdm_kwargs.get("disable") or not in_notebook_kernel():
        return _text_tqdm(iterable, **tqdm_kwargs)
    if "display" in tqdm_kwargs:
        raise ValueError("progress() displays the bar itself; drop the 'display' keyword "
                         f"(got display={tqdm_kwargs['display']!r})")
    return _notebook_bar_class()(iterable, **tqdm_kwargs)


_BAR_CLASS = None


def _notebook_bar_class():
    """The widget bar class, built on first use (tqdm.notebook imports ipywidgets)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm.notebook import tqdm_notebook

        class NotebookBar(tqdm_notebook):
            """``tqdm.notebook`` bar shown through a display handle that is updated when it closes."""

            def __init__(self, *args: Any, **kwargs: Any):
                self._handle, self._model_id = None, None
                super().__init__(*args, display=False, **kwargs)
                if not self.disable and self.delay <= 0:
                    self._show()

            def _bundle(self, text: str) -> dict[str, Any]:
                return {"text/plain": text,
                        WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": self._model_id}}

            def _text(self) -> str:
                return self.format_meter(**self.format_dict)

            def _show(self) -> None:
                from IPython.display import display
                self._model_id = self.container.model_id
                self._handle = display(self._bundle(self._text()), raw=True, display_id=True)
                self.displayed = True

            def display(self, *args: Any, check_delay: bool = True, **kwargs: Any):
                super().display(*args, check_delay=False, **kwargs)  # the parent would display() it plainly
                if check_delay and self.delay > 0 and not self.displayed:
                    self._show()

            def close(self) -> None:
                if self.disable:
                    return
                leave = (self.pos == 0) if self.leave is None else self.leave
                super().close()
                if self._handle is not None:
                    failed = bool(self.total) and self.n < self.total  # tqdm keeps a failed bar visible
                    final = self._bundle(self._text()) if leave or failed else {"text/plain": ""}
                    self._handle.update(final, raw=True)

        _BAR_CLASS = NotebookBar
    return _BAR_CLASS
