"""Sweeps on many processes: each specification trained once, the same numbers as in-process, dead
workers and stale locks survived, bad input refused before anything trains (kd_utils.sweep, kd_utils.locks)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from kd_utils import locks, runs
from kd_utils import sweep as S
from kd_utils.config import TrainConfig
from kd_utils.experiments import run_experiment, spec_key
from kd_utils.sweep import ProcessPool, SpecError, experiment, run_sweep

from conftest import make_bundle

STUDENT = {"name": "mnist_mlp"}
TEACHER = {"model": {"name": "mnist_mlp"}, "seed": 1}  # an untrained, seeded teacher: any fixed logits will do
PROFILE = "smoke"


def _cfg(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "device": "cpu", "precision": "fp32", **kw})


@pytest.fixture(scope="module")
def data():
    return make_bundle(n_train=512, n_val=64, n_test=256)


def _specs(data, epochs=1):
    """Four specifications, one a duplicate of another (first, so two workers ask for it at once)."""
    kd = experiment("kd-s0", STUDENT, data, _cfg(epochs=epochs), method="kd", teacher=TEACHER, temperature=4.0)
    return [kd, dataclasses.replace(kd), experiment("ce-s0", STUDENT, data, _cfg(epochs=epochs)),
            experiment("ce-s1", STUDENT, data, _cfg(epochs=epochs, seed=1))]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for k in (runs.MODE_ENV, runs.NOTEBOOK_ENV, runs.REFERENCE_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(runs.SESSION_ENV, "sweep-tests")
    monkeypatch.setenv(locks.POLL_ENV, "0.05")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same numbers bit for bit
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The specifications run in this process, one after the other (the default executor)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inprocess")
    res = run_sweep(_specs(data), profile=PROFILE, root=root, progress=False)
    return {r.name: r for r in res}, res


@pytest.fixture(scope="module")
def pool():
    p = ProcessPool(2, threads=1)  # one thread per run, as the in-process reference
    yield p
    p.shutdown()


def _store(root: Path) -> Path:
    return runs.stores(PROFILE, root)["training"]


def _check_complete_records(root: Path) -> list[dict]:
    """Every run folder holds a complete record whose key is its specification's; nothing is left locked."""
    store = _store(root)
    records = []
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("_")):
        rec = json.loads((folder / "run.json").read_text())  # a missing or half-written record fails here
        assert rec["key"] == spec_key(rec["spec"]) and folder.name == runs.folder_name(rec["name"], rec["key"])
        assert runs.read_logits(folder)["test"].shape[0] == 256 and (folder / "history.csv").is_file()
        records.append(rec)
    assert not list((store / "_locks").glob("*.lock")) and not (store / "_sweep").exists()
    return records


def _same_numbers(got, want):
    for g, w in zip(got, want):
        assert g.name == w.name and g.key == w.key
        for k in ("test_accuracy", "test_loss", "test_errors", "ece", "best_val_acc"):
            assert g.metrics[k] == w.metrics[k], (g.name, k)
        assert torch.equal(g.logits("test"), w.logits("test"))


def _check_trained_once(res, records):
    assert len(records) == 3  # three distinct runs stored, each once
    by_name = {}
    for r, o in zip(res, res.outcomes):
        by_name.setdefault(r.name, []).append(o.run.reused)
    assert sorted(by_name["kd-s0"]) == [False, True] and by_name["ce-s0"] == by_name["ce-s1"] == [False]
    assert res.trained == 3


# ------------------------------------------------------------------ executors ----
def test_in_process_default_dedupes_and_runs_like_run_experiment(reference, data, tmp_path):
    ref, res = reference
    assert res.duplicate_of == [None, 0, None, None] and res.trained == 3 and res[1] is res[0]
    assert res["ce-s1"].spec["config"]["seed"] == 1
    table = res.table()
    assert list(table["outcome"]) == ["trained", "duplicate of 0", "trained", "trained"]
    assert {"test_accuracy", "agreement", "worker", "threads", "key"} <= set(table.columns)
    # exactly what run_experiment gives for the same specification
    direct = run_experiment("ce-s1", STUDENT, data, _cfg(seed=1), profile=PROFILE, root=tmp_path, progress=False)
    _same_numbers([direct], [ref["ce-s1"]])


def test_process_pool_trains_each_specification_once_with_the_in_process_numbers(pool, reference, data, tmp_path):
    ref, ref_res = reference
    # dedupe=False: both copies of kd-s0 go to the two workers at once; the run lock makes one wait and reuse
    res = run_sweep(_specs(data), pool, profile=PROFILE, root=tmp_path, dedupe=False, progress=False)
    _check_trained_once(res, _check_complete_records(tmp_path))
    kd = [o for r, o in zip(res, res.outcomes) if r.name == "kd-s0"]
    assert {o.pid for o in kd} <= {o.pid for o in res.outcomes} and all(o.threads == 1 for o in res.outcomes)
    _same_numbers(res, list(ref_res))
    assert res[0].model is not None  # weights are read from the shared folder on demand


def test_dask_local_cluster_sweep_trains_once_with_the_in_process_numbers(reference, data, tmp_path):
    pytest.importorskip("distributed")
    ref, ref_res = reference
    client = S.dask_local(2, threads_per_worker=1)
    try:
        assert S._default_threads(client, None) == {"127.0.0.1": 2}  # Dask threads per host: cores // 2 a run
        res = run_sweep(_specs(data), client, profile=PROFILE, root=tmp_path, dedupe=False, threads=1,
                        progress=False)
    finally:
        client.close()
        client.cluster.close()
    _check_trained_once(res, _check_complete_records(tmp_path))
    assert len({o.pid for o in res.outcomes}) >= 1 and all(o.threads == 1 for o in res.outcomes)
    _same_numbers(res, list(ref_res))


def test_a_worker_killed_mid_run_is_replaced_and_leaves_no_partial_record(pool, data, tmp_path):
    specs = [experiment(f"long-s{s}", STUDENT, data, _cfg(epochs=4, seed=s)) for s in range(3)]
    lock_dir = _store(tmp_path) / "_locks"
    killed = []

    def kill_first_owner():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for lock in lock_dir.glob("*.lock") if lock_dir.is_dir() else []:
                owner = locks.read_owner(lock)
                if owner and owner.get("pid") not in (None, os.getpid()):
                    os.kill(owner["pid"], signal.SIGKILL)
                    killed.append((lock.name, owner["pid"]))
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_owner, daemon=True)
    killer.start()
    restarts = pool.restarts
    res = run_sweep(specs, pool, profile=PROFILE, root=tmp_path, progress=False)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert pool.restarts > restarts  # the broken pool was replaced
    records = _check_complete_records(tmp_path)
    assert sorted(r["name"] for r in records) == ["long-s0", "long-s1", "long-s2"] and res.trained == 3
    lost = next(o for r, o in zip(res, res.outcomes) if killed[0][0].startswith(r.name + "-"))
    assert lost.attempts >= 2 and lost.pid != killed[0][1] and lost.took_over  # its dead owner's lock was taken over


def test_submitit_and_ray_style_executors(data, tmp_path, monkeypatch):
    """Executors whose futures are not concurrent.futures ones (submitit's jobs), and the Ray adapter: the
    remote path (staged data and teacher, the caller's environment, records read back) run in-process."""
    submitit = pytest.importorskip("submitit")
    ex = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="debug")
    specs = _specs(data)[:2]
    res = run_sweep(specs, ex, profile=PROFILE, root=tmp_path / "a", progress=False)
    assert res.trained == 1 and res.duplicate_of == [None, 0] and res[0]._model is None
    _check_complete_records(tmp_path / "a")

    import concurrent.futures as cf
    import types

    class Ref:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def future(self):
            f = cf.Future()
            f.set_result(self.fn(*self.args))
            return f

    fake = types.SimpleNamespace(is_initialized=lambda: True,
                                 remote=lambda num_cpus: (lambda fn: types.SimpleNamespace(
                                     remote=lambda *a: Ref(fn, a))))
    monkeypatch.setitem(sys.modules, "ray", fake)
    res = run_sweep(specs, "ray", profile=PROFILE, root=tmp_path / "b", progress=False)
    assert res.trained == 1 and res[0].accuracy == res[1].accuracy


def test_threads_per_worker_follow_the_pool_size(monkeypatch):
    import concurrent.futures as cf
    monkeypatch.setattr(S, "available_cores", lambda: 8)
    assert ProcessPool(4).threads == 2 and ProcessPool(16).threads == 1 and ProcessPool(2, threads=3).threads == 3
    with cf.ProcessPoolExecutor(2) as ex:
        assert S._default_threads(ex, None) == 4 and S._default_threads(ex, 3) == 3
    assert S._default_threads(S.InProcessExecutor(), None) is None
    assert S._task_threads(5) == 5 and S._task_threads({"h": 2}) is None  # outside a Dask worker: unchanged


# ---------------------------------------------------------------------- locks ----
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_lock(path: Path, **owner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path.write_text(json.dumps({"host": locks.HOST, "boot_id": locks.BOOT_ID, "pid": os.getpid(), "token": "x",
                                "created": now, "heartbeat": now, **owner}))


def test_a_lock_whose_owner_died_on_this_host_is_taken_over_at_once(tmp_path):
    path = tmp_path / "run.lock"
    _fake_lock(path, pid=_dead_pid())
    t0 = time.monotonic()
    with locks.FileLock(path, stale_after=60) as lock:
        assert lock.taken_over and lock.held and locks.read_owner(path)["pid"] == os.getpid()
    assert time.monotonic() - t0 < 5 and not path.exists()


def test_a_lock_from_another_host_is_taken_over_only_when_its_heartbeat_stops(tmp_path):
    path = tmp_path / "run.lock"
    _fake_lock(path, host="elsewhere", pid=1)
    stop = threading.Event()

    def beat():  # a live owner on another machine rewrites its heartbeat
        while not stop.wait(0.05):
            _fake_lock(path, host="elsewhere", pid=1, heartbeat=time.time())

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    with pytest.raises(TimeoutError, match="elsewhere pid 1"):
        locks.FileLock(path, stale_after=0.5, poll=0.05, timeout=1.5).acquire()
    stop.set()
    t.join()
    t0 = time.monotonic()
    with locks.FileLock(path, stale_after=0.5, poll=0.05) as lock:  # silent now: stale after 0.5 s unchanged
        assert lock.taken_over and lock.waited
    assert 0.4 < time.monotonic() - t0 < 10


def test_a_live_lock_is_waited_for_and_its_heartbeat_keeps_it_alive(tmp_path):
    path = tmp_path / "run.lock"
    first = locks.FileLock(path, heartbeat=0.05).acquire()
    beats = [locks.read_owner(path)["heartbeat"]]
    got = {}

    def second():
        with locks.FileLock(path, stale_after=0.3, poll=0.02) as lock:  # same host, live pid: never stale
            got.update(waited=lock.waited, taken_over=lock.taken_over)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.6)
    beats.append(locks.read_owner(path)["heartbeat"])
    assert t.is_alive() and beats[1] > beats[0]
    first.release()
    t.join(timeout=10)
    assert got == {"waited": True, "taken_over": False} and not path.exists()


def test_run_experiment_takes_over_a_dead_workers_lock_and_a_waiter_reuses_the_record(data, tmp_path):
    cfg = _cfg(seed=3)
    lock_dir = _store(tmp_path) / "_locks"
    # a worker that died mid-run: its lock and half of its files, no record
    probe = run_experiment("probe", STUDENT, data, cfg, profile=PROFILE, root=tmp_path / "probe", progress=False)
    folder = _store(tmp_path) / runs.folder_name("dead", probe.key)
    folder.mkdir(parents=True)
    (folder / "history.csv").write_text("half")
    _fake_lock(lock_dir / f"{folder.name}.lock", pid=_dead_pid())
    run = run_experiment("dead", STUDENT, data, cfg, profile=PROFILE, root=tmp_path, progress=False)
    assert not run.reused and run.path == folder and run.accuracy == probe.accuracy
    assert not list(lock_dir.glob("*.lock"))
    # a process waiting on a live lock reuses what the owner stored meanwhile
    holder = locks.FileLock(lock_dir / f"{runs.folder_name('late', probe.key)}.lock").acquire()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "run", run_experiment("late", STUDENT, data, cfg, profile=PROFILE, root=tmp_path, progress=False)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # waiting, not training
    src = _store(tmp_path / "probe") / runs.folder_name("probe", probe.key)
    dst = _store(tmp_path) / runs.folder_name("late", probe.key)
    import shutil
    shutil.copytree(src, dst)
    rec = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**rec, "name": "late"}))
    holder.release()
    t.join(timeout=60)
    assert out["run"].reused and out["run"].path == dst


def test_the_plan_cache_is_built_once_by_concurrent_callers(data, tmp_path, monkeypatch):
    from kd_utils import plans
    from kd_utils.config import get_profile
    teacher = S._resolve_teacher(TEACHER, get_profile(PROFILE), data, {})
    calls = []
    real = plans._compute

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(plans, "_compute", slow)
    plan = plans.AugmentationPlan(augment="jitter", batch_size=128, seed=0, epochs=1)
    outs = [None, None]

    def get(i):
        outs[i] = plans.teacher_outputs(teacher, data, plan, cache_dir=tmp_path, device="cpu", precision="fp32",
                                        progress=False)

    threads = [threading.Thread(target=get, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(calls) == 1 and sorted(o.built for o in outs) == [False, True]
    assert torch.equal(outs[0].logits, outs[1].logits) and not list(tmp_path.glob("*.lock"))


# ------------------------------------------------------------------ bad input ----
def test_bad_specifications_fail_before_anything_trains_naming_each(data, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_execute", lambda task: pytest.fail("nothing may run"))
    good = _specs(data)[2]
    bad = [good, experiment("typo", STUDENT, data, _cfg(), method="kdd", teacher=TEACHER),
           experiment("net", {"name": "vgg99"}, data, _cfg()),
           {"name": "cfg", "student": STUDENT, "data": {"dataset": "mnist"}, "config": {"epochz": 1}},
           experiment("args", STUDENT, data, _cfg(), method="kd", teacher=TEACHER, temprature=4.0),
           experiment("alone", STUDENT, data, _cfg(), method="kd"),
           experiment("uncached", STUDENT, {"dataset": "mnist", "root": str(tmp_path / "nodata")}, _cfg())]
    with pytest.raises(SpecError) as e:
        run_sweep(bad, "processes:2", profile=PROFILE, root=tmp_path)
    msg = str(e.value)
    assert "6 of 7 specifications are invalid (nothing was run)" in msg
    assert "specification 6 ('uncached'): data set 'mnist' is not cached at" in msg and "fetch-data mnist" in msg
    assert "specification 1 ('typo'): unknown method 'kdd'; allowed: ce, kd" in msg
    assert "specification 2 ('net'): unknown model 'vgg99'; allowed:" in msg and "vgg8" in msg
    assert "specification 3 ('cfg'): unknown TrainConfig field(s) ['epochz']" in msg
    assert "specification 4 ('args'): method 'kd':" in msg and "'temprature'" in msg
    assert "its arguments: temperature, alpha, standardize" in msg
    assert "specification 5 ('alone'): method 'kd' needs a teacher" in msg
    assert "specification 0" not in msg and not (tmp_path / "models").exists()
    with pytest.raises(TypeError, match="executor list has no submit"):
        run_sweep([good], [], profile=PROFILE, root=tmp_path)
    with pytest.raises(ValueError, match="unknown executor 'kubernetes'; allowed: None or \"inprocess\""):
        run_sweep([good], "kubernetes", profile=PROFILE, root=tmp_path)
    with pytest.raises(ValueError, match="number of workers after ':'"):
        run_sweep([good], "processes:many", profile=PROFILE, root=tmp_path)
    assert not (tmp_path / "models").exists()


def test_sweep_files_expand_defaults_and_seeds_and_report_bad_entries(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("profile: smoke\ndefaults:\n  student: {name: mnist_mlp}\n  data: {dataset: mnist}\n"
                 "  config: {epochs: 1, device: cpu}\nruns:\n  - {name: ce, seeds: [0, 1]}\n"
                 "  - {name: kd, method: kd, teacher: {kind: hinton}, method_kwargs: {temperature: 4},"
                 " config: {seed: 2}}\n")
    specs, options = S.load_sweep_file(f)
    assert options == {"profile": "smoke"} and [s.name for s in specs] == ["ce-s0", "ce-s1", "kd"]
    assert specs[1].cfg == {"epochs": 1, "device": "cpu", "seed": 1} and specs[2].cfg["seed"] == 2
    assert specs[2].method_kwargs == {"temperature": 4} and specs[2].teacher == {"kind": "hinton"}
    j = tmp_path / "sweep.json"
    j.write_text(json.dumps([{"name": "a", "student": STUDENT, "data": {"dataset": "mnist"}, "config": {},
                              "lr": 0.1}, {"name": "b"}]))
    with pytest.raises(SpecError) as e:
        S.load_sweep_file(j)
    assert "specification 0 ('a'): unknown field(s) ['lr']" in str(e.value)
    assert "specification 1 ('b'): missing ['student', 'data', 'config']" in str(e.value)
    with pytest.raises(SpecError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{oops")
        S.load_sweep_file(tmp_path / "x.json")


needs_mnist = pytest.mark.skipif(not __import__("kd_utils.data", fromlist=["cache_path"]).cache_path("mnist").exists(),
                                 reason="MNIST cache not built (make data)")


@needs_mnist
def test_cli_runs_a_sweep_file_and_prints_the_table(tmp_path, capsys):
    from kd_utils.cli import main
    f = tmp_path / "sweep.json"
    f.write_text(json.dumps({"profile": "smoke", "defaults": {
        "student": STUDENT, "data": {"dataset": "mnist", "train_subset": 512, "test_subset": 256},
        "config": {"epochs": 1, "device": "cpu", "precision": "fp32"}},
        "runs": [{"name": "ce", "seeds": [0]}, {"name": "ce", "seeds": [0]},
                 {"name": "kd", "method": "kd", "teacher": TEACHER, "method_kwargs": {"temperature": 4.0}}]}))
    assert main(["sweep", str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ce-s0" in out and "duplicate of 0" in out and "kd" in out and "test_accuracy" in out
    assert "3 specifications, 2 distinct runs: 2 trained, 0 reused, 1 duplicates" in out
    assert main(["sweep", str(f), "--out", str(tmp_path / "out"), "--quiet", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| ce-s0 | ce |" in out and "2 distinct runs: 0 trained, 2 reused" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "student": STUDENT, "data": {"dataset": "mnist"}, "config": {},
                                "method": "nope"}]))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "specification 0 ('x'): unknown method 'nope'" in err and "Traceback" not in err


# ------------------------------------------------------------------ benchmark ----
def test_sweep_throughput_figure_in_tiny_mode(pool, monkeypatch):
    import benchmarks as bench
    from benchmarks import sweep as fig_mod
    assert bench.FIGURES["sweep_throughput"] is fig_mod.fig_sweep_throughput

    class Shared(ProcessPool):  # this module's warm pool (2 workers, 1 thread): no second start in the tests
        def __new__(cls, workers=None, threads=None):
            assert (workers, threads) == (2, 1)
            return pool

    monkeypatch.setattr(S, "ProcessPool", Shared)
    monkeypatch.setattr(pool, "shutdown", lambda *a, **k: None)
    data = make_bundle(n_train=256, n_val=0, n_test=128, shape=(3, 32, 32))
    b = bench.Bench(dataclasses.replace(bench.TINY, repeats=1), device="cpu", log=lambda m: None,
                    preloaded={"cifar10": data}, precision="fp32")
    fig = fig_mod.fig_sweep_throughput(b)
    d = fig.detail
    assert fig.name == "sweep_throughput" and fig.unit == "x" and fig.higher_is_better and fig.target is None
    assert fig.value == pytest.approx(d["sequence_s"] / d["pool_s"]) and fig.value > 0
    assert d["ratio_including_pool_start"] == pytest.approx(d["sequence_s"] / (d["pool_s"] + d["pool_start_s"]))
    assert d["runs"] == 4 and d["workers"] == 2 and d["threads_per_worker"] == 1 and d["sequence_threads"] == 2
    assert set(d["times_s"]) == {"sequence", "pool"} and set(d["run_train_s_mean"]) == {"sequence", "pool"}


def test_a_teacher_free_control_needs_no_teacher(data):
    import kd_utils.methods  # noqa: F401 (registers label_smoothing)
    S.validate([experiment("ls", STUDENT, data, _cfg(), method="label_smoothing", epsilon=0.1)], profile=PROFILE)
    with pytest.raises(SpecError, match="method 'pseudo_label' needs a teacher"):
        S.validate([experiment("pl", STUDENT, data, _cfg(), method="pseudo_label")], profile=PROFILE)


def test_restore_best_reaches_the_run_and_a_bad_value_is_named(data, tmp_path):
    """A sweep entry's restore_best=False keeps the last epoch, exactly as run_experiment does, and is
    not a duplicate of the same entry with the default."""
    cfg = _cfg(epochs=2)
    last, best = run_sweep([experiment("ce", STUDENT, data, cfg, restore_best=False),
                            experiment("ce", STUDENT, data, cfg)], profile=PROFILE, root=tmp_path, progress=False)
    assert last.spec["restore_best"] is False and "restore_best" not in best.spec and last.key != best.key
    direct = run_experiment("ce", STUDENT, data, cfg, profile=PROFILE, root=tmp_path / "direct", progress=False,
                            restore_best=False)
    assert direct.key == last.key and torch.equal(direct.logits("test"), last.logits("test"))
    with pytest.raises(SpecError, match="restore_best must be true or false, got 'no'"):
        S.validate([experiment("x", STUDENT, data, cfg, restore_best="no")], profile=PROFILE)
    specs, _ = S.load_sweep_file(_write(tmp_path / "s.json", [{"name": "a", "student": STUDENT, "data": {"dataset": "mnist"},
                                                                "config": {}, "restore_best": False}]))
    assert specs[0].restore_best is False


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_run_groups_regroups_one_run_each_call_and_adds_teacher_metrics(data, tmp_path):
    """Groups of seed specifications go through one run_each call and come back by group, in order; the
    teacher-free runs get agreement and KL with the teacher passed, computed here from fresh logits."""
    from kd_utils import build_model, metrics
    torch.manual_seed(5)
    teacher = build_model("mnist_mlp").eval()
    groups = {"scratch": S.seed_specs("ce", STUDENT, data, _cfg(), [0, 1]),
              "kd": S.seed_specs("kd", STUDENT, data, _cfg(), [0], method="kd", teacher=teacher, temperature=4.0)}
    assert [s.name for s in groups["scratch"]] == ["ce-s0", "ce-s1"] and groups["scratch"][1].cfg.seed == 1
    out = S.run_groups(groups, None, teacher=teacher, profile=PROFILE, root=tmp_path, progress=False)
    assert {g: [r.name for r in rs] for g, rs in out.items()} == {"scratch": ["ce-s0", "ce-s1"], "kd": ["kd-s0"]}
    with torch.no_grad():
        t = teacher(data.normalize(data.x_test))
    for run in out["scratch"]:
        assert run.metrics["agreement"] == pytest.approx(metrics.agreement(t, run.logits("test")), abs=1e-6)
        assert run.metrics["kl"] == pytest.approx(metrics.kl_divergence(t, run.logits("test")), rel=1e-3, abs=1e-6)
    assert run_experiment("ce-s1", STUDENT, data, _cfg(seed=1), profile=PROFILE, root=tmp_path,
                          progress=False).key == out["scratch"][1].key  # the same run as run_experiment's
    with pytest.raises(ValueError, match=r"group\(s\) \['empty'\] hold no specification"):
        S.run_groups({"empty": []}, None, profile=PROFILE, root=tmp_path)
    with pytest.raises(ValueError, match="seeds must be a non-empty sequence of whole numbers, got 3"):
        S.seed_specs("ce", STUDENT, data, _cfg(), 3)


def test_a_stored_teacher_run_is_a_sweep_teacher(data, tmp_path):
    """A teacher that is a stored Run is validated (its architecture rebuilt from its specification) and
    keys the sweep's runs as run_experiment keys them."""
    teacher = run_experiment("t-s0", STUDENT, data, _cfg(), profile=PROFILE, root=tmp_path, progress=False)
    spec = experiment("kd-s0", STUDENT, data, _cfg(), method="kd", teacher=teacher, temperature=4.0)
    (swept,) = run_sweep([spec, dataclasses.replace(spec)], profile=PROFILE, root=tmp_path, progress=False)[:1]
    direct = run_experiment("kd-s0", STUDENT, data, _cfg(), method="kd", teacher=teacher.model, temperature=4.0,
                            profile=PROFILE, root=tmp_path, progress=False)
    assert direct.reused and direct.key == swept.key
    with pytest.raises(SpecError, match="its arguments"):  # a misspelt argument fails before anything trains
        run_sweep([experiment("kd-s1", STUDENT, data, _cfg(seed=1), method="kd", teacher=teacher, temperatur=4.0)],
                  profile=PROFILE, root=tmp_path)
