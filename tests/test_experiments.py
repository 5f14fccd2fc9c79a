"""Memoised experiment runs: keyed on what changes their numbers, stored with their evidence, replayable."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from kd_utils import build_model
from kd_utils import experiments as E
from kd_utils import numerics, runs
from kd_utils.config import TrainConfig
from kd_utils.experiments import run_experiment, run_seeds, run_spec, runs_table, spec_key

STUDENT = {"name": "vgg8", "width": 0.125}
ROOT = Path(__file__).resolve().parent.parent


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "augment": "crop_flip", "optimizer": "sgd", "lr": 0.02,
                          "device": "cpu", "precision": "fp32", **kw})


def _teacher():
    torch.manual_seed(1)
    return build_model("vgg8", width=0.125).eval()


@pytest.fixture(autouse=True)
def _own_session(monkeypatch):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(runs.SESSION_ENV, "session-a")


def test_identical_spec_is_reused_and_changed_spec_is_not(toy_cifar, tmp_path):
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


def test_fresh_mode_retrains_except_this_sessions_runs(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    first = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    # fresh mode reuses what this session trained (a run two notebooks of one `make run` need) ...
    assert run_experiment("ce", STUDENT, toy_cifar, _cfg(), mode="fresh", **kw).reused
    monkeypatch.setenv(runs.SESSION_ENV, "session-b")  # ... and nothing of an earlier session
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), mode="fresh", **kw).reused
    monkeypatch.setenv(runs.SESSION_ENV, "session-c")
    monkeypatch.setenv(runs.MODE_ENV, "fresh")
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    monkeypatch.delenv(runs.MODE_ENV)
    assert run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    (first.path / "model.pt").write_bytes(b"truncated")
    assert not run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    record = json.loads((first.path / "run.json").read_text())
    assert record["key"] == spec_key(record["spec"])
    with pytest.raises(ValueError, match="unknown run mode 'again'.*reuse, fresh, replay"):
        run_experiment("ce", STUDENT, toy_cifar, _cfg(), mode="again", **kw)


def test_same_seed_gives_same_result_when_trained_twice(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="smoke", root=tmp_path, progress=False, mode="fresh")
    a = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    monkeypatch.setenv(runs.SESSION_ENV, "session-b")
    b = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    assert not b.reused
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


def test_record_carries_provenance_and_logits_of_the_rounded_model(toy_cifar, tmp_path):
    run = run_experiment("ce", STUDENT, toy_cifar, _cfg(), profile="smoke", root=tmp_path, progress=False)
    record = json.loads((run.path / "run.json").read_text())
    prov = record["provenance"]
    assert len(prov["kd_utils_source"]) == 64 and prov["versions"]["torch"] == str(torch.__version__)
    assert "processor" in prov["versions"] and record["metrics"]["precision"] == "fp32"
    assert "kd_utils_source" not in record["spec"]  # provenance, not key
    # the model is its float16 weights: rounding it again changes nothing
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    runs.round_weights(run.model)
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())
    # the stored logits are the model's (to float16), and the metrics are computed from them
    fresh, labels = E.predict(run.model, toy_cifar.loader("test", batch_size=256), "cpu", "fp32")
    torch.testing.assert_close(run.logits("test"), fresh.half().float())
    assert run.metrics["test_accuracy"] == (run.logits("test").argmax(1) == labels).float().mean().item()
    assert run.logits("val").shape == (len(toy_cifar.y_val), 10)


def test_scratch_run_reports_agreement_with_the_teacher_asked_about(toy_cifar, tmp_path):
    # a "ce" run's key ignores the teacher: its record holds no teacher metrics, they come from its logits
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    alone = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    assert "agreement" not in alone.metrics and "agreement" not in json.loads((alone.path / "run.json").read_text())
    teacher = _teacher()
    again = run_experiment("ce", STUDENT, toy_cifar, _cfg(), teacher=teacher, **kw)
    assert again.reused
    t, _ = E.predict(teacher, toy_cifar.loader("test", batch_size=256), "cpu", "fp32")
    s = again.logits("test")
    assert abs(again.metrics["agreement"] - (t.argmax(1) == s.argmax(1)).float().mean().item()) < 1e-9
    kl = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean")
    assert abs(again.metrics["kl"] - kl.item()) < 1e-5
    other = build_model("vgg8", width=0.125).eval()
    third = run_experiment("ce", STUDENT, toy_cifar, _cfg(), teacher=other, **kw)
    t2, _ = E.predict(other, toy_cifar.loader("test", batch_size=256), "cpu", "fp32")
    assert abs(third.metrics["agreement"] - (t2.argmax(1) == s.argmax(1)).float().mean().item()) < 1e-9


def _export(tmp_path, notebook="Probe.ipynb"):
    return runs.export_notebook_runs("cpu", notebook, wall_time_s=12.5, root=tmp_path)


def test_a_run_two_notebooks_commit_keeps_the_weights_either_reads(toy_cifar, tmp_path, monkeypatch):
    """The reference store holds one folder per run: exporting a notebook that does not read a run's weights
    must not strip the weights another committed notebook's cells read."""
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Reader.ipynb")
    a = run_experiment("shared", STUDENT, toy_cifar, _cfg(), keep_weights=True, **kw)
    _export(tmp_path, "Reader.ipynb")
    ref = runs.stores("cpu", tmp_path)["reference"]
    assert (ref / a.path.name / "model.pt").is_file()
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Other.ipynb")
    run_experiment("shared", STUDENT, toy_cifar, _cfg(), **kw)
    alone = run_experiment("alone", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    _export(tmp_path, "Other.ipynb")
    assert (ref / a.path.name / "model.pt").is_file() and runs.read_record(ref / a.path.name)["weights"]
    assert not (ref / alone.path.name / "model.pt").exists()
    shutil.rmtree(runs.stores("cpu", tmp_path)["training"])  # a fresh clone: the reader still replays
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Reader.ipynb")
    again = run_experiment("shared", STUDENT, toy_cifar, _cfg(), keep_weights=True, mode="replay", **kw)
    for x, y in zip(a.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(x, y)


def test_replay_uses_only_committed_runs_and_checks_their_weights(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    teacher = _teacher()
    a = run_experiment("scratch", STUDENT, toy_cifar, _cfg(), keep_weights=True, **kw)
    b = run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=4.0, **kw)
    manifest = json.loads(_export(tmp_path).read_text())
    assert manifest["runs"] == sorted([a.path.name, b.path.name]) and manifest["execution_wall_time_s"] == 12.5
    assert manifest["runs_trained_in_execution"] == 2 and manifest["git_commit"] is not None
    ref = runs.stores("cpu", tmp_path)["reference"]
    assert (ref / a.path.name / "model.pt").is_file() and not (ref / b.path.name / "model.pt").exists()
    shutil.rmtree(runs.stores("cpu", tmp_path)["training"])  # a fresh clone: only the committed runs
    ra = run_experiment("scratch", STUDENT, toy_cifar, _cfg(), mode="replay", **kw)
    rb = run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=4.0,
                        mode="replay", **kw)
    assert ra.reused and ra.metrics == a.metrics and rb.metrics == b.metrics
    assert all(torch.equal(x, y) for x, y in zip(ra.model.state_dict().values(), a.model.state_dict().values()))
    with pytest.raises(runs.RunError, match="stored without its weights.*keep_weights=True"):
        rb.model
    # a committed checkpoint that no longer reproduces its record is refused
    stored = runs.read_logits(ref / a.path.name)
    stored["test"] = stored["test"].roll(1, dims=1)
    torch.save(stored, ref / a.path.name / "logits.pt")
    with pytest.raises(runs.RunError, match="no longer reproduce its record"):
        run_experiment("scratch", STUDENT, toy_cifar, _cfg(), mode="replay", **kw)


def test_replay_names_the_run_and_the_reason_it_cannot_be_replayed(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    teacher = _teacher()
    run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=4.0, **kw)
    _export(tmp_path)
    with pytest.raises(runs.RunError, match=r"run 'kd' cannot be replayed: .*method_kwargs.temperature: 4.0 -> 8.0"
                                            r".*re-execute Probe.ipynb"):
        run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=8.0,
                       mode="replay", **kw)
    monkeypatch.setitem(numerics.NUMERICS, "logit", numerics.NUMERICS["logit"] + 1)
    with pytest.raises(runs.RunError, match="training numerics of family 'logit' changed since it was recorded"):
        run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=4.0,
                       mode="replay", **kw)
    with pytest.raises(runs.RunError, match="no run named 'other' is stored"):
        run_experiment("other", STUDENT, toy_cifar, _cfg(), mode="replay", **kw)


def test_reexecution_replaces_a_notebooks_committed_runs(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    old = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    _export(tmp_path)
    monkeypatch.setenv(runs.SESSION_ENV, "session-b")
    new = run_experiment("ce", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    _export(tmp_path)
    ref = runs.stores("cpu", tmp_path)["reference"]
    assert not (ref / old.path.name).exists() and (ref / new.path.name / "run.json").is_file()
    assert runs.replayable(["Probe.ipynb", "Other.ipynb"], "cpu", tmp_path)[0] == ["Probe.ipynb"]
    assert "not committed" in runs.replayable(["Other.ipynb"], "cpu", tmp_path)[1]["Other.ipynb"]


def test_spec_holds_what_changes_a_run_and_numerics_of_exactly_its_families(toy_cifar):
    teacher = _teacher()
    spec = run_spec(STUDENT, toy_cifar, _cfg(), "kd", {"temperature": 4.0}, teacher)
    assert {"student", "method", "method_kwargs", "config", "data", "teacher_sha256", "plan", "numerics"} <= set(spec)
    assert spec_key(spec) != spec_key({**spec, "method_kwargs": {"temperature": 8.0}})
    keys = lambda: {m: spec_key(run_spec(STUDENT, toy_cifar, _cfg(), m, kw, None if m == "ce" else teacher))
                    for m, kw in {"ce": {}, "kd": {}, "fitnets": {"beta": 1.0}, "cohort": {}}.items()}
    before = keys()
    for family, changed in {"logit": {"kd"}, "feature": {"fitnets"}, "ensemble": {"cohort"},
                            "teacher_outputs": {"kd", "fitnets", "cohort"},
                            "loop": {"ce", "kd", "fitnets", "cohort"}, "data": {"ce", "kd", "fitnets", "cohort"}}.items():
        old = numerics.NUMERICS[family]
        numerics.NUMERICS[family] = old + 1
        try:
            after = keys()
        finally:
            numerics.NUMERICS[family] = old
        assert {m for m in before if before[m] != after[m]} == changed, family


KEY_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {pkg!r}); sys.path.insert(1, {tests!r})
    import kd_utils
    assert kd_utils.__file__.startswith({pkg!r}), kd_utils.__file__
    from conftest import make_bundle
    from kd_utils import build_model
    from kd_utils.config import TrainConfig
    from kd_utils.experiments import run_spec, spec_key
    import torch
    data = make_bundle(n_train=64, n_val=16, n_test=32, shape=(3, 32, 32))
    torch.manual_seed(1)
    teacher = build_model("vgg8", width=0.125)
    cfg = TrainConfig(epochs=1, batch_size=16, augment="crop_flip")
    for m, kw in [("ce", {{}}), ("kd", {{"temperature": 4.0}}), ("at", {{"beta": 1000.0}})]:
        print(m, spec_key(run_spec({{"name": "vgg8", "width": 0.125}}, data, cfg, m, kw, None if m == "ce" else teacher)))
""")


def _keys_of(pkg_parent: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", KEY_SCRIPT.format(pkg=str(pkg_parent), tests=str(ROOT / "tests"))],
                         capture_output=True, text=True, timeout=300, cwd=pkg_parent)
    assert out.returncode == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


def test_edits_outside_the_training_numerics_leave_every_key_unchanged(tmp_path):
    """Promise 1: plots, the CLI, analysis or a docstring in train_kd.py change no run's key."""
    copy = tmp_path / "edited"
    shutil.copytree(ROOT / "kd_utils", copy / "kd_utils", ignore=shutil.ignore_patterns("__pycache__"))
    before = _keys_of(copy)
    pkg = copy / "kd_utils"
    (pkg / "plots.py").write_text((pkg / "plots.py").read_text() + "\n\ndef _new_helper():\n    return 1\n")
    (pkg / "cli.py").write_text((pkg / "cli.py").read_text().replace('"""Command line', '"""The command line', 1))
    (pkg / "analysis.py").write_text((pkg / "analysis.py").read_text() + "\n# an edited analysis\n")
    assert not (pkg / "bench").exists()  # benchmarks live outside the package (benchmarks/): they cannot key a run
    src = (pkg / "train_kd.py").read_text()
    assert '"""Plain cross-entropy training' in src
    (pkg / "train_kd.py").write_text(src.replace('"""Plain cross-entropy training', '"""Plain CE training', 1))
    assert _keys_of(copy) == before


def test_replayable_cli_lists_and_explains(tmp_path, monkeypatch):
    from kd_utils.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["replayable", "--explain", "A.ipynb"]) == 0


def test_run_seeds_and_table(toy_cifar, tmp_path):
    runs_ = run_seeds("ce", STUDENT, toy_cifar, _cfg(), [0, 1], profile="smoke", root=tmp_path, progress=False)
    assert [r.name for r in runs_] == ["ce-s0", "ce-s1"] and runs_[0].spec["config"]["seed"] == 0
    table = runs_table({"ce": runs_})
    assert table.loc["ce", "n"] == 2
    assert table.loc["ce", "mean"] == sum(r.accuracy for r in runs_) / 2
    # a teacher-free method beside a distilled one keeps the agreement column (NaN where unknown) ...
    teacher = _teacher()
    kd = run_seeds("kd", STUDENT, toy_cifar, _cfg(), [0], method="kd", teacher=teacher, profile="smoke", root=tmp_path,
                   progress=False)
    mixed = runs_table({"ce": runs_, "kd": kd})
    assert mixed.loc["kd", "agreement_mean"] == kd[0].metrics["agreement"]
    assert mixed.loc["ce", "agreement_mean"] != mixed.loc["ce", "agreement_mean"]  # NaN
    # ... and given the teacher's test logits, every run's agreement comes from its stored logits
    t_logits = E.predict(teacher, toy_cifar.loader("test", batch_size=1024), "cpu", E.EVAL_PRECISION)[0]
    by_hand = [float((r.logits("test").argmax(1) == t_logits.argmax(1)).double().mean()) for r in runs_]
    full = runs_table({"ce": runs_, "kd": kd}, teacher_logits=t_logits)
    assert full.loc["ce", "agreement_mean"] == pytest.approx(sum(by_hand) / 2)
    assert full.loc["kd", "agreement_mean"] == pytest.approx(kd[0].metrics["agreement"], abs=1e-6)
    # another metric than test accuracy: a record field, or a history column's last epoch
    val = runs_table({"ce": runs_}, metric="best_val_acc")
    assert val.loc["ce", "per_seed"] == [r.metrics["best_val_acc"] for r in runs_]
    train = runs_table({"ce": runs_}, metric="final_train_acc")
    assert train.loc["ce", "per_seed"] == [float(r.history["train_acc"].iloc[-1]) for r in runs_]
    with pytest.raises(ValueError, match="has no metric 'val_accuracy'; allowed: test_accuracy, .*best_val_acc"):
        runs_table({"ce": runs_}, metric="val_accuracy")


def test_run_notebooks_hands_mode_session_and_notebook_to_the_kernel(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from kd_utils.notebooks import run_notebooks
    code = "import os; print(os.environ['KD_RUNS'], os.environ['KD_NOTEBOOK'], len(os.environ['KD_RUNS_SESSION']))"
    nb = new_notebook(cells=[new_code_cell(code)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "probe.ipynb")
    seen = {}
    for mode in (None, "fresh"):
        run_notebooks("smoke", ["probe.ipynb"], root=tmp_path, mode=mode)
        out = nbformat.read(tmp_path / "results" / "smoke" / "executed" / "probe.ipynb", as_version=4)
        seen[mode] = out.cells[0].outputs[0]["text"].strip()
    assert seen == {None: "reuse probe.ipynb 12", "fresh": "fresh probe.ipynb 12"}
    # the default profile replays by default, and skips (with the reason) a notebook whose runs are not committed
    records = run_notebooks("cpu", ["probe.ipynb"], root=tmp_path)
    assert records[0]["status"] == "skipped" and "not committed" in records[0]["why"]


def test_reexport_without_training_keeps_the_training_executions_wall_time(toy_cifar, tmp_path, monkeypatch):
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    _export(tmp_path)  # trained: wall 12.5 s
    monkeypatch.setenv(runs.SESSION_ENV, "session-b")
    assert run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw).reused
    m = json.loads(runs.export_notebook_runs("cpu", "Probe.ipynb", wall_time_s=3.0, root=tmp_path).read_text())
    assert (m["execution_wall_time_s"], m["runs_trained_in_execution"], m["reexport_wall_time_s"]) == (12.5, 1, 3.0)


def test_execution_summary_counts_the_runs_behind_a_notebook(toy_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RUNS_USED", [])
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    a = run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)
    run_experiment("ce", STUDENT, toy_cifar, _cfg(), **kw)  # the same run again: counted once
    b = run_experiment("ce2", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    s = E.execution_summary(notebook_start=None)
    assert (s["runs"], s["runs_trained_now"], s["mode"]) == (2, 2, "reuse")
    assert s["training_compute_s"] == round(a.metrics["wall_time_s"] + b.metrics["wall_time_s"], 1)
    assert s["precisions"] == ["fp32"] and len(s["trained_on"]) == 1


def test_a_run_killed_part_way_resumes_from_its_saved_state(toy_cifar, tmp_path):
    """run_experiment saves the training state every epoch: a run cut off after epoch 1 (a session's end)
    continues from there when asked again, and ends bit-identical to an uninterrupted run."""
    from kd_utils.runtime import seed_everything
    from kd_utils.train_eval import fit
    cfg = _cfg(epochs=2)
    whole = run_experiment("r", STUDENT, toy_cifar, cfg, profile="smoke", root=tmp_path / "a", progress=False)
    # what a killed run leaves behind: the state after epoch 1 at the run's state path
    spec = run_spec(STUDENT, toy_cifar, cfg, "ce", {}, None)
    state = tmp_path / "b" / "models" / "smoke" / "runs" / "_state" / f"{runs.folder_name('r', spec_key(spec))}.pth"
    state.parent.mkdir(parents=True)
    seed_everything(cfg.seed)
    model = build_model(STUDENT["name"], width=STUDENT["width"])
    fit(model, toy_cifar, cfg, progress=False, stop_after=1, state_path=state)
    assert state.is_file()
    resumed = run_experiment("r", STUDENT, toy_cifar, cfg, profile="smoke", root=tmp_path / "b", progress=False)
    assert not resumed.reused and resumed.metrics["resumed_after_epoch"] == 1 and not state.exists()
    assert "resumed_after_epoch" not in whole.metrics
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history["train_loss"].tolist() == whole.history["train_loss"].tolist()
    # its compute counts the epoch trained before the cut
    assert resumed.metrics["train_time_s"] >= resumed.history["time_s"].iloc[0]


def test_banked_runs_and_states_survive_the_loss_of_the_training_store(toy_cifar, tmp_path, monkeypatch):
    """A session's ignored models/ is gone next time: what runs.bank copied into the committed bank is
    reused (a finished run, weights included) or resumed (a run cut off part-way), and leaves the bank
    once a notebook's manifest lists it."""
    from kd_utils.runtime import seed_everything
    from kd_utils.train_eval import fit
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    places = runs.stores("smoke", tmp_path)
    finished = run_experiment("done", STUDENT, toy_cifar, _cfg(), **kw)
    cfg2 = _cfg(epochs=2)
    whole = run_experiment("cut", STUDENT, toy_cifar, cfg2, profile="smoke", root=tmp_path / "whole", progress=False)
    state = places["training"] / "_state" / f"{runs.folder_name('cut', whole.key)}.pth"
    state.parent.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg2.seed)
    fit(build_model(STUDENT["name"], width=STUDENT["width"]), toy_cifar, cfg2, progress=False, stop_after=1,
        state_path=state)
    assert runs.bank("smoke", tmp_path) == {"runs": [finished.path.name], "states": [state.stem], "pruned": []}
    assert runs.bank("smoke", tmp_path) == {"runs": [], "states": [], "pruned": []}  # nothing new: nothing copied again
    shutil.rmtree(places["training"])  # the next session
    again = run_experiment("done", STUDENT, toy_cifar, _cfg(), **kw)
    assert again.reused and again.path.parent == places["bank"]
    for a, b in zip(finished.model.state_dict().values(), runs.load_weights(again.path).state_dict().values()):
        assert torch.equal(a, b)  # banked with its weights: it can still teach or be re-evaluated
    resumed = run_experiment("cut", STUDENT, toy_cifar, cfg2, **kw)
    assert not resumed.reused and resumed.metrics["resumed_after_epoch"] == 1
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert runs.bank("smoke", tmp_path)["runs"] == [resumed.path.name]
    assert not list((places["bank"] / "_state").glob("*.pth"))  # its run finished: the state is dropped
    # exported by a notebook: committed in the reference store, so out of the bank
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    run_experiment("done", STUDENT, toy_cifar, _cfg(), **kw)
    runs.export_notebook_runs("smoke", "Probe.ipynb", wall_time_s=1.0, root=tmp_path)
    assert (places["reference"] / finished.path.name / "run.json").is_file()
    assert not (places["bank"] / finished.path.name).exists() and (places["bank"] / resumed.path.name).is_dir()
    assert runs.size_bytes("smoke", tmp_path, store="bank") > 0
    assert runs.size_bytes("smoke", tmp_path) == sum(
        p.stat().st_size for p in places["reference"].rglob("*") if p.is_file() and places["bank"] not in p.parents)
    # a banked state whose run is committed now (reference store only, the training store gone): dropped
    stale = places["bank"] / "_state" / f"{finished.path.name}.pth"
    stale.write_bytes(b"a state of a run that has finished since")
    shutil.rmtree(places["training"])
    runs.bank("smoke", tmp_path)
    assert not stale.exists()


def test_a_lean_bank_keeps_weights_only_where_a_cell_reads_them(toy_cifar, tmp_path, monkeypatch):
    """By default every banked run keeps its weights (a later session may train a student of it). With
    ``lean=True`` a run a notebook used without reading its weights is banked as the reference store keeps
    it (record and logits), and is still reused from there next session; one whose weights a cell reads, or
    one no notebook logged (trained from a plain call), keeps them."""
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    places = runs.stores("smoke", tmp_path)
    plain = run_experiment("plain", STUDENT, toy_cifar, _cfg(), **kw)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    light = run_experiment("light", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    heavy = run_experiment("heavy", STUDENT, toy_cifar, _cfg(seed=2), keep_weights=True, **kw)
    run_experiment("heavy", STUDENT, toy_cifar, _cfg(seed=2), **kw)  # a later cell reusing it without reading
    assert runs.weights_read("smoke", tmp_path) == {light.path.name: False, heavy.path.name: True}
    assert sorted(runs.bank("smoke", tmp_path)["runs"]) == sorted(r.path.name for r in (plain, light, heavy))
    bank = places["bank"]
    assert all((bank / r.path.name / "model.pt").is_file() for r in (plain, light, heavy))  # the default: all
    # lean on a bank that already holds them: the weights no cell read are dropped, the others kept
    leaned = runs.bank("smoke", tmp_path, lean=True)
    assert leaned["runs"] == [] and leaned["pruned"] == [light.path.name]
    assert not (bank / light.path.name / "model.pt").exists() and not runs.read_record(bank / light.path.name)["weights"]
    assert (bank / heavy.path.name / "model.pt").is_file() and (bank / plain.path.name / "model.pt").is_file()
    assert runs.bank("smoke", tmp_path, lean=True)["pruned"] == []  # nothing left to drop
    shutil.rmtree(bank)
    assert sorted(runs.bank("smoke", tmp_path, lean=True)["runs"]) == sorted(r.path.name for r in (plain, light, heavy))
    assert not (bank / light.path.name / "model.pt").exists() and not runs.read_record(bank / light.path.name)["weights"]
    assert (bank / heavy.path.name / "model.pt").is_file() and (bank / plain.path.name / "model.pt").is_file()
    shutil.rmtree(places["training"])  # the next session
    again = run_experiment("light", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    assert again.reused and again.path.parent == bank and again.accuracy == light.accuracy
    pd.testing.assert_frame_equal(again.history, light.history, check_dtype=False)
    for a, b in zip(heavy.model.state_dict().values(), runs.load_weights(bank / heavy.path.name).state_dict().values()):
        assert torch.equal(a, b)
    # a later cell that reads the weights of a run banked without them retrains it (replay refuses, saying why)
    shutil.copytree(bank / light.path.name, places["reference"] / light.path.name)  # as if committed so
    with pytest.raises(runs.RunError, match="stored without its weights and keep_weights=True"):
        run_experiment("light", STUDENT, toy_cifar, _cfg(seed=1), keep_weights=True, mode="replay", **kw)
    heavier = run_experiment("light", STUDENT, toy_cifar, _cfg(seed=1), keep_weights=True, **kw)
    assert not heavier.reused and (heavier.path / "model.pt").is_file() and heavier.accuracy == light.accuracy


def test_weights_a_cell_reads_of_a_run_committed_without_them_are_banked_and_reused(toy_cifar, tmp_path, monkeypatch):
    """Task 2 reads the weights of Task 1's scratch runs, which Task 1 committed without them: the run
    retrained for them is banked with its weights (though committed), the next session reuses that banked
    copy instead of retraining, and the bank keeps it until the committed copy has the weights too."""
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    places = runs.stores("smoke", tmp_path)
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "First.ipynb")
    first = run_experiment("shared", STUDENT, toy_cifar, _cfg(), **kw)
    runs.export_notebook_runs("smoke", "First.ipynb", wall_time_s=1.0, root=tmp_path)
    committed = places["reference"] / first.path.name
    assert not (committed / "model.pt").exists()
    assert runs.bank("smoke", tmp_path)["runs"] == []  # committed, and no cell read its weights: nothing to bank
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Second.ipynb")
    monkeypatch.setenv(runs.SESSION_ENV, "second-session")
    again = run_experiment("shared", STUDENT, toy_cifar, _cfg(), keep_weights=True, **kw)
    assert again.path.parent == places["training"] and again.accuracy == first.accuracy
    assert runs.bank("smoke", tmp_path)["runs"] == [first.path.name]
    assert (places["bank"] / first.path.name / "model.pt").is_file()
    assert runs.bank("smoke", tmp_path)["runs"] == []  # banked once
    runs.prune("smoke", tmp_path)
    assert (places["bank"] / first.path.name / "model.pt").is_file()  # the committed copy still lacks them
    shutil.rmtree(places["training"])  # the next session: reused from the bank, not retrained
    monkeypatch.setenv(runs.SESSION_ENV, "third-session")
    reused = run_experiment("shared", STUDENT, toy_cifar, _cfg(), keep_weights=True, **kw)
    assert reused.reused and reused.path.parent == places["bank"]
    for a, b in zip(again.model.state_dict().values(), reused.model.state_dict().values()):
        assert torch.equal(a, b)
    assert run_experiment("shared", STUDENT, toy_cifar, _cfg(), **kw).path == committed  # no weights asked: as before
    runs.export_notebook_runs("smoke", "Second.ipynb", wall_time_s=1.0, root=tmp_path)
    assert (committed / "model.pt").is_file() and not (places["bank"] / first.path.name).exists()
    assert json.loads(runs.manifest_path("smoke", "Second.ipynb", tmp_path).read_text())["runs"] == [first.path.name]


def test_restore_best_false_keeps_the_last_epoch_and_keys_only_itself(toy_cifar, tmp_path):
    """restore_best=False (a protocol that reports the last epoch) stores the last epoch's weights; it is
    in the key only when asked for, so the keys of every default run stay as they were."""
    from kd_utils.runtime import seed_everything
    from kd_utils.train_eval import fit
    cfg = _cfg(epochs=4, lr=0.3)  # its validation accuracy peaks at epoch 3 on this toy set
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    best = run_experiment("r", STUDENT, toy_cifar, cfg, **kw)
    last = run_experiment("r", STUDENT, toy_cifar, cfg, restore_best=False, **kw)
    assert best.metrics["best_epoch"] < cfg.epochs  # the case that tells the two apart
    assert "restore_best" not in best.spec and last.spec["restore_best"] is False and last.key != best.key
    seed_everything(cfg.seed)
    model = build_model(STUDENT["name"], width=STUDENT["width"])
    fit(model, toy_cifar, cfg, progress=False, restore_best=False)
    runs.round_weights(model)
    for a, b in zip(model.state_dict().values(), last.model.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(best.model.state_dict().values(), last.model.state_dict().values()))
    assert run_experiment("r", STUDENT, toy_cifar, cfg, restore_best=False, **kw).reused


def test_the_data_v2_seeding_changes_the_keys_of_exactly_the_runs_on_other_plan_seeds(toy_cifar):
    """Data numerics v2 moved only plans with seed > 0: runs on plan seed 0 keep data v1 (their keys and
    stored runs stay valid), every other plan seed is keyed on v2."""
    assert numerics.NUMERICS["data"] == 2
    seed0 = run_spec(STUDENT, toy_cifar, _cfg(), "ce", {}, None)
    seed1 = run_spec(STUDENT, toy_cifar, _cfg(seed=1), "ce", {}, None)
    shared = run_spec(STUDENT, toy_cifar, _cfg(seed=1, data_seed=0), "ce", {}, None)  # model seed 1 on plan 0
    assert seed0["numerics"]["data"] == 1 and shared["numerics"]["data"] == 1 and seed1["numerics"]["data"] == 2


def test_a_stored_teacher_run_keys_its_students_by_its_recorded_weights_checksum(toy_cifar, tmp_path):
    """A teacher trained as a run teaches by its record: the student's key holds the teacher's recorded
    weights checksum (equal to the module's), so the student is reused -- with agreement and KL from the
    teacher's stored logits -- after the teacher's weights are gone; training a new student then asks
    for them by name."""
    kw = dict(profile="smoke", root=tmp_path, progress=False)
    teacher = run_experiment("t", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    module = teacher.model
    assert teacher.record["weights_sha256"] == E.teacher_digest(module) == E.teacher_sha256(teacher)
    by_run = run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=teacher, temperature=4.0, **kw)
    by_module = run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=module, temperature=4.0, **kw)
    assert by_module.reused and by_module.key == by_run.key
    assert by_run.spec["teacher_sha256"] == teacher.record["weights_sha256"]
    (teacher.path / "model.pt").unlink()  # committed as record and logits only
    stored = run_experiment("t", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    again = run_experiment("kd", STUDENT, toy_cifar, _cfg(), method="kd", teacher=stored, temperature=4.0, **kw)
    assert again.reused and again.key == by_run.key
    assert again.metrics["agreement"] == pytest.approx(by_module.metrics["agreement"], abs=1e-3)
    assert again.metrics["kl"] == pytest.approx(by_module.metrics["kl"], rel=0.02, abs=1e-3)
    with pytest.raises(runs.RunError, match="teacher run 't' must be trained with keep_weights=True"):
        run_experiment("kd", STUDENT, toy_cifar, _cfg(seed=2), method="kd", teacher=stored, temperature=4.0, **kw)


def test_the_export_keeps_validation_logits_only_where_a_cell_read_them(toy_cifar, tmp_path, monkeypatch):
    """Validation logits are half of a record: a committed run keeps them only if a cell of the exporting
    notebook (or of another notebook that commits the run) read them; the test logits always stay."""
    kw = dict(profile="cpu", root=tmp_path, progress=False)
    ref = runs.stores("cpu", tmp_path)["reference"]
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    read = run_experiment("read", STUDENT, toy_cifar, _cfg(), **kw)
    unread = run_experiment("unread", STUDENT, toy_cifar, _cfg(seed=1), **kw)
    val = read.logits("val")
    _export(tmp_path)
    assert torch.equal(runs.read_logits(ref / read.path.name)["val"].float(), val)
    assert runs.read_record(ref / read.path.name)["val_logits"] is True
    stripped = runs.read_logits(ref / unread.path.name)
    assert "val" not in stripped and torch.equal(stripped["test"].float(), unread.logits("test"))
    assert runs.read_record(ref / unread.path.name)["val_logits"] is False
    assert (ref / unread.path.name / "logits.pt").stat().st_size < 0.75 * (unread.path / "logits.pt").stat().st_size
    # replayed from the committed runs alone: the read one still has them, the other says why it has not
    shutil.rmtree(runs.stores("cpu", tmp_path)["training"])
    again = run_experiment("read", STUDENT, toy_cifar, _cfg(), mode="replay", **kw)
    assert torch.equal(again.logits("val"), val)
    other = run_experiment("unread", STUDENT, toy_cifar, _cfg(seed=1), mode="replay", **kw)
    assert other.metrics == unread.metrics
    with pytest.raises(ValueError, match="committed without them because no cell"):
        other.logits("val")
    # another notebook that does not read them does not strip them from a run both commit
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Other.ipynb")
    monkeypatch.setenv(runs.SESSION_ENV, "other-session")
    run_experiment("read", STUDENT, toy_cifar, _cfg(), mode="replay", **kw)
    _export(tmp_path, "Other.ipynb")
    assert "val" in runs.read_logits(ref / read.path.name)


def test_a_use_log_written_before_validation_reads_were_noted_keeps_them(toy_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv(runs.NOTEBOOK_ENV, "Probe.ipynb")
    run = run_experiment("old", STUDENT, toy_cifar, _cfg(), profile="cpu", root=tmp_path, progress=False)
    log = next((runs.stores("cpu", tmp_path)["training"] / "_used").glob("*/Probe.jsonl"))
    log.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "val_logits"}) + "\n"
                           for line in log.read_text().splitlines()))
    _export(tmp_path)
    assert "val" in runs.read_logits(runs.stores("cpu", tmp_path)["reference"] / run.path.name)
