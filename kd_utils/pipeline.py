"""The seed projects' MNIST pipeline, step by step (each step callable on its own).

    from kd_utils.pipeline import load_and_split_data, train_teacher
    train_loader, val_loader, *_ = load_and_split_data()
    teacher, *_ = train_teacher(train_loader, val_loader)

``run_pipeline()`` chains every step and writes the seed's files (``python -m kd_utils pipeline``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import plots
from .checkpoint import save_checkpoint
from .config import SEED_KD, KDConfig, TrainConfig, get_profile, output_dirs
from .data import get_data
from .fileio import write_json, write_text
from .models import build_model
from .profiling import compare_models
from .runtime import seed_everything, versions
from .train_eval import EvalResult, FitResult, evaluate, fit
from .experiments import cache_teacher_logits, run_experiment
from .train_kd import HintonKD

# The seed's config.py, as defaults.
SEED_CONFIG = {"batch_size": 128, "test_size": 0.1, "random_state": 42, "epochs": 10,
               "temperature": SEED_KD.temperature, "alpha": SEED_KD.alpha, "lr": 1e-3}
MODEL_FILES = {"teacher": "teacher_model.pth", "student_regular": "student_regular.pth",
               "student_distilled": "student_distilled.pth"}


def initialize_directories(profile: str | None = None, root: str | Path | None = None) -> dict[str, Path]:
    """Create ``models/`` and ``results/{metrics,predictions,plots}/`` (profile subfolders off-default)."""
    return output_dirs(profile, root=root)


def load_and_split_data(dataset: str = "mnist", batch_size: int = SEED_CONFIG["batch_size"],
                        test_size: float = SEED_CONFIG["test_size"], random_state: int = SEED_CONFIG["random_state"],
                        profile: str | None = None, data_root: str | Path | None = None):
    """Load a data set and split train/validation. Returns the seed's six-tuple
    ``(train_loader, val_loader, test_loader, train_subset, val_subset, test_dataset)``:
    in-memory loaders (each knows its ``bundle``) and ``torch`` Dataset views."""
    bundle = get_data(dataset, root=data_root, val_fraction=test_size, seed=random_state,
                      **get_profile(profile).data_kwargs())
    loaders = [bundle.loader(s, batch_size=batch_size) for s in ("train", "val", "test")]
    for ld in loaders:
        ld.bundle = bundle
    return (*loaders, bundle.dataset("train"), bundle.dataset("val"), bundle.dataset("test"))


def _train_config(train_loader, epochs: int | None, lr: float, seed: int, **kw: Any) -> TrainConfig:
    return TrainConfig(epochs=epochs or SEED_CONFIG["epochs"], batch_size=train_loader.batch_size, optimizer="adam",
                       lr=lr, seed=seed, **kw)


def _state(state_dir: str | Path | None, name: str) -> Path | None:
    return None if state_dir is None else Path(state_dir) / f"{name}.pth"


def _memoised(name: str, arch: str, bundle, cfg: TrainConfig, profile, progress: bool, **run_kw: Any) -> nn.Module:
    """A stored run (:func:`kd_utils.experiments.run_experiment`, weights kept) as the seed API's
    model with ``.fit_result``: trained once, then reused, or replayed from the committed runs."""
    run = run_experiment(name, {"name": arch}, bundle, cfg, profile=profile, progress=progress, keep_weights=True,
                         **run_kw)
    model = run.model
    m = run.metrics
    model.fit_result = FitResult(run.history, m["best_epoch"], m["best_val_acc"], m["train_time_s"],
                                 {"teacher_outputs": m["teacher_outputs"], "precision_used": m["precision"]})
    model.run = run
    return model


def train_teacher(train_loader, val_loader, epochs: int | None = None, arch: str = "mnist_cnn",
                  lr: float = SEED_CONFIG["lr"], seed: int = 0, progress: bool = True,
                  state_dir: str | Path | None = None, resume: bool = False, profile: str | None = None,
                  **train_kw: Any):
    """Train the teacher with cross-entropy and Adam. Returns the seed's
    ``(model, train_loss, val_loss, train_acc, val_acc)``; the full history is ``model.fit_result``.
    With a ``profile`` the run is memoised (stored, reused, replayable; ``state_dir``/``resume`` unused)."""
    bundle = train_loader.bundle
    cfg = _train_config(train_loader, epochs, lr, seed, **train_kw)
    if profile is not None:
        model = _memoised(f"seed-teacher-{arch}-s{seed}", arch, bundle, cfg, profile, progress)
    else:
        seed_everything(seed)
        model = build_model(arch, num_classes=bundle.num_classes)
        model.fit_result = fit(model, bundle, cfg, progress=progress, desc=f"teacher ({arch})",
                               state_path=_state(state_dir, "teacher"), resume=resume)
    h = model.fit_result.history
    return model, h["train_loss"].tolist(), h["val_loss"].tolist(), h["train_acc"].tolist(), h["val_acc"].tolist()


def prepare_distillation_data(teacher: nn.Module, train_loader, val_loader, train_subset=None, val_subset=None,
                              precision: str = "fp32"):
    """Teacher logits computed once for the training and validation sets (the seed's DistillDataset):
    returns loaders yielding ``(x, y, teacher_logits)``. The logits are fp32 by default, as the seed's
    are, so they equal a fresh :func:`~kd_utils.train_eval.predict` on every CPU (bf16 units or not)."""
    bundle = train_loader.bundle
    out = []
    for split, ld in (("train", train_loader), ("val", val_loader)):
        logits = cache_teacher_logits(teacher, bundle, split, precision=precision)
        dl = bundle.loader(split, batch_size=ld.batch_size, extras=(logits,))
        dl.bundle = bundle
        out.append(dl)
    return tuple(out)


def train_students(teacher: nn.Module, train_loader, val_loader, train_distill_loader, val_distill_loader,
                   epochs: int | None = None, temperature: float = SEED_CONFIG["temperature"],
                   alpha: float = SEED_CONFIG["alpha"], arch: str = "mnist_mlp", lr: float = SEED_CONFIG["lr"],
                   seed: int = 0, progress: bool = True, state_dir: str | Path | None = None, resume: bool = False,
                   profile: str | None = None):
    """Train the regular student on hard labels and the distilled student on hard labels plus the
    teacher's cached soft targets. Returns ``(student_regular, student_distilled, histories)``.
    With a ``profile`` both runs are memoised (see :func:`train_teacher`); both start from the same
    initial weights either way (one seed), so the only difference is the teacher."""
    KDConfig(temperature, alpha)  # validate before any training
    bundle = train_loader.bundle
    cfg = _train_config(train_loader, epochs, lr, seed)
    if profile is not None:
        regular = _memoised(f"seed-student-{arch}-s{seed}", arch, bundle, cfg, profile, progress)
        distilled = _memoised(f"seed-student-{arch}-kd-T{temperature:g}-a{alpha:g}-s{seed}", arch, bundle, cfg,
                              profile, progress, method="kd", teacher=teacher, temperature=temperature, alpha=alpha)
        return regular, distilled, {"student_regular": regular.fit_result.history,
                                    "student_distilled": distilled.fit_result.history}
    seed_everything(seed)
    regular = build_model(arch, num_classes=bundle.num_classes)
    res_reg = fit(regular, bundle, cfg, progress=progress, desc="regular student",
                  state_path=_state(state_dir, "student_regular"), resume=resume)
    seed_everything(seed)  # same initial weights: the only difference is the teacher
    distilled = build_model(arch, num_classes=bundle.num_classes)
    res_kd = fit(distilled, bundle, cfg, method=HintonKD(distilled, teacher, temperature, alpha),
                 teacher_outputs={"logits": train_distill_loader.extras[0]}, progress=progress, desc="distilled student",
                 state_path=_state(state_dir, "student_distilled"), resume=resume)
    regular.fit_result, distilled.fit_result = res_reg, res_kd
    return regular, distilled, {"student_regular": res_reg.history, "student_distilled": res_kd.history}


def evaluate_all_models(teacher: nn.Module, student_reg: nn.Module, student_dist: nn.Module, test_loader,
                        verbose: bool = True) -> dict[str, EvalResult]:
    """Test-set evaluation of the three models (prints accuracy and prediction distributions)."""
    results = {name: evaluate(m, test_loader) for name, m in
               (("teacher", teacher), ("student_regular", student_reg), ("student_distilled", student_dist))}
    if verbose:
        for name, r in results.items():
            print(f"{name:18s} accuracy {100 * r.accuracy:.2f}%  errors {r.errors}/{r.n}  "
                  f"predicted per class {r.prediction_distribution.tolist()}")
    return results


def summaries(results: dict[str, EvalResult], teacher_key: str = "teacher") -> dict[str, dict]:
    """Each model's JSON-friendly summary; students are also compared with the teacher."""
    t = results.get(teacher_key)
    return {name: r.summary(None if name == teacher_key else t) for name, r in results.items()}


def metrics_table(results: dict[str, EvalResult], teacher_key: str = "teacher",
                  summary: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per model: accuracy, errors, ECE, and agreement/KL with the teacher."""
    summary = summary if summary is not None else summaries(results, teacher_key)
    rows = {name: {k: v for k, v in d.items() if k != "per_class_accuracy"} for name, d in summary.items()}
    return pd.DataFrame(rows).T


def save_and_visualize_results(models: dict[str, nn.Module], histories: dict[str, pd.DataFrame],
                               results: dict[str, EvalResult], bundle, dirs: dict[str, Path],
                               config: dict | None = None, cost: pd.DataFrame | None = None,
                               n_examples: int = 12) -> list[Path]:
    """Write the seed's files: checkpoints, four plots, metrics (JSON + CSV), prediction examples."""
    written: list[Path] = []
    per_model = summaries(results)  # computed once: checkpoints, JSON and CSV share it
    for name, m in models.items():
        written.append(save_checkpoint(dirs["models"] / MODEL_FILES.get(name, f"{name}.pth"), m, config=config,
                                       metrics=per_model[name],
                                       seed=(config or {}).get("seed")))
    p = dirs["plots"]
    figs = {
        "teacher_training.png": plots.plot_history({"teacher": histories["teacher"]}, title="Teacher training"),
        "training_curves.png": plots.plot_history(histories, title="Training curves"),
        "accuracy_comparison.png": plots.plot_accuracy_comparison({k: r.accuracy for k, r in results.items()},
                                                                  title="Test accuracy"),
    }
    idx = torch.arange(n_examples)
    x, y = bundle.x_test[idx], bundle.y_test[idx]
    figs["prediction_examples.png"] = plots.plot_prediction_examples(
        x, y, {k: r.preds[idx] for k, r in results.items()}, class_names=bundle.classes, n=n_examples)
    for fname, fig in figs.items():
        written.append(plots.save_figure(fig, p / fname, close=True))
    table = metrics_table(results, summary=per_model)
    summary = {"models": per_model,
               "config": config or {}, "versions": versions()}
    if cost is not None:
        summary["cost"] = cost.reset_index().to_dict(orient="records")
        written.append(write_text(dirs["metrics"] / "model_cost.csv", cost.to_csv()))
    written.append(write_json(dirs["metrics"] / "evaluation.json", summary))
    written.append(write_text(dirs["metrics"] / "evaluation.csv", table.to_csv()))
    for name, h in histories.items():
        written.append(write_text(dirs["metrics"] / f"history_{name}.csv", h.to_csv(index=False)))
    preds = pd.DataFrame({"index": torch.arange(len(bundle.y_test)).tolist(), "label": bundle.y_test.tolist(),
                          **{f"pred_{k}": r.preds.tolist() for k, r in results.items()},
                          **{f"conf_{k}": r.probs.max(1).values.tolist() for k, r in results.items()}})
    written.append(write_text(dirs["predictions"] / "test_predictions.csv", preds.to_csv(index=False)))
    written.append(write_text(dirs["predictions"] / "prediction_examples.csv", preds.head(n_examples).to_csv(index=False)))
    return written


def cost_table(models: dict[str, nn.Module], data, baseline: str = "teacher", repeats: int = 20) -> pd.DataFrame:
    """Parameters, FLOPs per image, checkpoint size, latency at batch 1 and 256, and the time of a
    full test-set pass (median of 3), with the speed-up of each model over ``baseline``."""
    cost = compare_models(models, data.shape, baseline=baseline, repeats=repeats)
    loader = data.loader("test", batch_size=1000)
    full = {}
    for name, m in models.items():
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            evaluate(m, loader, device="cpu")
            times.append(time.perf_counter() - t0)
        full[name] = sorted(times)[1]
    cost["test_pass_s"] = pd.Series(full)
    cost[f"test_pass_speedup_vs_{baseline}"] = cost.loc[baseline, "test_pass_s"] / cost["test_pass_s"]
    return cost


@dataclass
class PipelineResult:
    models: dict[str, nn.Module]
    histories: dict[str, pd.DataFrame]
    results: dict[str, EvalResult]
    cost: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_pipeline(dataset: str = "mnist", epochs: int | None = None, batch_size: int = SEED_CONFIG["batch_size"],
                 test_size: float = SEED_CONFIG["test_size"], random_state: int = SEED_CONFIG["random_state"],
                 temperature: float = SEED_CONFIG["temperature"], alpha: float = SEED_CONFIG["alpha"],
                 lr: float = SEED_CONFIG["lr"], teacher_arch: str = "mnist_cnn", student_arch: str = "mnist_mlp",
                 seed: int = 0, profile: str | None = None, out: str | Path | None = None,
                 data_root: str | Path | None = None, progress: bool = True, resume: bool = False,
                 verbose: bool = True) -> PipelineResult:
    """The seven steps of the seed pipeline, end to end. Each training run keeps its per-epoch state
    in ``models/training_state/``; ``resume=True`` continues interrupted runs from there.

    Every argument is checked before anything is trained or any folder created (both architectures
    must be registered and take the data set's images). ``progress`` shows progress bars; ``verbose``
    prints the test accuracies (independently of ``progress``)."""
    from .data import dataset_info
    from .models import check_model
    KDConfig(temperature, alpha)
    prof = get_profile(profile)
    info = dataset_info(dataset)
    for role, arch in (("teacher_arch", teacher_arch), ("student_arch", student_arch)):
        try:
            check_model(arch, num_classes=info["num_classes"], shape=info["shape"])
        except ValueError as e:
            raise ValueError(f"{role}={arch!r}: {e}") from None
    epochs = epochs or prof.train("mnist_seed").epochs
    start = time.perf_counter()
    dirs = output_dirs(prof.name, root=out, create=False)  # created once there is something to write
    state_dir = Path(dirs["models"]) / "training_state"
    train_loader, val_loader, test_loader, train_set, val_set, _ = load_and_split_data(
        dataset, batch_size, test_size, random_state, prof.name, data_root)
    bundle = train_loader.bundle
    teacher, *_ = train_teacher(train_loader, val_loader, epochs=epochs, arch=teacher_arch, lr=lr, seed=seed,
                                progress=progress, state_dir=state_dir, resume=resume)
    tdl, vdl = prepare_distillation_data(teacher, train_loader, val_loader, train_set, val_set)
    reg, dist, hist = train_students(teacher, train_loader, val_loader, tdl, vdl, epochs=epochs,
                                     temperature=temperature, alpha=alpha, arch=student_arch, lr=lr, seed=seed,
                                     progress=progress, state_dir=state_dir, resume=resume)
    models = {"teacher": teacher, "student_regular": reg, "student_distilled": dist}
    histories = {"teacher": teacher.fit_result.history, **hist}
    from .distributed import is_main
    results = evaluate_all_models(teacher, reg, dist, test_loader, verbose=verbose and is_main())  # once, by rank 0
    cost = cost_table(models, bundle)
    config = {"dataset": dataset, "epochs": epochs, "batch_size": batch_size, "test_size": test_size,
              "random_state": random_state, "temperature": temperature, "alpha": alpha, "lr": lr,
              "teacher_arch": teacher_arch, "student_arch": student_arch, "seed": seed, "profile": prof.name}
    files = save_and_visualize_results(models, histories, results, bundle, initialize_directories(prof.name, root=out),
                                       config=config, cost=cost) if is_main() else []
    return PipelineResult(models, histories, results, cost, files, time.perf_counter() - start)
