"""Registries of attribution methods: classes by name (for saved state) and benchmark presets by bench name.

- Every :class:`~wherefrom.methods.Attributor` subclass registers itself in :data:`ATTRIBUTORS` when it is defined
  (``wf.load`` rebuilds a saved attributor from its class).
- A *method preset* is a factory ``factory(context) -> Attributor`` registered under a bench name
  (``"if-cg"``, ``"trak-10"``) with :func:`register_method`; the :class:`MethodContext` carries everything a benchmark
  setting can offer, a factory takes what it needs and raises :class:`~wherefrom.errors.WherefromError` when something
  it needs is missing. The built-in presets live in :mod:`wherefrom.bench.presets`, loaded on the first lookup.

    @register_method("grad-dot", "Gradient dot product at the final checkpoint")
    def _(ctx): return GradDot(ctx.task, **ctx.options)

This module imports nothing from :mod:`wherefrom.methods` (methods import it), so there is no import cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wherefrom.errors import unknown_name
from wherefrom.task import Checkpoint, Task

#: modules whose import registers the built-in method presets.
PRESET_MODULES = ("wherefrom.bench.presets", "wherefrom.bench.presets_trajectory")


@dataclass
class MethodContext:
    """What a benchmark setting offers to method factories.

    Attributes:
        task: the task at the final (reference) model.
        trajectory: checkpoints saved along the reference training run, oldest first, with learning rates.
        ensemble: checkpoints of independently trained models (different seeds or data subsets) for
            ensemble methods (TRAK-M); the reference model may be among them.
        features_fn: ``features_fn(batch) -> Tensor[B, d]`` embedding for feature-space methods (KNN-Shapley).
        last_layer: name of the final linear layer (representer points).
        options: method options given by the user (e.g. ``damping``), passed to the method's constructor.
        seed: seed for randomised methods.
        recorded_run: ``recorded_run() -> Trajectory | None``, the reference run recorded step by step (trajectory
            methods such as HYDRA), or ``None`` when the setting has none.
    """

    task: Task
    trajectory: Sequence[Checkpoint] = ()
    learning_rates: Sequence[float] = ()
    ensemble: Sequence[Checkpoint] = ()
    features_fn: Callable[[Any], Any] | None = None
    last_layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    recorded_run: Callable[[], Any] | None = None


@dataclass
class MethodSpec:
    name: str
    description: str
    factory: Callable[[MethodContext], Any]


METHODS: dict[str, MethodSpec] = {}
ATTRIBUTORS: dict[str, type] = {}


def register_attributor(cls: type) -> type:
    """Record an attributor class under its name (called by ``Attributor.__init_subclass__``)."""
    ATTRIBUTORS[cls.__name__] = cls
    return cls


def register_method(name: str, description: str):
    """Decorator: register ``factory(context) -> Attributor`` under the bench name ``name``."""

    def deco(factory: Callable[[MethodContext], Any]):
        METHODS[name] = MethodSpec(name, description, factory)
        return factory

    return deco


def make_method(name: str, context: MethodContext):
    """Build the attributor registered as ``name`` for ``context``."""
    _load_builtin()
    if name not in METHODS:
        raise unknown_name("method", name, list(METHODS))
    return METHODS[name].factory(context)


def method_names() -> list[str]:
    """Names of every registered method."""
    _load_builtin()
    return sorted(METHODS)


def _load_builtin() -> None:
    for module in PRESET_MODULES:
        importlib.import_module(module)
