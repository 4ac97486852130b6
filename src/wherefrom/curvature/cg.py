"""Conjugate gradient on ``(C + λI) X = V``, batched over many right-hand sides, with curvature products only.

Every column of ``V`` is its own CG run (its own step sizes and stopping rule); the active columns share one batched
product per iteration, so a column that has converged costs nothing more. On models with a structured curvature
(:mod:`wherefrom.curvature.structured`) that product is two matrix products per layer over samples taken once,
not a Hessian-vector product through the model.

Optional **preconditioning** (PCG): ``preconditioner`` is any other preconditioner (a name or an instance, e.g.
``"kfac"`` or :class:`~wherefrom.curvature.KFACSolver`) fitted on the same space; its ``solve`` plays ``M⁻¹``.
A good ``M ≈ C + λI`` cuts the iterations; the answer is still the exact solve of ``C + λI`` (to ``tol``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, make_solver, register_solver
from wherefrom.errors import NonPositiveDefiniteError, WherefromError
from wherefrom.progress import track

log = logging.getLogger(__name__)


@register_solver("cg")
class CGSolver(Preconditioner):
    """Batched CG: each column of ``V`` gets its own step sizes and stopping rule; all share one product per iteration.

    A column stops when its relative residual ``‖v − (C+λI)x‖ / ‖v‖`` is below ``tol``; all stop after ``max_iter``
    iterations. ``C + λI`` must be positive definite (damp a singular or indefinite Hessian). It solves against the
    space at every call, so it needs the training data after loading (``needs_space``).

    Args:
        damping: ``λ`` (see :mod:`wherefrom.curvature.damping`).
        max_iter: iteration cap. tol: relative residual at which a column stops.
        preconditioner: ``None`` (plain CG) or a preconditioner (name or instance) fitted on the same space whose
            ``solve`` approximates ``(C + λI)⁻¹`` (a name is built with this solver's damping).
        warm_start: start from the previous solution when the same right-hand sides are solved again (e.g. after
            changing ``damping``); ``solve(V, x0=...)`` gives a start explicitly.

    After ``solve``: ``residuals_`` (final relative residual per column, ``[m]``), ``iterations_`` (iterations run),
    ``column_iterations_`` (iterations each column took, ``[m]``), ``residual_history_`` (``[iterations + 1, m]``
    relative residuals, the start included) and ``products_`` (vector products taken, the sum over iterations of
    the active columns).
    """

    needs_space = True

    def __init__(self, damping: Any = 0.0, max_iter: int = 200, tol: float = 1e-7, progress: bool | None = None,
                 curvature: str | None = None, preconditioner: Any = None, warm_start: bool = False):
        super().__init__(damping, curvature)
        if int(max_iter) < 1 or not tol >= 0:
            raise WherefromError(f"CG needs max_iter >= 1 and tol >= 0; got max_iter={max_iter}, tol={tol}.")
        if isinstance(preconditioner, CGSolver):
            raise WherefromError("CG cannot be preconditioned by another CG solver (its solve is not a fixed linear "
                                 "map); use a factored preconditioner such as 'kfac', 'ekfac' or 'diagonal'.")
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.progress = progress
        self.preconditioner = preconditioner
        self.warm_start = bool(warm_start)
        self.residuals_: torch.Tensor | None = None
        self.iterations_: int = 0
        self.column_iterations_: torch.Tensor | None = None
        self.residual_history_: torch.Tensor | None = None
        self.products_: int = 0
        self._precond: Preconditioner | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, objective: Any) -> CGSolver:
        super().fit(objective)
        self._last = None
        if self.preconditioner is not None:
            pre = self.preconditioner
            if not isinstance(pre, Preconditioner):
                pre = make_solver(pre, self._damping)
            self._precond = pre.fit(objective)
        return self

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if isinstance(self.preconditioner, Preconditioner):
            cfg["args"]["preconditioner"] = self.preconditioner.config()
        return cfg

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        return self._require_fit().hvp(X) + self.effective_damping * X

    def _minv(self, R: torch.Tensor) -> torch.Tensor:
        return R if self._precond is None else self._precond.solve(R).to(R.dtype)

    def solve(self, V: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """``(C + λI)⁻¹ V`` for ``V`` ``[m, p]``, column by column to ``tol`` (from ``x0`` ``[m, p]`` if given)."""
        self._require_fit()
        tiny = torch.finfo(V.dtype).tiny
        v_norm = V.norm(dim=1).clamp_min(tiny)
        if x0 is None and self.warm_start and self._last is not None:
            last_v, last_x = self._last
            if last_v.shape == V.shape and torch.equal(last_v, V):
                x0 = last_x
        if x0 is not None:
            if x0.shape != V.shape:
                raise WherefromError(f"CG's start x0 has shape {tuple(x0.shape)}; it must match V, {tuple(V.shape)}.")
            X = x0.to(V.dtype).clone()
            R = V - self._apply(X)
            self.products_ = V.shape[0]
        else:
            X = torch.zeros_like(V)
            R = V.clone()
            self.products_ = 0
        Z = self._minv(R)
        D = Z.clone()
        rz = (R * Z).sum(1)
        res = R.norm(dim=1) / v_norm
        history = [res.clone()]
        active = res > self.tol
        col_iters = torch.zeros(V.shape[0], dtype=torch.long, device=V.device)
        it = 0
        for it in track(range(1, self.max_iter + 1), "CG iterations", self.max_iter, self.progress):
            if not bool(active.any()):
                it -= 1
                break
            n_active = int(active.sum())
            # every column active: plain views, no gathered copies; otherwise the active columns only
            idx: slice | torch.Tensor = slice(None) if n_active == V.shape[0] else torch.nonzero(active).flatten()
            Di = D[idx]
            AD = self._apply(Di)
            self.products_ += n_active
            dAd = torch.linalg.vecdot(Di, AD)
            if bool((dAd <= 0).any()):
                worst = float((dAd / (Di * Di).sum(1)).min())
                raise NonPositiveDefiniteError(
                    f"CG met negative curvature (dᵀ(C+λI)d / dᵀd = {worst:.3g} at iteration {it}): the damped "
                    f"curvature is not positive definite with damping {self.effective_damping:g}. Increase damping "
                    "above the most negative eigenvalue (see wherefrom.curvature.diagnostics), or use a positive "
                    "semi-definite curvature: InfluenceFunction(..., curvature='ggn')."
                )
            alpha = (rz[idx] / dAd).unsqueeze(1)
            if isinstance(idx, slice):  # in place on the full tensors
                X.addcmul_(alpha, D)
                R.addcmul_(alpha, AD, value=-1.0)
                Ri = R
            else:
                X[idx] += alpha * Di
                Ri = R[idx] - alpha * AD
                R[idx] = Ri
            Zi = self._minv(Ri)
            rz_new = torch.linalg.vecdot(Ri, Zi)
            beta = (rz_new / rz[idx].clamp_min(tiny)).unsqueeze(1)
            if isinstance(idx, slice):
                D.mul_(beta).add_(Zi)
            else:
                D[idx] = Zi + beta * Di
            rz[idx] = rz_new
            res[idx] = Ri.norm(dim=1) / v_norm[idx]
            col_iters[idx] += 1
            history.append(res.clone())
            active[idx] = res[idx] > self.tol
        self.iterations_ = it
        self.residuals_ = res
        self.column_iterations_ = col_iters
        self.residual_history_ = torch.stack(history)
        if self.warm_start:
            self._last = (V.detach().clone(), X.detach().clone())
        log.info("CG finished after %d iterations (%d vector products); max relative residual %.3g", it,
                 self.products_, float(res.max()))
        return X
