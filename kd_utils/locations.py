"""Where the suite's files live: one documented root for ``data/``, ``teachers/``, ``models/`` and ``results/``.

The root (:func:`home`) is, in order:

1. ``$KD_HOME``, when set;
2. the *current project*: the nearest directory, from the current working directory upwards, holding a
   ``pyproject.toml`` whose ``[project] name`` is ``kd_utils`` (a checkout of this suite);
3. the checkout the imported package comes from (running from the source tree or an editable
   install, ``pip install -e .``);
4. else the current working directory.

So inside a checkout everything happens in the checkout, wherever the package is installed
(``pip install .`` copies it into ``site-packages``, which holds no data, teachers or results). Outside
any checkout, with a plain install, set ``KD_HOME`` to the checkout (or to any folder) to choose.

``$KD_DATA_ROOT`` (data caches) and ``$KD_OUTPUT_ROOT`` (``models/`` and ``results/``) override single
folders, as before. Outputs never fall back to the package's checkout (rule 3): outside any checkout
they go to the current directory (:func:`output_root`). The committed reference teachers are looked for in ``<root>/teachers`` and, when
the package was installed from a checkout that still exists, in that checkout's ``teachers/`` too
(:func:`reference_teacher_dirs`), so an installed package finds them from anywhere.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

HOME_ENV = "KD_HOME"
DATA_ENV = "KD_DATA_ROOT"
OUTPUT_ENV = "KD_OUTPUT_ROOT"
PROJECT_NAME = "kd-utils"  # pyproject.toml's [project] name, normalised (PEP 503)
PACKAGE_DIR = Path(__file__).resolve().parent


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_name(pyproject: Path) -> str | None:
    """``[project] name`` of a pyproject.toml, or None when unreadable."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        import tomllib
        return tomllib.loads(text).get("project", {}).get("name")
    except ImportError:  # Python 3.10: the [project] table's name line
        m = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        n = m and re.search(r"^name\s*=\s*[\"']([^\"']+)[\"']", m.group(1), re.M)
        return n.group(1) if n else None
    except Exception:  # a malformed file is not our project
        return None


def is_checkout(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds this suite's pyproject.toml."""
    name = _project_name(Path(folder) / "pyproject.toml")
    return name is not None and _normalise(name) == PROJECT_NAME


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest directory from ``start`` (default: the current directory) upwards that is a
    checkout of the suite, or None."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    return None


def source_root() -> Path | None:
    """The checkout the imported ``kd_utils`` lives in (source tree or editable install), or None
    (a plain install into site-packages)."""
    folder = PACKAGE_DIR.parent
    return folder if is_checkout(folder) else None


def installed_from() -> Path | None:
    """The local checkout a non-editable ``pip install <folder>`` was made from, when it still exists
    (read from the distribution's ``direct_url.json``, PEP 610), or None."""
    try:
        from importlib import metadata
        text = metadata.distribution("kd_utils").read_text("direct_url.json")
    except Exception:
        return None
    try:
        url = json.loads(text or "{}").get("url", "")
    except ValueError:
        return None
    if not url.startswith("file://"):
        return None
    from urllib.parse import unquote, urlparse
    folder = Path(unquote(urlparse(url).path))
    return folder if is_checkout(folder) else None


def home_and_reason() -> tuple[Path, str]:
    """The root and the rule that chose it (for messages and ``python -m kd_utils info``)."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        path = Path(env).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ValueError(f"${HOME_ENV}={env!r} is a file, not a folder")
        return path, f"${HOME_ENV}"
    found = project_root()
    if found is not None:
        return found, "the checkout holding the current directory"
    src = source_root()
    if src is not None:
        return src, "the checkout the kd_utils package is imported from"
    return Path.cwd().resolve(), (f"the current directory (no checkout found above it and kd_utils is installed "
                                  f"outside one; set ${HOME_ENV} to choose)")


def home() -> Path:
    """The root holding ``data/``, ``teachers/``, ``models/`` and ``results/`` (see the module docstring)."""
    return home_and_reason()[0]


def data_root() -> Path:
    """``$KD_DATA_ROOT``, else ``<home>/data``."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else home() / "data"


def output_root() -> Path:
    """Where ``models/`` and ``results/`` go: ``$KD_OUTPUT_ROOT``, else ``$KD_HOME``, else the checkout
    holding the current directory, else the current directory. Unlike data and teachers (read from the
    package's checkout when nothing closer has them), outputs belong to the project being worked in:
    a notebook run in a folder of its own writes there, never into the checkout the package came from."""
    env = os.environ.get(OUTPUT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if os.environ.get(HOME_ENV, "").strip():
        return home()
    return project_root() or Path.cwd().resolve()


def reference_teacher_dirs() -> list[Path]:
    """Where committed reference teachers are looked for, in order (without repeats): ``<home>/teachers``,
    the imported package's checkout, and the checkout a plain install was made from."""
    out: list[Path] = []
    for base in (home(), source_root(), installed_from()):
        if base is not None and (base / "teachers").resolve() not in out:
            out.append((base / "teachers").resolve())
    return out


def shown(path: str | os.PathLike) -> str:
    """``path`` as a message shows it: relative to the suite's root when inside it (``teachers/x.pt``),
    so printed paths mean the same on every machine; unchanged otherwise."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(home()))
    except (ValueError, OSError):
        return str(p)
