"""A notebook's first and last cells in two calls: what every research notebook sets up and records.

    session = begin(PROFILE, seed=SEED)          # profile, output folders, seeds, clock; prints versions
    ...
    summary = session.summary(teacher=..., methods=...)   # + execution record (git, runs, compute, CPUs)
    write_json(session.dirs["metrics"] / "logit_matching.json", summary)

``summary`` counts training compute one way for every notebook: the wall time of every run the process
used (:func:`kd_utils.experiments.execution_summary`, from the runs' records, whether trained now,
reused or replayed), so no notebook sums its own runs by hand.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_PROFILE, Profile, get_profile, output_dirs
from .experiments import execution_summary
from .runs import timing_note
from .runtime import seed_everything, versions


@dataclass
class Session:
    """What :func:`begin` set up: the profile, its output folders, the seeds and the start time."""
    profile: Profile
    dirs: dict[str, Path]
    seeds: list[int]
    seed: int | None
    notebook: str | None
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def summary(self, **fields: Any) -> dict[str, Any]:
        """The results file's common head (profile, seeds, versions, execution record) then ``fields``."""
        head = {"profile": self.profile.name, "seeds": self.seeds, "versions": versions(),
                "execution": execution_summary(self.start, self.notebook)}
        if self.seed is not None:
            head["seed"] = self.seed
        clash = sorted(set(head) & set(fields))
        if clash:
            raise ValueError(f"summary fields {clash} would overwrite the session's own; rename them")
        return {**head, **fields}


def begin(profile: str | Profile | None = None, seed: int | None = None, notebook: str | None = None,
          quiet: bool = False) -> Session:
    """Resolve the profile (None: ``$KD_PROFILE``, else cpu), create its output folders, seed everything
    with ``seed`` (when given) and start the notebook's clock; print the profile, seeds and library
    versions unless ``quiet``, and how long "Run All" took when the notebook's runs are committed.
    ``notebook``: the file name, for the execution record of a replay and the timing line."""
    prof = get_profile(profile)
    if seed is not None:
        seed_everything(seed)
    s = Session(prof, output_dirs(prof), list(prof.seeds), seed, notebook)
    if not quiet:
        print(f"profile: {prof.name}   seeds: {s.seeds}" + ("" if seed is None else f"   seed: {seed}"))
        for k, v in versions().items():
            print(f"{k:12s} {v}")
        note = timing_note(DEFAULT_PROFILE, notebook) if notebook else None
        if note:
            print(note)
    return s
