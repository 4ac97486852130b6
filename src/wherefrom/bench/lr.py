"""Exact training of many multinomial logistic-regression models at once (LOO / LDS ground truth for LR settings).

Model ``k`` minimises its own weighted objective

    R_k(W) = (1/d_k) Σ_i w_ki · ℓ(x_i, y_i; W) + (wd/2)‖W‖²,      W ∈ R^{(D+1)×C} (bias = last row),

with ``ℓ`` the softmax cross-entropy, ``w_ki ∈ {0, 1}`` the example mask of model ``k`` and ``d_k`` its normaliser
(LOO keeps ``d_k = n``; a subset model uses ``d_k = |S_k|``). All ``K`` models are optimised together as one batched
tensor problem ``W ∈ R^{K×(D+1)×C}``.

Solver: batched L-BFGS whose initial inverse-Hessian approximation is the fixed symmetric positive-definite
``P = H_ref⁻¹`` (the inverse Hessian of the reference model's objective at its optimum), warm-started at the
reference optimum, with a per-model Armijo backtracking step. ``P`` only sets the speed: the fixed point is
``∇R_k(W) = 0`` for each model's *own* objective, and every model is iterated until ``‖∇R_k‖₂ ≤ tol``
(checked on the true gradient), so the result is the exact optimum of model ``k`` to that tolerance — not a
one-step (influence-function) approximation. (For LOO models the first step is a Newton step at the reference
optimum, see :func:`loo_correction`; the following ones remove its error.)

Flat parameter order inside this module is ``W.reshape(-1)``, index ``a·C + c`` (input feature ``a``, class ``c``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wherefrom.errors import WherefromError


def augment(X: torch.Tensor) -> torch.Tensor:
    """``[n, D] → [n, D+1]`` with a trailing column of ones (the bias input)."""
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)


def to_state(W: torch.Tensor) -> dict[str, torch.Tensor]:
    """``W [D+1, C]`` → state_dict of ``nn.Linear(D, C)`` named ``fc``: ``fc.weight = W[:D]ᵀ``, ``fc.bias = W[D]``."""
    return {"fc.weight": W[:-1].T.contiguous().clone(), "fc.bias": W[-1].contiguous().clone()}


def from_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`to_state`: ``[D+1, C]``."""
    return torch.cat([state["fc.weight"].T, state["fc.bias"][None]], dim=0).contiguous()


def objective_and_grad(
    Xa: torch.Tensor, y: torch.Tensor, W: torch.Tensor, weights: torch.Tensor, denom: torch.Tensor, wd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``R_k(W_k)`` ``[K]`` and ``∇R_k(W_k)`` ``[K, D+1, C]`` for every model ``k``.

    Args:
        Xa: ``[n, D+1]`` augmented inputs. y: ``[n]`` labels. W: ``[K, D+1, C]``.
        weights: ``[K, n]`` example weights (masks). denom: ``[K]`` normalisers ``d_k``. wd: weight decay.
    """
    K, Dp, C = W.shape
    n = Xa.shape[0]
    logits = (Xa @ W.permute(1, 0, 2).reshape(Dp, K * C)).view(n, K, C)
    logp = torch.log_softmax(logits, dim=2)
    nll = -logp.gather(2, y.view(n, 1, 1).expand(n, K, 1)).squeeze(2)  # [n, K]
    wt = weights.T / denom  # [n, K]
    loss = (wt * nll).sum(0) + 0.5 * wd * W.pow(2).sum((1, 2))
    R = logp.exp_()
    R[torch.arange(n), :, y] -= 1.0
    R.mul_(wt.unsqueeze(2))
    G = (Xa.T @ R.view(n, K * C)).view(Dp, K, C).permute(1, 0, 2) + wd * W
    return loss, G


def hessian(Xa: torch.Tensor, W: torch.Tensor, wd: float, weights: torch.Tensor | None = None,
            denom: float | None = None, chunk: int = 1024) -> torch.Tensor:
    """Dense Hessian ``[(D+1)C, (D+1)C]`` of one model's objective at ``W [D+1, C]`` (flat order ``a·C + c``).

    ``H = (1/d) Σ_i w_i (x_i x_iᵀ) ⊗ (diag(p_i) − p_i p_iᵀ) + wd·I``.
    """
    n, Dp = Xa.shape
    C = W.shape[1]
    w = torch.ones(n, dtype=Xa.dtype) if weights is None else weights.to(Xa.dtype)
    d = float(w.sum()) if denom is None else float(denom)
    P = torch.softmax(Xa @ W, dim=1)
    H = torch.zeros(Dp * C, Dp * C, dtype=Xa.dtype)
    Hv = H.view(Dp, C, Dp, C)
    for c in range(C):
        Hv[:, c, :, c] += Xa.T @ (Xa * (w * P[:, c]).unsqueeze(1))
    for s in range(0, n, chunk):
        Z = (Xa[s:s + chunk].unsqueeze(2) * P[s:s + chunk].unsqueeze(1)).reshape(-1, Dp * C)
        Z = Z * w[s:s + chunk].sqrt().unsqueeze(1)
        H.addmm_(Z.T, Z, alpha=-1.0)
    H /= d
    H.diagonal().add_(wd)
    return H


@dataclass
class SolveInfo:
    """Diagnostics of a batched solve: iterations used and the final gradient norm of every model."""

    iterations: int
    grad_norm: torch.Tensor
    evaluations: int = 0  #: model-gradient evaluations summed over models (the cost)

    @property
    def max_grad_norm(self) -> float:
        return float(self.grad_norm.max()) if self.grad_norm.numel() else 0.0


def solve(
    Xa: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, denom: torch.Tensor, wd: float,
    W0: torch.Tensor, precond: torch.Tensor, tol: float = 1e-10, max_iter: int = 300, history: int = 10,
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise every ``R_k`` to ``‖∇R_k‖₂ ≤ tol``: batched L-BFGS with initial inverse Hessian ``P``.

    Each model keeps its own curvature pairs ``(s, y)`` (``history`` of them); the two-loop recursion uses
    ``P`` (normally the reference model's inverse Hessian) in place of the usual scalar initial matrix, so a model
    close to the reference converges in a few steps and one further away (a 50% subset) corrects ``P`` along the
    way. Every step is backtracked per model until Armijo's condition
    ``R_k(W + t d) ≤ R_k(W) + 10⁻⁴ t ∇R_kᵀd`` holds (or, when the objective no longer changes above rounding
    level, the gradient norm decreases).

    Args:
        W0: ``[D+1, C]`` (shared) or ``[K, D+1, C]`` starting points. precond: ``[(D+1)C, (D+1)C]`` symmetric
            positive-definite ``P``.
        low_rank: optional per-model correction ``(A [K, p, r], M [K, r, r])``: the initial matrix of model ``k``
            is ``P + A_k M_k A_kᵀ`` (see :func:`loo_correction`).
        init: optional ``(R_k(W0_k) [K], ∇R_k(W0_k) [K, D+1, C])`` when known in closed form (saves one pass).
    Returns:
        ``(W [K, D+1, C], SolveInfo)``. Raises :class:`WherefromError` if some model does not converge.
    """
    K = weights.shape[0]
    W = (W0.expand(K, *W0.shape) if W0.ndim == 2 else W0).clone()
    Dp, C = W.shape[1:]
    p = Dp * C
    loss, G = objective_and_grad(Xa, y, W, weights, denom, wd) if init is None else (init[0].clone(), init[1].clone())
    gnorm = G.reshape(K, -1).norm(dim=1)
    S = torch.zeros(history, K, p, dtype=W.dtype)
    Y = torch.zeros(history, K, p, dtype=W.dtype)
    rho = torch.zeros(history, K, dtype=W.dtype)
    step = torch.ones(K, dtype=W.dtype)
    it, evals = 0, (K if init is None else 0)
    while it < max_iter:
        active = torch.nonzero(gnorm > tol).flatten()
        if active.numel() == 0:
            break
        it += 1
        evals += len(active)
        g = G[active].reshape(len(active), p)
        Sa, Ya, ra = S[:, active], Y[:, active], rho[:, active]
        q = g.clone()
        alphas = []
        for h in range(history - 1, -1, -1):
            a = ra[h] * (Sa[h] * q).sum(1)
            q -= a.unsqueeze(1) * Ya[h]
            alphas.append(a)
        r = q @ precond
        if low_rank is not None:
            A, M = low_rank[0][active], low_rank[1][active]
            r += torch.bmm(A, torch.bmm(M, torch.bmm(A.transpose(1, 2), q.unsqueeze(2)))).squeeze(2)
        for h in range(history):
            b = ra[h] * (Ya[h] * r).sum(1)
            r += Sa[h] * (alphas[history - 1 - h] - b).unsqueeze(1)
        d = -r
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction: forget this model's history
        if bool(bad.any()):
            d[bad] = -(g[bad] @ precond)
            slope[bad] = (g[bad] * d[bad]).sum(1)
            rho[:, active[bad]] = 0.0
        t = step[active]
        Wn = W[active] + (t.unsqueeze(1) * d).view(len(active), Dp, C)
        ln, Gn = objective_and_grad(Xa, y, Wn, weights[active], denom[active], wd)
        gn = Gn.reshape(len(active), -1).norm(dim=1)
        near = loss[active] + 1e-12 * loss[active].abs().clamp_min(1.0)  # rounding level of the objective
        ok = (ln <= loss[active] + 1e-4 * t * slope) | ((ln <= near) & (gn < gnorm[active]))
        acc = active[ok]
        if acc.numel():
            s_new = (Wn[ok] - W[acc]).reshape(-1, p)
            y_new = (Gn[ok] - G[acc]).reshape(-1, p)
            sy = (s_new * y_new).sum(1)
            keep = sy > 1e-30
            S[:, acc] = torch.cat([S[1:, acc], s_new.unsqueeze(0)])
            Y[:, acc] = torch.cat([Y[1:, acc], y_new.unsqueeze(0)])
            rho[:, acc] = torch.cat([rho[1:, acc], torch.where(keep, 1.0 / sy.clamp_min(1e-30), 0.0)[None]])
            W[acc], G[acc], loss[acc], gnorm[acc] = Wn[ok], Gn[ok], ln[ok], gn[ok]
            step[acc] = 1.0
        step[active[~ok]] *= 0.5
        if bool((step < 1e-10).any()):
            break
    info = SolveInfo(it, gnorm, evals)
    if info.max_grad_norm > tol:
        bad_n = int((gnorm > tol).sum())
        raise WherefromError(f"{bad_n} of {K} logistic-regression models did not reach ‖∇R‖ ≤ {tol:g} in {it} "
                             f"iterations (worst {info.max_grad_norm:.3g}); raise max_iter or loosen tol.")
    return W, info


def loo_correction(
    Xa: torch.Tensor, W: torch.Tensor, precond: torch.Tensor, removed: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Woodbury correction making ``P`` the inverse Hessian of each leave-one-out objective at ``W``.

    Removing example ``i`` (keeping the ``1/n`` normalisation) lowers the Hessian by ``V_i V_iᵀ`` with
    ``V_i = (x_i ⊗ B_i)/√n``, ``B_i B_iᵀ = diag(p_i) − p_i p_iᵀ``. With ``P = H⁻¹``,
    ``(H − V Vᵀ)⁻¹ = P + (P V)(I − Vᵀ P V)⁻¹(P V)ᵀ``. Returns ``(A = P V [K, p, C], M = (I − VᵀPV)⁻¹ [K, C, C])``
    for the examples ``removed [K]``. This only speeds up :func:`solve` (its first step is then an exact Newton
    step at ``W``); convergence is still checked on each model's true gradient.
    """
    Dp, C = W.shape
    p = Dp * C
    x = Xa[removed]  # [K, Dp]
    prob = torch.softmax(x @ W, dim=1)  # [K, C]
    A_i = torch.diag_embed(prob) - prob.unsqueeze(2) * prob.unsqueeze(1)
    evals, evecs = torch.linalg.eigh(A_i)
    B = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)  # [K, C, C], B Bᵀ = A_i
    # P (x ⊗ b) for every column b of B: contract P [p, Dp, C] with x over Dp, then with B over C.
    Px = torch.einsum("qac,ka->kqc", precond.view(p, Dp, C), x)  # [K, p, C]
    PV = torch.bmm(Px, B) / n ** 0.5  # [K, p, C]
    # Vᵀ P V [K, C, C]: V_k = (x_k ⊗ B_k)/√n, so (VᵀPV)[d, e] = Σ_{a,c} x_a B_cd PV[(a,c), e] / √n.
    PVr = PV.view(-1, Dp, C, C)  # [K, a, c, e]
    VtPV = torch.einsum("ka,kcd,kace->kde", x, B, PVr) / n ** 0.5
    eye = torch.eye(C, dtype=W.dtype)
    M = torch.linalg.inv(eye - VtPV)
    return PV, M


def lbfgs(Xa: torch.Tensor, y: torch.Tensor, wd: float, W0: torch.Tensor, weights: torch.Tensor | None = None,
          tol: float = 1e-6, max_iter: int = 2000) -> torch.Tensor:
    """Full-batch L-BFGS (strong Wolfe) for one model, from ``W0 [D+1, C]`` to ``‖∇R‖ ≲ tol``."""
    n = Xa.shape[0]
    w = torch.ones(1, n, dtype=Xa.dtype) if weights is None else weights.view(1, n).to(Xa.dtype)
    denom = w.sum(1)
    W = W0.clone().unsqueeze(0).requires_grad_(False)
    param = torch.nn.Parameter(W)
    opt = torch.optim.LBFGS([param], lr=1.0, max_iter=max_iter, tolerance_grad=tol / 10, tolerance_change=0.0,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss, G = objective_and_grad(Xa, y, param.data, w, denom, wd)
        param.grad = G
        return loss.sum()

    opt.step(closure)
    return param.data[0].clone()
