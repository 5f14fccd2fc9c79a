"""Sweep throughput: runs spread over worker processes (``kd_utils.sweep``) against the same runs in sequence.

A sweep of 4 short training runs (the CIFAR-10 recipe, one epoch of VGG-8 on the first images of the
training set, seeds 0-3, nothing reused: every timed sweep writes to a fresh runs folder) through
:func:`kd_utils.sweep.run_sweep`, once on a :class:`~kd_utils.sweep.ProcessPool` of 2 workers with one
torch thread each, once in this process with two threads, timed interleaved. The pool is started
and warmed (imports, one run per worker) before the timing: a real sweep pays that once for tens of
runs; its cost is reported beside (``pool_start_s``, and the ratio including it once).

What it measures honestly: on a 2-core machine both arms have the same two cores, so the gain is only
what one thread per run loses less to threading overhead than two threads on one run, minus what
the pool adds (staging the data once, starting each task, the lock and record files). The point of
the sweep is scale-out -- N workers on N machines -- which one machine cannot show.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

import torch

from kd_utils.config import TrainConfig
from .core import SEED, Bench, Figure, _med, _raw, _subset

RUNS = 4
WORKERS = 2
# mode -> (training images, test images, VGG-8 width): each run is a few seconds on one CPU thread
SIZES = {"tiny": (256, 128, 0.125), "quick": (1_280, 500, 0.25), "full": (2_560, 1_000, 0.25)}


def _specs(data, cfg: TrainConfig, width: float, seed0: int = 0) -> list:
    from kd_utils.sweep import experiment
    return [experiment(f"throughput-s{seed0 + i}", {"name": "vgg8", "width": width}, data, cfg.replace(seed=seed0 + i))
            for i in range(RUNS)]


def fig_sweep_throughput(b: Bench) -> Figure:
    """4 runs in sequence in one process with 2 threads / the same 4 runs as a sweep on a 2-worker pool with
    1 thread each (a throughput ratio: above 1 the pool finishes the sweep sooner)."""
    from kd_utils.sweep import ProcessPool, available_cores, run_sweep
    n_train, n_test, width = SIZES.get(b.sizes.mode, SIZES["full"])
    data = _subset(b.data("cifar10"), n_train, n_test=n_test, drop_val=True)
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="constant", augment="crop_flip", seed=SEED, device=str(b.device),
                      precision=b.precision)
    specs = _specs(data, cfg, width)
    per_run: dict[str, list[float]] = {"sequence": [], "pool": []}
    scratch = tempfile.mkdtemp(prefix="sweep-throughput-")
    pool = ProcessPool(WORKERS, threads=1)

    def sweep(executor, arm: str, threads: int | None = None, specs=specs) -> None:
        root = tempfile.mkdtemp(dir=scratch)
        res = run_sweep(specs, executor, profile="smoke", root=root, mode="reuse", threads=threads, progress=False)
        assert res.trained == len(specs), "every timed run must train (a fresh runs folder)"
        per_run.setdefault(arm, []).extend(float(r.metrics["train_time_s"]) for r in res)
        shutil.rmtree(root, ignore_errors=True)

    try:
        b.log(f"sweep_throughput: {RUNS} runs of vgg8 w{width:g}, {n_train} images, {WORKERS} workers x 1 thread "
              f"vs 1 process x {WORKERS} threads ({available_cores()} cores available)")
        t0 = time.perf_counter()
        pool.warm()
        sweep(pool, "warm-up", specs=_specs(data, cfg, width, seed0=100)[:WORKERS])  # each worker runs once
        pool_start_s = time.perf_counter() - t0
        sweep(None, "warm-up", threads=WORKERS, specs=_specs(data, cfg, width, seed0=200)[:1])
        per_run.pop("warm-up", None)
        t = b.times({"sequence": lambda: sweep(None, "sequence", threads=WORKERS), "pool": lambda: sweep(pool, "pool")},
                    warmup=0)
    finally:
        pool.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: _med(v) for k, v in t.items()}
    detail: dict[str, Any] = {
        "runs": RUNS, "workers": WORKERS, "threads_per_worker": 1, "sequence_threads": WORKERS,
        "cores_available": available_cores(), "model": f"vgg8 width {width:g}", "images": n_train,
        "test_images": n_test, "epochs": 1, "batch_size": cfg.batch_size, "augment": cfg.augment,
        "precision": b.precision, "device": str(b.device),
        "sequence_s": med["sequence"], "pool_s": med["pool"], "pool_start_s": pool_start_s,
        "ratio_including_pool_start": med["sequence"] / (med["pool"] + pool_start_s),
        "run_train_s_mean": {k: sum(v) / len(v) for k, v in per_run.items() if v},
        "times_s": {k: _raw(v) for k, v in t.items()},
        "note": "both arms share the same cores: on 2 cores the gain is small by construction; the sweep's point "
                "is scale-out to more workers and machines",
        "torch_threads_here": torch.get_num_threads(),
    }
    return Figure("sweep_throughput", med["sequence"] / med["pool"], "x", None, True,
                  f"the same {RUNS} runs in sequence in one process with {WORKERS} threads", detail)
