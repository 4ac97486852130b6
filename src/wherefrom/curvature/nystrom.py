"""Randomized Nyström approximation of the curvature: a low-rank inverse, and a preconditioner for CG.

From one batched product ``Y = C Ω`` with an orthonormalised Gaussian sketch ``Ω`` (``[p, ℓ]``), the Nyström
approximation ``Ĉ = Y (Ωᵀ Y)⁻¹ Yᵀ = U diag(Λ) Uᵀ`` (``U`` ``[p, ℓ]`` orthonormal) captures the top of the spectrum of
a positive semi-definite ``C`` (Halko, Martinsson & Tropp 2011; the numerically stable form with the shift
``ν = √p·eps·‖Y‖``, ``eps`` of the products' dtype, Tropp et al. 2017). ``solve`` applies the inverse of
``M = U diag(Λ + λ) Uᵀ + (Λ_ℓ + λ)(I − U Uᵀ)``::

    M⁻¹ v = U (Λ + λ)⁻¹ Uᵀ v + (v − U Uᵀ v) / (Λ_ℓ + λ)

which equals ``(C + λI)⁻¹`` when ``ℓ = p`` and is, as a CG preconditioner, the randomized Nyström preconditioner
of Frangella, Tropp & Udell (2023) up to a scalar: the ``ℓ`` largest eigenvalues are deflated, so the
preconditioned condition number falls from ``(Λ_1 + λ)/λ`` to about ``(Λ_ℓ + λ)/λ``.

Cost: one curvature product with ``ℓ`` columns, a QR and an SVD of ``[p, ℓ]`` (float64); memory ``2·p·ℓ`` floats.
``C`` must be positive semi-definite (the Gauss-Newton matrix or a convex model's Hessian).

    wf.InfluenceFunction(task, solver="cg", damping=λ, preconditioner=NystromSolver(damping=λ, rank=400), tol=1e-6)
    wf.InfluenceFunction(task, solver="nystrom", rank=200)          # the low-rank inverse on its own
"""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.damping import is_relative
from wherefrom.errors import WherefromError


@register_solver("nystrom")
class NystromSolver(Preconditioner):
    """``M⁻¹ ≈ (C + λI)⁻¹`` from a rank-``ℓ`` randomized Nyström approximation of ``C`` (see the module docstring).

    Args:
        damping: ``λ``.
        rank: ``ℓ``, the sketch size (clipped to ``p``).
        seed: seed of the Gaussian sketch.
        curvature: the curvature to approximate (default: the attributor's).

    After ``fit``: ``eigenvalues_`` (``Λ``, ``[ℓ]``, descending), ``eigenvectors_`` (``U``, ``[p, ℓ]``), float64.
    """

    has_factors = True

    def __init__(self, damping: Any = 0.0, rank: int = 100, seed: int = 0, curvature: str | None = None) -> None:
        super().__init__(damping, curvature)
        if int(rank) < 1:
            raise WherefromError(f"Nyström needs rank >= 1, got {rank}.")
        self.rank = int(rank)
        self.seed = int(seed)
        self.eigenvalues_: torch.Tensor | None = None
        self.eigenvectors_: torch.Tensor | None = None

    def fit(self, objective: Any) -> NystromSolver:
        super().fit(objective)
        p, rank = objective.p, min(self.rank, objective.p)
        generator = torch.Generator().manual_seed(self.seed)
        sketch = torch.randn(p, rank, generator=generator, dtype=torch.float64)
        sketch = torch.linalg.qr(sketch).Q.to(objective.device)                      # Ω, [p, ℓ]
        Y = objective.hvp(sketch.T.to(objective.dtype)).to(torch.float64).T          # C Ω, [p, ℓ]
        # ν from the precision the products were taken in (float32 rounding of a singular C is not indefiniteness)
        shift = p ** 0.5 * torch.finfo(objective.dtype).eps * float(torch.linalg.norm(Y))
        Y.add_(sketch, alpha=shift)
        core = sketch.T @ Y
        chol, info = torch.linalg.cholesky_ex(0.5 * (core + core.T))
        if int(info):
            raise WherefromError("The Nyström sketch found a curvature that is not positive semi-definite: use "
                                 "curvature='ggn' (or another PSD curvature) or the 'arnoldi' solver.")
        B = torch.linalg.solve_triangular(chol, Y.T, upper=False).T                  # Y L⁻ᵀ, [p, ℓ]
        U, sigma, _ = torch.linalg.svd(B, full_matrices=False)
        self.eigenvalues_ = (sigma.square() - shift).clamp_min(0.0)
        self.eigenvectors_ = U
        # relative damping: tr(C_data)/p, the data term without wd·I as for every solver; the sketch holds the whole
        # trace only at full rank (else the objective's estimate, taken when a relative damping needs it)
        if rank == p:
            self.mean_eigenvalue_ = float(self.eigenvalues_.sum()) / p - float(getattr(objective, "weight_decay", 0.0))
        elif is_relative(self.damping):
            self.mean_eigenvalue_ = objective.trace_estimate() / p
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``M⁻¹ V`` for ``V`` ``[m, p]`` (rows), in ``V``'s dtype."""
        if self.eigenvectors_ is None:
            raise WherefromError("The nystrom solver must be fitted before solve(); call fit(objective).")
        lam = self.effective_damping
        U, evals = self.eigenvectors_, self.eigenvalues_
        if lam + float(evals[-1]) <= 0:
            raise WherefromError("Nyström: the smallest kept eigenvalue plus damping is 0; pass damping > 0.")
        X = V.to(torch.float64)
        coeff = X @ U                                                                 # [m, ℓ]
        out = (X - coeff @ U.T) / (float(evals[-1]) + lam) + (coeff / (evals + lam)) @ U.T
        return out.to(V.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eigenvalues": self.eigenvalues_, "eigenvectors": self.eigenvectors_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.eigenvalues_ = state["eigenvalues"]
        self.eigenvectors_ = state["eigenvectors"]
