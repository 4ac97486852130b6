"""Explicit inverse: form the dense Hessian by autograd, factor ``H + λI`` once, solve for any vectors."""

from __future__ import annotations

import warnings

import torch

from wherefrom.curvature.base import Solver, register_solver
from wherefrom.curvature.objective import TrainingObjective


@register_solver("explicit")
class ExplicitSolver(Solver):
    """``(H + λI)⁻¹ V`` with the dense ``[p, p]`` Hessian (``O(p²)`` memory, ``O(p³)`` to factor).

    The factorisation is a Cholesky decomposition in ``factor_dtype`` (float64 by default); when ``H + λI`` is not
    positive definite it falls back to an eigendecomposition with a warning (the solve is then the exact inverse of
    an indefinite matrix, which is rarely what you want: increase the damping).
    """

    def __init__(self, damping: float = 0.0, factor_dtype: torch.dtype = torch.float64, column_chunk: int = 256):
        super().__init__(damping)
        self.factor_dtype = factor_dtype
        self.column_chunk = column_chunk
        self.hessian_: torch.Tensor | None = None
        self._chol: torch.Tensor | None = None
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, objective: TrainingObjective) -> ExplicitSolver:
        super().fit(objective)
        H = objective.dense(self.column_chunk).to(self.factor_dtype)
        self.hessian_ = H
        A = H + self.damping * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        chol, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            self._chol, self._eig = chol, None
        else:
            evals, evecs = torch.linalg.eigh(A)
            warnings.warn(
                f"H + λI is not positive definite (smallest eigenvalue {float(evals[0]):.3g} with damping "
                f"{self.damping:g}); solving with the indefinite inverse. Increase damping for meaningful scores.",
                stacklevel=2,
            )
            self._chol, self._eig = None, (evals, evecs)
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        self._require_fit()
        out_dtype = V.dtype
        B = V.to(self.factor_dtype).T  # [p, m]
        if self._chol is not None:
            X = torch.cholesky_solve(B, self._chol)
        else:
            evals, evecs = self._eig  # type: ignore[misc]
            X = evecs @ ((evecs.T @ B) / evals.unsqueeze(1))
        return X.T.to(out_dtype).contiguous()
