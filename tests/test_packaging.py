"""The conda and pip views of the environment name the same pins; the CLI and CI are wired up."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)\s*", line.split("#")[0].rstrip() or " ")
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_environment_yml_and_pyproject_pin_the_same_versions():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = _pins(proj["dependencies"] + proj["optional-dependencies"]["dev"])
    conda = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert pyproject, "no pins found in pyproject.toml"
    assert pyproject == conda
    assert pyproject["torch"] == "2.14.1" and pyproject["torchvision"] == "0.29.1"


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme


def test_cli_help_and_clear_errors():
    run = lambda *a: subprocess.run([sys.executable, "-m", "kd_utils", *a], capture_output=True, text=True, cwd=ROOT)
    h = run("--help")
    assert h.returncode == 0 and "fetch-data" in h.stdout and "run-notebooks" in h.stdout
    bad = run("fetch-data", "imagenet")
    assert bad.returncode == 2 and "imagenet" in bad.stderr and "mnist" in bad.stderr
    assert "Traceback" not in bad.stderr
    info = run("info")
    assert info.returncode == 0 and "vgg13" in info.stdout and "torch" in info.stdout
