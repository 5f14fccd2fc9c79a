"""Run names shared between notebooks, built in one place.

Task 2 and Task 3 reuse Task 1's stored runs by name (``scratch-s0``, ``kd_T4_a0.9-s0``), so a name
spelt two ways in two notebooks silently trains the same run twice (hours under ``cpu``). Build names
here::

    from kd_utils.names import run_name
    run_name("kd", temperature=4, alpha=0.9)               # 'kd_T4_a0.9'
    run_name("ce")                                        # 'scratch'
    run_name("kd", temperature=4, alpha=0.9, epochs=60)   # 'kd_T4_a0.9_e60'
    run_name("dkd", alpha=1, beta=8, seed=2)              # 'dkd_a1_b8-s2'

The seed suffix ``-s<seed>`` is the one :func:`kd_utils.experiments.run_seeds` and
:func:`kd_utils.sweep.seed_specs` add, so pass ``seed`` only when naming a single run by hand.
"""
from __future__ import annotations

import math
from typing import Any

# hyper-parameter -> its letter in a name, in the order names list them
ABBREVIATIONS = {"temperature": "T", "alpha": "a", "beta": "b", "gamma": "g", "epsilon": "eps", "ce_weight": "ce"}
_TEACHER_FREE = {"ce": "scratch"}  # a cross-entropy run is named for what it is: a student from scratch


def _number(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return f"{value:g}"


def run_name(method: str, *, epochs: int | None = None, seed: int | None = None, **hparams: Any) -> str:
    """``<method>[_<letter><value>...][_e<epochs>][-s<seed>]``: hyper-parameters in the order of
    :data:`ABBREVIATIONS` (values as ``%g``), ``"ce"`` named ``scratch``. ``method`` may be any prefix
    (e.g. ``"kd_permuted"``); an unknown hyper-parameter is refused with the known ones."""
    if not isinstance(method, str) or not method or any(c in method for c in "/\\ -"):
        raise ValueError(f"method must be a non-empty name without '/', '\\\\', spaces or '-' (the seed "
                         f"separator), got {method!r}")
    unknown = sorted(set(hparams) - set(ABBREVIATIONS))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for a run name; known: {', '.join(ABBREVIATIONS)}")
    parts = [_TEACHER_FREE.get(method, method)]
    parts += [f"{ABBREVIATIONS[k]}{_number(k, hparams[k])}" for k in ABBREVIATIONS if k in hparams]
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
        parts.append(f"e{epochs}")
    name = "_".join(parts)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        name += f"-s{seed}"
    return name
