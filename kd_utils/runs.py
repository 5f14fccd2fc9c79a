"""Stored runs: their records, the committed reference set, and replay.

A run (one :func:`kd_utils.experiments.run_experiment` call) is stored as a folder
``<name>-<key12>/`` holding

* ``run.json``     -- name, key, specification, teacher-free metrics, provenance (written last);
* ``history.csv``  -- one row per epoch;
* ``logits.pt``    -- test and validation logits (float16): agreement, KL, ECE, ensembles and per-class
  numbers for any teacher are computed from them, never stored under a key that ignores the teacher;
* ``model.pt``     -- the weights (float16; a run's model *is* its rounded weights, so a replayed model
  and a freshly trained one are the same model).

Three stores: the *training store* ``models/<profile>/runs/`` (ignored by git; every run, with weights)
and the *reference store* ``results/<profile>/runs/`` (committed for the default profile), which
:func:`export_notebook_runs` fills with the runs a notebook's reference execution used: records and
test logits, validation logits only where a cell read them (``Run.logits("val")``), weights only where
the notebook asked for them (``keep_weights=True``: a cell reads them).
``results/<profile>/runs/manifests/<notebook>.json`` lists each notebook's runs. Between them the
*bank* ``results/<profile>/runs/_bank/`` (committed, :func:`bank`): finished runs with their weights and
the saved states of runs cut off part-way, so a reference execution longer than one session (whose
ignored ``models/`` is gone next time) continues where it stopped. Reuse looks in the training store,
then the reference store, then the bank; a banked run leaves the bank once a manifest lists it.

Modes (``$KD_RUNS`` or the ``mode`` argument):

* ``reuse``  (default) -- reuse any stored run with the same key, train what is missing;
* ``fresh``  -- retrain, except runs trained earlier in this session (``$KD_RUNS_SESSION``, shared by
  every notebook of one ``make run``, so a run two notebooks need is trained once);
* ``replay`` -- never train: every run comes from the reference store, its weights (where stored)
  re-evaluated and checked against its record; a run missing there is an error that says why.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import torch

MODES = ("reuse", "fresh", "replay")
MODE_ENV, SESSION_ENV, NOTEBOOK_ENV = "KD_RUNS", "KD_RUNS_SESSION", "KD_NOTEBOOK"
REFERENCE_ENV = "KD_REFERENCE_RUNS"  # the reference store, when outputs go elsewhere (a replay writes a scratch tree)
FORMAT = "kd_utils/run/2"
LOGITS_DTYPE = torch.float16
BANK = "_bank"  # inside the reference store: runs (and cut-off states) kept between sessions
# The committed reference store's ceiling (the bank excluded), MiB. A record is about 0.3 MiB of float16
# test and validation logits that barely compress (xz saves under a fifth), and the second editions of
# Tasks 2-4 (three seeds of every study) need about 100 MiB of records beside the first two notebooks'
# 27 MiB: the first ceiling, 40 MiB, would have meant dropping the evidence each record carries.
BUDGET_MIB = 150
_PROCESS_SESSION = uuid.uuid4().hex[:12]


class RunError(RuntimeError):
    """A run that cannot be replayed, or a stored run that no longer matches its record."""


# ----------------------------------------------------------------- modes ----
def run_mode(mode: str | None = None) -> str:
    """The explicit ``mode``, else ``$KD_RUNS``, else ``reuse``."""
    mode = mode or os.environ.get(MODE_ENV) or "reuse"
    if mode not in MODES:
        raise ValueError(f"unknown run mode {mode!r} (from {'the argument' if mode else MODE_ENV}); "
                         f"allowed: {', '.join(MODES)}")
    return mode


def session_id() -> str:
    """The session whose runs fresh mode reuses: ``$KD_RUNS_SESSION``, else this process."""
    return os.environ.get(SESSION_ENV) or _PROCESS_SESSION


# ---------------------------------------------------------------- places ----
def stores(profile, root=None) -> dict[str, Path]:
    """The training store and the reference store of a profile (``$KD_REFERENCE_RUNS`` overrides the
    latter when no ``root`` is given)."""
    from .config import output_dirs
    dirs = output_dirs(profile, root=root, create=False)
    ref = os.environ.get(REFERENCE_ENV) if root is None else None
    reference = Path(ref) if ref else Path(dirs["results"]) / "runs"
    return {"training": Path(dirs["models"]) / "runs", "reference": reference, "bank": reference / BANK}


def manifest_path(profile, notebook: str, root=None) -> Path:
    return stores(profile, root)["reference"] / "manifests" / f"{Path(notebook).stem}.json"


# ------------------------------------------------------------ provenance ----
@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of every Python file of ``kd_utils``: provenance only, never part of a run's key."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """The commit of the working tree (``+dirty`` when ``kd_utils`` has uncommitted edits), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """Where and with what a run was made: commit, full source digest, library versions, CPU."""
    from .runtime import versions
    return {"git_commit": git_commit(), "kd_utils_source": source_digest(), "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# --------------------------------------------------------------- records ----
def round_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Round every floating-point parameter and buffer to float16 and back, in place: the weights a
    record stores are then exactly the model's. Tensors that float16 cannot hold stay as they are."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                r = t.to(torch.float16)
                if torch.isfinite(r).all() or not torch.isfinite(t).all():
                    t.copy_(r.to(t.dtype))
    return model


def folder_name(name: str, key: str) -> str:
    return f"{name}-{key[:12]}"


def find(name: str, key: str, places: list[Path], weights: bool = False) -> Path | None:
    """The first folder among ``places`` holding a complete record of (name, key) (``weights``: and its
    ``model.pt``)."""
    for base in places:
        rec = base / folder_name(name, key) / "run.json"
        if rec.is_file() and (not weights or (rec.parent / "model.pt").is_file()):
            try:
                if json.loads(rec.read_text()).get("key") == key:
                    return rec.parent
            except (OSError, ValueError):
                continue
    return None


def read_record(folder: Path) -> dict:
    return json.loads((Path(folder) / "run.json").read_text())


def read_logits(folder: Path) -> dict[str, torch.Tensor | None]:
    path = Path(folder) / "logits.pt"
    try:
        out = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise RunError(f"stored logits {path} cannot be read ({e})") from None
    return out


def write_run(folder: Path, record: dict, history, logits: dict[str, torch.Tensor | None],
              model: torch.nn.Module | None, weights_folder: Path | None = None) -> None:
    """Write a run's files; ``run.json`` last, so a killed writer leaves no record (only files a later
    run overwrites). The model goes to ``weights_folder`` (default: ``folder``)."""
    from .checkpoint import save_checkpoint
    from .fileio import write_bytes, write_json, write_text
    import io
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: (None if v is None else v.to(LOGITS_DTYPE).contiguous()) for k, v in logits.items()}, buf)
    write_bytes(folder / "logits.pt", buf.getvalue())
    write_text(folder / "history.csv", history.to_csv(index=False))
    if model is not None:
        save_checkpoint((weights_folder or folder) / "model.pt", model, config=record["spec"]["config"],
                        seed=record["spec"]["config"].get("seed"), extra={"run": record["name"], "key": record["key"]},
                        state_dtype=torch.float16)
    write_json(folder / "run.json", record)


def load_weights(folder: Path, fallback: Path | None = None) -> torch.nn.Module:
    """The model stored with a run (in ``folder`` or ``fallback``), float32, eval mode."""
    from .checkpoint import load_model
    for base in (folder, fallback):
        if base is not None and (Path(base) / "model.pt").is_file():
            return load_model(Path(base) / "model.pt")
    raise RunError(f"run {Path(folder).name} was stored without its weights (only its record and logits); "
                   "a cell that reads them needs run_experiment(..., keep_weights=True) and a fresh execution")


def explain_mismatch(name: str, spec: dict, places: list[Path]) -> str:
    """Why no stored record of ``name`` matches ``spec``: the fields that differ from the closest one."""
    candidates = []
    for base in places:
        for rec in sorted(base.glob(f"{name}-*/run.json")):
            try:
                saved = json.loads(rec.read_text())
            except (OSError, ValueError):
                continue
            if saved.get("name") == name:
                candidates.append(saved)
    if not candidates:
        return f"no run named {name!r} is stored"
    diffs = min((_diff(s.get("spec", {}), spec) for s in candidates), key=len)
    numerics = [d for d in diffs if d[0].startswith("numerics.")]
    if numerics:
        return "; ".join(f"training numerics of family {k.split('.', 1)[1]!r} changed since it was recorded "
                         f"(v{old} -> v{new})" for k, old, new in numerics)
    return "its specification changed since it was recorded: " + "; ".join(
        f"{k}: {old!r} -> {new!r}" for k, old, new in diffs[:6]) + (" ..." if len(diffs) > 6 else "")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    a, b = _flat(json.loads(json.dumps(old, default=str))), _flat(json.loads(json.dumps(new, default=str)))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------- notebook sets ----
def note_use(profile, folder: Path, keep_weights: bool, root=None, val_logits: bool = False) -> None:
    """Record that the notebook being executed (``$KD_NOTEBOOK``) used this run (``keep_weights``: a cell
    reads its weights; ``val_logits``: a cell read its validation logits)."""
    notebook = os.environ.get(NOTEBOOK_ENV)
    if not notebook:
        return
    log = stores(profile, root)["training"] / "_used" / session_id() / f"{Path(notebook).stem}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(json.dumps({"folder": str(Path(folder).resolve()), "keep_weights": bool(keep_weights),
                             "val_logits": bool(val_logits)}) + "\n")


def _uses(logs, what: str = "keep_weights") -> dict[str, bool]:
    """The run folders :func:`note_use` logged in ``logs``, each with whether any use read ``what``
    ("keep_weights": its weights, "val_logits": its validation logits). A log written before uses noted
    validation reads counts every run's as read."""
    used: dict[str, bool] = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            entry = json.loads(line)
            used[entry["folder"]] = used.get(entry["folder"], False) or bool(entry.get(what, True))
    return used


VAL_KEYS = ("val", "val_members")


def _has_val_logits(folder: Path) -> bool:
    return (Path(folder) / "run.json").is_file() and read_record(folder).get("val_logits", True)


def _without_val_logits(src: Path) -> bytes:
    """``src``'s logits.pt without its validation logits, serialised."""
    import io
    buf = io.BytesIO()
    torch.save({k: v for k, v in read_logits(src).items() if k not in VAL_KEYS}, buf)
    return buf.getvalue()


def has_weights(*folders: Path | None) -> bool:
    """Whether any of ``folders`` (None skipped) holds a run's ``model.pt``."""
    return any(f is not None and (Path(f) / "model.pt").is_file() for f in folders)


def export_notebook_runs(profile, notebook: str, *, wall_time_s: float, root=None) -> Path | None:
    """Copy the runs the notebook just used into the reference store and write its manifest; runs no
    manifest lists any more are removed (the set is replaced, not accumulated). Returns the manifest."""
    from .fileio import write_json
    places = stores(profile, root)
    log = places["training"] / "_used" / session_id() / f"{Path(notebook).stem}.jsonl"
    if not log.is_file():
        return None
    used, val_read = _uses([log]), _uses([log], "val_logits")
    ref = places["reference"]
    # a run another notebook also commits keeps the weights its cells read (the folder is shared)
    elsewhere: set[str] = set()
    for m in (ref / "manifests").glob("*.json"):
        if m.stem != Path(notebook).stem:
            elsewhere.update(json.loads(m.read_text())["runs"])
    # one run used from two stores (its weights from the bank, its record elsewhere from the reference store):
    # one entry, from the copy with weights, keeping them if any use read them
    by_name: dict[str, tuple[Path, bool, bool]] = {}
    for src, keep in used.items():
        val = val_read.get(src, True)
        src = Path(src)
        old = by_name.get(src.name)
        if old is not None and not has_weights(src):
            src = old[0]
        by_name[src.name] = (src, keep or (old is not None and old[1]), val or (old is not None and old[2]))
    names, compute, trained_here, precisions, cpus = [], 0.0, 0, set(), set()
    for src, keep, val in by_name.values():
        dst = ref / src.name
        record = read_record(src)
        same = src.resolve() == dst.resolve()
        keep = keep or ((same or src.name in elsewhere) and has_weights(dst))
        # validation logits only where a cell read them: they are half of a record's size
        val = (val or (src.name in elsewhere and _has_val_logits(dst))) and record.get("val_logits", True)
        if not same or (not val and record.get("val_logits", True)):
            tmp = ref / f".{src.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shutil.copy2(src / "history.csv", tmp / "history.csv")
            if val:
                shutil.copy2(src / "logits.pt", tmp / "logits.pt")
            else:
                (tmp / "logits.pt").write_bytes(_without_val_logits(src))
            weights = next((w for w in (src / "model.pt", places["training"] / src.name / "model.pt", dst / "model.pt")
                            if w.is_file()), src / "model.pt")
            if keep:
                shutil.copy2(weights, tmp / "model.pt")
            (tmp / "run.json").write_text(json.dumps({**record, "weights": bool(keep), "val_logits": bool(val)},
                                                     indent=2) + "\n")
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)
        names.append(src.name)
        compute += float(record["metrics"].get("wall_time_s", 0.0))
        precisions.add(str(record["metrics"].get("precision", "?")))
        cpus.add(str(record.get("provenance", {}).get("versions", {}).get("processor", "?")))
        trained_here += record.get("session") == session_id()
    manifest = manifest_path(profile, notebook, root)
    entry = {"notebook": notebook, "runs": sorted(names), "training_compute_s": round(compute, 1),
             "runs_trained_in_execution": int(trained_here), "execution_wall_time_s": round(wall_time_s, 1),
             "precisions": sorted(precisions), "processors": sorted(cpus)}
    if not trained_here and manifest.is_file():  # re-exported without training: keep the training execution's
        old = json.loads(manifest.read_text())
        if old["runs"] == entry["runs"]:
            entry.update(runs_trained_in_execution=old["runs_trained_in_execution"],
                         execution_wall_time_s=old["execution_wall_time_s"], reexport_wall_time_s=round(wall_time_s, 1))
    write_json(manifest, {**entry, **provenance()})
    prune(profile, root)
    total = size_bytes(profile, root) / 2**20
    if total > BUDGET_MIB:  # the export stands (the execution is done); the budget test fails until it shrinks
        print(f"[export] committed runs now take {total:.1f} MiB, over the {BUDGET_MIB} MiB budget "
              "(kd_utils.runs.BUDGET_MIB): keep fewer weights or fewer runs before committing")
    return manifest


def record_replay_time(profile, notebook: str, seconds: float, root=None) -> None:
    """Add the wall time of the replay that wrote the committed notebook to its manifest."""
    from .fileio import write_json
    manifest = manifest_path(profile, notebook, root)
    if manifest.is_file():
        write_json(manifest, {**json.loads(manifest.read_text()), "replay_wall_time_s": round(seconds, 1)})


def timing_note(profile, notebook: str, root=None) -> str | None:
    """How long "Run All" of ``notebook`` takes with ``profile``, from its committed manifest (the
    execution that trained its runs, and the replay that wrote the committed notebook); None when its
    runs are not committed."""
    from .config import get_profile
    manifest = manifest_path(profile, notebook, root)
    if not manifest.is_file():
        return None
    m = json.loads(manifest.read_text())
    cpu = " + ".join(m.get("processors", [])) or "an unrecorded CPU"  # where the runs were trained
    precision = "/".join(m.get("precisions", [])) or "unrecorded precision"
    h = lambda s: f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"
    note = (f"Run All, {get_profile(profile).name} profile: training every run took {h(m['training_compute_s'])} "
            f"of compute ({len(m['runs'])} run{'' if len(m['runs']) == 1 else 's'}, {cpu}, {precision}, recorded {m.get('created', '?')[:10]})")
    if "replay_wall_time_s" in m:
        note += f"; replaying the committed runs (the default) took {h(m['replay_wall_time_s'])}"
    return note + "."


def prune(profile, root=None) -> list[str]:
    """Remove reference runs that no manifest lists; returns their folder names."""
    ref = stores(profile, root)["reference"]
    listed: set[str] = set()
    for m in (ref / "manifests").glob("*.json"):
        listed.update(json.loads(m.read_text())["runs"])
    gone = []
    for folder in ref.iterdir() if ref.is_dir() else []:
        if folder.is_dir() and folder.name != "manifests" and (folder / "run.json").exists() and folder.name not in listed:
            shutil.rmtree(folder)
            gone.append(folder.name)
    banked, read = ref / BANK, weights_read(profile, root)
    for folder in banked.iterdir() if banked.is_dir() else []:
        committed = ref / folder.name
        # committed now: out of the bank, unless it banks weights a cell reads that the committed copy lacks
        if folder.name in listed and (committed / "run.json").is_file() and \
                (has_weights(committed) or not has_weights(folder) or not read.get(folder.name)):
            shutil.rmtree(folder)
    return gone


def replayable(notebooks, profile=None, root=None) -> tuple[list[str], dict[str, str]]:
    """Which notebooks can be replayed from committed runs, and why the others cannot."""
    ok, skipped = [], {}
    for nb in notebooks:
        m = manifest_path(profile, nb, root)
        if not m.is_file():
            skipped[nb] = "its runs are not committed in the run-record format yet (no " + \
                          f"{m.relative_to(Path(root or '.')) if not m.is_absolute() else m}); " + \
                          f"re-execute it: make run FRESH=1 NOTEBOOKS={nb}"
            continue
        runs = json.loads(m.read_text())["runs"]
        missing = [r for r in runs if not (m.parent.parent / r / "run.json").is_file()]
        if missing:
            skipped[nb] = f"{len(missing)} of its committed runs are missing ({', '.join(missing[:3])})"
        else:
            ok.append(nb)
    return ok, skipped


def size_bytes(profile=None, root=None, store: str = "reference") -> int:
    """Bytes of the reference store (the committed runs, the bank excluded), or of ``store="bank"``."""
    places = stores(profile, root)
    base = places[store]
    files = [p for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
    if store == "reference":
        files = [p for p in files if places["bank"] not in p.parents]
    return sum(p.stat().st_size for p in files)


# ------------------------------------------------------------------ bank ----
def _drop_weights(folder: Path) -> None:
    """Make a run folder a record without weights: the record says so first, then ``model.pt`` goes, so a
    cut-off leaves spare weights, never a record that promises weights it lacks."""
    from .fileio import write_json
    write_json(folder / "run.json", {**read_record(folder), "weights": False})
    (folder / "model.pt").unlink(missing_ok=True)


def _copy_atomic(src: Path, dst: Path, weights: bool = True) -> None:
    """Copy a file (:func:`kd_utils.fileio.atomic_path`) or a run folder (a temporary folder beside it,
    renamed) so that ``dst`` is either absent or complete; ``weights=False`` leaves a run's ``model.pt``
    out (its record then says so)."""
    if not src.is_dir():
        from .fileio import atomic_path
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, ignore=None if weights else shutil.ignore_patterns("model.pt"))
    if not weights:
        _drop_weights(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def weights_read(profile=None, root=None) -> dict[str, bool]:
    """For each run folder name a notebook execution used (the training store's ``_used`` logs, every
    session of this machine's store): whether some cell read its weights (``keep_weights=True``)."""
    read: dict[str, bool] = {}
    for folder, keep in _uses(sorted((stores(profile, root)["training"] / "_used").glob("*/*.jsonl"))).items():
        name = Path(folder).name
        read[name] = read.get(name, False) or keep
    return read


def bank(profile=None, root=None, lean: bool = False) -> dict[str, list[str]]:
    """Keep the training store's work past this session: copy every finished run that no other store
    holds (record, logits, float16 weights) and every saved state of a run cut off part-way into the
    committed bank (``results/<profile>/runs/_bank/``; commit it). A state whose run has finished since is
    dropped from the bank. Returns ``{"runs": [...], "states": [...], "pruned": [...]}``, the names banked
    now and (lean only) those whose weights were dropped from the bank.

    ``lean=True`` banks a run that notebook executions used without any cell reading its weights
    without them, as the reference store would keep it (a reuse needs only the record and logits), and
    drops the weights of such runs banked earlier with them. Only
    for executions in which no stored run teaches another: a run banked without weights cannot teach a
    student that a later session trains (it would be retrained first)."""
    places = stores(profile, root)
    train, ref, banked = places["training"], places["reference"], places["bank"]
    used = weights_read(profile, root)
    read = used if lean else {}
    out: dict[str, list[str]] = {"runs": [], "states": [], "pruned": []}
    for rec in sorted(train.glob("*/run.json")) if train.is_dir() else []:
        folder = rec.parent
        committed = (ref / folder.name / "run.json").is_file()
        # committed without the weights a cell of this execution reads (another notebook committed it): bank
        # them, or the next session retrains it for them
        if (committed and (has_weights(ref / folder.name) or not used.get(folder.name))) \
                or (banked / folder.name / "model.pt").is_file() \
                or ((banked / folder.name / "run.json").is_file() and not committed):
            continue
        if not (folder / "model.pt").is_file():
            continue  # a run recorded without weights cannot teach or be re-evaluated: nothing to keep
        _copy_atomic(folder, banked / folder.name, weights=read.get(folder.name, True))
        out["runs"].append(folder.name)
    for name, keep in read.items():  # lean: runs banked earlier with weights that no cell has read
        folder = banked / name
        if not keep and (folder / "model.pt").is_file() and (folder / "run.json").is_file():
            _drop_weights(folder)
            out["pruned"].append(name)
    for state in sorted((train / "_state").glob("*.pth")) if (train / "_state").is_dir() else []:
        dst = banked / "_state" / state.name
        if not dst.is_file() or dst.stat().st_mtime < state.stat().st_mtime:
            _copy_atomic(state, dst)
            out["states"].append(state.stem)
    for state in sorted((banked / "_state").glob("*.pth")) if (banked / "_state").is_dir() else []:
        if any((store / state.stem / "run.json").is_file() for store in (banked, train, ref)):
            state.unlink()  # the run finished: its state will never be resumed
    return out


def epochs_in_state(path: Path) -> int:
    """The epochs a saved training state holds (0: none, or unreadable: the run starts over)."""
    if not Path(path).is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # a state fit cannot read is refused by fit itself, with its reason
        return 0


def banked_state(state: Path, profile=None, root=None) -> None:
    """Put the bank's saved state of a run at the training store's ``state`` path when there is none
    there (a run cut off in an earlier session resumes from it)."""
    src = stores(profile, root)["bank"] / "_state" / Path(state).name
    if not Path(state).is_file() and src.is_file():
        _copy_atomic(src, Path(state))
