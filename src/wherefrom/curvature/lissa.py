"""LiSSA: a stochastic Neumann series for ``(H + λI)⁻¹ V`` with mini-batch Hessian-vector products.

Recursion (Agarwal et al. 2017): ``h_0 = v``, ``h_t = v + (1 − δ) h_{t−1} − H_{S_t} h_{t−1} / s``; its fixed
point is ``h/s = (H + δ s I)⁻¹ v``. wherefrom's ``damping`` ``λ`` is the same absolute damping as every other
solver: internally ``δ = λ / s``. The recursion converges when ``s`` exceeds the largest eigenvalue of the
mini-batch curvature; with ``scale=None`` it is set to ``scale_margin`` times the top eigenvalue of ``H + λI``
found by power iteration. ``repeats`` independent runs are averaged.

**Tail averaging.** In ``x_t = h_t / s`` the recursion is constant-step SGD on ``½xᵀ(H + λI)x − vᵀx`` with step
``1/s``: its last iterate stops improving at a noise floor set by the mini-batch curvature (``‖(H_S − H)x‖``), so
beyond some depth a longer series does not lower the residual. Averaging the iterates of the last ``average``
fraction of the depth (Polyak-Ruppert tail averaging) removes most of that noise at no extra products: on the
peers' digits logistic regression (depth 1000, batches of 256) the largest relative residual falls from 0.22 (last
iterate) to 0.02. ``average=0`` returns the last iterate (the classical LiSSA), as does a mini-batch of the whole
training set (a deterministic series, whose last iterate is its best).

**Products.** When the training objective keeps structured curvature samples
(:mod:`wherefrom.curvature.structured`), each mini-batch product is taken from them
(:mod:`wherefrom.curvature.minibatch`) instead of by autodiff on the collated mini-batch: the same numbers, several
times cheaper.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.diagnostics import solve_residuals
from wherefrom.errors import NonFiniteGradientError, WherefromError
from wherefrom.progress import track
from wherefrom.warn import warn

log = logging.getLogger(__name__)


@register_solver("lissa")
class LissaSolver(Preconditioner):
    """LiSSA inverse-HVP, vectorised over all right-hand sides.

    Args:
        damping: absolute ``λ``. depth: recursion depth ``T``. repeats: runs averaged (``r``).
        hvp_batch_size: examples per mini-batch Hessian (``b``). scale: ``s`` (``None``: estimated).
        scale_margin: safety factor on the estimated top eigenvalue. seed: mini-batch sampling seed.
        check_residuals: after each solve, measure ``residuals_`` ``= ‖v − (H+λI)x‖/‖v‖`` per right-hand side
            (one batched full-data HVP) and log the largest.
        residual_tolerance: above this largest relative residual the solve is reported as not converged: a
            warning (once per solver) gives the residual and the depth the series would need, extrapolated from
            the geometric decay ``r(T) ≈ q^T`` of the Neumann series (``T_needed ≈ 1.5·T·log(tol)/log(r)``).
        average: fraction of the final iterations whose iterates are averaged (tail averaging, see the module
            docstring; ``0``: the last iterate).
    It samples mini-batches of the space at every call, so it needs the training data after loading.
    """

    needs_space = True

    def __init__(
        self, damping: Any = 0.0, depth: int = 1000, repeats: int = 1, hvp_batch_size: int = 256,
        scale: float | None = None, scale_margin: float = 2.0, seed: int = 0, progress: bool | None = None,
        check_residuals: bool = True, curvature: str | None = None, residual_tolerance: float = 0.1,
        average: float = 0.5,
    ):
        super().__init__(damping, curvature)
        if not 0.0 <= float(average) < 1.0:
            raise WherefromError(f"average must be in [0, 1) (the fraction of the final LiSSA iterations averaged), "
                                 f"got {average!r}.")
        self.average = float(average)
        for name, value in (("depth", depth), ("repeats", repeats), ("hvp_batch_size", hvp_batch_size)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise WherefromError(f"LiSSA's {name} must be a whole number >= 1, got {value!r}.")
        if scale is not None and not float(scale) > 0:
            raise WherefromError(f"LiSSA's scale must be > 0 (above the largest eigenvalue of H + λI), or None to "
                                 f"estimate it; got {scale!r}.")
        if not float(scale_margin) > 0:
            raise WherefromError(f"LiSSA's scale_margin must be > 0 (usually > 1), got {scale_margin!r}.")
        self.depth, self.repeats, self.hvp_batch_size = int(depth), int(repeats), int(hvp_batch_size)
        self.scale, self.scale_margin, self.seed, self.progress = scale, scale_margin, seed, progress
        self.scale_: float | None = None
        self.update_norms_: list[float] = []
        self.check_residuals = check_residuals
        self.residual_tolerance = residual_tolerance
        self.residuals_: torch.Tensor | None = None

    def fit(self, objective: Any) -> LissaSolver:
        super().fit(objective)
        if self.scale is not None:
            self.scale_ = float(self.scale)
        else:
            top = abs(objective.top_eigenvalue()) + self.effective_damping
            self.scale_ = max(self.scale_margin * top, 1e-12)
            log.info("LiSSA scale set to %.4g (top eigenvalue of H + λI ≈ %.4g)", self.scale_, top)
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        obj = self._require_fit()
        s = float(self.scale_)  # type: ignore[arg-type]
        lam = self.effective_damping
        delta = lam / s
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        b = min(self.hvp_batch_size, obj.n)
        total = torch.zeros_like(V)
        steps = range(self.repeats * self.depth)
        bar = iter(track(steps, "LiSSA recursion", len(steps), self.progress))
        v_norm = float(V.norm())
        # first averaged step; a mini-batch of the whole data has no noise to average (the last iterate is best)
        start_avg = self.depth - 1 if b >= obj.n else min(int(self.depth * (1.0 - self.average)), self.depth - 1)
        for _ in range(self.repeats):
            h = V.clone()
            h_sum = torch.zeros_like(V) if start_avg < self.depth - 1 else None
            for t in range(self.depth):
                next(bar, None)
                idx = torch.randperm(obj.n, generator=gen)[:b]
                h = V + (1.0 - delta) * h - obj.minibatch_hvp(h, idx) / s
                norm = float(h.norm())
                if not torch.isfinite(torch.tensor(norm)) or norm > 1e8 * max(v_norm, 1e-30) * max(s, 1.0):
                    raise NonFiniteGradientError(
                        f"LiSSA diverged (‖h‖ = {norm:.3g}). Use a larger scale (now {s:.3g}), more damping, "
                        "or a larger hvp_batch_size."
                    )
                if h_sum is not None and t >= start_avg:
                    h_sum += h
            self.update_norms_.append(norm)
            total += (h if h_sum is None else h_sum / (self.depth - start_avg)) / s
        X = total / self.repeats
        if self.check_residuals:
            self.residuals_ = solve_residuals(obj, V, X, lam)
            worst = float(self.residuals_.max()) if self.residuals_.numel() else 0.0
            log.info("LiSSA finished; max relative residual %.3g", worst)
            self._warn_if_not_converged(worst)
        return X

    def depth_needed(self, residual: float) -> int | None:
        """Depth at which the series would reach ``residual_tolerance``, extrapolated from ``residual`` at ``depth``.

        The deterministic part of the error contracts by ``q = 1 − (λ_min + λ)/s`` per step, so ``r(T) ≈ q^T`` and
        ``T · log(tol) / log(r)``, times 1.5 because the early steps also remove the fast modes and so decay faster
        than the slowest one that remains; ``None`` when ``r ≥ 1`` (no decay to extrapolate from: raise the
        damping or the mini-batch size instead).
        """
        if not 0.0 < residual < 1.0:
            return None
        return math.ceil(1.5 * self.depth * math.log(self.residual_tolerance) / math.log(residual))

    def _warn_if_not_converged(self, residual: float) -> None:
        if residual <= self.residual_tolerance:
            return
        needed = self.depth_needed(residual)
        advice = (f"use depth={needed} (extrapolated), a larger hvp_batch_size (less mini-batch noise) or a larger "
                  "damping" if needed is not None
                  else "raise the damping or hvp_batch_size; the series does not contract at this scale")
        warn(f"LiSSA did not converge: largest relative residual ‖v − (H+λI)x‖/‖v‖ = {residual:.3g} after "
             f"depth={self.depth} (tolerance {self.residual_tolerance:g}); {advice}. Scores are inexact.",
             owner=self, key="lissa-not-converged")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scale": self.scale_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scale_ = state["scale"]
