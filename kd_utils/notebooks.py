"""Execute the suite's notebooks headless (``make run``), each in its own kernel."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .config import DEFAULT_PROFILE, get_profile

# The suite's notebooks, in the order a reader meets them.
NOTEBOOKS = (
    "Knowledge_Distillation.ipynb",
    "Logit_Matching.ipynb",
    "LogitMatching_Limitations.ipynb",
    "Feature_Distillation.ipynb",
    "Multiple_Students.ipynb",
)


def run_notebooks(profile: str | None = None, names: list[str] | None = None, root: str | os.PathLike = ".",
                  timeout: int | None = None, fresh: bool | None = None) -> list[dict]:
    """Execute notebooks with ``KD_PROFILE=profile`` and return one record per notebook.

    With the default profile the executed notebook replaces the committed one (it *is* the
    finding); other profiles write ``results/<profile>/executed/NAME`` and leave it alone.
    Missing notebooks are reported, not fatal.

    ``fresh``: retrain every memoised run (``KD_FRESH_RUNS=1``) instead of reusing stored ones.
    Default: fresh for the default profile, whose executed notebooks are the committed reference.
    """
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    prof = get_profile(profile)
    root = Path(root)
    names = list(names) if names else list(NOTEBOOKS)
    unknown = [n for n in names if not n.endswith(".ipynb")]
    if unknown:
        raise ValueError(f"not notebook file names: {unknown}")
    records = []
    if fresh is None:
        fresh = prof.name == DEFAULT_PROFILE
    saved = {k: os.environ.get(k) for k in ("KD_PROFILE", "KD_FRESH_RUNS")}
    os.environ["KD_PROFILE"] = prof.name  # the kernel inherits both
    os.environ["KD_FRESH_RUNS"] = "1" if fresh else "0"
    try:
        for name in names:
            src = root / name
            if not src.exists():
                print(f"[missing] {name}: not written yet")
                records.append({"notebook": name, "status": "missing"})
                continue
            dst = src if prof.name == DEFAULT_PROFILE else root / "results" / prof.name / "executed" / name
            print(f"[run] {name} (profile {prof.name}) -> {dst}", flush=True)
            nb = nbformat.read(src, as_version=4)
            t0 = time.perf_counter()
            ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(root)}})
            wall = time.perf_counter() - t0
            from .fileio import write_text
            write_text(dst, nbformat.writes(nb))
            print(f"[done] {name} in {wall:.0f} s", flush=True)
            records.append({"notebook": name, "status": "ok", "wall_time_s": round(wall, 1), "output": str(dst)})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return records
