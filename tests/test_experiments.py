"""Memoised experiment runs: reused only for an identical specification, forced fresh on request."""
from __future__ import annotations

import json

import torch

from kd_utils import build_model
from kd_utils.config import TrainConfig
from kd_utils import experiments as E
from kd_utils.experiments import run_experiment, run_seeds, run_spec, runs_table, spec_key

STUDENT = {"name": "vgg8", "width": 0.125}


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "augment": "crop_flip", "optimizer": "sgd", "lr": 0.02,
                          "device": "cpu", "precision": "fp32", **kw})


def _teacher():
    torch.manual_seed(1)
    return build_model("vgg8", width=0.125).eval()


def test_identical_spec_is_reused_and_changed_spec_is_not(toy_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KD_FRESH_RUNS", raising=False)
    teacher = _teacher()
    kw = dict(method="kd", teacher=teacher, profile="smoke", root=tmp_path, progress=False)
    first = run_experiment("kd", STUDENT, toy_cifar, _cfg(), temperature=4.0, **kw)
    again = run_experiment("kd", STUDENT, toy_cifar, _cfg(), temperature=4.0, **kw)
    assert not first.reused and again.reused and again.path == first.path
    assert again.metrics == first.metrics
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert {"test_accuracy", "agreement", "kl", "ece"} <= set(first.metrics)
    # any change of the specification is a new run
    assert not run_experiment("kd", STUDENT, toy_cifar, _cfg(), temperature=2.0, **kw).reused
    assert not run_experiment("kd", STUDENT, toy_cifar, _cfg(seed=1), temperature=4.0, **kw).reused
    with torch.no_grad():
        teacher.classifier.bias.add_(0.01)
    assert not run_experiment("kd", STUDENT, toy_cifar, _cfg(), temperature=4.0, **kw).reused


def test_fresh_switch_and_unusable_record_force_training(toy_cifar, tmp_path, monkeypatch):
    monkeypatch.delenv("KD_FRESH_RUNS", raising=False)
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    first = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    # fresh mode ignores runs stored by earlier processes but reuses what this process trained
    assert run_experiment("ce", STUDENT, toy_cifar, _cfg(), fresh=True, **kw).reused
    monkeypatch.setattr(E, "_TRAINED_HERE", set())  # as if a new process started
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), fresh=True, **kw).reused
    monkeypatch.setattr(E, "_TRAINED_HERE", set())
    monkeypatch.setenv("KD_FRESH_RUNS", "1")
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    monkeypatch.setattr(E, "_TRAINED_HERE", set())
    monkeypatch.delenv("KD_FRESH_RUNS")
    assert run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    (first.path / "model.pt").write_bytes(b"truncated")
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    record = json.loads((first.path / "run.json").read_text())
    assert record["key"] == spec_key(record["spec"])


def test_same_seed_gives_same_result_when_trained_twice(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="smoke", root=tmp_path, progress=False, fresh=True)
    a = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    monkeypatch.setattr(E, "_TRAINED_HERE", set())
    b = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    assert not b.reused
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


def test_spec_holds_everything_that_changes_a_run(toy_cifar):
    spec = run_spec(STUDENT, toy_cifar, _cfg(), "kd", {"temperature": 4.0}, _teacher())
    assert {"student", "method", "method_kwargs", "config", "data", "teacher_sha256", "plan",
            "kd_utils_source"} <= set(spec)
    assert spec_key(spec) != spec_key({**spec, "method_kwargs": {"temperature": 8.0}})


def test_run_seeds_and_table(toy_cifar, tmp_path):
    runs = run_seeds("ce", STUDENT, toy_cifar, _cfg(), [0, 1], profile="smoke", root=tmp_path, progress=False)
    assert [r.name for r in runs] == ["ce-s0", "ce-s1"] and runs[0].spec["config"]["seed"] == 0
    table = runs_table({"ce": runs})
    assert table.loc["ce", "n"] == 2
    assert table.loc["ce", "mean"] == sum(r.accuracy for r in runs) / 2


def test_run_notebooks_sets_the_fresh_switch_for_the_kernel(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from kd_utils.notebooks import run_notebooks
    nb = new_notebook(cells=[new_code_cell("import os; print('fresh=' + os.environ['KD_FRESH_RUNS'])")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "probe.ipynb")
    seen = {}
    for fresh in (None, True):
        run_notebooks("smoke", ["probe.ipynb"], root=tmp_path, fresh=fresh)
        out = nbformat.read(tmp_path / "results" / "smoke" / "executed" / "probe.ipynb", as_version=4)
        seen[fresh] = out.cells[0].outputs[0]["text"].strip()
    assert seen == {None: "fresh=0", True: "fresh=1"}  # smoke reuses by default; the cpu reference is fresh


def test_reused_scratch_run_reports_agreement_with_the_teacher_asked_about(toy_cifar, tmp_path, monkeypatch):
    # a "ce" run's key ignores the teacher, so a run stored without one (or with another) must not leak its
    # agreement into a caller that passes a teacher -- nor drop it
    monkeypatch.delenv("KD_FRESH_RUNS", raising=False)
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    alone = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    assert "agreement" not in alone.metrics
    teacher = _teacher()
    again = run_experiment("ce", STUDENT, toy_cifar, _cfg(), teacher=teacher, **kw)
    assert again.reused
    loader = toy_cifar.loader("test", batch_size=256)
    t, _ = E.predict(teacher, loader, "cpu", "fp32")
    s, _ = E.predict(again.model, loader, "cpu", "fp32")
    expected = (t.argmax(1) == s.argmax(1)).float().mean().item()
    assert abs(again.metrics["agreement"] - expected) < 1e-9
    kl = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean")
    assert abs(again.metrics["kl"] - kl.item()) < 1e-5
    other = build_model("vgg8", width=0.125).eval()  # another teacher: its own agreement, not the first one's
    third = run_experiment("ce", STUDENT, toy_cifar, _cfg(), teacher=other, **kw)
    t2, _ = E.predict(other, loader, "cpu", "fp32")
    assert abs(third.metrics["agreement"] - (t2.argmax(1) == s.argmax(1)).float().mean().item()) < 1e-9
    assert "agreement" not in run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).metrics
