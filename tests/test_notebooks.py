"""The notebooks' papermill contract: one tagged ``parameters`` cell of literals, every parameter used,
and parameters that reach the runs they name."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest

from kd_utils.notebooks import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent


def _code_cells(name: str) -> list:
    return [c for c in nbformat.read(ROOT / name, as_version=4).cells if c.cell_type == "code"]


def _parameters(name: str) -> tuple[int, dict[str, object]]:
    cells = _code_cells(name)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters' (papermill needs exactly one)"
    values = {}
    for node in ast.parse(cells[tagged[0]].source).body:
        assert isinstance(node, ast.Assign), f"{name}: the parameters cell holds a {type(node).__name__}, not literals"
        value = ast.literal_eval(node.value)  # raises for anything computed
        for target in node.targets:
            names = [t.id for t in target.elts] if isinstance(target, ast.Tuple) else [target.id]
            for n, v in zip(names, value if isinstance(target, ast.Tuple) else [value]):
                values[n] = v
    return tagged[0], values


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_tagged_literal_and_every_parameter_is_used(name):
    index, params = _parameters(name)
    assert "PROFILE" in params
    later = "\n".join(c.source for c in _code_cells(name)[index + 1:])
    used = {n.id for n in ast.walk(ast.parse("\n".join(l for l in later.splitlines() if not l.lstrip().startswith("%"))))
            if isinstance(n, ast.Name)}
    unused = sorted(set(params) - used)
    assert not unused, f"{name}: parameters never used after the parameters cell: {unused}"


def _setup_namespace(name: str, overrides: dict) -> dict:
    """Run a notebook's cells up to its setup cell (imports, parameters, overrides as papermill injects
    them, setup) and return the namespace."""
    cells = _code_cells(name)
    index, _ = _parameters(name)
    ns: dict = {}
    for cell in cells[:index + 1]:
        exec("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith("%")), ns)
    ns.update(overrides)
    exec(cells[index + 1].source, ns)
    return ns


def test_task2_seed_reaches_its_cifar_runs(monkeypatch):
    monkeypatch.setenv("KD_PROFILE", "smoke")
    ns = _setup_namespace("LogitMatching_Limitations.ipynb", {"SEED": 3})
    assert ns["s_cfg"].seed == 3 and ns["t_cfg"].seed == 3  # every CIFAR run is built from one of these
    assert ns["profile"].name == "smoke"
