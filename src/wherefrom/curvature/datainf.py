"""DataInf (Kwon et al. 2023): a closed-form, layer-wise inverse of the damped empirical Fisher.

For each parameter group ``l`` (the parameters of one module: weight and bias together) with per-example
training-loss gradients ``g_il`` (``[d_l]``), the curvature is ``G_l + λ_l I``, ``G_l = (1/n) Σ_i g_il g_ilᵀ``.
DataInf swaps inversion and averaging and applies Sherman-Morrison to each rank-one term:

    (G_l + λ_l I)⁻¹ ≈ (1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹
                    = (1/(n λ_l)) Σ_i [ I − g_il g_ilᵀ / (λ_l + ‖g_il‖²) ],

so, for a query ``q``, ``s_l = (1/λ_l) [ q_l − (1/n) Σ_i (g_il·q_l) / (λ_l + ‖g_il‖²) · g_il ]``. No iteration,
no ``p²`` term; exact when ``n = 1`` and a good approximation when ``d_l`` is small (LoRA) (paper).

Damping: ``λ_l = damping + wd`` when ``damping`` is a number (absolute, like every preconditioner; the objective's
weight decay is part of the curvature). ``damping="auto"`` (``None``, the default) is the heuristic shared by every
preconditioner, here the paper's ``0.1 · mean_i(‖g_il‖²) / d_l = 0.1 · tr(G_l)/d_l`` per group, floored at
``eps · (1 + mean)`` (float64 ``eps``) so it is never zero, even for a group whose gradients all vanish.
``damping=0`` with ``wd=0`` is rejected: the formula divides by ``λ_l``.

The groups are the blocks of the space's layout (one per layer, one per fallback parameter), and the gradients
``g_il`` are the space's training features, so DataInf works in any feature space (e.g. on LoGra's features).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.damping import resolve_damping
from wherefrom.errors import WherefromError

log = logging.getLogger(__name__)


def parameter_groups(param_names: list[str]) -> dict[str, list[str]]:
    """Parameters grouped by module (the name without its last component), in order."""
    groups: dict[str, list[str]] = {}
    for name in param_names:
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    return groups


@register_solver("datainf")
class DataInfSolver(Preconditioner):
    """DataInf's layer-wise closed-form inverse (see the module docstring for the formula).

    Args:
        damping: ``λ`` (plus ``wd``) for every group: a number, ``"auto"`` / ``None`` (the per-group heuristic) or
            ``relative(f)``.
        memory_gb: training gradients ``[n, d]`` are kept in memory when they fit this budget; otherwise every
            ``solve`` streams them again from the space (its stored features, or a pass over the training data).
        progress: show progress bars.

    After ``fit``: ``groups_`` (block → flat indices), ``lambdas_`` (block → ``λ_l``), ``data_passes_``.
    """

    allows_none_damping = True
    has_factors = True

    def __init__(self, damping: Any = None, memory_gb: float = 1.0, progress: bool | None = None) -> None:
        super().__init__(damping)
        self.memory_gb = memory_gb
        self.progress = progress
        self.groups_: dict[str, torch.Tensor] = {}
        self.mean_squares_: dict[str, float] = {}
        self.lambdas_: dict[str, float] = {}
        self.gradients_: torch.Tensor | None = None
        self.weight_decay_: float = 0.0
        self.n_: int = 0
        self.data_passes_: int = 0

    def _blocks(self, space: Any):
        self.data_passes_ += 1
        yield from space.feature_blocks()

    def fit(self, objective: Any) -> DataInfSolver:
        super().fit(objective)
        space = objective
        self.weight_decay_ = float(space.weight_decay)
        self.groups_ = {b.name: b.index.to(space.device) for b in space.layout}
        sq = {g: 0.0 for g in self.groups_}
        keep = space.n * space.p * torch.empty((), dtype=space.dtype).element_size() <= self.memory_gb * 1e9
        stored = []
        for _, G in self._blocks(space):
            for g, idx in self.groups_.items():
                sq[g] += float(G[:, idx.to(G.device)].to(torch.float64).pow(2).sum())
            if keep:
                stored.append(G)
        self.gradients_ = torch.cat(stored) if keep else None
        self.n_ = space.n
        self.mean_squares_ = {g: sq[g] / space.n / idx.numel() for g, idx in self.groups_.items()}
        self._damping_changed()
        return self

    def _damping_changed(self) -> None:
        """``λ_l = resolve(damping, mean g²) + wd`` for every group."""
        if not self.mean_squares_:
            return
        wd = self.weight_decay_
        self.lambdas_ = {g: resolve_damping(self.damping, m) + wd for g, m in self.mean_squares_.items()}
        if any(lam <= 0 for lam in self.lambdas_.values()):
            raise WherefromError("DataInf divides by λ_l = damping + weight_decay, which is 0 here. Pass "
                                 "damping > 0, or damping='auto' (None) for the per-layer heuristic.")
        log.info("DataInf λ per group: %s", {g: f"{v:.3g}" for g, v in self.lambdas_.items()})

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """DataInf's ``s = (1/λ_l)[q_l − (1/n) Σ_i (g_il·q_l)/(λ_l + ‖g_il‖²) g_il]`` per group, ``V`` ``[m, d]``."""
        if not self.groups_:
            raise WherefromError("The datainf solver must be fitted (or loaded) before solve().")
        blocks = [(0, self.gradients_)] if self.gradients_ is not None else self._blocks(self._require_fit())
        acc = {g: torch.zeros(V.shape[0], idx.numel(), dtype=V.dtype, device=V.device)
               for g, idx in self.groups_.items()}
        for _, G in blocks:
            for g, idx in self.groups_.items():
                Gl = G[:, idx.to(G.device)].to(device=V.device, dtype=V.dtype)
                coef = (V[:, idx.to(V.device)] @ Gl.T) / (self.lambdas_[g] + Gl.pow(2).sum(1))  # [m, B]
                acc[g] += coef @ Gl
        out = torch.zeros_like(V)
        for g, idx in self.groups_.items():
            idx = idx.to(V.device)
            out[:, idx] = (V[:, idx] - acc[g] / self.n_) / self.lambdas_[g]
        return out

    def state_dict(self) -> dict[str, Any]:
        if not self.groups_:
            raise WherefromError("The datainf solver must be fitted before save().")
        return {**super().state_dict(), "groups": self.groups_, "mean_squares": self.mean_squares_,
                "weight_decay": self.weight_decay_, "gradients": self.gradients_, "n": self.n_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.groups_ = state["groups"]
        self.mean_squares_ = {k: float(v) for k, v in state["mean_squares"].items()}
        self.weight_decay_ = float(state["weight_decay"])
        self.gradients_ = state["gradients"]
        self.n_ = int(state["n"])
        self._damping_changed()
