"""RelatIF (Barshan et al. 2020): influence normalised by each training example's global influence.

Plain influence is dominated by a few high-loss, globally influential training points. RelatIF divides each
training example's influence by how much it moves the model overall:

- ℓ-relative (``normalization="l"``, default): ``τ[i, j] = sign · q_jᵀ C⁻¹ g_i / sqrt(g_iᵀ C⁻¹ g_i)``;
- θ-relative (``normalization="theta"``): ``τ[i, j] = sign · q_jᵀ C⁻¹ g_i / ‖C⁻¹ g_i‖``;

with ``C⁻¹ = (C + λI)⁻¹`` from any solver and ``g_i`` the *training-loss* gradient of ``z_i`` (also when the
explained target is another function). Scale: no ``1/n`` (the normalisation makes the score scale-free in
``g_i``); positive = helpful as everywhere. Denominators are clamped at ``1e-12``; a negative ``g_iᵀ C⁻¹ g_i``
(indefinite damped curvature) is reported with a warning. A preset of the composition: full gradients × a
preconditioner × the RelatIF similarity (:class:`~wherefrom.similarity.RelativeInfluence`).

Cost: the influence-function cost plus one inverse-curvature product per *training* example, which is cheap
with factored solvers (explicit, Arnoldi, K-FAC, EK-FAC) and expensive with CG/LiSSA.
"""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.curvature import Preconditioner
from wherefrom.methods.influence import InfluenceFunction
from wherefrom.similarity import RelativeInfluence
from wherefrom.task import Task


class RelatIF(InfluenceFunction):
    """Relative influence, ``[n_train, n_test]`` (see the module docstring for the formulas).

    Args:
        task: the :class:`~wherefrom.task.Task`.
        solver: as for :class:`InfluenceFunction` (default ``"explicit"``).
        damping: as for :class:`InfluenceFunction`.
        normalization: ``"l"`` (divide by ``sqrt(g_iᵀ C⁻¹ g_i)``) or ``"theta"`` (divide by ``‖C⁻¹ g_i‖``).
        **kwargs: the other keyword arguments of :class:`InfluenceFunction` (``curvature``, execution options).

    After ``fit``: ``denominators_`` (``[n_train]``) and ``self_quadratic_`` (``g_iᵀ C⁻¹ g_i``, ``[n_train]``).
    """

    score_scale = 1.0  # the normalisation makes the score scale-free: no 1/n

    def __init__(self, task: Task, solver: str | Preconditioner = "explicit", damping: Any = 0.01, *,
                 normalization: str = "l", **kwargs: Any) -> None:
        similarity = RelativeInfluence(normalization)
        super().__init__(task, solver=solver, damping=damping, similarity=similarity, **kwargs)
        self.normalization = normalization

    @property
    def denominators_(self) -> torch.Tensor | None:
        return self._similarity_states[0]["denominators"] if self._similarity_states else None

    @property
    def self_quadratic_(self) -> torch.Tensor | None:
        return self._similarity_states[0]["self_quadratic"] if self._similarity_states else None
