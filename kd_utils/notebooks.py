"""Execute the suite's notebooks headless (``make run``), each in its own kernel.

Three modes (see :mod:`kd_utils.runs`): ``replay`` rebuilds every table and plot from the committed
runs and trains nothing (the default for the default profile, whose runs are committed); ``fresh``
retrains every run and, for the default profile, replaces the committed notebook and its committed
runs; ``reuse`` trains only what no stored run covers (the default for the other profiles). All
notebooks of one call share a run session, so a run two notebooks need is trained once.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from . import runs
from .config import DEFAULT_PROFILE, get_profile

# The suite's notebooks, in the order a reader meets them.
NOTEBOOKS = (
    "Knowledge_Distillation.ipynb",
    "Logit_Matching.ipynb",
    "LogitMatching_Limitations.ipynb",
    "Feature_Distillation.ipynb",
    "Multiple_Students.ipynb",
)


def output_path(name: str, profile, mode: str, root: Path) -> Path:
    """Where an executed notebook goes: over the committed one only for a reference (default-profile,
    training) execution; replays go to ``results/replay/``, other profiles to ``results/<profile>/executed/``."""
    prof = get_profile(profile)
    if prof.name != DEFAULT_PROFILE:
        return root / "results" / prof.name / "executed" / name
    return root / "results" / "replay" / name if mode == "replay" else root / name


def _execute(src: Path, root: Path, timeout: int | None):
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    nb = nbformat.read(src, as_version=4)
    # no saved widget state: with it an offline viewer shows an explorer's output as empty instead of its
    # static picture (kd_utils.explore) and progress bars as widgets instead of their final text
    ExecutePreprocessor(timeout=timeout, kernel_name="python3", store_widget_state=False).preprocess(
        nb, {"metadata": {"path": str(root)}})
    return nb


def run_notebooks(profile: str | None = None, names: list[str] | None = None, root: str | os.PathLike = ".",
                  timeout: int | None = None, mode: str | None = None) -> list[dict]:
    """Execute notebooks with ``KD_PROFILE=profile`` and ``KD_RUNS=mode``; one record per notebook.

    ``mode``: default ``replay`` for the default profile, ``reuse`` otherwise. A notebook that cannot
    be replayed (its runs are not committed) is skipped with the reason. Missing notebooks are
    reported, not fatal. A reference execution (default profile, ``fresh`` or ``reuse``) exports the
    runs the notebook used to the reference store (:func:`kd_utils.runs.export_notebook_runs`), keeps
    its own outputs in ``results/replay/<name>.training.ipynb`` and then replays the notebook from the
    committed runs: that replay is the committed notebook.
    """
    import nbformat

    from .fileio import write_text
    prof = get_profile(profile)
    root = Path(root)
    names = list(names) if names else list(NOTEBOOKS)
    unknown = [n for n in names if not n.endswith(".ipynb")]
    if unknown:
        raise ValueError(f"not notebook file names: {unknown}")
    mode = runs.run_mode(mode or ("replay" if prof.name == DEFAULT_PROFILE else "reuse"))
    skipped: dict[str, str] = {}
    if mode == "replay":
        _, skipped = runs.replayable(names, prof, root)
    env = {"KD_PROFILE": prof.name, runs.MODE_ENV: mode, runs.SESSION_ENV: uuid.uuid4().hex[:12]}
    if mode != "replay" and not os.environ.get("KD_TRAIN_TEACHER"):
        # an execution that trains was asked for: a missing shared teacher is trained (its estimate printed
        # in the notebook) instead of refused, as cifar_teacher() does from a plain Python call
        env["KD_TRAIN_TEACHER"] = "1"
    if mode == "replay":  # a replay writes its results, plots and models to a scratch tree, never over the findings
        env.update({"KD_OUTPUT_ROOT": str((root / "results" / "replay").resolve()),
                    runs.REFERENCE_ENV: str(runs.stores(prof, root)["reference"].resolve())})
    saved = {k: os.environ.get(k) for k in (*env, runs.NOTEBOOK_ENV)}
    os.environ.update(env)  # the kernels inherit them
    records = []
    try:
        for name in names:
            src = root / name
            if not src.exists():
                print(f"[missing] {name}: not written yet")
                records.append({"notebook": name, "status": "missing"})
                continue
            if name in skipped:
                print(f"[skipped] {name}: {skipped[name]}")
                records.append({"notebook": name, "status": "skipped", "why": skipped[name]})
                continue
            dst = output_path(name, prof, mode, root)
            print(f"[run] {name} (profile {prof.name}, {mode}) -> {dst}", flush=True)
            os.environ[runs.NOTEBOOK_ENV] = name
            t0 = time.perf_counter()
            nb = _execute(src, root, timeout)
            wall = time.perf_counter() - t0
            record = {"notebook": name, "status": "ok", "wall_time_s": round(wall, 1), "output": str(dst)}
            if prof.name == DEFAULT_PROFILE and mode != "replay":
                # A reference execution: commit its runs, then replay them into the committed notebook, so
                # the committed outputs are what a replay prints (no progress bars, no "[trained]" lines)
                # and nbval can compare a later replay with them.
                training_copy = root / "results" / "replay" / f"{Path(name).stem}.training.ipynb"
                write_text(training_copy, nbformat.writes(nb))
                manifest = runs.export_notebook_runs(prof, name, wall_time_s=wall, root=root)
                record["manifest"] = str(manifest) if manifest else None
                print(f"[replay] {name}: trained in {wall:.0f} s; replaying its committed runs", flush=True)
                os.environ[runs.MODE_ENV] = "replay"
                try:
                    nb = _execute(src, root, timeout)
                finally:
                    os.environ[runs.MODE_ENV] = mode
                record["replay_wall_time_s"] = round(time.perf_counter() - t0 - wall, 1)
                runs.record_replay_time(prof, name, record["replay_wall_time_s"], root=root)
            write_text(dst, nbformat.writes(nb))
            print(f"[done] {name} in {wall:.0f} s", flush=True)
            records.append(record)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return records
