"""The kernel solve: ``(C + λI)⁻¹`` with ``C`` the empirical Fisher of the stored training features.

``C = (1/n) Σ_i φ_i φ_iᵀ + wd·I`` (``[d, d]``, accumulated in float64 from the space's features), for the whole
feature vector (``blocks="global"``: TRAK's kernel, projected influence) or one block per layout block
(``blocks="layout"``: LoGra's layer-wise projected Fisher). Each block is factored by Cholesky in float64; when that
fails (singular or indefinite) the pseudo-inverse on the positive eigenvalues is used, with a warning.

TRAK writes its kernel sum-reduced, ``(ΦᵀΦ + λ_s I)⁻¹``; since ``ΦᵀΦ + λ_s I = n (C + (λ_s/n) I)``, TRAK's scores are
this preconditioner with ``λ = λ_s / n`` and the ``1/n`` scale of an influence function (see ``methods/trak.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.damping import resolve_damping
from wherefrom.errors import WherefromError


class SymmetricSolve:
    """``(K + λI)⁻¹`` for a symmetric ``K`` (float64): Cholesky, or the pseudo-inverse on the positive eigenvalues
    (with a warning naming ``what``) when ``K + λI`` is singular or indefinite."""

    def __init__(self, kernel: torch.Tensor, damping: float, what: str) -> None:
        A = kernel + damping * torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
        chol, info = torch.linalg.cholesky_ex(A)
        self._chol: torch.Tensor | None = chol if int(info) == 0 else None
        self._pinv: torch.Tensor | None = None
        if self._chol is None:
            evals, evecs = torch.linalg.eigh(A)
            cut = evals.max().clamp_min(0) * A.shape[0] * torch.finfo(A.dtype).eps
            inv = torch.where(evals > cut, 1.0 / evals, torch.zeros_like(evals))
            warnings.warn(f"The {what} matrix is singular or indefinite ({int((evals > cut).sum())} of {A.shape[0]} "
                          "eigenvalues are positive): inverting it on its positive eigenvalues only. Use a projection "
                          "dimension below the number of training examples, or damping > 0.", stacklevel=4)
            self._pinv = (evecs * inv) @ evecs.T

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(K + λI)⁻¹ Vᵀ`` returned as ``[m, k]`` for ``V`` ``[m, k]``."""
        factor = self._chol if self._chol is not None else self._pinv
        B = V.to(device=factor.device, dtype=torch.float64).T
        X = torch.cholesky_solve(B, self._chol) if self._chol is not None else self._pinv @ B
        return X.T.to(device=V.device, dtype=V.dtype).contiguous()


@register_solver("kernel")
class KernelSolver(Preconditioner):
    """``(C + λI)⁻¹`` with ``C`` the empirical Fisher of the training features (see the module docstring).

    Args:
        damping: ``λ``: a number, ``"auto"`` or ``relative(f)`` (per block).
        blocks: ``"global"`` (one ``[d, d]`` kernel) or ``"layout"`` (one kernel per block of the space's layout).
        label: how warnings name the matrix (``"TRAK"``, ``"projected fisher"``, ...).

    After ``fit``: ``kernels_`` (``{block: C_block without wd}``, float64), ``weight_decay_``.
    """

    has_factors = True

    def __init__(self, damping: Any = 0.0, blocks: str = "global", label: str = "kernel") -> None:
        super().__init__(damping, "empirical_fisher")
        if blocks not in ("global", "layout"):
            raise WherefromError(f"blocks must be 'global' or 'layout', got {blocks!r}.")
        self.blocks, self.label = blocks, label
        self.kernels_: dict[str, torch.Tensor] = {}
        self.index_: dict[str, torch.Tensor] = {}
        self.weight_decay_ = 0.0
        self._solves: dict[str, SymmetricSolve] = {}

    def fit(self, objective: Any) -> KernelSolver:
        super().fit(objective)
        space = objective
        if self.blocks == "global":
            self.index_ = {"all": torch.arange(space.p)}
        else:
            self.index_ = {b.name: b.index for b in space.layout}
        K: dict[str, torch.Tensor | None] = {name: None for name in self.index_}
        for _, F in space.feature_blocks():
            for name, idx in self.index_.items():
                x = (F if self.blocks == "global" else F[:, idx.to(F.device)]).to(torch.float64)
                K[name] = x.T @ x if K[name] is None else K[name] + x.T @ x
        self.kernels_ = {name: k / space.n for name, k in K.items()}  # type: ignore[operator]
        self.weight_decay_ = float(space.weight_decay)
        self._damping_changed()
        for name in self.kernels_:  # factor now, so that a singular kernel is reported by fit
            self._solve_of(name)
        return self

    def _damping_changed(self) -> None:
        self._solves = {}

    def _solve_of(self, name: str) -> SymmetricSolve:
        if name not in self._solves:
            C = self.kernels_[name]
            lam = resolve_damping(self.damping, torch.diagonal(C).mean()) + self.weight_decay_
            what = self.label if len(self.kernels_) == 1 else f"{self.label} block {name!r}"
            self._solves[name] = SymmetricSolve(C, lam, what)
        return self._solves[name]

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        if not self.kernels_:
            raise WherefromError("The kernel preconditioner must be fitted (or loaded) before solve().")
        if self.blocks == "global":
            return self._solve_of("all").solve(V)
        out = torch.empty_like(V)
        for name, idx in self.index_.items():
            idx = idx.to(V.device)
            out[:, idx] = self._solve_of(name).solve(V[:, idx])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kernels": self.kernels_, "index": self.index_,
                "weight_decay": self.weight_decay_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kernels_, self.index_ = state["kernels"], state["index"]
        self.weight_decay_ = float(state["weight_decay"])
        self._damping_changed()
