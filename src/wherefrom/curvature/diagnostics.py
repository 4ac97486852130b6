"""Curvature diagnostics: extreme eigenvalues, a conditioning check, and solver residuals.

- :func:`extreme_eigenvalues` estimates the smallest and largest eigenvalues of the curvature ``C`` of a
  :class:`~wherefrom.curvature.TrainingObjective` (Hessian, GGN or Fisher, including ``wd·I``) with a few
  Lanczos (Arnoldi) iterations. Ritz values lie *inside* the spectrum, so the estimate of the largest is a
  lower bound and of the smallest an upper bound; both tighten quickly with ``iterations``.
- :func:`check_conditioning` warns when ``C + λI`` looks indefinite (``λ_min + λ <= 0``) or badly conditioned
  (``(λ_max + λ)/(λ_min + λ) > max_condition``) and returns the numbers.
- :func:`solve_residuals` measures ``‖v − (C + λI) x‖ / ‖v‖`` for any solver's output (one batched product).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from wherefrom.curvature.arnoldi import arnoldi_iteration
from wherefrom.curvature.objective import TrainingObjective

log = logging.getLogger(__name__)


@dataclass
class CurvatureReport:
    """Estimated extreme eigenvalues of ``C`` and what they imply for damping ``λ``."""

    lambda_min: float
    lambda_max: float
    damping: float
    iterations: int

    @property
    def damped_min(self) -> float:
        return self.lambda_min + self.damping

    @property
    def condition(self) -> float:
        """``(λ_max + λ)/(λ_min + λ)``; ``inf`` when the damped curvature is not positive definite."""
        if self.damped_min <= 0:
            return float("inf")
        return (self.lambda_max + self.damping) / self.damped_min

    @property
    def indefinite(self) -> bool:
        return self.damped_min <= 0


def extreme_eigenvalues(objective: TrainingObjective, iterations: int = 30, seed: int = 0) -> tuple[float, float]:
    """``(λ_min, λ_max)`` of the objective's curvature estimated by ``iterations`` Lanczos steps."""
    def matvec(v: torch.Tensor) -> torch.Tensor:
        return objective.hvp(v.to(objective.dtype).unsqueeze(0))[0]

    _W, T = arnoldi_iteration(matvec, objective.p, iterations, seed=seed, dtype=objective.dtype,
                             device=objective.device)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[0]), float(ev[-1])


def check_conditioning(
    objective: TrainingObjective, damping: float = 0.0, iterations: int = 30, max_condition: float = 1e8,
    seed: int = 0, warn: bool = True,
) -> CurvatureReport:
    """Estimate the spectrum of ``C``; warn if ``C + λI`` is indefinite or worse conditioned than ``max_condition``."""
    lo, hi = extreme_eigenvalues(objective, iterations, seed)
    report = CurvatureReport(lo, hi, float(damping), iterations)
    log.info("curvature %s: eigenvalues ≈ [%.4g, %.4g], damping %g, condition %.3g", objective.curvature, lo, hi,
             damping, report.condition)
    if warn and report.indefinite:
        warnings.warn(
            f"The damped {objective.curvature} is indefinite: smallest eigenvalue ≈ {lo:.3g} with damping "
            f"{damping:g}. CG/LiSSA may diverge and influence scores are unreliable. Use damping > {-lo:.3g} or "
            "curvature='ggn'.", stacklevel=2)
    elif warn and report.condition > max_condition:
        warnings.warn(
            f"The damped {objective.curvature} is badly conditioned (condition ≈ {report.condition:.3g}, eigenvalues "
            f"≈ [{lo:.3g}, {hi:.3g}], damping {damping:g}); iterative solvers will converge slowly. "
            "Increase damping.", stacklevel=2)
    return report


def solve_residuals(objective: TrainingObjective, V: torch.Tensor, X: torch.Tensor, damping: float) -> torch.Tensor:
    """Relative residuals ``‖v_j − (C + λI) x_j‖ / ‖v_j‖`` of approximate solves ``X`` of ``V`` (``[m, p]``)."""
    R = V - objective.hvp(X, shift=damping)
    return R.norm(dim=1) / V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)
