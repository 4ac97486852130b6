"""The solver interface and registry: fit on a training objective, then apply ``(H + λI)⁻¹`` to vectors.

``damping`` ``λ`` is always *absolute* and added to the mean-reduced Hessian ``H`` of
``R(θ) = (1/n) Σ ℓ_i + (wd/2)‖θ‖²``: every solver approximates the same operator ``(H + λI)⁻¹``.
"""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.curvature.objective import TrainingObjective
from wherefrom.errors import WherefromError, unknown_name


class Solver:
    """Base class: ``fit(objective) -> self``; ``solve(V [m, p]) -> (H + λI)⁻¹ V`` as ``[m, p]``."""

    name: str = "solver"

    def __init__(self, damping: float = 0.0) -> None:
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        self.damping = float(damping)
        self.objective: TrainingObjective | None = None

    def fit(self, objective: TrainingObjective) -> Solver:
        self.objective = objective
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _require_fit(self) -> TrainingObjective:
        if self.objective is None:
            raise WherefromError(f"The {self.name} solver must be fitted before solve(); call fit(objective).")
        return self.objective


SOLVERS: dict[str, type[Solver]] = {}


def register_solver(name: str):
    """Class decorator: make a solver class available to ``InfluenceFunction(solver=name)``."""

    def deco(cls: type[Solver]) -> type[Solver]:
        cls.name = name
        SOLVERS[name] = cls
        return cls

    return deco


def make_solver(name: str | Solver, damping: float, **options: Any) -> Solver:
    """Build the solver registered as ``name`` with ``damping`` and its own options (or pass a Solver through)."""
    if isinstance(name, Solver):
        return name
    if name not in SOLVERS:
        raise unknown_name("solver", name, list(SOLVERS))
    try:
        return SOLVERS[name](damping=damping, **options)
    except TypeError as exc:
        raise WherefromError(f"Bad options for the {name!r} solver: {exc}") from exc
