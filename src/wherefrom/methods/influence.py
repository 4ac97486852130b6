"""Influence functions (Koh & Liang 2017) with a pluggable inverse-Hessian solver.

``τ[i, j] = sign · q_jᵀ (H + λI)⁻¹ g_i / n``: the predicted change of test target ``j`` when training example
``i`` is left out (first order, mean-reduced objective over ``n`` examples), positive = helpful. Koh & Liang's
``I_up,loss = −q_jᵀ H⁻¹ g_i`` so ``τ = −I_up,loss / n`` for a loss target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.curvature import Solver, TrainingObjective, make_solver
from wherefrom.methods.base import GradientAttributor
from wherefrom.task import Task


class InfluenceFunction(GradientAttributor):
    """Influence of each training example on each test target, ``[n_train, n_test]``.

    Args:
        task: the :class:`~wherefrom.task.Task` (the final checkpoint is used).
        solver: ``"explicit"``, ``"cg"``, ``"lissa"`` (or any registered solver name, or a Solver instance).
        damping: absolute ``λ`` added to the mean-reduced Hessian; the same meaning in every solver.
        **solver_options: passed to the solver (e.g. ``max_iter``/``tol`` for CG, ``depth``/``repeats``/
            ``scale``/``batch_size`` for LiSSA).
    The remaining keyword arguments are those of :class:`GradientAttributor` (``batch_size``, ``memory_gb``,
    ``cache_dir``, ``progress``).
    """

    def __init__(
        self, task: Task, solver: str | Solver = "explicit", damping: float = 0.01, *,
        batch_size: int = 256, memory_gb: float = 2.0, cache_dir: str | None = None,
        progress: bool | None = None, **solver_options: Any,
    ) -> None:
        super().__init__(task, batch_size=batch_size, memory_gb=memory_gb, cache_dir=cache_dir, progress=progress)
        self.solver_name = solver
        self.damping = damping
        self.solver_options = solver_options
        self.solver: Solver = make_solver(solver, damping, **solver_options)  # validates the name early
        self.n_: int | None = None

    def _fit_checkpoint(self, c: int, state: dict[str, torch.Tensor], loader: DataLoader) -> None:
        objective = TrainingObjective(self.task, loader, state, progress=False)
        self.n_ = objective.n
        self.solver.fit(objective)

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        return self.solver.solve(Q) / self.n_
