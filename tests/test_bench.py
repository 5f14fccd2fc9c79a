"""Tests for benchmarks: timing helpers, the met rule, the report, and a tiny end-to-end run."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch

import benchmarks as bench
from benchmarks import accuracy, precision
from benchmarks.core import _loglog_slope
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
    slope, r2 = _loglog_slope(xs, [3 * x ** 1.5 for x in xs])
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
    with pytest.raises(bench.SkipFigure, match="full mode"):
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


# ------------------------------------------------- augmented distillation ----
def _toy_cifar_bench(sizes=None, batches=2, **kw):
    """A Bench over a learnable synthetic CIFAR-shaped set (``batches`` batches of 256), quiet, on the CPU."""
    data = make_bundle(n_train=batches * 256, n_val=64, n_test=256, shape=(3, 32, 32))
    return bench.Bench(sizes or bench.TINY, device="cpu", log=lambda m: None, preloaded={"cifar10": data}, **kw)


def test_method_epoch_cost_times_each_method_through_distill_against_ce(one_thread, monkeypatch):
    from benchmarks import methods
    monkeypatch.setattr(methods, "measured_methods", lambda: ["kd", "at", "fitnets_two_stage"])
    fig = methods.fig_method_epoch_cost(_toy_cifar_bench(batches=1, precision="fp32"))
    d = fig.detail
    assert fig.name == "method_epoch_cost" and set(d["methods"]) == {"kd", "at", "fitnets_two_stage"}
    base = sum(d["ce_epoch_s"]) / len(d["ce_epoch_s"])
    for row in d["methods"].values():
        assert row["ratio"] == pytest.approx(row["epoch_s"] / base) and row["epoch_s"] > 0
    assert fig.value == pytest.approx(statistics.median(r["ratio"] for r in d["methods"].values()))
    # the plan caches are built before the timing: cached methods read them, AT runs its teacher
    assert d["methods"]["kd"]["teacher_outputs"].startswith("plan cache read")
    assert d["methods"]["at"]["teacher_outputs"] == "online teacher"
    two = d["methods"]["fitnets_two_stage"]
    assert two["stage_ratio"] == pytest.approx(two["stage_epoch_s"] / base) and two["extra_parameters"] > 0
    assert "stage_epoch_s" not in d["methods"]["kd"]


def test_method_epoch_cost_measures_every_registered_method_but_the_baseline():
    from benchmarks import methods
    from kd_utils.train_kd import DISTILLERS
    # all but the baseline and the several-student distillers (mutual learning, KDCL: Multiple_Students' figures)
    assert set(methods.measured_methods()) == set(DISTILLERS) - {"ce", "cohort", "kdcl"}


def test_figure_modules_share_one_registry_and_package_exports():
    from benchmarks import registry, runner
    assert bench.FIGURES is registry.FIGURES and runner.FIGURES is registry.FIGURES
    assert {"kd_overhead_augmented_cached", "kd_speedup_augmented", "teacher_cache_build_s", "compile_speedup_vgg8",
            "compile_speedup_vgg13", "time_to_85_cifar_vgg8"} <= set(bench.FIGURES)
    assert all(fn.__doc__ for fn in bench.FIGURES.values())
    assert set(bench.__all__) <= set(dir(bench))
    assert bench.core.DEFAULT_MD.parent == bench.core.Path(__file__).resolve().parents[1]  # repository root


def test_kd_overhead_augmented_cached_on_toy_data(one_thread):
    b = _toy_cifar_bench()
    fig = bench.fig_kd_overhead_augmented_cached(b)
    d = fig.detail
    assert fig.name == "kd_overhead_augmented_cached" and fig.target == 1.10 and fig.higher_is_better is False
    assert fig.value == pytest.approx(d["kd_pass_s"] / d["ce_pass_s"]) and fig.value > 0
    assert d["batches"] == bench.TINY.aug_batches and d["images"] == 512 and d["augment"] == "crop_flip"
    assert d["precision"] == b.precision and d["cache_bytes"] == 512 * 10 * 2  # one epoch, 10 classes, fp16
    assert all(len(v) == bench.TINY.repeats for v in d["times_s"].values())


def test_kd_speedup_augmented_on_toy_data(one_thread):
    fig = bench.fig_kd_speedup_augmented(_toy_cifar_bench(precision="fp32"))
    d = fig.detail
    assert fig.name == "kd_speedup_augmented" and fig.target is None and fig.met is None and fig.higher_is_better
    assert fig.value == pytest.approx(d["online_pass_s"] / d["cached_pass_s"])
    assert d["speedup_including_one_build"] == pytest.approx(
        d["online_pass_s"] / (d["cached_pass_s"] + d["cache_build_s"]))
    assert d["precision"] == "fp32"


def test_teacher_cache_build_figure_scales_and_measures_fp16_storage(one_thread, monkeypatch):
    monkeypatch.setattr(bench.core, "_trained_cifar_teacher", lambda: pytest.fail("tiny mode must not load it"))
    sizes = dataclasses.replace(bench.TINY, aug_batches=1)  # 256 of the 512 training images
    fig = bench.fig_teacher_cache_build_s(_toy_cifar_bench(sizes))
    d = fig.detail
    assert fig.name == "teacher_cache_build_s" and fig.unit == "s" and fig.target is None
    assert d["images"] == 256 and d["train_split_images"] == 512
    assert fig.value == pytest.approx(d["build_s_measured"] * 2)
    assert d["cache_bytes_per_epoch_measured"] == 256 * 10 * 2 and d["cache_bytes_per_epoch_full_split"] == 512 * 10 * 2
    store = d["fp16_storage_vs_fp32"]
    # fp16 keeps 11 significant bits: rounding moves a logit by at most 2^-11 of its magnitude
    assert 0 <= store["max_abs_logit_diff"] <= store["max_abs_logit"] * 2 ** -11
    assert store["kd_loss_rel_diff"] < 1e-3 and store["argmax_changed_fraction"] <= 0.01
    built = next(v for k, v in d.items() if k.startswith("cache_as_built_"))
    assert set(built) == set(store) and built["argmax_changed_fraction"] <= 0.05


def test_trained_teacher_is_only_loaded_never_trained(monkeypatch, tmp_path):
    from kd_utils import teacher as T
    bogus = tmp_path / "cifar10_vgg13_w0.5.pt"
    bogus.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(T, "candidate_paths", lambda *a, **k: [tmp_path / "missing.pt", bogus])
    monkeypatch.setattr(T, "cifar_teacher", lambda *a, **k: pytest.fail("would train a teacher"))
    assert bench.core._trained_cifar_teacher() is None


# ------------------------------------------------------------- compile ----
class _Uncompiled(torch.nn.Module):
    """Stands in for torch.compile's wrapper in the bookkeeping tests (real compilation: test_compile.py)."""

    def __init__(self, module, fail=None):
        super().__init__()
        self.inner, self.fail = module, fail

    def forward(self, *args):
        if self.fail is not None:
            raise self.fail
        return self.inner(*args)


def test_compile_figure_bookkeeping(one_thread, monkeypatch):
    monkeypatch.setattr(precision, "_compile", lambda m: _Uncompiled(m))
    fig = bench.fig_compile_speedup_vgg8(_toy_cifar_bench())
    d = fig.detail
    assert fig.name == "compile_speedup_vgg8" and fig.target is None and fig.higher_is_better
    assert fig.value == pytest.approx(d["eager_step_s"] / d["compiled_step_s"])
    assert d["compile_s"] == pytest.approx(max(0.0, d["first_compiled_step_s"] - d["compiled_step_s"]))
    n = d["epoch_steps"]
    assert n == 176 and d["speedup_over_one_epoch_including_compile"] == pytest.approx(
        n * d["eager_step_s"] / (n * d["compiled_step_s"] + d["compile_s"]))
    assert d["model"] == "vgg8 width 0.125" and set(d["times_s"]) == {"eager", "compiled"}


def test_compile_figure_skips_when_compilation_fails_or_is_not_in_this_mode(one_thread, monkeypatch):
    err = RuntimeError("InductorError: no working C++ compiler\nlong traceback ...")
    monkeypatch.setattr(precision, "_compile", lambda m: _Uncompiled(m, fail=err))
    with pytest.raises(bench.SkipFigure, match="torch.compile failed on this machine: RuntimeError: InductorError: "
                                               "no working C\\+\\+ compiler$"):
        bench.fig_compile_speedup_vgg13(_toy_cifar_bench())
    with pytest.raises(bench.SkipFigure, match="full mode only"):
        bench.fig_compile_speedup_vgg13(_toy_cifar_bench(bench.QUICK))


# ------------------------------------------------------ time to 85% CIFAR ----
def test_time_to_85_skips_without_a_trained_teacher(monkeypatch):
    from kd_utils import teacher as T
    monkeypatch.setattr(T, "candidate_paths", lambda *a, **k: [])
    b = _toy_cifar_bench(dataclasses.replace(bench.TINY, time_to_85=True))
    with pytest.raises(bench.SkipFigure, match="no trained CIFAR-10 teacher available"):
        bench.fig_time_to_85_cifar_vgg8(b)


def test_time_to_85_figure_is_consistent_on_toy_data(one_thread, monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))  # the teacher outputs go to the cache, here a temporary one
    toy_teacher = bench.core._model("vgg13", torch.device("cpu"), width=0.125)
    monkeypatch.setattr(accuracy, "_cifar_teacher", lambda: toy_teacher)
    # 2 epochs of 4 steps: OneCycleLR needs a warm-up phase of at least one step
    b = _toy_cifar_bench(dataclasses.replace(bench.TINY, time_to_85=True, t85_epochs=2), batches=4)
    fig = bench.fig_time_to_85_cifar_vgg8(b)
    d = fig.detail
    assert fig.name == "time_to_85_cifar_vgg8" and fig.target is None and fig.met is None
    assert d["teacher"]["outputs_built_now"] and d["teacher"]["outputs_epochs"] == 2
    assert d["teacher"]["outputs_bytes"] == 2 * 1024 * 10 * 2 and list(tmp_path.glob("*.pt"))
    for arm in ("kd", "scratch"):
        assert 1 <= len(d[arm]["curve"]) <= 2 and 0 <= d[arm]["best_test_acc"] <= 1
    if d["kd"]["reached"]:
        assert fig.value == d["kd"]["seconds"] and fig.unit == "s"
    else:
        assert fig.value == d["kd"]["best_test_acc"] and fig.unit == "test acc" and "did not reach" in d["explanation"]
    if d["kd"]["reached"] and d["scratch"]["reached"]:
        assert d["ratio"] == pytest.approx(d["kd"]["seconds"] / d["scratch"]["seconds"])
    else:
        assert d["ratio"] is None
