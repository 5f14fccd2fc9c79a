"""Every code block of README.md runs as written (or says, in the line before it, what to run first).

* A ```python block is executed in a fresh interpreter, in a temporary working directory that is also the
  suite's root (``KD_HOME``), with ``KD_PROFILE=smoke`` and the checkout's data caches reachable through
  ``KD_DATA_ROOT``. A failure names the block's line in README.md.
* A block whose last line of prose before it starts ``Run first:`` gets the backticked command(s) of that
  line run first, in the same directory (each command once per test session).
* ``<!-- readme-test: skip: REASON -->`` between the previous block and this one skips it with REASON (for
  blocks that train for more than about 20 s; the README states what they cost). A skipped python block
  is still compiled and its import lines executed, so renamed functions are caught.
* ```bash blocks are not executed; each command in them is checked to exist: ``python -m kd_utils ...``
  (and ``torchrun ... -m kd_utils ...``) must parse with the real argument parser, ``make T`` must name a
  Makefile target, ``python -m papermill NB OUT -p NAME VALUE`` must name a notebook and a variable of
  its ``parameters`` cell, ``pip install '.[extra]'`` an extra of pyproject.toml, ``python -m MODULE`` an
  importable module, and any other program must be on the PATH or in the virtual environment.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.*?)\s*-->")
TIMEOUT_S = 600


@dataclass
class Block:
    line: int          # 1-based line of the opening fence
    lang: str
    code: str
    before: str        # the prose between the previous block and this one

    @property
    def skip_reason(self) -> str | None:
        m = SKIP.search(self.before)
        return m.group(1) if m else None

    @property
    def run_first(self) -> list[str]:
        prose = [ln for ln in self.before.splitlines() if ln.strip() and not SKIP.search(ln)]
        # the paragraph right before the block (it may wrap over several lines)
        para: list[str] = []
        for ln in reversed(prose):
            para.insert(0, ln)
            if ln.lstrip().startswith("Run first:"):
                return re.findall(r"`([^`]+)`", " ".join(para).split("Run first:", 1)[1])[:1]
            if len(para) > 4:
                break
        return []


def blocks(text: str) -> list[Block]:
    out, lines = [], text.splitlines()
    i, prose_start = 0, 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        out.append(Block(start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", "\n".join(lines[prose_start:start])))
        i = prose_start = j + 1
    return out


BLOCKS = blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


def _id(b: Block) -> str:
    return f"README.md:{b.line}"


# ------------------------------------------------------------------- python ----
@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    data = ROOT / "data"
    if not all((data / f"{n}.pt").is_file() for n in ("mnist", "cifar10")):
        pytest.skip("the data caches are missing: run `make data` first")
    return tmp_path_factory.mktemp("readme")


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env.update(KD_PROFILE="smoke", KD_HOME=str(workdir), KD_DATA_ROOT=str(ROOT / "data"), MPLBACKEND="Agg",
               KD_CACHE_DIR=str(workdir / "teacher_cache"), PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


_DONE: dict[str, str] = {}


def _run_first(cmd: str, block: Block, workdir: Path) -> None:
    if cmd in _DONE:
        return
    args = shlex.split(cmd)
    if args[0] == "python":
        args[0] = sys.executable
    r = subprocess.run(args, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=TIMEOUT_S)
    if r.returncode != 0:
        pytest.fail(f"README.md line {block.line}: its 'Run first:' command `{cmd}` failed (exit {r.returncode}):\n"
                    f"{(r.stdout + r.stderr)[-3000:]}", pytrace=False)
    _DONE[cmd] = r.stdout


def _import_lines(code: str) -> str:
    tree = ast.parse(code)
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


@pytest.mark.parametrize("block", PYTHON, ids=_id)
def test_python_block_runs(block: Block, workdir: Path):
    try:
        compile(block.code, f"README.md:{block.line}", "exec")
    except SyntaxError as e:
        pytest.fail(f"README.md line {block.line + (e.lineno or 0)}: syntax error in the block: {e}", pytrace=False)
    if block.skip_reason:
        exec(compile(_import_lines(block.code), f"README.md:{block.line}", "exec"), {})  # names still exist
        pytest.skip(f"README.md line {block.line}: {block.skip_reason}")
    for cmd in block.run_first:
        _run_first(cmd, block, workdir)
    script = workdir / f"readme_block_{block.line}.py"
    script.write_text(block.code)
    r = subprocess.run([sys.executable, script.name], cwd=workdir, env=_env(workdir), capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    if r.returncode != 0:
        pytest.fail(f"README.md line {block.line}: the python block failed (exit {r.returncode}):\n"
                    f"{(r.stdout + r.stderr)[-3000:]}", pytrace=False)


def test_blocks_write_nothing_into_the_checkout():
    """Outputs of the examples go to the suite's root (here a temporary folder) or to scratch folders: no
    README example names a file in the current directory that git would show (e.g. ``tiny.pt``)."""
    bad = []
    for b in PYTHON:
        for m in re.finditer(r"""(?<!/ )["']([\w./-]+\.(?:pt|pth|csv|json|png|ipynb))["']""", b.code):
            bad.append(f"README.md line {b.line}: writes {m.group(1)!r} into the current directory")
    assert not bad, "\n".join(bad)


def test_every_block_that_needs_something_says_what_and_how_long():
    for b in PYTHON:
        if b.run_first:
            prose = b.before.split("Run first:", 1)[1]
            assert re.search(r"\d+(\.\d+)? ?(s|min|h)\b", prose), f"README.md line {b.line}: no time given"
        if b.skip_reason and "train" in b.skip_reason:  # skipped for its cost: the README states it
            assert re.search(r"\d+ ?(s|min|minutes|h)\b", b.before), f"README.md line {b.line}: skipped, cost unstated"


# -------------------------------------------------------------------- shell ----
def _commands(code: str) -> list[list[str]]:
    text = re.sub(r"\\\n", " ", code)
    out = []
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise AssertionError(f"cannot parse {line!r}: {e}") from None
        cmd: list[str] = []
        for w in words + [";"]:
            if w in (";", "&&", "||", "|"):
                while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):  # VAR=value prefixes
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def _check_kd_utils(args: list[str]) -> None:
    from kd_utils.cli import build_parser
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(f"`python -m kd_utils {' '.join(args)}` is refused: {err.getvalue().strip()}")


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))


def _check_papermill(args: list[str]) -> None:
    pos = [a for a in args if not a.startswith("-")]
    names = [args[i + 1] for i, a in enumerate(args) if a in ("-p", "--parameters") and i + 1 < len(args)]
    nb = ROOT / pos[0]
    assert nb.is_file(), f"papermill input {pos[0]} does not exist"
    assert importlib.util.find_spec("papermill"), "papermill is not installed (it is in the dev extra)"
    cells = [c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells, f"{pos[0]} has no cell tagged 'parameters'"
    source = "".join(cells[0]["source"])
    defined = {t.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign)
               for tgt in n.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}
    missing = [n for n in names if n not in defined]
    assert not missing, f"{pos[0]}'s parameters cell defines no {missing} (it has {sorted(defined)})"


def _check_module(module: str, rest: list[str]) -> None:
    if module == "kd_utils":
        _check_kd_utils(rest)
    elif module == "papermill":
        _check_papermill(rest)
    else:
        assert importlib.util.find_spec(module.split(".")[0]), f"module {module} is not installed"


def _check(cmd: list[str]) -> None:
    prog = Path(cmd[0]).name
    if prog in ("python", "python3") or re.fullmatch(r"python3\.\d+", prog):
        if "-m" in cmd:
            i = cmd.index("-m")
            _check_module(cmd[i + 1], cmd[i + 2:])
        return
    if prog == "torchrun":
        i = cmd.index("-m")
        _check_module(cmd[i + 1], cmd[i + 2:])
        return
    if prog == "kd-utils":
        return _check_kd_utils(cmd[1:])
    if prog == "papermill":
        return _check_papermill(cmd[1:])
    if prog == "make":
        targets = [a for a in cmd[1:] if "=" not in a and not a.startswith("-")]
        unknown = sorted(set(targets) - _makefile_targets())
        assert not unknown, f"`{' '.join(cmd)}`: no Makefile target {unknown}"
        return
    if prog == "pip" and "install" in cmd:
        for a in cmd:
            m = re.fullmatch(r"(?:\.|kd_utils|kd-utils)\[([\w,-]+)\]", a)
            if m:
                extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
                unknown = [e for e in m.group(1).split(",") if e not in extras]
                assert not unknown, f"`{' '.join(cmd)}`: pyproject.toml has no extra {unknown}"
        return
    if prog in ("cd", "export", "mkdir", "echo"):
        return
    if prog == "conda" and "-f" in cmd:
        assert (ROOT / cmd[cmd.index("-f") + 1]).is_file(), f"`{' '.join(cmd)}`: no such file"
    assert shutil.which(cmd[0]) or (VENV_BIN / prog).exists() or (ROOT / cmd[0]).exists(), \
        f"`{' '.join(cmd)}`: {cmd[0]} is neither on the PATH nor in the virtual environment"


@pytest.mark.parametrize("block", SHELL, ids=_id)
def test_shell_block_commands_exist(block: Block):
    if block.skip_reason:
        pytest.skip(f"README.md line {block.line}: {block.skip_reason}")
    problems = []
    for cmd in _commands(block.code):
        try:
            _check(cmd)
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        pytest.fail(f"README.md line {block.line}:\n  " + "\n  ".join(problems), pytrace=False)


def test_the_readme_has_blocks_of_both_kinds():
    assert len(PYTHON) >= 5 and len(SHELL) >= 3
