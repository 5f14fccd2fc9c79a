"""The notebooks' setup and summary helper: one way to start a notebook and to record its execution."""
from __future__ import annotations

import pytest
import torch

from kd_utils import experiments as E
from kd_utils import runs
from kd_utils.config import TrainConfig
from kd_utils.experiments import run_experiment
from kd_utils.session import begin


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KD_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setattr(E, "RUNS_USED", [])


def test_begin_resolves_the_profile_seeds_and_prints_versions(capsys, tmp_path):
    s = begin("smoke", seed=3)
    first = torch.rand(3)
    out = capsys.readouterr().out
    assert s.profile.name == "smoke" and s.seeds == [0, 1] and s.seed == 3
    assert "profile: smoke" in out and "seed: 3" in out and f"torch        {torch.__version__}" in out
    assert s.dirs["metrics"] == tmp_path / "results" / "smoke" / "metrics" and s.dirs["metrics"].is_dir()
    begin("smoke", seed=3, quiet=True)
    assert torch.equal(torch.rand(3), first) and capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        begin("nope")


def test_begin_says_how_long_run_all_took_from_the_committed_manifest(capsys, tmp_path):
    begin("smoke", notebook="Probe.ipynb")
    assert "Run All" not in capsys.readouterr().out  # no committed runs: nothing to say
    manifest = runs.manifest_path("cpu", "Probe.ipynb")
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"runs": ["a-1", "b-2"], "training_compute_s": 7200, "execution_wall_time_s": 7300, '
                        '"precisions": ["bf16"], "processors": ["Test CPU x2"], '
                        '"created": "2026-01-02T03:04:05Z", "replay_wall_time_s": 150}')
    begin("smoke", notebook="Probe.ipynb")
    assert ("Run All, cpu profile: training every run took 2.0 h of compute (2 runs, Test CPU x2, bf16, "
            "recorded 2026-01-02); replaying the committed runs (the default) took 2 min.") in capsys.readouterr().out


def test_a_replayed_summary_reports_the_training_execution_and_how_many_runs_it_trained(monkeypatch):
    """An execution that reused runs banked by earlier sessions trained none of them itself: a replay's
    results file says so beside that execution's wall time, rather than passing it off as the training's."""
    from kd_utils.config import get_profile
    from kd_utils.experiments import execution_summary
    manifest = runs.manifest_path(get_profile(None), "Probe.ipynb")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text('{"runs": ["a-1"], "training_compute_s": 7200, "execution_wall_time_s": 39.1, '
                        '"runs_trained_in_execution": 0}')
    monkeypatch.setenv(runs.MODE_ENV, "replay")
    ex = execution_summary(0.0, "Probe.ipynb")
    assert (ex["training_execution_wall_time_s"], ex["runs_trained_in_training_execution"]) == (39.1, 0)
    monkeypatch.setenv(runs.MODE_ENV, "reuse")
    ex = execution_summary(0.0, "Probe.ipynb")
    assert ex["training_execution_wall_time_s"] == ex["execution_wall_time_s"]
    assert ex["runs_trained_in_training_execution"] == ex["runs_trained_now"]


def test_summary_counts_the_runs_the_notebook_used_once(toy_cifar, tmp_path):
    s = begin("smoke", quiet=True)
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.02, device="cpu", precision="fp32")
    a = run_experiment("a", {"name": "vgg8", "width": 0.125}, toy_cifar, cfg, profile="smoke", root=tmp_path,
                       progress=False)
    again = run_experiment("a", {"name": "vgg8", "width": 0.125}, toy_cifar, cfg, profile="smoke", root=tmp_path,
                           progress=False)
    assert again.reused
    summary = s.summary(accuracy=a.accuracy)
    ex = summary["execution"]
    assert summary["profile"] == "smoke" and summary["accuracy"] == a.accuracy and "versions" in summary
    assert ex["runs"] == 1 and ex["runs_trained_now"] == 1  # the reused run is the same run, counted once
    assert ex["training_compute_s"] == pytest.approx(round(a.metrics["wall_time_s"], 1))
    assert ex["execution_wall_time_s"] >= 0 and ex["precisions"] == ["fp32"]
    with pytest.raises(ValueError, match=r"summary fields \['profile'\] would overwrite"):
        s.summary(profile="other")
