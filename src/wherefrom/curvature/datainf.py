"""DataInf (Kwon et al. 2023): a closed-form, layer-wise inverse of the damped empirical Fisher.

For each parameter group ``l`` (the parameters of one module: weight and bias together) with per-example
training-loss gradients ``g_il`` (``[d_l]``), the curvature is ``G_l + λ_l I``, ``G_l = (1/n) Σ_i g_il g_ilᵀ``.
DataInf swaps inversion and averaging and applies Sherman-Morrison to each rank-one term:

    (G_l + λ_l I)⁻¹ ≈ (1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹
                    = (1/(n λ_l)) Σ_i [ I − g_il g_ilᵀ / (λ_l + ‖g_il‖²) ],

so, for a query ``q``, ``s_l = (1/λ_l) [ q_l − (1/n) Σ_i (g_il·q_l) / (λ_l + ‖g_il‖²) · g_il ]``. No iteration,
no ``p²`` term; exact when ``n = 1`` and a good approximation when ``d_l`` is small (LoRA) (paper).

Damping: ``λ_l = damping + wd`` when ``damping`` is given (absolute, like every solver; the objective's weight
decay is part of the curvature). ``damping=None`` (the default) uses the paper's heuristic
``0.1 · mean_i(‖g_il‖²) / d_l`` per group, floored at ``eps · (1 + mean‖g_il‖²/d_l)`` (float64 ``eps``) so it is
never zero, even for a group whose gradients all vanish. ``damping=0`` with ``wd=0`` is rejected: the formula
divides by ``λ_l``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from wherefrom.curvature.base import Solver, register_solver
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.errors import WherefromError
from wherefrom.gradients import iter_gradient_blocks

log = logging.getLogger(__name__)


def parameter_groups(param_names: list[str]) -> dict[str, list[str]]:
    """Parameters grouped by module (the name without its last component), in order."""
    groups: dict[str, list[str]] = {}
    for name in param_names:
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    return groups


@register_solver("datainf")
class DataInfSolver(Solver):
    """DataInf's layer-wise closed-form inverse (see the module docstring for the formula).

    Args:
        damping: absolute ``λ`` (plus ``wd``) for every group, or ``None`` for the per-group heuristic.
        memory_gb: training gradients ``[n, p]`` are kept in memory when they fit this budget; otherwise every
            ``solve`` streams them again (one per-example-gradient pass over the training data).
        progress: show progress bars.

    After ``fit``: ``groups_`` (module → flat indices), ``lambdas_`` (module → ``λ_l``), ``data_passes_``.
    """

    def __init__(self, damping: float | None = None, memory_gb: float = 1.0, progress: bool | None = None) -> None:
        super().__init__(0.0 if damping is None else damping)
        self.damping = damping  # type: ignore[assignment]
        self.memory_gb = memory_gb
        self.progress = progress
        self.groups_: dict[str, torch.Tensor] = {}
        self.lambdas_: dict[str, float] = {}
        self.gradients_: torch.Tensor | None = None
        self.n_: int = 0
        self.data_passes_: int = 0

    def _blocks(self, objective: TrainingObjective):
        self.data_passes_ += 1
        yield from iter_gradient_blocks(objective.task, objective.loader, objective.state, progress=self.progress)

    def fit(self, objective: TrainingObjective) -> DataInfSolver:
        super().fit(objective)
        task = objective.task
        wd = task.weight_decay
        if self.damping is not None and self.damping + wd <= 0:
            raise WherefromError("DataInf divides by λ_l = damping + weight_decay, which is 0 here. Pass "
                                 "damping > 0, or damping=None for the per-layer heuristic.")
        slices = task.param_slices()
        self.groups_ = {
            g: torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names]).to(objective.device)
            for g, names in parameter_groups(task.param_names).items()
        }
        sq = {g: 0.0 for g in self.groups_}
        keep = objective.n * objective.p * objective.theta.element_size() <= self.memory_gb * 1e9
        stored = []
        for _, G in self._blocks(objective):
            for g, idx in self.groups_.items():
                sq[g] += float(G[:, idx].to(torch.float64).pow(2).sum())
            if keep:
                stored.append(G)
        self.gradients_ = torch.cat(stored) if keep else None
        self.n_ = objective.n
        eps = float(torch.finfo(torch.float64).eps)
        self.lambdas_ = {}
        for g, idx in self.groups_.items():
            mean_sq = sq[g] / objective.n / idx.numel()  # mean squared gradient entry of the group
            lam = max(0.1 * mean_sq, eps * (1.0 + mean_sq)) + wd if self.damping is None else float(self.damping) + wd
            self.lambdas_[g] = lam
        log.info("DataInf λ per group: %s", {g: f"{v:.3g}" for g, v in self.lambdas_.items()})
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """DataInf's ``s = (1/λ_l)[q_l − (1/n) Σ_i (g_il·q_l)/(λ_l + ‖g_il‖²) g_il]`` per group, ``V`` ``[m, p]``."""
        if not self.groups_:
            raise WherefromError("The datainf solver must be fitted (or loaded) before solve().")
        blocks = [(0, self.gradients_)] if self.gradients_ is not None else self._blocks(self._require_fit())
        acc = {g: torch.zeros(V.shape[0], idx.numel(), dtype=V.dtype, device=V.device)
               for g, idx in self.groups_.items()}
        for _, G in blocks:
            for g, idx in self.groups_.items():
                Gl = G[:, idx].to(V.dtype)
                coef = (V[:, idx] @ Gl.T) / (self.lambdas_[g] + Gl.pow(2).sum(1))  # [m, B]
                acc[g] += coef @ Gl
        out = torch.zeros_like(V)
        for g, idx in self.groups_.items():
            out[:, idx] = (V[:, idx] - acc[g] / self.n_) / self.lambdas_[g]
        return out

    def state_dict(self) -> dict[str, Any]:
        if not self.groups_:
            raise WherefromError("The datainf solver must be fitted before save().")
        return {"groups": self.groups_, "lambdas": self.lambdas_, "gradients": self.gradients_, "n": self.n_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups_ = state["groups"]
        self.lambdas_ = {k: float(v) for k, v in state["lambdas"].items()}
        self.gradients_ = state["gradients"]
        self.n_ = int(state["n"])
