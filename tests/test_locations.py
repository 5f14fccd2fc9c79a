"""The suite's root (data/, teachers/, models/, results/) is found the documented way, never site-packages.

A package installed into a temporary venv would take minutes; the resolution functions are tested
directly on a fake layout instead: checkouts are folders with the suite's pyproject.toml, and a plain
install is simulated by making the imported package's own folder not a checkout.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_utils import locations as L
from kd_utils import teacher as T
from kd_utils.config import output_dirs
from kd_utils.data import default_root

REAL_INSTALLED_FROM = L.installed_from
PYPROJECT = '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "kd_utils"\nversion = "0.1.0"\n'


def _checkout(folder: Path, name: str = "kd_utils") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.replace('"kd_utils"', f'"{name}"'))
    return folder


@pytest.fixture
def installed(monkeypatch):
    """As after ``pip install .``: the imported package lives in no checkout and records none."""
    monkeypatch.delenv(L.HOME_ENV, raising=False)
    monkeypatch.delenv(L.DATA_ENV, raising=False)
    monkeypatch.delenv(L.OUTPUT_ENV, raising=False)
    monkeypatch.setattr(L, "source_root", lambda: None)
    monkeypatch.setattr(L, "installed_from", lambda: None)


def test_the_checkout_holding_the_current_directory_is_the_root(tmp_path, monkeypatch, installed):
    repo = _checkout(tmp_path / "repo")
    deep = repo / "notebooks" / "mine"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    root, why = L.home_and_reason()
    assert root == repo.resolve() and "current directory" in why
    assert default_root() == repo.resolve() / "data"
    assert Path(output_dirs("smoke", create=False)["models"]) == repo.resolve() / "models" / "smoke"
    assert Path(output_dirs("cpu", create=False)["results"]) == repo.resolve() / "results" / ""
    assert T.candidate_paths("cpu")[0] == repo.resolve() / "teachers" / T.teacher_filename("cpu")
    assert not (repo / "models").exists()  # create=False creates nothing


def test_other_projects_are_not_the_suite(tmp_path, monkeypatch, installed):
    other = _checkout(tmp_path / "theirs", name="something-else")
    monkeypatch.chdir(other)
    root, why = L.home_and_reason()
    assert root == other.resolve() and "current directory" in why and "KD_HOME" in why  # the fallback, explained
    assert L.project_root() is None


def test_kd_home_wins_and_a_file_is_refused(tmp_path, monkeypatch, installed):
    repo = _checkout(tmp_path / "repo")
    monkeypatch.chdir(repo)
    monkeypatch.setenv(L.HOME_ENV, str(tmp_path / "elsewhere"))
    assert L.home() == (tmp_path / "elsewhere").resolve()
    assert default_root() == (tmp_path / "elsewhere").resolve() / "data"
    assert L.reference_teacher_dirs()[0] == (tmp_path / "elsewhere").resolve() / "teachers"
    monkeypatch.setenv(L.DATA_ENV, str(tmp_path / "d"))  # single folders still override
    monkeypatch.setenv(L.OUTPUT_ENV, str(tmp_path / "o"))
    assert default_root() == tmp_path / "d"
    assert Path(output_dirs("smoke", create=False)["models"]) == tmp_path / "o" / "models" / "smoke"
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv(L.HOME_ENV, str(tmp_path / "afile"))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        L.home()


def test_an_editable_install_or_source_tree_is_used_outside_any_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(L.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    real = L.PACKAGE_DIR.parent
    if not L.is_checkout(real):
        pytest.skip("kd_utils is not imported from a checkout here")
    root, why = L.home_and_reason()
    assert root == real and "imported from" in why
    # outputs stay with the project being worked in, not in the package's checkout
    assert L.output_root() == tmp_path.resolve()
    assert Path(output_dirs("smoke", create=False)["models"]) == tmp_path.resolve() / "models" / "smoke"


def test_an_installed_package_finds_the_teachers_of_the_checkout_it_was_installed_from(tmp_path, monkeypatch,
                                                                                        installed):
    repo = _checkout(tmp_path / "repo")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    class Dist:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": repo.resolve().as_uri(), "dir_info": {}})

    from importlib import metadata
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    monkeypatch.setattr(L, "installed_from", REAL_INSTALLED_FROM)
    assert L.installed_from() == repo.resolve()
    assert L.home() == work.resolve()  # writes stay where the user is ...
    dirs = L.reference_teacher_dirs()
    assert dirs[0] == work.resolve() / "teachers" and repo.resolve() / "teachers" in dirs  # ... reads find the checkout
    assert repo.resolve() / "teachers" / T.teacher_filename("cpu") in T.candidate_paths("cpu")


def test_project_name_is_read_from_the_project_table(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[tool.x]\nname = "kd_utils"\n\n[project]\nname = "other"\n')
    assert not L.is_checkout(folder)
    (folder / "pyproject.toml").write_text('[project]\nname = "KD-Utils"\n')
    assert L.is_checkout(folder)
    (folder / "pyproject.toml").write_text("not toml [[[")
    assert not L.is_checkout(folder)
    assert not L.is_checkout(tmp_path / "missing")


def test_paths_are_shown_relative_to_the_suite_root(tmp_path, monkeypatch):
    from kd_utils.locations import shown
    monkeypatch.setenv("KD_HOME", str(tmp_path))
    assert shown(tmp_path / "teachers" / "t.pt") == "teachers/t.pt"
    outside = tmp_path.parent / "elsewhere" / "t.pt"
    assert shown(outside) == str(outside)
