"""Conjugate gradient on ``(H + λI) X = V``, batched over many right-hand sides, with Hessian-vector products only."""

from __future__ import annotations

import logging
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.errors import NonPositiveDefiniteError
from wherefrom.progress import track

log = logging.getLogger(__name__)


@register_solver("cg")
class CGSolver(Preconditioner):
    """Batched CG: each column of ``V`` gets its own step sizes; all share one HVP call per iteration.

    Stops when every relative residual ``‖v − (H+λI)x‖ / ‖v‖`` is below ``tol`` or after ``max_iter`` iterations.
    After ``solve`` the attributes ``residuals_`` (final relative residual of each right-hand side) and
    ``iterations_`` are set. ``H + λI`` must be positive definite (damp a singular or indefinite Hessian). It solves
    against the space at every call, so it needs the training data after loading (``needs_space``).
    """

    needs_space = True

    def __init__(self, damping: Any = 0.0, max_iter: int = 200, tol: float = 1e-7, progress: bool | None = None,
                 curvature: str | None = None):
        super().__init__(damping, curvature)
        self.max_iter = max_iter
        self.tol = tol
        self.progress = progress
        self.residuals_: torch.Tensor | None = None
        self.iterations_: int = 0

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        return self._require_fit().hvp(X) + self.effective_damping * X

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        self._require_fit()
        v_norm = V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)
        X = torch.zeros_like(V)
        R = V.clone()
        D = R.clone()
        rr = (R * R).sum(1)
        active = torch.ones(V.shape[0], dtype=torch.bool, device=V.device)
        it = 0
        for it in track(range(1, self.max_iter + 1), "CG iterations", self.max_iter, self.progress):
            idx = torch.nonzero(active).flatten()
            AD = self._apply(D[idx])
            dAd = (D[idx] * AD).sum(1)
            if bool((dAd <= 0).any()):
                worst = float((dAd / (D[idx] * D[idx]).sum(1)).min())
                raise NonPositiveDefiniteError(
                    f"CG met negative curvature (dᵀ(C+λI)d / dᵀd = {worst:.3g} at iteration {it}): the damped "
                    f"curvature is not positive definite with damping {self.effective_damping:g}. Increase damping "
                    "above the most negative eigenvalue (see wherefrom.curvature.diagnostics), or use a positive "
                    "semi-definite curvature: InfluenceFunction(..., curvature='ggn')."
                )
            alpha = rr[idx] / dAd
            X[idx] += alpha.unsqueeze(1) * D[idx]
            R[idx] -= alpha.unsqueeze(1) * AD
            rr_new = (R[idx] * R[idx]).sum(1)
            beta = rr_new / rr[idx].clamp_min(torch.finfo(V.dtype).tiny)
            D[idx] = R[idx] + beta.unsqueeze(1) * D[idx]
            rr[idx] = rr_new
            active[idx] = rr_new.sqrt() / v_norm[idx] > self.tol
            if not bool(active.any()):
                break
        self.iterations_ = it
        self.residuals_ = rr.sqrt() / v_norm
        log.info("CG finished after %d iterations; max relative residual %.3g", it, float(self.residuals_.max()))
        return X
