"""Explicit inverse: form the dense curvature, factor ``C + λI`` once, solve for any vectors."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.errors import WherefromError


@register_solver("explicit")
class ExplicitSolver(Preconditioner):
    """``(C + λI)⁻¹ V`` with the dense ``[d, d]`` curvature (``O(d²)`` memory, ``O(d³)`` to factor).

    The factorisation is a Cholesky decomposition in ``factor_dtype`` (float64 by default); when ``C + λI`` is not
    positive definite it falls back to an eigendecomposition with a warning (the solve is then the exact inverse of
    an indefinite matrix, which is rarely what you want: increase the damping). ``damping="auto"`` uses the exact
    mean eigenvalue ``(tr(C) − wd·d)/d``. After ``fit``: ``hessian_`` (the dense ``C``).
    """

    has_factors = True

    def __init__(self, damping: Any = 0.0, factor_dtype: torch.dtype = torch.float64, column_chunk: int = 256,
                 curvature: str | None = None) -> None:
        super().__init__(damping, curvature)
        self.factor_dtype = factor_dtype
        self.column_chunk = column_chunk
        self.hessian_: torch.Tensor | None = None
        self._chol: torch.Tensor | None = None
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, objective: Any) -> ExplicitSolver:
        super().fit(objective)
        H = objective.dense(self.column_chunk).to(self.factor_dtype)
        self.hessian_ = H
        wd = float(getattr(objective, "weight_decay", 0.0))
        self.mean_eigenvalue_ = float(torch.diagonal(H).sum()) / H.shape[0] - wd
        self._factor()
        return self

    def _damping_changed(self) -> None:
        if self.hessian_ is not None:
            self._factor()

    def _factor(self) -> None:
        H = self.hessian_
        lam = self.effective_damping
        A = H.clone()
        A.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            self._chol, self._eig = chol, None
            return
        evals, evecs = torch.linalg.eigh(A)
        warnings.warn(
            f"H + λI is not positive definite (smallest eigenvalue {float(evals[0]):.3g} with damping {lam:g}); "
            "solving with the indefinite inverse. Increase damping for meaningful scores.", stacklevel=3)
        self._chol, self._eig = None, (evals, evecs)

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        if self.hessian_ is None:
            raise WherefromError("The explicit solver must be fitted (or loaded) before solve().")
        if self._chol is None and self._eig is None:
            self._factor()
        out_dtype = V.dtype
        B = V.to(device=self.hessian_.device, dtype=self.factor_dtype).T  # [d, m]
        if self._chol is not None:
            X = torch.cholesky_solve(B, self._chol)
        else:
            evals, evecs = self._eig  # type: ignore[misc]
            X = evecs @ ((evecs.T @ B) / evals.unsqueeze(1))
        return X.T.to(device=V.device, dtype=out_dtype).contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "hessian": self.hessian_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.hessian_ = state["hessian"]
        self._chol = self._eig = None
