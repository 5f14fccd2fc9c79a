"""End to end on a tiny notebook: a reference execution commits its runs and replays them into the
committed notebook; nbval then replays it from the committed runs alone and compares every cell, and a
hand-edited number in a committed output fails that comparison, naming the cell."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from kd_utils.notebooks import run_notebooks
from kd_utils.runs import timing_note

TESTS = Path(__file__).resolve().parent
CODE = [f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import make_bundle\n"
        "from kd_utils.config import TrainConfig\nfrom kd_utils.experiments import run_experiment",
        "data = make_bundle(n_train=128, n_val=32, n_test=64, shape=(3, 32, 32))\n"
        "cfg = TrainConfig(epochs=1, batch_size=32, device='cpu', precision='fp32')\n"
        "run = run_experiment('probe', {'name': 'vgg8', 'width': 0.125}, data, cfg, profile='cpu', progress=False)\n"
        "print(f'test accuracy {run.accuracy:.4f}, errors {run.metrics[\"test_errors\"]}')",
        # the session line: the committed replay ran before its own time was recorded in the manifest,
        # so a later replay prints one clause more, which the sanitizer masks
        "from kd_utils.runs import timing_note\nprint(timing_note('cpu', 'Probe.ipynb', root='.'))"]


def _nbval(root: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD_PROFILE": "cpu", "KD_RUNS": "replay"}
    env.pop("KD_RUNS_SESSION", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(root), "--nbval",
                           "--nbval-current-env", "--nbval-sanitize-with", str(TESTS / "nbval_sanitize.cfg"), name],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_a_committed_notebook_replays_and_a_changed_number_fails_nbval(tmp_path):
    nb = new_notebook(cells=[new_code_cell(c) for c in CODE],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "Probe.ipynb")
    (record,) = run_notebooks("cpu", ["Probe.ipynb"], root=tmp_path, mode="fresh")
    assert record["status"] == "ok" and record["manifest"]
    manifest = json.loads((tmp_path / "results" / "runs" / "manifests" / "Probe.json").read_text())
    assert len(manifest["runs"]) == 1 and manifest["runs_trained_in_execution"] == 1
    assert manifest["precisions"] == ["fp32"] and 0 < manifest["replay_wall_time_s"] < record["wall_time_s"] + 60
    note = timing_note("cpu", "Probe.ipynb", root=tmp_path)
    assert note.startswith("Run All, cpu profile: training every run took ") and "(1 run, " in note
    assert f"replaying the committed runs (the default) took {manifest['replay_wall_time_s'] / 60:.0f} min" in note
    assert timing_note("cpu", "Other.ipynb", root=tmp_path) is None
    committed = nbformat.read(tmp_path / "Probe.ipynb", as_version=4)
    printed = committed.cells[1].outputs[0]["text"]
    assert printed.startswith("test accuracy ")
    assert committed.cells[2].outputs[0]["text"].startswith("Run All, cpu profile")
    assert "replaying" not in committed.cells[2].outputs[0]["text"]
    shutil.rmtree(tmp_path / "models")  # a fresh clone: only the committed runs
    ok = _nbval(tmp_path, "Probe.ipynb")
    assert ok.returncode == 0, ok.stdout[-3000:]
    # a hand edit of one reference number makes the comparison fail and names the cell
    edited = printed.replace("test accuracy 0.", "test accuracy 1.", 1) if "accuracy 0." in printed else \
        printed.replace("test accuracy 1.", "test accuracy 0.", 1)
    committed.cells[1].outputs[0]["text"] = edited
    nbformat.write(committed, tmp_path / "Probe.ipynb")
    bad = _nbval(tmp_path, "Probe.ipynb")
    assert bad.returncode != 0 and "Probe.ipynb::Cell 1" in bad.stdout and "Cell outputs differ" in bad.stdout, \
        bad.stdout[-3000:]
