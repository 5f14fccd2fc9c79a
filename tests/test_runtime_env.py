"""$KD_PRECISION / --precision override precision="auto" everywhere; a busy machine is announced."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from kd_utils import runtime
from kd_utils.config import TrainConfig
from kd_utils.models import build_model
from kd_utils.runtime import BusyMachineWarning, resolve_precision, warn_if_busy
from kd_utils.train_eval import fit

from conftest import make_bundle

CPU = torch.device("cpu")


def test_kd_precision_replaces_auto_only(monkeypatch):
    monkeypatch.delenv("KD_PRECISION", raising=False)
    natural = resolve_precision("auto", CPU)
    for value in ("fp32", "bf16", "BF16 "):
        monkeypatch.setenv("KD_PRECISION", value)
        assert resolve_precision("auto", CPU) == value.strip().lower()
        assert resolve_precision("fp32", CPU) == "fp32"  # explicit precisions (evaluation's fp32) stay
    monkeypatch.setenv("KD_PRECISION", "auto")
    assert resolve_precision("auto", CPU) == natural


@pytest.mark.parametrize("value, needle", [("fp16", "no loss scaling"), ("half", "allowed: auto, fp32, bf16")])
def test_bad_values_fail_clearly(monkeypatch, value, needle):
    monkeypatch.setenv("KD_PRECISION", value)
    with pytest.raises(ValueError, match=rf"\$KD_PRECISION value '{value}'.*{needle}"):
        resolve_precision("auto", CPU)
    with pytest.raises(ValueError, match="unknown precision 'fp16'.*no loss scaling"):
        TrainConfig(precision="fp16")


def test_training_follows_the_override(monkeypatch):
    data = make_bundle(n_train=64, n_val=16, n_test=16)
    for value in ("bf16", "fp32"):
        monkeypatch.setenv("KD_PRECISION", value)
        res = fit(build_model("mnist_mlp"), data, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
        assert res.config["precision_used"] == value and res.config["precision"] == "auto"


def test_cli_flag_sets_the_override_and_checks_it(monkeypatch, capsys):
    from kd_utils.cli import build_parser, main
    monkeypatch.setenv("KD_PRECISION", "auto")  # recorded, so the value main() sets is undone afterwards
    monkeypatch.setattr("kd_utils.cli._cmd_pipeline", lambda a: print("ran with", os.environ["KD_PRECISION"]) or 0)
    assert main(["pipeline", "--profile", "smoke", "--precision", "fp32"]) == 0
    assert "ran with fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--precision", "fp16"])
    assert "no loss scaling" in capsys.readouterr().err
    monkeypatch.setenv("KD_PRECISION", "fp64")  # a bad environment value fails before anything runs
    assert main(["pipeline", "--profile", "smoke"]) == 2
    assert "unknown $KD_PRECISION value 'fp64'" in capsys.readouterr().err


# ------------------------------------------------------------- busy machine ----
@pytest.fixture
def load(monkeypatch):
    monkeypatch.setattr(runtime, "_last_busy_warning", -float("inf"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    def set_load(value):
        monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))
    return set_load


def test_a_busy_machine_is_announced_once(load):
    load(5.0)
    with pytest.warns(BusyMachineWarning, match=r"load average is 5\.0, above its 2 core\(s\).*slower"):
        assert warn_if_busy("cpu") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_busy("cpu") is None  # not again within BUSY_REPEAT_S
        assert warn_if_busy("cuda") is None  # GPU training is not slowed by busy cores the same way


def test_an_idle_machine_is_not(load):
    load(1.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_busy("cpu") is None


def test_fit_warns_when_it_starts_on_a_busy_machine(load):
    load(4.0)
    data = make_bundle(n_train=64, n_val=16, n_test=16)
    with pytest.warns(BusyMachineWarning, match="share of the cores"):
        fit(build_model("mnist_mlp"), data, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
