"""The two simplest preconditioners: the identity (plain gradient similarity) and the diagonal curvature."""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.damping import resolve_damping
from wherefrom.errors import WherefromError


@register_solver("identity")
class IdentityPreconditioner(Preconditioner):
    """``solve(Q) = Q``: no curvature (Grad-Dot, TracIn, Grad-Cos). ``damping`` has no effect."""

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        return V


@register_solver("diagonal")
class DiagonalSolver(Preconditioner):
    """``(diag(C) + λ)⁻¹`` elementwise, with ``diag(C) = (1/n) Σ_{i,k} s_ik² + wd`` from the curvature samples of
    the space (exact GGN, true Fisher or empirical Fisher; ``"hessian"`` means its Gauss-Newton part).

    ``damping="auto"`` is ``0.1 · mean(diag C_data)`` over the whole vector. After ``fit``: ``diagonal_``
    (``[d]``, without ``wd``), ``weight_decay_``.
    """

    has_factors = True

    def __init__(self, damping: Any = 0.0, curvature: str | None = None, progress: bool | None = None) -> None:
        super().__init__(damping, curvature)
        self.progress = progress
        self.diagonal_: torch.Tensor | None = None
        self.weight_decay_ = 0.0

    def fit(self, objective: Any) -> DiagonalSolver:
        super().fit(objective)
        space = objective
        curvature = self.curvature or space.curvature
        diag = torch.zeros(space.p, dtype=torch.float64, device=space.device)
        for samples in space.samples("ggn" if curvature == "hessian" else curvature, "diagonal curvature"):
            for sample in samples:
                diag += sample.rows(space.layout, space.p).to(torch.float64).pow(2).sum(0)
        self.diagonal_ = diag / space.n
        self.weight_decay_ = float(space.weight_decay)
        self.mean_eigenvalue_ = float(self.diagonal_.mean())
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        if self.diagonal_ is None:
            raise WherefromError("The diagonal preconditioner must be fitted (or loaded) before solve().")
        lam = resolve_damping(self.damping, self.mean_eigenvalue_ or 0.0)
        return V / (self.diagonal_ + self.weight_decay_ + lam).to(device=V.device, dtype=V.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "diagonal": self.diagonal_, "weight_decay": self.weight_decay_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.diagonal_, self.weight_decay_ = state["diagonal"], float(state["weight_decay"])
