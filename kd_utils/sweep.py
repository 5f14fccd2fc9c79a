"""Sweeps: many run specifications through any executor, each run trained once.

A run is fully described by its specification and stored under its key (:mod:`kd_utils.runs`), so a
sweep can be handed to an existing distributed engine instead of a loop in a notebook::

    from kd_utils.sweep import experiment, run_sweep
    specs = [experiment(f"kd-s{s}", STUDENT, data, cfg.replace(seed=s), method="kd", teacher=teacher,
                        temperature=4.0) for s in profile.seeds]
    results = run_sweep(specs, executor=EXECUTOR, profile=profile)   # EXECUTOR = None: in this process
    results["kd-s0"].accuracy, results.table()

``experiment`` takes exactly :func:`~kd_utils.experiments.run_experiment`'s arguments and returns a
:class:`RunSpec`; ``run_sweep`` returns the :class:`~kd_utils.experiments.Run` of every specification, in
order, the same as calling ``run_experiment`` on each (the same keys, records and numbers).

``executor``: ``None`` (this process), an object with ``submit(fn, *args)`` returning a future -- a
``concurrent.futures`` executor, :class:`ProcessPool`, a ``dask.distributed.Client``, a ``submitit``
executor (SLURM), :class:`RayExecutor` -- or a string: ``"inprocess"``, ``"processes[:N]"``,
``"dask[:N]"`` (a local cluster of N worker processes), ``"dask://HOST:PORT"`` / ``"tcp://HOST:PORT"``
(a running scheduler), ``"slurm[:PARTITION]"``, ``"ray[://HOST:PORT]"``. The engines are optional
extras (``pip install -e .[dask]`` / ``.[slurm]``); this module imports them only when asked to.

Every worker must see the same runs folder (``models/<profile>/runs/``, or ``root``), the data folder
and the teacher-output cache: a shared filesystem. A specification is trained by one worker at a time
(a lock per run, :mod:`kd_utils.locks`); the others wait and reuse its record. A worker that dies
leaves no record (records are written atomically, ``run.json`` last) and its task is submitted again
(``retries``); the lock it left is taken over. Every specification is validated -- model, method and
its arguments, configuration, data, teacher -- before anything is submitted; bad ones fail together,
each named by its index and name with what is allowed. Identical specifications (same name and
specification) are submitted once (``dedupe``).

Threads per worker (``threads=None``): :class:`ProcessPool` and ``"processes:N"``, ``"dask:N"`` give each
of N workers ``cores // N``; a plain ``ProcessPoolExecutor`` the same; on a Dask cluster each task takes
its machine's cores divided by the Dask threads on that machine; SLURM jobs use their
``cpus_per_task``; in-process runs keep the process's setting. An int sets it for every run.

In-memory objects (a :class:`~kd_utils.data.DataBundle`, a teacher module) are written once per sweep
to ``<runs>/_sweep/<id>/`` and loaded by the workers (once per worker process); a data description
``{"dataset": "cifar10"}`` (the profile's subsets unless given) is loaded by each worker from the data
folder, and a teacher description ``{"kind": "cifar"}`` is the profile's stored shared teacher (never
trained by a sweep).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

EXECUTOR_FORMS = ('None or "inprocess"', '"processes[:N]"', '"dask[:N]"', '"dask://HOST:PORT"', '"tcp://HOST:PORT"',
                  '"slurm[:PARTITION]"', '"ray[://HOST:PORT]"', "an object with submit(fn, *args) returning a future")
SPEC_FIELDS = ("name", "student", "data", "config", "method", "teacher", "method_kwargs", "stop_after",
               "keep_weights", "restore_best", "seeds")
DATA_FIELDS = ("dataset", "profile", "val_fraction", "seed", "train_subset", "test_subset", "root")
TEACHER_FORMS = ('{"kind": "cifar" | "hinton"} (the profile\'s stored shared teacher)',
                 '{"path": FILE} (a checkpoint)', '{"model": {"name": ..., ...}, "seed": N} (untrained, seeded)',
                 "an nn.Module", "a stored Run (a teacher a notebook trained; keyed by its recorded weights checksum)")
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
# Exceptions that mean "the worker was lost", not "the run failed": the task is submitted again.
WORKER_LOSS = ("BrokenExecutor", "BrokenProcessPool", "KilledWorker", "CommClosedError", "UncompletedJobError",
               "WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError", "LockLost")


class SweepError(RuntimeError):
    """Some specifications of a sweep failed (the others finished and are stored); ``results`` holds
    the Run of every specification that finished (None for the failed ones)."""

    def __init__(self, message: str, results: list | None = None):
        super().__init__(message)
        self.results = results


class SpecError(ValueError):
    """One or more specifications are invalid; nothing was submitted."""


# =====================================================================================================
# Specifications
# =====================================================================================================
@dataclass
class RunSpec:
    """One :func:`~kd_utils.experiments.run_experiment` call, as data: what a sweep submits.

    ``data``: a :class:`~kd_utils.data.DataBundle` or ``{"dataset": NAME, **get_data kwargs}``;
    ``cfg``: a :class:`~kd_utils.config.TrainConfig`, a dict of its fields, or ``{"recipe": NAME,
    **overrides}`` (the profile's recipe); ``teacher``: None, an ``nn.Module`` or a description
    (:data:`TEACHER_FORMS`)."""
    name: str
    student: dict
    data: Any
    cfg: Any
    method: str = "ce"
    teacher: Any = None
    method_kwargs: dict = field(default_factory=dict)
    stop_after: int | None = None
    keep_weights: bool = False
    restore_best: bool = True  # False: keep the last epoch's weights (run_experiment's restore_best)


def experiment(name: str, student: dict, data, cfg, *, method: str = "ce", teacher=None, stop_after: int | None = None,
               keep_weights: bool = False, restore_best: bool = True, **method_kwargs: Any) -> RunSpec:
    """A :class:`RunSpec` from :func:`~kd_utils.experiments.run_experiment`'s own arguments (less the
    ones the sweep sets for all runs: ``profile``, ``mode``, ``progress``, ``root``)."""
    return RunSpec(name, student, data, cfg, method, teacher, dict(method_kwargs), stop_after, keep_weights,
                   restore_best)


def _merge(defaults: dict, entry: dict) -> dict:
    """A sweep-file entry over its defaults; ``config`` and ``method_kwargs`` merge one level deep."""
    out = {**defaults, **entry}
    for k in ("config", "method_kwargs"):
        if isinstance(defaults.get(k), dict) and isinstance(entry.get(k), dict):
            out[k] = {**defaults[k], **entry[k]}
    return out


def _from_dict(entry, defaults: dict) -> list[RunSpec]:
    """The RunSpec(s) of one sweep-file entry; ValueError says what is wrong and what is allowed."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected a mapping of {', '.join(SPEC_FIELDS)}, got {type(entry).__name__}")
    e = _merge(defaults, entry)
    bad = sorted(set(e) - set(SPEC_FIELDS))
    missing = [k for k in ("name", "student", "data", "config") if k not in e]
    if bad or missing:
        raise ValueError("; ".join(([f"unknown field(s) {bad}"] if bad else []) + ([f"missing {missing}"] if missing
                                                                                   else []))
                         + f" (allowed: {', '.join(SPEC_FIELDS)})")
    seeds = e.pop("seeds", None)
    kw = {k: e[k] for k in ("method", "teacher", "stop_after", "keep_weights", "restore_best") if k in e}
    mk = e.get("method_kwargs") or {}
    if not isinstance(mk, dict):
        raise ValueError(f"method_kwargs must be a mapping, got {type(mk).__name__}")
    if seeds is None:
        return [RunSpec(e["name"], e["student"], e["data"], e["config"], method_kwargs=dict(mk), **kw)]
    if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a list of integers >= 0, got {seeds!r}")
    out = []
    for s in seeds:
        cfg = e["config"]
        cfg = {**cfg, "seed": int(s)} if isinstance(cfg, dict) else cfg.replace(seed=int(s))
        out.append(RunSpec(f"{e['name']}-s{s}", e["student"], e["data"], cfg, method_kwargs=dict(mk), **kw))
    return out


def specs_from_dicts(entries: Sequence[dict], defaults: dict | None = None) -> list[RunSpec]:
    """RunSpecs from sweep-file entries (see :func:`load_sweep_file`); an entry with ``seeds: [0, 1]``
    becomes one run per seed named ``<name>-s<seed>`` with ``config.seed`` set (as ``run_seeds``)."""
    if not isinstance(entries, (list, tuple)):
        raise SpecError(f"a sweep is a list of specifications, got {type(entries).__name__}")
    defaults = dict(defaults or {})
    bad = sorted(set(defaults) - set(SPEC_FIELDS))
    if bad:
        raise SpecError(f"sweep defaults: unknown field(s) {bad}; allowed: {', '.join(SPEC_FIELDS)}")
    out, problems = [], []
    for i, entry in enumerate(entries):
        try:
            out.extend(_from_dict(entry, defaults))
        except ValueError as e:
            problems.append(f"{_label(i, entry)}: {e}")
    if problems:
        raise SpecError(f"{len(problems)} of {len(entries)} sweep entries are invalid (nothing was run):\n  "
                        + "\n  ".join(problems))
    return out


def load_sweep_file(path: str | os.PathLike) -> tuple[list[RunSpec], dict]:
    """A sweep file (JSON, or YAML with ``.yaml``/``.yml``): either a list of specifications or a
    mapping ``{"profile": ..., "defaults": {...}, "runs": [...]}``; each specification holds
    ``name``, ``student``, ``data``, ``config`` and optionally ``method``, ``method_kwargs``,
    ``teacher``, ``stop_after``, ``keep_weights``, ``restore_best``, ``seeds``. Returns (specs, options: the file's
    ``profile``/``mode`` if any)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise OSError(f"sweep file {path}: {e.strerror or e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError("reading a YAML sweep file needs PyYAML (pip install pyyaml); or write it as JSON") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"sweep file {path} is not valid YAML: {e}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise SpecError(f"sweep file {path} is not valid JSON ({e}); YAML files must end in .yaml or .yml") from None
    options: dict = {}
    if isinstance(doc, dict):
        bad = sorted(set(doc) - {"profile", "mode", "defaults", "runs"})
        if bad or "runs" not in doc:
            raise SpecError(f"sweep file {path}: expected a list of specifications or a mapping with 'runs' (and "
                            f"optionally 'defaults', 'profile', 'mode'); got keys {sorted(doc)}")
        options = {k: doc[k] for k in ("profile", "mode") if doc.get(k) is not None}
        return specs_from_dicts(doc["runs"], doc.get("defaults")), options
    return specs_from_dicts(doc), options


# =====================================================================================================
# Executors
# =====================================================================================================
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class InProcessExecutor(cf.Executor):
    """Runs each submitted call at once, in this process (the default executor)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller through the future
            if isinstance(e, KeyboardInterrupt):
                raise
            fut.set_exception(e)
        return fut


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch
    torch.set_num_threads(threads)
    import kd_utils.experiments  # noqa: F401  (paid once per worker, not inside the first run)


class ProcessPool(cf.Executor):
    """A pool of ``workers`` local processes (spawned, so safe with torch's threads) with ``threads``
    torch threads each (default ``cores // workers``). A worker that dies breaks a
    ``ProcessPoolExecutor`` for good; this pool starts a new one on the next ``submit``."""

    def __init__(self, workers: int | None = None, threads: int | None = None):
        cores = available_cores()
        self.workers = int(workers or cores)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.threads = int(threads or max(1, cores // self.workers))
        self.restarts = 0
        self._pool: cf.ProcessPoolExecutor | None = None

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        import multiprocessing as mp
        return cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                      initargs=(self.threads,))

    def submit(self, fn, /, *args, **kwargs):
        from concurrent.futures.process import BrokenProcessPool
        for _ in range(2):
            if self._pool is not None and getattr(self._pool, "_broken", False):
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool, self.restarts = None, self.restarts + 1
            if self._pool is None:
                self._pool = self._new_pool()
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                self._pool._broken = self._pool._broken or "broken"
        raise BrokenProcessPool("could not start a new process pool")

    def warm(self) -> float:
        """Start every worker now (imports included); returns the seconds it took."""
        t0 = time.perf_counter()
        list(cf.wait([self.submit(time.sleep, 0.2) for _ in range(self.workers)]).done)
        return time.perf_counter() - t0

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            self._pool = None

    def __repr__(self) -> str:
        return f"ProcessPool(workers={self.workers}, threads={self.threads})"


def dask_local(workers: int | None = None, threads_per_worker: int = 1, **cluster_kwargs: Any):
    """A ``dask.distributed.Client`` on a new ``LocalCluster`` of ``workers`` processes (default: one per
    core) with ``threads_per_worker`` Dask threads each; ``client.close(); client.cluster.close()`` ends it."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("a Dask executor needs the 'dask' extra: pip install -e .[dask]") from None
    import logging
    import dask
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap threshold:
    # every large tensor is then mmap'd and unmapped again, and a training run here took twice as long.
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}": None}):
        cluster = LocalCluster(n_workers=int(workers or available_cores()), threads_per_worker=threads_per_worker,
                               processes=True, **{"dashboard_address": None, "silence_logs": logging.ERROR,
                                                  **cluster_kwargs})
    return Client(cluster)


def slurm_executor(folder: str | os.PathLike | None = None, cluster: str | None = None, **parameters: Any):
    """A ``submitit.AutoExecutor`` (one SLURM job per run; ``cluster="local"`` runs them as local
    processes), logs under ``folder`` (default ``<output root>/logs/submitit``). ``parameters`` go to
    ``update_parameters`` (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``,
    ``slurm_partition``, ``slurm_account``, ...); defaults: 2 hours, 4 CPUs, name ``kd-sweep``."""
    try:
        import submitit
    except ImportError:
        raise ImportError("a SLURM executor needs the 'slurm' extra (submitit): pip install -e .[slurm]") from None
    if folder is None:
        folder = _output_base() / "logs" / "submitit"
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    ex.update_parameters(**{"timeout_min": 120, "cpus_per_task": 4, "name": "kd-sweep", **parameters})
    return ex


class RayExecutor(cf.Executor):
    """``submit`` for Ray: each call a Ray task with ``num_cpus`` CPUs, its ObjectRef's future returned.
    (Ray offers no ``concurrent.futures`` executor of its own.)"""

    def __init__(self, address: str | None = None, num_cpus: int = 1, **init_kwargs: Any):
        try:
            import ray
        except ImportError:
            raise ImportError("a Ray executor needs ray: pip install 'ray[default]'") from None
        if not ray.is_initialized():
            ray.init(address=address, **init_kwargs)
        self._ray, self.num_cpus, self._remote = ray, num_cpus, {}

    def submit(self, fn, /, *args, **kwargs):
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(num_cpus=self.num_cpus)(fn)
        return self._remote[fn].remote(*args, **kwargs).future()


def make_executor(spec: str | None, workers: int | None = None, threads: int | None = None,
                  **options: Any) -> tuple[Any, Callable[[], None]]:
    """An executor from its text form (:data:`EXECUTOR_FORMS`) and the call that shuts it down.
    ``options``: ``submitit`` parameters for ``"slurm"``."""
    text = "inprocess" if spec is None else str(spec).strip()
    kind, _, arg = text.partition(":")
    if kind in ("tcp", "tls", "ucx") or text.startswith("dask://"):
        try:
            from distributed import Client
        except ImportError:
            raise ImportError("a Dask executor needs the 'dask' extra: pip install -e .[dask]") from None
        client = Client(text.replace("dask://", "tcp://", 1))
        return client, client.close
    n = _count(arg, text) if kind in ("processes", "dask") and arg else workers
    if kind == "inprocess" and not arg:
        return InProcessExecutor(), lambda: None
    if kind == "processes":
        pool = ProcessPool(n, threads)
        return pool, pool.shutdown
    if kind == "dask":
        client = dask_local(n)
        return client, lambda: (client.close(), client.cluster.close())
    if kind == "slurm":
        if threads:
            options.setdefault("cpus_per_task", threads)
        ex = slurm_executor(**({"slurm_partition": arg} if arg else {}), **options)
        return ex, lambda: None
    if kind == "ray":
        ex = RayExecutor(address=text if arg else None, num_cpus=threads or 1)
        return ex, lambda: None
    raise ValueError(f"unknown executor {text!r}; allowed: {', '.join(EXECUTOR_FORMS)}")


def _count(arg: str, text: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"executor {text!r}: the number of workers after ':' must be an integer >= 1")
    return n


def _check_executor(executor) -> None:
    if executor is None or isinstance(executor, str):
        text = "inprocess" if executor is None else executor.strip()
        kind, _, arg = text.partition(":")
        ok = (kind in ("inprocess",) and not arg) or kind in ("processes", "dask", "slurm", "ray", "tcp", "tls", "ucx")
        if not ok:
            raise ValueError(f"unknown executor {text!r}; allowed: {', '.join(EXECUTOR_FORMS)}")
        if kind in ("processes", "dask") and arg and not arg.startswith("//"):
            _count(arg, text)
        return
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor {type(executor).__name__} has no submit(fn, *args) method; allowed: "
                        f"{', '.join(EXECUTOR_FORMS)}")


def _is_dask(executor) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed"


def _in_process(executor) -> bool:
    return isinstance(executor, (InProcessExecutor, cf.ThreadPoolExecutor))


def _submit(executor, fn, task):
    if _is_dask(executor):  # Dask would merge identical calls (pure=True) and keep a failed one's result
        return executor.submit(fn, task, pure=False, key=f"kd-run-{task.name}-{uuid.uuid4().hex[:8]}")
    return executor.submit(fn, task)


def _worker_lost(e: BaseException) -> bool:
    return any(c.__name__ in WORKER_LOSS for c in type(e).__mro__)


# =====================================================================================================
# Tasks: what a worker receives and returns
# =====================================================================================================
@dataclass(frozen=True)
class _Staged:
    path: str
    kind: str  # "data" or "teacher"


@dataclass
class _Task:
    index: int
    name: str
    student: dict
    data: Any                 # DataBundle | _Staged | dict (get_data kwargs)
    cfg: Any                  # TrainConfig
    method: str
    teacher: Any              # nn.Module | _Staged | None
    method_kwargs: dict
    stop_after: int | None
    keep_weights: bool
    profile: str
    mode: str
    root: str | None
    env: dict | None          # None: run in the caller's environment (in-process)
    threads: Any              # None | int | {host: Dask threads on that host}
    remote: bool
    progress: bool = False    # run_experiment's own lines (in-process only)
    restore_best: bool = True


@dataclass
class Outcome:
    """How one distinct run of a sweep was obtained."""
    run: Any
    host: str
    pid: int
    seconds: float
    waited_s: float
    took_over: bool
    threads: int
    attempts: int = 1
    malloc_trim: str | None = None  # the worker's $MALLOC_TRIM_THRESHOLD_ (set by Dask's nannies; slows runs)

    @property
    def status(self) -> str:
        if not self.run.reused:
            return "trained" + (" (took over a dead worker's lock)" if self.took_over else "")
        return "reused after waiting" if self.waited_s > 0 else "reused"


_MEMO: dict[str, Any] = {}  # a worker process's loaded data and teachers (a few, most recent kept)


def _memo(key: str, load: Callable[[], Any]) -> Any:
    if key not in _MEMO:
        if len(_MEMO) >= 4:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = load()
    return _MEMO[key]


def _load_data(data):
    if isinstance(data, _Staged):
        import torch
        return _memo(data.path, lambda: torch.load(data.path, map_location="cpu", weights_only=False))
    if isinstance(data, dict):
        from .data import get_data
        kw = {k: v for k, v in data.items() if k != "dataset"}
        return _memo(json.dumps(data, sort_keys=True), lambda: get_data(data["dataset"], **kw))
    return data


def _load_teacher(teacher):
    if isinstance(teacher, _Staged):
        import torch
        return _memo(teacher.path, lambda: torch.load(teacher.path, map_location="cpu", weights_only=False).eval())
    return teacher


@contextlib.contextmanager
def _environment(env: dict | None):
    if env is None:
        yield
        return
    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _task_threads(threads) -> int | None:
    if isinstance(threads, dict):  # a Dask cluster: this machine's cores over its Dask threads
        try:
            from urllib.parse import urlparse
            from distributed import get_worker
            host = urlparse(get_worker().address).hostname
        except Exception:
            return None
        n = threads.get(host)
        return max(1, available_cores() // n) if n else None
    return threads


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _execute(task: _Task) -> Outcome:
    """Run one task (in a worker, or in this process): ``run_experiment`` on its specification."""
    from . import experiments, locks
    t0 = time.perf_counter()
    before = dict(locks.STATS)
    with _environment(task.env), _torch_threads(_task_threads(task.threads)):
        import torch
        threads = torch.get_num_threads()
        data, teacher = _load_data(task.data), _load_teacher(task.teacher)
        run = experiments.run_experiment(task.name, task.student, data, task.cfg, method=task.method, teacher=teacher,
                                         profile=task.profile, mode=task.mode, progress=task.progress,
                                         root=task.root, stop_after=task.stop_after, keep_weights=task.keep_weights,
                                         restore_best=task.restore_best, **task.method_kwargs)
    if task.remote:  # the caller reads weights and logits from the shared folder when it needs them
        if experiments.RUNS_USED and experiments.RUNS_USED[-1] is run:
            experiments.RUNS_USED.pop()  # a long-lived worker must not keep every model it trained
        run = dataclasses.replace(run, _model=None, _logits=None)
    return Outcome(run, socket.gethostname(), os.getpid(), time.perf_counter() - t0,
                   locks.STATS["waited_s"] - before["waited_s"], locks.STATS["taken_over"] > before["taken_over"],
                   threads, malloc_trim=os.environ.get(MALLOC_TRIM))


# =====================================================================================================
# Validation (in the caller, before anything is submitted)
# =====================================================================================================
@dataclass
class _Resolved:
    spec: RunSpec
    cfg: Any
    data: Any            # DataBundle or canonical get_data kwargs
    teacher: Any         # nn.Module or None
    identity: str        # (name, specification) -> duplicates


def _label(i: int, spec) -> str:
    name = spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", None)
    return f"specification {i}" + (f" ({name!r})" if isinstance(name, str) else "")


def _resolve_cfg(cfg, prof):
    from .config import TrainConfig, _known
    if isinstance(cfg, TrainConfig):
        return cfg
    if not isinstance(cfg, dict):
        raise ValueError(f"config must be a TrainConfig or a mapping of its fields, got {type(cfg).__name__}")
    cfg = dict(cfg)
    recipe = cfg.pop("recipe", None)
    if recipe is not None:
        return prof.train(recipe, **cfg)
    return TrainConfig(**_known(TrainConfig, cfg))


def _resolve_data(data, prof):
    from .data import DataBundle
    from .data.catalog import ALL_DATASETS, _canonical_name
    if isinstance(data, DataBundle):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"data must be a DataBundle or a mapping {{'dataset': NAME, ...}} with fields "
                         f"{', '.join(DATA_FIELDS)}; got {type(data).__name__}")
    bad = sorted(set(data) - set(DATA_FIELDS))
    if bad or "dataset" not in data:
        raise ValueError(f"data: " + (f"unknown field(s) {bad}" if bad else "no 'dataset'") +
                         f"; allowed: {', '.join(DATA_FIELDS)}")
    try:
        name = _canonical_name(data["dataset"])
    except (ValueError, KeyError):
        raise ValueError(f"unknown data set {data['dataset']!r}; known: {', '.join(ALL_DATASETS)}") from None
    from .config import get_profile
    d = dict(data)
    sizes = get_profile(d.pop("profile", None) or prof).data_kwargs()
    out = {"dataset": name, **sizes, **{k: v for k, v in d.items() if k != "dataset"}}
    if out.get("root") is not None:
        out["root"] = str(Path(out["root"]).resolve())
    return out


def _num_classes(data) -> int:
    if isinstance(data, dict):
        from .data.catalog import dataset_info
        return int(dataset_info(data["dataset"])["num_classes"])
    return int(data.num_classes)


def _resolve_teacher(teacher, prof, data, cache: dict):
    from torch import nn
    from .experiments import Run
    if teacher is None or isinstance(teacher, (nn.Module, Run)):
        return teacher
    if not isinstance(teacher, dict):
        raise ValueError(f"teacher must be one of: {'; '.join(TEACHER_FORMS)}; got {type(teacher).__name__}")
    key = json.dumps(teacher, sort_keys=True, default=str)
    if key in cache:
        return cache[key]
    if "kind" in teacher and set(teacher) <= {"kind", "profile"}:
        from .teacher import KINDS, load_teacher
        if teacher["kind"] not in KINDS:
            raise ValueError(f"unknown teacher kind {teacher['kind']!r}; known: {', '.join(KINDS)}")
        model = load_teacher(teacher["kind"], teacher.get("profile") or prof, train=False, progress=False,
                             verbose=False)
    elif "path" in teacher and set(teacher) == {"path"}:
        from .checkpoint import load_model
        model = load_model(Path(teacher["path"])).eval()
    elif "model" in teacher and set(teacher) <= {"model", "seed"} and isinstance(teacher["model"], dict):
        import torch
        from .models import build_model
        spec = dict(teacher["model"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(teacher.get("seed", 0)))
            model = build_model(spec.pop("name"), **{"num_classes": _num_classes(data), **spec}).eval()
    else:
        raise ValueError(f"teacher {teacher!r} is none of: {'; '.join(TEACHER_FORMS)}")
    cache[key] = model
    return model


def _check_run(spec: RunSpec, cfg, data, teacher) -> None:
    """Build what the run would build (student, distiller) to fail now rather than in a worker."""
    import torch
    from .models import MODELS, build_model
    from .train_kd import DISTILLERS, build_distiller
    if not isinstance(spec.name, str) or not spec.name.strip() or any(c in spec.name for c in "/\\\0"):
        raise ValueError(f"name must be a non-empty string without '/', got {spec.name!r}")
    if spec.method not in DISTILLERS:
        raise ValueError(f"unknown method {spec.method!r}; allowed: {', '.join(DISTILLERS)}")
    if not isinstance(spec.student, dict) or "name" not in spec.student:
        raise ValueError(f"student must be a model spec {{'name': ..., **kwargs}}, got {spec.student!r}")
    if spec.student["name"] not in MODELS:
        raise ValueError(f"unknown model {spec.student['name']!r}; allowed: {', '.join(sorted(MODELS))}")
    if not isinstance(spec.method_kwargs, dict):
        raise ValueError(f"method_kwargs must be a mapping, got {type(spec.method_kwargs).__name__}")
    if spec.stop_after is not None and not (isinstance(spec.stop_after, int) and 1 <= spec.stop_after <= cfg.epochs):
        raise ValueError(f"stop_after must be None or an epoch in 1..{cfg.epochs}, got {spec.stop_after!r}")
    if not isinstance(spec.restore_best, bool):
        raise ValueError(f"restore_best must be true or false, got {spec.restore_best!r}")
    if spec.method == "ce" and spec.method_kwargs:
        raise ValueError(f"method 'ce' takes no arguments (label smoothing is a config field); got "
                         f"{sorted(spec.method_kwargs)}")
    from .experiments import uses_teacher
    if spec.method != "cohort" and uses_teacher(spec.method) and teacher is None:
        raise ValueError(f"method {spec.method!r} needs a teacher; allowed: {'; '.join(TEACHER_FORMS)}")
    with torch.random.fork_rng(devices=[]):
        s = dict(spec.student)
        model = build_model(s.pop("name"), **{"num_classes": _num_classes(data), **s})
        if spec.method != "ce":
            fit_keys = {"progress", "checkpoint_path", "desc", "restore_best", "state_path", "resume", "stop_after"}
            kw = {k: v for k, v in spec.method_kwargs.items() if k not in fit_keys}
            try:
                build_distiller(spec.method, model, _check_teacher(teacher, data), **kw)
            except TypeError as e:  # a misspelt argument: say which ones the method takes
                raise ValueError(f"method {spec.method!r}: {e}; its arguments: {_method_params(spec.method)}") from None


def _check_teacher(teacher, data):
    """A copy of the teacher to build a distiller with; a stored Run's architecture is rebuilt from its
    specification (untrained: the check needs its shapes, not its weights, which may not be stored)."""
    if teacher is None:
        return None
    if _is_run(teacher):
        from .models import build_model
        arch = dict(teacher.spec["student"])
        return build_model(arch.pop("name"), **{"num_classes": _num_classes(data), **arch}).eval()
    return copy.deepcopy(teacher)


def _method_params(method: str) -> str:
    import inspect
    from .train_kd import DISTILLERS
    try:
        params = inspect.signature(DISTILLERS[method]).parameters.values()
    except (TypeError, ValueError):
        return "see its docstring"
    names = [p.name for p in params if p.name not in ("self", "student", "teacher", "cohort")
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return ", ".join(names) or "none"


def _identity(spec: RunSpec, cfg, data, teacher, digests: dict) -> str:
    from .experiments import teacher_sha256
    from .plans import data_fingerprint
    d = data if isinstance(data, dict) else {"fingerprint": data_fingerprint(data), "test_n": int(len(data.y_test))}
    t = None
    if teacher is not None and spec.method != "ce":
        if id(teacher) not in digests:
            digests[id(teacher)] = teacher_sha256(teacher)
        t = digests[id(teacher)]
    return json.dumps({"name": spec.name, "student": spec.student, "data": d, "cfg": cfg.to_dict(),
                       "method": spec.method, "kwargs": spec.method_kwargs, "teacher": t, "stop_after": spec.stop_after,
                       **({} if spec.restore_best else {"restore_best": False})},
                      sort_keys=True, default=str)


def _check_cached(data) -> None:
    """Workers load a described data set from the shared data folder; they must not each download it."""
    if isinstance(data, dict):
        from .data.catalog import cache_path
        path = cache_path(data["dataset"], data.get("root"))
        if not path.is_file():
            raise ValueError(f"data set {data['dataset']!r} is not cached at {path}, where the workers would read "
                             f"it; fetch it once first: python -m kd_utils fetch-data {data['dataset']}")


def validate(specs: Iterable, profile=None, remote: bool = False) -> list[_Resolved]:
    """Check every specification (model, method and its arguments, config, data, teacher) without
    training; raises :class:`SpecError` naming each bad one and what is allowed. ``remote``: the runs
    go to other processes, so described data sets must already be cached."""
    from .config import get_profile
    prof = get_profile(profile)
    specs = list(specs)
    if not specs:
        raise SpecError("the sweep holds no specifications")
    out, problems, teachers, digests = [], [], {}, {}
    for i, spec in enumerate(specs):
        try:
            if isinstance(spec, dict):
                one = _from_dict(spec, {})
                if len(one) != 1:
                    raise ValueError("'seeds' expands to several runs: load the sweep with specs_from_dicts first")
                spec = one[0]
            if not isinstance(spec, RunSpec):
                raise ValueError(f"expected a RunSpec (kd_utils.sweep.experiment(...)) or a mapping, got "
                                 f"{type(spec).__name__}")
            cfg = _resolve_cfg(spec.cfg, prof)
            data = _resolve_data(spec.data, prof)
            if remote:
                _check_cached(data)
            teacher = _resolve_teacher(spec.teacher, prof, data, teachers)
            _check_run(spec, cfg, data, teacher)
            out.append(_Resolved(spec, cfg, data, teacher, _identity(spec, cfg, data, teacher, digests)))
        except Exception as e:  # noqa: BLE001 -- reported with the specification it belongs to
            problems.append(f"{_label(i, spec)}: {e}")
    if problems:
        raise SpecError(f"{len(problems)} of {len(specs)} specifications are invalid (nothing was run):\n  "
                        + "\n  ".join(problems))
    return out


# =====================================================================================================
# The sweep
# =====================================================================================================
class SweepResult(list):
    """The Run of every specification, in order (``result["name"]`` finds one by name), with the
    :class:`Outcome` of each and :meth:`table`."""

    def __init__(self, runs: list, outcomes: list, specs: list, duplicate_of: list, wall_time_s: float,
                 executor: str):
        super().__init__(runs)
        self.outcomes, self.specs, self.duplicate_of = outcomes, specs, duplicate_of
        self.wall_time_s, self.executor = wall_time_s, executor

    def __getitem__(self, item):
        if isinstance(item, str):
            for r in self:
                if r.name == item:
                    return r
            raise KeyError(f"no run named {item!r} in this sweep")
        return super().__getitem__(item)

    @property
    def trained(self) -> int:
        """Distinct runs trained by this sweep (the others were stored already, or by another process)."""
        return sum(1 for o, d in zip(self.outcomes, self.duplicate_of) if d is None and not o.run.reused)

    def table(self):
        """One row per specification: method, student, seed, test accuracy (agreement with the teacher
        where there is one), how it was obtained, where, and its training time."""
        import pandas as pd
        rows = []
        for i, (run, spec) in enumerate(zip(self, self.specs)):
            o = self.outcomes[i]
            dup = self.duplicate_of[i]
            s = dict(spec.student)
            rows.append({"name": run.name, "method": spec.method,
                         "student": " ".join([s.pop("name")] + [f"{k}={v}" for k, v in sorted(s.items())]),
                         "seed": run.spec.get("config", {}).get("seed"), "test_accuracy": run.accuracy,
                         "agreement": run.metrics.get("agreement"),
                         "outcome": f"duplicate of {dup}" if dup is not None else o.status,
                         "worker": "" if dup is not None else f"{o.host}:{o.pid}",
                         "threads": None if dup is not None else o.threads,
                         "train_s": round(float(run.metrics.get("wall_time_s", 0.0)), 1), "key": run.key[:12]})
        df = pd.DataFrame(rows)
        df["threads"] = df["threads"].astype("Int64")
        if df["agreement"].isna().all():
            df = df.drop(columns="agreement")
        return df

    def summary(self) -> str:
        distinct = sum(d is None for d in self.duplicate_of)
        reused = distinct - self.trained
        return (f"{len(self)} specifications, {distinct} distinct runs: {self.trained} trained, {reused} reused, "
                f"{len(self) - distinct} duplicates; {self.wall_time_s:.1f} s on {self.executor}")


def _output_base() -> Path:
    """Where ``models/`` and ``results/`` go when no root is given (absolute)."""
    from .config import DEFAULT_PROFILE, output_dirs
    return Path(output_dirs(DEFAULT_PROFILE, None, create=False)["models"]).resolve().parent


def _task_env(prof, mode: str) -> dict:
    """The caller's run environment, made absolute, for the workers (which may start elsewhere)."""
    from . import runs
    from .data import default_root
    from .plans import default_cache_dir
    env = {runs.SESSION_ENV: runs.session_id(), runs.MODE_ENV: mode, "KD_PROFILE": prof.name,
           runs.NOTEBOOK_ENV: None,  # the caller records which runs its notebook used
           "KD_OUTPUT_ROOT": str(_output_base()), "KD_DATA_ROOT": str(Path(default_root()).resolve()),
           "KD_CACHE_DIR": str(Path(default_cache_dir()).resolve())}
    for k in (runs.REFERENCE_ENV, "KD_HOME"):
        if os.environ.get(k):
            env[k] = str(Path(os.environ[k]).resolve())
    return env


def _default_threads(executor, threads):
    if threads is not None:
        return int(threads)
    if isinstance(executor, ProcessPool):
        return executor.threads
    if isinstance(executor, cf.ProcessPoolExecutor):
        return max(1, available_cores() // max(1, getattr(executor, "_max_workers", 1)))
    if _is_dask(executor):
        try:
            try:
                workers = executor.scheduler_info(n_workers=-1)["workers"]
            except TypeError:
                workers = executor.scheduler_info()["workers"]
        except Exception:
            return None
        hosts: dict[str, int] = {}
        for w in workers.values():
            hosts[w["host"]] = hosts.get(w["host"], 0) + int(w.get("nthreads", 1))
        return hosts
    return None


def _describe(executor) -> str:
    if _is_dask(executor):
        try:
            n = len(executor.scheduler_info()["workers"])
        except Exception:
            n = "?"
        return f"Dask ({n} workers)"
    if isinstance(executor, InProcessExecutor):
        return "this process"
    return repr(executor) if isinstance(executor, ProcessPool) else type(executor).__name__


def _is_run(obj) -> bool:
    from .experiments import Run
    return isinstance(obj, Run)


def _stage(obj, kind: str, folder: Path, staged: dict) -> _Staged:
    """Write an in-memory data bundle or teacher once per sweep where every worker can read it."""
    if id(obj) not in staged:
        import io
        import torch
        from .fileio import write_bytes
        from .plans import data_fingerprint, teacher_digest
        digest = teacher_digest(obj) if kind == "teacher" else data_fingerprint(obj)["train_sha256"]
        path = folder / f"{kind}-{len(staged)}-{digest[:12]}.pt"  # two bundles may share a training split
        buf = io.BytesIO()
        torch.save(obj, buf)
        write_bytes(path, buf.getvalue())
        staged[id(obj)] = _Staged(str(path), kind)
    return staged[id(obj)]


def _wait_any(futures: list, poll: float) -> list:
    if futures and all(isinstance(f, cf.Future) for f in futures):
        return list(cf.wait(futures, timeout=max(poll, 1.0), return_when=cf.FIRST_COMPLETED).done)
    done = [f for f in futures if f.done()]
    if not done:
        time.sleep(poll)
    return done


def run_sweep(specs: Iterable, executor=None, *, profile=None, mode: str | None = None,
              root: str | os.PathLike | None = None, threads: int | None = None, workers: int | None = None,
              executor_options: dict | None = None, retries: int = 2, dedupe: bool = True, progress: bool = True,
              poll: float = 0.5) -> SweepResult:
    """Run every specification (:class:`RunSpec`, or a mapping as in a sweep file) through ``executor``
    (see the module docstring) and return their Runs in order.

    ``profile``, ``mode`` and ``root`` apply to every run, as in ``run_experiment``. ``workers`` and
    ``executor_options`` (``submitit`` parameters) shape an executor named by a string, which the sweep
    starts after validating every specification and shuts down at its end. ``retries``: how
    often a task whose worker was lost is submitted again. ``dedupe``: identical specifications run
    once (with ``False`` each is submitted and the run lock makes the copies wait and reuse). A run
    that fails is reported with the others in :class:`SweepError` after the rest have finished.
    """
    from . import experiments, runs
    from .config import get_profile
    t0 = time.perf_counter()
    prof = get_profile(profile)
    mode = runs.run_mode(mode)
    _check_executor(executor)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    remote = not (executor is None or (isinstance(executor, str) and executor.strip() == "inprocess")
                  or _in_process(executor))
    resolved = validate(specs, prof, remote)  # nothing starts before every specification is known to be good

    owned = lambda: None  # noqa: E731
    if executor is None or isinstance(executor, str):
        executor, owned = make_executor(executor, workers=workers, threads=threads, **(executor_options or {}))
    try:
        in_process = _in_process(executor)
        root_abs = None if root is None else str(Path(root).resolve())
        staging = None if in_process else (runs.stores(prof, root_abs)["training"] / "_sweep" / uuid.uuid4().hex[:12])
        name = _describe(executor)
        task_threads = threads if in_process else _default_threads(executor, threads)
        env = None if in_process else _task_env(prof, mode)
    except BaseException:
        owned()
        raise
    say = print if progress else (lambda *a, **k: None)

    # one task per distinct specification
    first: dict[str, int] = {}
    duplicate_of: list[int | None] = []
    tasks: list[_Task] = []
    task_of: list[int] = []
    keep: dict[int, bool] = {}
    staged: dict[int, _Staged] = {}
    pending: dict[Any, int] = {}
    try:
        for i, r in enumerate(resolved):
            if dedupe and r.identity in first:
                duplicate_of.append(first[r.identity])
                task_of.append(task_of[first[r.identity]])
                keep[task_of[-1]] = keep[task_of[-1]] or r.spec.keep_weights
                continue
            first.setdefault(r.identity, i)
            duplicate_of.append(None)
            data, teacher = r.data, r.teacher if r.spec.method != "ce" else None
            if not in_process:
                if not isinstance(data, dict):
                    data = _stage(data, "data", staging, staged)
                if teacher is not None and not _is_run(teacher):  # a stored Run travels as itself: its
                    teacher = _stage(teacher, "teacher", staging, staged)  # files are on the shared store
            task_of.append(len(tasks))
            keep[len(tasks)] = r.spec.keep_weights
            tasks.append(_Task(i, r.spec.name, dict(r.spec.student), data, r.cfg, r.spec.method, teacher,
                               dict(r.spec.method_kwargs), r.spec.stop_after, r.spec.keep_weights, prof.name, mode,
                               root_abs if not in_process else (None if root is None else str(root)), env,
                               task_threads, not in_process, progress and in_process, r.spec.restore_best))
        for j, t in enumerate(tasks):
            t.keep_weights = keep[j]
        say(f"[sweep] {len(resolved)} specifications, {len(tasks)} distinct runs on {name}")
        outcomes: list[Outcome | None] = [None] * len(tasks)
        failures: dict[int, str] = {}
        attempts = [0] * len(tasks)
        trim_noted = False
        for j, t in enumerate(tasks):
            attempts[j] = 1
            pending[_submit(executor, _execute, t)] = j
        while pending:
            for fut in _wait_any(list(pending), poll):
                j = pending.pop(fut)
                t = tasks[j]
                try:
                    o = fut.result()
                except KeyboardInterrupt:
                    raise
                except BaseException as e:  # noqa: BLE001 -- a lost worker is retried, a failed run reported
                    why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                    if _worker_lost(e) and attempts[j] <= retries:
                        attempts[j] += 1
                        say(f"[retry {attempts[j] - 1}/{retries}] {t.name}: worker lost ({why})")
                        pending[_submit(executor, _execute, t)] = j
                    else:
                        failures[j] = why
                        say(f"[failed] {t.name}: {why}")
                    continue
                o.attempts = attempts[j]
                outcomes[j] = o
                if o.malloc_trim and not in_process and not trim_noted:
                    trim_noted = True
                    say(f"[sweep] note: worker {o.host}:{o.pid} runs with {MALLOC_TRIM}={o.malloc_trim} (Dask's "
                        "default for its workers), which made training runs about 2x slower here; start the "
                        f"workers with the Dask config distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}: null")
                if progress and not in_process:  # in-process, run_experiment has said it
                    say(f"[{o.status.split(' (')[0]}] {t.name}: test accuracy {o.run.accuracy:.4f} "
                        f"({o.seconds:.0f} s on {o.host}:{o.pid}, {o.threads} thread{'s' * (o.threads != 1)})")
    except BaseException:
        for fut in list(pending):
            with contextlib.suppress(Exception):
                fut.cancel()
        raise
    finally:
        owned()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # only when no other sweep is staging there

    results, per_spec = [], []
    for i, r in enumerate(resolved):
        o = outcomes[task_of[i]]
        results.append(None if o is None else o.run)
        per_spec.append(o)
        if o is not None and not in_process:  # what run_experiment records in the caller's process
            experiments.RUNS_USED.append(o.run)
            runs.note_use(prof, o.run.path, r.spec.keep_weights, root_abs)
            o.run._store = (prof, root_abs)
    if failures:
        lines = [f"{_label(tasks[j].index, tasks[j])}: {why}" for j, why in sorted(failures.items())]
        raise SweepError(f"{len(failures)} of {len(tasks)} runs failed (the others are stored):\n  " + "\n  ".join(lines),
                         results)
    out = SweepResult(results, per_spec, [r.spec for r in resolved], duplicate_of, time.perf_counter() - t0, name)
    say(f"[sweep] {out.summary()}")
    return out


def run_each(specs: Sequence, executor=None, *, desc: str = "runs", progress: bool = True, **sweep_kwargs: Any) -> list:
    """:func:`run_sweep` for a notebook's loop over runs, with its ``EXECUTOR`` parameter: ``None`` runs the
    specifications in this process one at a time under a progress bar (each the same as ``run_experiment``);
    any other executor gets the whole list at once. Returns the Runs in order. ``sweep_kwargs``: ``profile``,
    ``mode``, ``root`` and the other keywords of :func:`run_sweep`."""
    from .progress import progress as progress_bar
    specs = list(specs)
    if executor is None or (isinstance(executor, str) and executor.strip() == "inprocess"):
        return [run_sweep([s], None, progress=False, **sweep_kwargs)[0]
                for s in progress_bar(specs, desc=desc, disable=not progress)]
    return list(run_sweep(specs, executor, progress=progress, **sweep_kwargs))


def seed_specs(name: str, student: dict, data, cfg, seeds: Sequence[int], **kwargs: Any) -> list[RunSpec]:
    """One :func:`experiment` per seed, named ``<name>-s<seed>`` with ``cfg.seed`` = the seed (its own
    initialisation and augmentation plan), as :func:`~kd_utils.experiments.run_seeds` names its runs."""
    if isinstance(seeds, (int, str)) or not len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of whole numbers, got {seeds!r}")
    return [experiment(f"{name}-s{int(s)}", student, data, cfg.replace(seed=int(s)), **kwargs) for s in seeds]


def run_groups(groups: dict[str, Sequence[RunSpec]], executor=None, *, desc: str = "runs", progress: bool = True,
               teacher=None, **sweep_kwargs: Any) -> dict[str, list]:
    """Every group's specifications through one :func:`run_each` call (so an executor gets them all at
    once), regrouped: ``{group: [Run, ...]}`` in the groups' and specifications' order.

    ``teacher`` (a module): runs trained without it (``"ce"`` and other teacher-free runs) get their
    agreement and KL with it in ``metrics``, computed from their stored test logits, so a table over
    all groups compares every run with the same teacher."""
    from .experiments import teacher_metrics
    groups = {g: list(specs) for g, specs in groups.items()}
    empty = [g for g, specs in groups.items() if not specs]
    if empty:
        raise ValueError(f"group(s) {empty} hold no specification")
    done = iter(run_each([s for specs in groups.values() for s in specs], executor, desc=desc, progress=progress,
                         **sweep_kwargs))
    out = {g: [next(done) for _ in specs] for g, specs in groups.items()}
    if teacher is not None:
        for g, specs in groups.items():
            for spec, run in zip(specs, out[g]):
                if "agreement" not in run.metrics:
                    data = _load_data(_resolve_data(spec.data, sweep_kwargs.get("profile")))
                    run.metrics.update(teacher_metrics(teacher, run.logits("test"), data))
    return out
