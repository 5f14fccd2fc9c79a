"""Intermediate features through forward hooks, addressed by dotted module path (as torchdistill does).

    with FeatureHooks(model, ["stage3", "stage4"]) as feats:
        logits = model(x)
        f3 = feats.pop()["stage3"]

Models need no special ``forward``; unknown layer names are rejected with the list of valid ones.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable module path of ``model`` (children before their parents' siblings)."""
    return [name for name, _ in model.named_modules() if name]


class FeatureHooks:
    """Collect the outputs of named modules on every forward pass; ``pop()`` hands them over and
    empties the store. Hooks are removed by ``close()`` or on leaving a ``with`` block."""

    def __init__(self, model: nn.Module, names: Iterable[str]):
        names = list(names)
        if not names:
            raise ValueError("give at least one layer name")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            known = layer_names(model)
            shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
            raise ValueError(f"{type(model).__name__} has no layer(s) {missing}; known layers: {shown}")
        self.names = names
        self._store: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self._store[name] = output
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The features of the last forward pass, by name (the store is emptied)."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise RuntimeError(f"no features captured for {missing}: run a forward pass first")
        out, self._store = self._store, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._store = [], {}

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
