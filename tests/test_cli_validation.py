"""The command line checks every argument before any training, leaves no empty folders behind when it
fails at once, gives hints that work, keeps accuracy lines under --quiet, and fails on missing notebooks."""
from __future__ import annotations

import shlex
import time

import pandas as pd
import pytest

from kd_utils import cifar_seed
from kd_utils.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A clean suite root in a temporary folder (the repository is never written)."""
    monkeypatch.setenv("KD_HOME", str(tmp_path))
    monkeypatch.delenv("KD_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("KD_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _never(*a, **k):
    raise AssertionError("training started although an argument was invalid")


@pytest.mark.parametrize("argv, needles", [
    (["pipeline", "--profile", "smoke", "--student-arch", "nosuch"],
     ["--student-arch nosuch: unknown model", "mnist_mlp", "vgg8", "--import"]),
    (["pipeline", "--profile", "smoke", "--teacher-arch", "vgg8"], ["--teacher-arch vgg8", "(1, 28, 28)"]),
    (["train-teacher", "--profile", "smoke", "--arch", "mnist_mlp"], ["--arch mnist_mlp", "(3, 32, 32)"]),
    (["distill", "--profile", "smoke", "--train-teacher", "--student-arch", "nosuch"], ["--student-arch nosuch"]),
    (["distill", "--profile", "smoke", "--train-teacher", "--teacher-arch", "nosuch"], ["--teacher-arch nosuch"]),
])
def test_bad_architectures_fail_at_once_naming_the_allowed_ones(home, monkeypatch, capsys, argv, needles):
    monkeypatch.setattr("kd_utils.pipeline.run_pipeline", _never)
    monkeypatch.setattr(cifar_seed, "train_teacher", _never)
    monkeypatch.setattr(cifar_seed, "distill_students", _never)
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 30  # building two blank models, no data, no epoch
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in err
    assert sorted(p.name for p in home.iterdir()) == []  # no empty models/<profile>/ or results/<profile>/ trees


def test_a_bad_profile_from_the_environment_fails_at_once(home, monkeypatch, capsys):
    monkeypatch.setenv("KD_PROFILE", "laptop")
    monkeypatch.setattr("kd_utils.pipeline.run_pipeline", _never)
    assert main(["pipeline"]) == 2
    assert "unknown profile 'laptop'; known: smoke, cpu, gpu" in capsys.readouterr().err
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("out", [None, "elsewhere"])
def test_the_missing_teacher_hint_is_a_command_that_fixes_it(home, monkeypatch, capsys, out):
    extra = [] if out is None else ["--out", out]
    assert main(["distill", "--profile", "smoke", *extra]) == 2
    err = capsys.readouterr().err
    assert list(home.iterdir()) == []
    hint = err.split("`")[1]
    assert hint.startswith("python -m kd_utils ") and "--profile smoke" in hint

    def fake_train_teacher(out_dir, *a, **k):  # what train-teacher writes: best_teacher.pth in its folder
        (out_dir / cifar_seed.TEACHER_FILE).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / cifar_seed.TEACHER_FILE).write_bytes(b"a teacher")
        return {"test_acc": 0.5, "best_val_acc": 0.5}

    monkeypatch.setattr(cifar_seed, "train_teacher", fake_train_teacher)
    assert main(shlex.split(hint)[3:]) == 0  # following the hint ...
    table = pd.DataFrame({"test_acc": [0.5, 0.6, 0.4]}, index=["teacher", "student_kd", "student_base"])
    table.attrs["kd_improvement"] = 0.2
    seen = {}
    monkeypatch.setattr(cifar_seed, "distill_students", lambda out_dir, *a, **k: seen.setdefault("out", out_dir)
                        and table)
    assert main(["distill", "--profile", "smoke", *extra]) == 0  # ... fixes the error
    assert (seen["out"] / cifar_seed.TEACHER_FILE).is_file()


def test_an_unwritable_out_gets_the_cli_hint_only_on_the_command_line(home, monkeypatch, capsys):
    from kd_utils.fileio import OutputFolderError, check_writable
    (home / "afile").write_text("x")
    with pytest.raises(OutputFolderError) as e:
        check_writable(home / "afile" / "models")
    assert "--out" not in str(e.value)  # a Python caller has no --out
    monkeypatch.setattr(cifar_seed, "get_data", lambda *a, **k: (_ for _ in ()).throw(
        OutputFolderError("output folder X is not writable")))
    assert main(["train-teacher", "--profile", "smoke", "--out", str(home / "afile")]) == 2
    assert "choose another with --out" in capsys.readouterr().err


def test_run_notebooks_fails_on_missing_notebooks(home, capsys):
    assert main(["run-notebooks", "--profile", "smoke", "Nope.ipynb"]) == 2  # named: refused before any runs
    assert "notebook(s) not found: Nope.ipynb" in capsys.readouterr().err
    assert main(["run-notebooks", "--profile", "smoke"]) == 1  # the default five, none of them here
    assert "not found: Knowledge_Distillation.ipynb" in capsys.readouterr().err


def test_quiet_hides_progress_but_not_the_accuracy_lines(home, monkeypatch, capsys):
    from kd_utils import pipeline as P
    from conftest import make_bundle
    data = make_bundle(n_train=128, n_val=32, n_test=64)
    monkeypatch.setattr(P, "get_data", lambda *a, **k: data)
    monkeypatch.setattr(P, "cost_table", lambda models, d: pd.DataFrame({"params": [1, 1, 1]},
                                                                       index=["teacher", "student_regular",
                                                                              "student_distilled"]))
    monkeypatch.setattr(P, "save_and_visualize_results", lambda *a, **k: [])
    assert main(["pipeline", "--profile", "smoke", "--epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    for name in ("teacher", "student_regular", "student_distilled"):
        assert f"{name:18s} accuracy" in captured.out
    assert "epoch/s" not in captured.err and "it/s" not in captured.err  # no progress bars


def test_methods_command_prints_every_method_with_teacher_free_rows():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "kd_utils", "methods", "--profile", "smoke", "--markdown"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "label_smoothing" in r.stdout and "kdcl" in r.stdout and "dkd" in r.stdout
