"""Tests for kd_utils.bench: timing helpers, the met rule, the report, and a tiny end-to-end run."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch

from kd_utils import bench
from kd_utils.data import cache_path

from conftest import make_bundle

FIGURE_KEYS = {"name", "value", "unit", "target", "higher_is_better", "baseline", "met", "detail"}


class FakeClock:
    """A clock that returns the given readings in order (and fails loudly if read too often)."""

    def __init__(self, readings):
        self.readings = list(readings)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.readings.pop(0)


# ------------------------------------------------------------------ timing ----
def test_median_time_is_the_median_of_controlled_timings():
    calls = []
    # warm-up calls read no clock; then (start, stop) pairs giving durations 5, 1, 3 -> median 3
    clock = FakeClock([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])
    got = bench.median_time(lambda: calls.append(1), repeats=3, warmup=2, clock=clock)
    assert got == 3.0
    assert len(calls) == 5 and clock.reads == 6 and not clock.readings


def test_time_runs_returns_each_duration_and_syncs_around_the_call():
    events = []
    clock = FakeClock([1.0, 1.5, 2.0, 4.0])
    times = bench.time_runs(lambda: events.append("fn"), repeats=2, warmup=0, clock=clock,
                            sync=lambda: events.append("sync"))
    assert times == [0.5, 2.0]
    assert events == ["sync", "fn", "sync"] * 2


def test_median_time_with_an_even_number_of_repeats_and_the_real_clock():
    clock = FakeClock([0, 1, 0, 2, 0, 4, 0, 8])
    assert bench.median_time(lambda: None, repeats=4, warmup=0, clock=clock) == statistics.median([1, 2, 4, 8])
    assert bench.median_time(lambda: None, repeats=3, warmup=0) >= 0.0


@pytest.mark.parametrize("repeats, warmup", [(0, 1), (3, -1), (2.5, 0), (True, 0)])
def test_time_runs_rejects_bad_counts(repeats, warmup):
    with pytest.raises(ValueError):
        bench.time_runs(lambda: None, repeats=repeats, warmup=warmup)


def test_interleaved_times_alternates_order_and_keeps_durations_apart():
    order = []
    ticks = iter(range(100))
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    out = bench.interleaved_times(fns, repeats=3, warmup=1, clock=lambda: float(next(ticks)))
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then forward / reverse / forward
    assert set(out) == {"a", "b"} and all(len(v) == 3 and all(t == 1.0 for t in v) for v in out.values())


def test_loglog_slope_recovers_a_power_law():
    xs = [1.0, 2.0, 4.0, 8.0]
    slope, r2 = bench._loglog_slope(xs, [3 * x ** 1.5 for x in xs])
    assert slope == pytest.approx(1.5) and r2 == pytest.approx(1.0)


# --------------------------------------------------------------------- met ----
@pytest.mark.parametrize("value, target, higher, expected", [
    (3.0, 3.0, True, True), (3.1, 3.0, True, True), (2.99, 3.0, True, False),
    (0.05, 0.05, False, True), (0.01, 0.05, False, True), (0.051, 0.05, False, False),
    (1.2, None, True, None), (None, 1.1, False, None), (math.nan, 1.1, False, None), (math.inf, 1.5, True, None),
])
def test_judge_met(value, target, higher, expected):
    assert bench.judge_met(value, target, higher) is expected


def test_figure_computes_met_from_direction():
    up = bench.Figure("x", 0.4, "x", 1.5, True, "fp32")
    down = bench.Figure("y", 1.04, "x", 1.10, False, "ce")
    free = bench.Figure("z", 2.0, "exponent", None, False, "linear")
    assert (up.met, down.met, free.met) == (False, True, None)
    assert set(up.to_dict()) == FIGURE_KEYS


# ------------------------------------------------------------------ report ----
def _fake_results():
    figures = []
    for i, name in enumerate(bench.FIGURES):
        value, target, higher = [(3.5, 3.0, True), (0.2, 0.05, False), (1.0, None, True)][i % 3]  # met, not met, n/a
        fig = bench.Figure(name, value, "x", target, higher, f"baseline of {name}",
                           {"median_s": 0.123456, "times_s": {"a": [0.1, 0.2]}, "nested": {"k": 1.5}})
        figures.append(fig.to_dict())
    return {"machine": {"summary": "test machine", "logical_cpus": 2, "cpu_has_fast_bf16": False},
            "versions": {"torch": torch.__version__}, "date": "2026-01-01T00:00:00+00:00", "mode": "quick",
            "wall_time_s": 12.5, "repeats": 3, "figures": figures,
            "skipped": [{"name": "time_to_85_cifar_vgg8", "reason": "too slow here"}]}


def test_render_markdown_lists_every_figure_with_target_and_met():
    md = bench.render_markdown(_fake_results())
    for name in bench.FIGURES:
        assert f"`{name}`" in md
    header = next(line for line in md.splitlines() if line.startswith("| Figure |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Figure", "Value", "Unit", "Target", "Met", "Baseline"]
    assert ">= 3.000" in md and "<= 0.050" in md and "| none |" in md
    assert "**no**" in md and "| yes |" in md and "| n/a |" in md
    assert "too slow here" in md and "test machine" in md and "Mode: quick" in md
    assert "nested: k=1.500" in md and "times_s" not in md  # raw timing lists stay in the JSON


# ---------------------------------------------------------------- running ----
needs_mnist = pytest.mark.skipif(not cache_path("mnist").exists(), reason="MNIST cache not built (make data)")


@needs_mnist
def test_tiny_run_writes_the_documented_json_schema(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    rc = bench.main(["--tiny", "--only", "input_pipeline_speedup_mlp", "--out", str(tmp_path / "res"),
                     "--md", str(md), "--threads", "1"])
    assert rc == 0
    assert torch.get_num_threads() == threads  # main() restores the thread count it changed
    doc = json.loads((tmp_path / "res" / "benchmarks.json").read_text())
    assert {"machine", "versions", "date", "mode", "wall_time_s", "figures", "skipped"} <= set(doc)
    assert doc["mode"] == "tiny" and doc["skipped"] == [] and doc["wall_time_s"] > 0
    assert doc["versions"]["torch"] == torch.__version__
    (fig,) = doc["figures"]
    assert set(fig) == FIGURE_KEYS and fig["name"] == "input_pipeline_speedup_mlp"
    assert fig["value"] > 0 and fig["target"] == 3.0 and fig["higher_is_better"] is True
    assert fig["met"] is bench.judge_met(fig["value"], fig["target"], True)
    d = fig["detail"]
    assert d["images"] == bench.TINY.mlp_train and d["best_num_workers"] in (0, 1, 2)
    assert fig["value"] == pytest.approx(d["seeds_epoch_s_best"] / d["ours_epoch_s"])
    assert all(len(v) == bench.TINY.repeats for v in d["times_s"].values())
    assert "input_pipeline_speedup_mlp" in md.read_text()


def test_failing_and_skipped_figures_are_recorded_not_swallowed(tmp_path, monkeypatch):
    def boom(b):
        raise RuntimeError("kaput")

    def skip(b):
        raise bench.SkipFigure("not here")

    monkeypatch.setitem(bench.FIGURES, "boom", boom)
    monkeypatch.setitem(bench.FIGURES, "skip", skip)
    rc = bench.main(["--tiny", "--only", "boom,skip", "--out", str(tmp_path), "--md", str(tmp_path / "B.md")])
    assert rc == 1
    doc = json.loads((tmp_path / "benchmarks.json").read_text())
    reasons = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert reasons == {"boom": "error: RuntimeError: kaput", "skip": "not here"} and doc["figures"] == []


def test_only_rejects_unknown_figure_names(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--only", "no_such_figure"])
    assert exc.value.code == 2 and "no_such_figure" in capsys.readouterr().err


def test_repeats_below_three_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--repeats", "2", "--only", "kd_overhead_cached"])
    assert exc.value.code == 2 and "at least 3" in capsys.readouterr().err


def test_time_to_accuracy_figures_skip_when_not_measurable():
    b = bench.Bench(bench.QUICK, device="cpu")
    with pytest.raises(bench.SkipFigure, match="full mode"):
        bench.fig_time_to_99_mnist_kd(b)
    with pytest.raises(bench.SkipFigure, match="not bounded"):
        bench.fig_time_to_85_cifar_vgg8(b)


@pytest.fixture
def one_thread():
    """One torch thread for the test (timing code on a shared CPU), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_time_to_99_figure_is_consistent_on_toy_data(one_thread):
    """The full-mode-only figure, on a learnable synthetic set: its value follows the documented rule."""
    sizes = dataclasses.replace(bench.TINY, time_to_99=True, teacher_epochs=2, max_epochs=2)
    b = bench.Bench(sizes, device="cpu", log=lambda m: None,
                    preloaded={"mnist": make_bundle(n_train=512, n_val=64, n_test=256)})
    fig = bench.fig_time_to_99_mnist_kd(b)
    d = fig.detail
    assert fig.name == "time_to_99_mnist_kd" and fig.target is None and fig.met is None
    assert d["scratch"]["curve"] and d["kd"]["curve"] and d["teacher"]["train_s"] > 0
    if d["kd"]["reached"] and d["scratch"]["reached"]:
        assert fig.value == pytest.approx(d["kd"]["seconds"] / d["scratch"]["seconds"]) and fig.unit == "x"
    elif d["kd"]["reached"]:
        assert fig.value == d["kd"]["seconds"] and fig.unit == "s" and d["ratio"] is None
    else:
        assert fig.value is None and d["ratio"] is None and "did not reach" in d["explanation"]
