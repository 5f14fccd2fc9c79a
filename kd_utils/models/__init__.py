"""Model constructors by name: ``build_model("vgg13", width=0.5, num_classes=10)``.

Every model built here remembers how it was built (``model.arch``), so a checkpoint can rebuild it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from .ensembles import Cohort, Ensemble
from .small import MLP, CifarCNN, CifarResNet, MnistCNN
from .vgg import VGG, VGG_CONFIGS


def _vgg(depth: str) -> Callable[..., nn.Module]:
    def make(**kw: Any) -> nn.Module:
        return VGG(depth=depth, **kw)
    make.__doc__ = f"{depth} (CIFAR VGG with BatchNorm); kwargs: width, num_classes, in_channels, dropout"
    return make


MODELS: dict[str, Callable[..., nn.Module]] = {
    **{depth: _vgg(depth) for depth in VGG_CONFIGS},
    "mlp": MLP,
    "mnist_mlp": lambda **kw: MLP(**{"hidden": (128,), **kw}),
    "mnist_cnn": MnistCNN,
    "hinton_teacher": lambda **kw: MLP(**{"hidden": (1200, 1200), "dropout": 0.4, "input_dropout": 0.1,
                                          "max_norm": 3.5, **kw}),
    "hinton_student": lambda **kw: MLP(**{"hidden": (800, 800), **kw}),
    "cifar_resnet": CifarResNet,
    "cifar_cnn": CifarCNN,
}


DEFAULT_COHORT = ({"name": "vgg8", "width": 0.25}, {"name": "vgg8", "width": 0.25})


def build_cohort(members: Sequence[dict] = DEFAULT_COHORT, num_classes: int = 10, **common: Any) -> Cohort:
    """A :class:`Cohort` from model specs ``[{"name": "vgg8", "width": 0.25}, ...]`` (built in order,
    so one seed gives every member its own, reproducible initialisation); registered as the model
    ``"cohort"``, so cohorts checkpoint and reload like any model. ``common`` keywords (e.g. ``width``)
    apply to every member unless its spec sets them."""
    students = []
    for spec in members:
        spec = dict(spec)
        students.append(build_model(spec.pop("name"), num_classes=num_classes, **{**common, **spec}))
    return Cohort(students)


MODELS["cohort"] = build_cohort
# One line a model, for listings and error messages.
DESCRIPTIONS = {
    "mlp": "MLP with configurable hidden sizes (784 inputs)",
    "mnist_mlp": "seed student MLP 784-128-10",
    "mnist_cnn": "seed teacher CNN: conv32@5x5, maxpool 5, FC128",
    "hinton_teacher": "Hinton 2015 teacher 784-1200-1200-10, dropout 0.4 (input 0.1), max-norm 3.5",
    "hinton_student": "Hinton 2015 student 784-800-800-10, no regularisation",
    "cifar_resnet": "ResNet-style CIFAR teacher (3 stages of basic blocks)",
    "cifar_cnn": "compact CIFAR CNN student",
    "cohort": "several students trained together (kd_utils.models.Cohort); kwargs: members=[spec, ...]",
    **{d: f"CIFAR {d.upper()} with BatchNorm and width multiplier" for d in VGG_CONFIGS},
}


def register_model(name: str, constructor: Callable[..., nn.Module] | None = None, *, description: str | None = None,
                   overwrite: bool = False):
    """Add a model constructor to the registry :func:`build_model` reads.

    As a decorator, ``@register_model("my_net")`` above a class or function; or called directly,
    ``register_model("my_net", MyNet)``. The constructor takes keyword arguments (``num_classes``
    at least, by convention) and returns an ``nn.Module``. Models built from it carry ``.arch``, so
    checkpoints rebuild them with :func:`kd_utils.checkpoint.load_model`, and the command line can
    name them (``python -m kd_utils --import mymodule ...``). Registering a taken name is an error
    unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name must be a non-empty string of letters, digits, '_' or '-', got {name!r}")

    def add(ctor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(ctor):
            raise TypeError(f"register_model({name!r}): constructor must be callable, got {type(ctor).__name__}")
        if name in MODELS and not overwrite and MODELS[name] is not ctor:
            raise ValueError(f"model name {name!r} is already registered ({DESCRIPTIONS.get(name, 'no description')}); "
                             "choose another name or pass overwrite=True")
        MODELS[name] = ctor
        doc = (getattr(ctor, "__doc__", None) or "").strip().splitlines()
        DESCRIPTIONS[name] = description or (doc[0] if doc else f"user model {getattr(ctor, '__qualname__', name)}")
        return ctor

    return add if constructor is None else add(constructor)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model. Unknown names and bad arguments raise ``ValueError``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))} "
                         "(register your own with kd_utils.models.register_model)")
    try:
        model = MODELS[name](**kwargs)
    except TypeError as e:  # unexpected keyword: say which model rejected it
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None
    except ValueError as e:  # a constructor's own argument check: keep its type and message
        raise ValueError(f"model {name!r}: {e}") from None
    except Exception as e:
        raise RuntimeError(f"the constructor of model {name!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise TypeError(f"the constructor of model {name!r} returned {type(model).__name__}, not an nn.Module")
    model.arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def check_model(name: str, *, num_classes: int, shape: Sequence[int], **kwargs: Any) -> None:
    """Fail now, not after hours of training, for a model that cannot train on this data: an unknown name
    (the error lists the registered ones), bad constructor arguments, or an input shape ``(C, H, W)`` it
    cannot take (two blank images are passed through it) or a wrong number of outputs."""
    import torch
    model = build_model(name, num_classes=num_classes, **kwargs)
    x = torch.zeros(2, *shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        raise ValueError(f"model {name!r} cannot take this data's {tuple(shape)} images: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {name!r} returned {got} for 2 images, expected (2, {num_classes}) logits")


__all__ = ["build_model", "build_cohort", "register_model", "check_model", "MODELS", "DESCRIPTIONS", "VGG", "MLP", "MnistCNN",
           "CifarResNet", "CifarCNN", "Cohort", "Ensemble"]
