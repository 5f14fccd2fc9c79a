"""Where and how tensors are computed: seeding, device and precision choice, library versions."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
import time
import warnings
from typing import Iterator

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "KD_PRECISION"  # overrides precision="auto" everywhere (python -m kd_utils ... --precision)
_FP16 = ("fp16 is not supported: the training loop has no loss scaling (GradScaler), without which small fp16 "
         "gradients underflow to zero; use bf16 or fp32")


def check_precision(value: str, source: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else ``ValueError`` naming ``source`` and the allowed values."""
    if value not in PRECISIONS:
        raise ValueError(f"unknown {source} {value!r}; allowed: {', '.join(PRECISIONS)}"
                         + (f" ({_FP16})" if value == "fp16" else ""))
    return value


def precision_override() -> str | None:
    """``$KD_PRECISION`` (``fp32`` or ``bf16``), which replaces ``precision="auto"`` wherever it is
    resolved (training, cached teacher outputs, any ``predict(..., precision="auto")``); None when unset
    or ``auto``. Explicit precisions (evaluation's ``"fp32"``) are left as they are."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    check_precision(value, f"${PRECISION_ENV} value")
    return None if value == "auto" else value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so one seed gives one result on one machine."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when present, else CPU. Asking for CUDA without a GPU is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return dev


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``$KD_PRECISION`` when set, else bf16 on CUDA and on CPUs with bf16 units, else fp32."""
    check_precision(precision)
    if precision == "auto":
        forced = precision_override()
        if forced == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"${PRECISION_ENV}=bf16 but this GPU ({torch.cuda.get_device_name(device)}) has no bf16 "
                             "support; use fp32")
        if forced is not None:
            return forced
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to bf16 when ``precision == "bf16"``; a no-op for fp32."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


class BusyMachineWarning(UserWarning):
    """Training starts while other processes keep the CPU cores busy."""


def machine_load() -> tuple[float, int] | None:
    """(1-minute load average, usable cores), or None where the OS reports no load average."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return float(load), int(cores)


BUSY_REPEAT_S = 600.0  # a process warns at most once in this many seconds (a notebook starts many runs)
_last_busy_warning = -float("inf")


def warn_if_busy(device: torch.device | str = "cpu") -> str | None:
    """Warn (:class:`BusyMachineWarning`) when a CPU training starts on a busy machine: the 1-minute
    load average above the number of cores means other processes want more CPU than there is, so this
    training gets only a share of the cores. Returns the message, or None when the machine is not busy
    (or the device is a GPU, the OS reports no load, or this process warned less than
    :data:`BUSY_REPEAT_S` ago)."""
    global _last_busy_warning
    if torch.device(device).type != "cpu":
        return None
    got = machine_load()
    if got is None or got[0] <= got[1]:
        return None
    now = time.monotonic()
    if now - _last_busy_warning < BUSY_REPEAT_S:
        return None
    _last_busy_warning = now
    load, cores = got
    msg = (f"this machine is busy: its 1-minute load average is {load:.1f}, above its {cores} core(s), so other "
           f"processes are competing for the CPU. This training ({torch.get_num_threads()} thread(s)) will get only "
           "a share of the cores and run slower than on an idle machine, and its epoch times will not be comparable "
           "with an idle run's. Wait for the other work to finish, or expect longer times.")
    warnings.warn(msg, BusyMachineWarning, stacklevel=3)
    return msg


def versions() -> dict[str, str]:
    """Library and platform versions, recorded beside every result."""
    import pandas
    out = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__),
           "pandas": str(pandas.__version__), "platform": platform.platform(), "processor": _cpu_name(),
           "threads": str(torch.get_num_threads())}
    try:
        import torchvision
        out["torchvision"] = str(torchvision.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"
