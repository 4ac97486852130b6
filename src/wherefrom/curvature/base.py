"""The solver interface and registry: fit on a training objective, then apply ``(H + λI)⁻¹`` to vectors.

``damping`` ``λ`` is always *absolute* and added to the mean-reduced Hessian ``H`` of
``R(θ) = (1/n) Σ ℓ_i + (wd/2)‖θ‖²``: every solver approximates the same operator ``(H + λI)⁻¹``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from wherefrom.curvature.objective import TrainingObjective
from wherefrom.errors import WherefromError, unknown_name


class Solver:
    """Base class: ``fit(objective) -> self``; ``solve(V [m, p]) -> (H + λI)⁻¹ V`` as ``[m, p]``."""

    name: str = "solver"

    def __init__(self, damping: float = 0.0) -> None:
        if damping is None:
            raise WherefromError(f"The {self.name} solver has no relative damping default; pass a number "
                                 "(damping=None is accepted by kfac, ekfac and datainf).")
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

    # ------------------------------------------------------------------ persistence (factored solvers)
    def state_dict(self) -> dict[str, Any]:
        """The fitted factors as a dict of tensors (solvers that can be saved override this)."""
        raise WherefromError(f"The {self.name} solver has no factors to save (it works from the objective "
                             "directly); save/load is available for arnoldi, kfac, ekfac and datainf.")

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise WherefromError(f"The {self.name} solver cannot be loaded from saved factors.")

    @property
    def saveable(self) -> bool:
        """Whether this solver's fitted factors can be saved and loaded."""
        return type(self).state_dict is not Solver.state_dict

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write the fitted factors (and ``damping``, the solver name, ``meta``) to ``path`` with ``torch.save``."""
        payload = {"solver": self.name, "damping": self.damping, "state": self.state_dict(), "meta": meta or {}}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any]:
        """The raw saved payload (``solver``, ``damping``, ``state``, ``meta``), read with ``weights_only=True``."""
        return torch.load(path, map_location="cpu", weights_only=True)

    @classmethod
    def load(cls, path: str | os.PathLike, objective: TrainingObjective | None = None, **options: Any) -> Solver:
        """A solver rebuilt from :meth:`save` output without refitting; ``options`` are its constructor options.

        ``objective`` (optional) is attached for solvers that still need it when solving.
        """
        payload = cls.read(path)
        solver = make_solver(payload["solver"], payload["damping"], **options)
        if cls is not Solver and not isinstance(solver, cls):
            raise WherefromError(f"{os.fspath(path)!r} holds a {payload['solver']!r} solver, not {cls.name!r}.")
        solver.load_state_dict(payload["state"])
        solver.objective = objective
        return solver


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
    except WherefromError:
        raise
    except TypeError as exc:
        raise WherefromError(f"Bad options for the {name!r} solver: {exc}") from exc
