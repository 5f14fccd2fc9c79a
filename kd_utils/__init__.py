"""kd_utils: the helper package of the knowledge-distillation research suite.

Typical use::

    from kd_utils import get_data, build_model, get_profile, fit, distill, evaluate
    data = get_data("mnist")
    teacher = build_model("mnist_cnn")
    fit(teacher, data, get_profile().train("mnist_seed"))
"""
from .config import KDConfig, Profile, TrainConfig, get_profile
from .data import DataBundle, get_data
from .models import build_model
from .runtime import resolve_device, seed_everything
from .train_eval import FitResult, evaluate, fit, predict
from .experiments import Run, cache_teacher_logits, distill, run_experiment
from .plans import AugmentationPlan, teacher_outputs
from .teacher import cifar_teacher, hinton_teacher
from .train_kd import HintonKD, LogitMatching, Vanilla, build_distiller, kd_loss
from . import ensemble, feature_kd, methods  # noqa: F401  (register the "cohort", feature and other distillers)

__version__ = "0.1.0"
__all__ = ["KDConfig", "Profile", "TrainConfig", "get_profile", "DataBundle", "get_data", "build_model",
           "resolve_device", "seed_everything", "FitResult", "evaluate", "fit", "predict", "HintonKD",
           "LogitMatching", "Vanilla", "build_distiller", "cache_teacher_logits", "distill", "kd_loss",
           "Run", "run_experiment", "AugmentationPlan", "teacher_outputs", "cifar_teacher", "hinton_teacher"]
