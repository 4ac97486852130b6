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
from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, make_solver, register_solver
from wherefrom.errors import NonFiniteGradientError, NonPositiveDefiniteError, WherefromError
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
            ``solve`` approximates ``(C + λI)⁻¹``. A name is built with this solver's damping and
            ``preconditioner_options`` (e.g. ``preconditioner="nystrom", preconditioner_options={"rank": 400}``);
            an instance keeps its own settings, damping included.
        preconditioner_options: options of a preconditioner given by name.
        warm_start: start from the previous solution when the same right-hand sides are solved again (e.g. after
            changing ``damping``); ``solve(V, x0=...)`` gives a start explicitly.

    After ``solve``: ``residuals_`` (final relative residual per column, ``[m]``), ``iterations_`` (iterations run),
    ``column_iterations_`` (iterations each column took, ``[m]``), ``residual_history_`` (``[iterations + 1, m]``
    relative residuals, the start included) and ``products_`` (vector products taken, the sum over iterations of
    the active columns, plus ``m`` for the starting residual when starting from ``x0``). The residuals are CG's
    recursively updated ones; in float32 the true residual can be an order of magnitude above them.
    """

    needs_space = True

    def __init__(self, damping: Any = 0.0, max_iter: int = 200, tol: float = 1e-7, progress: bool | None = None,
                 curvature: str | None = None, preconditioner: Any = None, warm_start: bool = False,
                 preconditioner_options: dict[str, Any] | None = None):
        super().__init__(damping, curvature)
        if int(max_iter) < 1 or not tol >= 0:
            raise WherefromError(f"CG needs max_iter >= 1 and tol >= 0; got max_iter={max_iter}, tol={tol}.")
        if isinstance(preconditioner, CGSolver) or preconditioner == "cg":
            raise WherefromError("CG cannot be preconditioned by another CG solver (its solve is not a fixed linear "
                                 "map); use a factored preconditioner such as 'kfac', 'ekfac' or 'diagonal'.")
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.progress = progress
        if preconditioner_options and (preconditioner is None or isinstance(preconditioner, Preconditioner)):
            raise WherefromError("preconditioner_options apply to a preconditioner given by name (e.g. "
                                 "preconditioner='nystrom'); an instance carries its own options.")
        options = preconditioner_options
        if options is not None and not (isinstance(options, Mapping) and all(isinstance(k, str) for k in options)):
            raise WherefromError("preconditioner_options must be a dict of the named preconditioner's options, e.g. "
                                 f"{{'rank': 400}}; got {preconditioner_options!r}.")
        self.preconditioner = preconditioner
        self.preconditioner_options = dict(preconditioner_options or {})
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
                pre = make_solver(pre, self._damping, **self.preconditioner_options)
            self._precond = pre.fit(objective)
        return self

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if isinstance(self.preconditioner, Preconditioner):
            cfg["args"]["preconditioner"] = self.preconditioner.config()
        return cfg

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        """``(C + λI) X``: the damping is added in the product's own pass."""
        return self._require_fit().hvp(X, shift=self.effective_damping).to(X.dtype)

    def _minv(self, R: torch.Tensor) -> torch.Tensor:
        return R if self._precond is None else self._precond.solve(R).to(R.dtype)

    def solve(self, V: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """``(C + λI)⁻¹ V`` for ``V`` ``[m, p]``, column by column to ``tol`` (from ``x0`` ``[m, p]`` if given).

        The iterations work on contiguous tensors of the unconverged columns only: when columns converge, their
        solutions are written out and the working set is compacted once, so an iteration is one product plus a
        handful of in-place passes over the working set (no gathered copies per iteration). The iterations run in
        the wider of ``V``'s and the curvature's dtypes (rows stored in a lower precision than the model); the
        solution comes back in ``V``'s dtype."""
        obj = self._require_fit()
        out_dtype = V.dtype
        V = V.to(torch.promote_types(V.dtype, getattr(obj, "dtype", V.dtype)))
        tiny = torch.finfo(V.dtype).tiny
        v_raw = V.norm(dim=1)
        v_norm = v_raw.clamp_min(tiny)
        if x0 is None and self.warm_start and self._last is not None:
            last_v, last_x = self._last
            if last_v.shape == V.shape and torch.equal(last_v, V):
                x0 = last_x
        if x0 is not None:
            if x0.shape != V.shape:
                raise WherefromError(f"CG's start x0 has shape {tuple(x0.shape)}; it must match V, {tuple(V.shape)}.")
            X = x0.to(V.dtype).clone()
            X[v_raw == 0] = 0.0  # a zero right-hand side has the zero solution, whatever the start
            R = V - self._apply(X)
            self.products_ = V.shape[0]
        else:
            X = torch.zeros_like(V)
            R = V.clone()
            self.products_ = 0
        res = R.norm(dim=1) / v_norm
        history = [res.clone()]
        col_iters = torch.zeros(V.shape[0], dtype=torch.long, device=V.device)
        # the working set: columns `cols` of the problem, still above tol
        cols = torch.nonzero(res > self.tol).flatten()
        Xw, Rw, vn = X[cols], R[cols], v_norm[cols]
        Zw = self._minv(Rw)
        Dw = Zw.clone()
        rz = torch.linalg.vecdot(Rw, Zw)
        it = 0
        for it in track(range(1, self.max_iter + 1), "CG iterations", self.max_iter, self.progress):
            if cols.numel() == 0:
                it -= 1
                break
            AD = self._apply(Dw)
            self.products_ += cols.numel()
            dAd = torch.linalg.vecdot(Dw, AD)
            if bool(((dAd <= 0) | ~dAd.isfinite()).any()):  # one check (one device sync) for both failures
                if not bool(dAd.isfinite().all()):
                    raise NonFiniteGradientError(
                        f"CG: a curvature product is not finite (NaN or infinity) at iteration {it}; check the "
                        "model's outputs and gradients for overflow (float32), or the preconditioner for a division "
                        "by zero (give it damping > 0).")
                self._negative_curvature(dAd, Dw, it)
            alpha = (rz / dAd).unsqueeze(1)
            Xw.addcmul_(alpha, Dw)
            Rw.addcmul_(alpha, AD, value=-1.0)
            Zw = self._minv(Rw)
            rz_new = torch.linalg.vecdot(Rw, Zw)
            # plain CG: Z = R, so ‖r‖² is rᵀz and needs no pass of its own
            res_w = (rz_new.clamp_min(0).sqrt() if self._precond is None else Rw.norm(dim=1)) / vn
            torch.addcmul(Zw, Dw, (rz_new / rz.clamp_min(tiny)).unsqueeze(1), out=Dw)  # D ← Z + βD
            rz = rz_new
            res[cols] = res_w
            col_iters[cols] += 1
            history.append(res.clone())
            done = res_w <= self.tol
            if bool(done.any()):  # write the converged columns out; keep the others contiguous
                X[cols[done]] = Xw[done]
                keep = ~done
                cols, Xw, Rw, Dw, rz, vn = cols[keep], Xw[keep], Rw[keep], Dw[keep], rz[keep], vn[keep]
        X[cols] = Xw
        self.iterations_ = it
        self.residuals_ = res
        self.column_iterations_ = col_iters
        self.residual_history_ = torch.stack(history)
        if self.warm_start:
            self._last = (V.detach().clone(), X.detach().clone())
        log.info("CG finished after %d iterations (%d vector products); max relative residual %.3g", it,
                 self.products_, float(res.max()) if res.numel() else 0.0)
        return X.to(out_dtype)

    def _negative_curvature(self, dAd: torch.Tensor, D: torch.Tensor, it: int) -> None:
        worst = float((dAd / (D * D).sum(1)).min())
        raise NonPositiveDefiniteError(
            f"CG met negative curvature (dᵀ(C+λI)d / dᵀd = {worst:.3g} at iteration {it}): the damped "
            f"curvature is not positive definite with damping {self.effective_damping:g}. Increase damping "
            "above the most negative eigenvalue (see wherefrom.curvature.diagnostics), or use a positive "
            "semi-definite curvature: InfluenceFunction(..., curvature='ggn')."
        )
