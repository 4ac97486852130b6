"""RelatIF (Barshan et al. 2020): influence normalised by each training example's global influence.

Plain influence is dominated by a few high-loss, globally influential training points. RelatIF divides each
training example's influence by how much it moves the model overall:

- ℓ-relative (``normalization="l"``, default): ``τ[i, j] = sign · q_jᵀ C⁻¹ g_i / sqrt(g_iᵀ C⁻¹ g_i)``;
- θ-relative (``normalization="theta"``): ``τ[i, j] = sign · q_jᵀ C⁻¹ g_i / ‖C⁻¹ g_i‖``;

with ``C⁻¹ = (C + λI)⁻¹`` from any solver and ``g_i`` the *training-loss* gradient of ``z_i`` (also when the
explained target is another function). Scale: no ``1/n`` (the normalisation makes the score scale-free in
``g_i``); positive = helpful as everywhere. Denominators are clamped at ``1e-12``; a negative ``g_iᵀ C⁻¹ g_i``
(indefinite damped curvature) is reported with a warning.

Cost: the influence-function cost plus one inverse-curvature product per *training* example, which is cheap
with factored solvers (explicit, Arnoldi, K-FAC, EK-FAC) and expensive with CG/LiSSA.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch

from wherefrom.curvature import Solver
from wherefrom.data.loaders import DataLike
from wherefrom.errors import WherefromError
from wherefrom.methods.influence import InfluenceFunction
from wherefrom.task import Task

_CLAMP = 1e-12


class RelatIF(InfluenceFunction):
    """Relative influence, ``[n_train, n_test]`` (see the module docstring for the formulas).

    Args:
        task: the :class:`~wherefrom.task.Task`.
        solver, damping, curvature: as for :class:`InfluenceFunction` (default solver ``"explicit"``).
        normalization: ``"l"`` (divide by ``sqrt(g_iᵀ C⁻¹ g_i)``) or ``"theta"`` (divide by ``‖C⁻¹ g_i‖``).
    Other keyword arguments are those of :class:`InfluenceFunction`.

    After ``fit``: ``denominators_`` (``[n_train]``) and ``self_quadratic_`` (``g_iᵀ C⁻¹ g_i``, ``[n_train]``).
    """

    def __init__(self, task: Task, solver: str | Solver = "explicit", damping: float | None = 0.01, *,
                 normalization: str = "l", **kwargs: Any) -> None:
        if normalization not in ("l", "theta"):
            raise WherefromError(f"normalization must be 'l' or 'theta', got {normalization!r}.")
        super().__init__(task, solver=solver, damping=damping, **kwargs)
        self.normalization = normalization
        self.denominators_: torch.Tensor | None = None
        self.self_quadratic_: torch.Tensor | None = None

    def fit(self, train: DataLike) -> RelatIF:
        super().fit(train)
        if len(self._states) != 1:
            raise WherefromError("RelatIF uses one checkpoint.")
        quads, dens = [], []
        for _, F in self._stores[0].blocks():
            S = self.solver.solve(F)  # C⁻¹ g_i for the block, [B, p]
            quad = (F * S.to(F.dtype)).sum(1)
            quads.append(quad)
            dens.append(quad.clamp_min(_CLAMP).sqrt() if self.normalization == "l" else S.norm(dim=1).clamp_min(
                _CLAMP))
        self.self_quadratic_ = torch.cat(quads)
        self.denominators_ = torch.cat(dens)
        neg = int((self.self_quadratic_ < 0).sum())
        if neg:
            warnings.warn(f"RelatIF: g_iᵀ(C + λI)⁻¹g_i < 0 for {neg} training examples (the damped curvature is "
                          "indefinite); their ℓ-denominators were clamped. Increase damping or use "
                          "curvature='ggn'.", stacklevel=2)
        return self

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        d = self.denominators_
        if d is None:
            raise WherefromError("RelatIF is not fitted: call fit(train) first.")
        n = float(self.n_)  # type: ignore[arg-type]
        for start, block in super().iter_score_blocks(test):
            yield start, block * n / d[start: start + block.shape[0]].unsqueeze(1).to(block.dtype)

    def self_influence(self) -> torch.Tensor:
        """``g_iᵀ C⁻¹ g_i / denominator_i`` (for ``"l"``: ``sqrt(g_iᵀ C⁻¹ g_i)``), ``[n_train]``."""
        if self.self_quadratic_ is None or self.denominators_ is None:
            raise WherefromError("RelatIF is not fitted: call fit(train) first.")
        return self.self_quadratic_ / self.denominators_

    def score_by_module(self, test: DataLike) -> dict[str, torch.Tensor]:
        n = float(self.n_)  # type: ignore[arg-type]
        d = self.denominators_.unsqueeze(1)  # type: ignore[union-attr]
        return {g: v * n / d.to(v.dtype) for g, v in super().score_by_module(test).items()}
