"""Running the figures and the command line: ``python -m benchmarks``."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from kd_utils.cli import positive_int
from kd_utils.fileio import write_json, write_text
from kd_utils.runtime import cpu_has_fast_bf16, seed_everything, versions
from .core import DEFAULT_MD, FULL, QUICK, SEED, TINY, Bench, Sizes, SkipFigure, _cpu_flags
from .registry import FIGURES
from .report import _fmt, _met_text, _target_text, render_markdown


# =====================================================================================================
# Running and reporting
# =====================================================================================================

def machine_info(device: torch.device) -> dict[str, Any]:
    """What the timings ran on, including the load average (a busy machine inflates every figure)."""
    v = versions()
    info: dict[str, Any] = {"processor": v.get("processor"), "logical_cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": str(device),
                            "cpu_flags": _cpu_flags(), "cpu_has_fast_bf16": cpu_has_fast_bf16()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["summary"] = (f"{info.get('gpu') or v.get('processor')}, device {device}, "
                       f"torch threads: {info['torch_threads']}")
    return info


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run(names: Sequence[str], sizes: Sizes, device: str | torch.device = "auto") -> tuple[dict[str, Any], int]:
    """Measure the named figures; return the results document and the number of figures that failed."""
    from tqdm import tqdm
    b = Bench(sizes, device)
    machine = machine_info(b.device)
    machine["load_average_start"] = _load()
    started = time.perf_counter()
    figures, skipped, errors = [], [], 0
    for name in tqdm(names, desc="benchmarks", unit="figure", file=sys.stderr):
        seed_everything(SEED)  # each figure's numbers do not depend on which ran before it
        t0 = time.perf_counter()
        try:
            fig = FIGURES[name](b)
        except SkipFigure as e:
            skipped.append({"name": name, "reason": str(e)})
            b.log(f"{name}: skipped: {e}")
            continue
        except Exception as e:  # recorded and reported, never swallowed: the exit status says so too
            errors += 1
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            skipped.append({"name": name, "reason": f"error: {type(e).__name__}: {e}", "traceback": tb})
            continue
        fig.detail["bench_elapsed_s"] = round(time.perf_counter() - t0, 2)
        figures.append(fig.to_dict())
        b.log(f"{name}: {_fmt(fig.value)} {fig.unit} (target {_target_text(fig.to_dict())}, met {_met_text(fig.met)})")
    machine["load_average_end"] = _load()
    results = {"machine": machine, "versions": versions(),
               "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "mode": sizes.mode, "wall_time_s": round(time.perf_counter() - started, 2),
               "repeats": sizes.repeats, "figures": figures, "skipped": skipped}
    return results, errors


def _parse_only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="Measure the suite's speed figures; write <out>/benchmarks.json and "
                                            "BENCHMARKS.md. Run on an otherwise idle machine.")
    p.add_argument("--quick", action="store_true", help="smaller sizes, 3-5 minutes, no time-to-accuracy runs")
    p.add_argument("--out", default="results", help="folder for benchmarks.json (default: results)")
    p.add_argument("--md", default=str(DEFAULT_MD), help="where to write the Markdown report (default: %(default)s)")
    p.add_argument("--only", type=_parse_only, action="append", default=None, metavar="NAME[,NAME]",
                   help="run only these figures (repeatable)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats per measurement (default: 5 full, 3 quick; at least 3)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: ~1k images, every code path
    return p


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (so the report does not carry a home directory)."""
    try:
        return str(Path(path).resolve().relative_to(DEFAULT_MD.parent))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 when a figure failed with an error."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, fn in FIGURES.items():
            print(f"{name:28s} {' '.join((fn.__doc__ or '').split())}")
        return 0
    names = [n for group in args.only for n in group] if args.only else list(FIGURES)
    names = list(dict.fromkeys(names))
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 3:
            build_parser().error(f"--repeats must be at least 3 (every figure is a median of >= 3 runs), got {args.repeats}")
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        results, errors = run(names, sizes, args.device)
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called in-process (tests, notebooks)
    json_path = write_json(Path(args.out) / "benchmarks.json", results)
    md_path = write_text(args.md, render_markdown(results, _display_path(json_path)))
    print(f"wrote {json_path} and {md_path} ({results['mode']} mode, {results['wall_time_s']:.0f} s)")
    for fig in results["figures"]:
        print(f"  {fig['name']:28s} {_fmt(fig['value']):>8s} {fig['unit']:9s} target {_target_text(fig):8s} "
              f"met {_met_text(fig['met']).strip('*')}")
    for s in results["skipped"]:
        print(f"  {s['name']:28s} skipped: {s['reason'].splitlines()[0]}")
    return 1 if errors else 0
