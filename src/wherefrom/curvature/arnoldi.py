"""Arnoldi influence (Schioppa et al. 2021): top eigenpairs of the curvature from curvature-vector products.

Arnoldi's iteration builds an orthonormal basis ``w_1..w_K`` of the Krylov space ``{w_1, C w_1, C² w_1, ...}``
(``C`` the curvature of the objective: Hessian, GGN or Fisher, including ``wd·I``) and the projected matrix
``T = Wᵀ C W`` (``K×K``, tridiagonal up to rounding for symmetric ``C``). The eigenpairs ``(μ_r, y_r)`` of
``T`` give Ritz pairs ``(μ_r, u_r = Wᵀ y_r)``; the extreme ones converge first. The block variant starts from
``b`` random vectors and multiplies ``b`` basis vectors at a time (one batched product, one pass over the data,
per block): ``{W_1, C W_1, C² W_1, ...}``, ``⌈K/b⌉`` passes for ``K`` directions. With ``U_k`` the ``k`` kept
directions and ``λ`` the absolute damping,

    (C + λI)⁻¹ v  ≈  U_k diag(1 / (μ_r + λ)) U_kᵀ v                                    (``solve``)
    features(v)   =  diag((μ_r + λ)^{-1/2}) U_kᵀ v,   ⟨features(g), features(q)⟩ = qᵀ (…)⁻¹ g   (``features``)

Directions outside ``span(U_k)`` are dropped (Schioppa et al.'s low-rank inverse). The ``k`` directions are
the largest ``|μ_r|``; of those, pairs with ``μ_r + λ <= eig_floor · max|μ|`` are discarded (with a warning)
so no square root or division of a non-positive number is ever taken. At full rank (``k = K = p``) ``solve``
is the exact ``(C + λI)⁻¹`` on a positive definite ``C + λI``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.errors import WherefromError
from wherefrom.progress import track

log = logging.getLogger(__name__)

MatVec = Callable[[torch.Tensor], torch.Tensor]


def arnoldi_iteration(
    matvec: MatVec, p: int, iterations: int, *, seed: int = 0, tol: float = 1e-10,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", progress: bool | None = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal Krylov basis ``W`` (``[K, p]``, rows) and ``T = W C Wᵀ`` (``[K, K]``, symmetrised).

    The start vector is Gaussian (seeded); each new vector is orthogonalised twice against all previous ones
    (classical Gram-Schmidt, repeated, which is as stable as modified Gram-Schmidt at ``K`` products each).
    When the new vector's norm falls below ``tol`` times the largest projection seen (the Krylov space is
    invariant: it happens when eigenvalues repeat, e.g. a null space) the iteration restarts from a fresh random
    vector orthogonal to the basis, so that at ``iterations = p`` the basis spans everything and the Ritz pairs
    are the exact eigenpairs.
    """
    if iterations < 1:
        raise WherefromError(f"iterations must be >= 1, got {iterations}.")
    iterations = min(iterations, p)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def fresh() -> torch.Tensor:
        return torch.randn(p, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    W = torch.zeros(iterations, p, dtype=dtype, device=device)
    T = torch.zeros(iterations, iterations, dtype=torch.float64)
    w = fresh()
    W[0] = w / w.norm()
    scale = 0.0
    K = iterations
    for t in track(range(iterations), "Arnoldi iterations", iterations, progress):
        v = matvec(W[t]).to(dtype)
        h = W[: t + 1] @ v
        v = v - h @ W[: t + 1]
        h2 = W[: t + 1] @ v  # re-orthogonalise
        v = v - h2 @ W[: t + 1]
        T[: t + 1, t] = (h + h2).to(torch.float64)
        beta = float(v.norm())
        scale = max(scale, float(h.abs().max()), beta)
        if t + 1 == iterations:
            break
        if beta <= tol * max(scale, 1e-300):
            log.info("Arnoldi: invariant Krylov space of dimension %d; restarting from a new vector", t + 1)
            v = fresh()
            for _ in range(2):
                v = v - (W[: t + 1] @ v) @ W[: t + 1]
            W[t + 1] = v / v.norm()
            continue  # T[t + 1, t] stays 0: the two invariant subspaces are decoupled
        T[t + 1, t] = beta
        W[t + 1] = v / beta
    T = T[:K, :K]
    return W[:K], (T + T.T) / 2


def block_arnoldi_iteration(
    matmat: MatVec, p: int, iterations: int, block_size: int, *, seed: int = 0, tol: float = 1e-10,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", progress: bool | None = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block Krylov basis ``W`` (``[K, p]``, orthonormal rows) and ``T = W C Wᵀ`` (``[K, K]``, symmetrised).

    ``matmat(X [b, p]) -> C X`` (rows) is called once per block of ``b = block_size`` vectors: ``⌈K/b⌉`` batched
    products (one pass over the data each) instead of ``K``. The first block is Gaussian (seeded); block
    ``t + 1`` is ``C W_t`` orthogonalised twice against the whole basis, then row by row within the block (classical
    Gram-Schmidt, repeated). A row whose norm falls below ``tol`` times the largest norm seen (an invariant
    subspace: repeated eigenvalues, a null space) is replaced by a fresh random vector orthogonal to the basis, so
    at ``K = p`` the basis spans everything. ``T`` is the Rayleigh quotient ``W (C W)ᵀ`` of all ``K`` products
    (exact Galerkin projection: the Ritz pairs of any orthonormal basis), so ``K`` products give ``K`` Ritz pairs.
    """
    if iterations < 1 or block_size < 1:
        raise WherefromError(f"iterations and block_size must be >= 1, got {iterations} and {block_size}.")
    K = min(iterations, p)
    b = min(block_size, K)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def fresh(m: int) -> torch.Tensor:
        return torch.randn(m, p, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    W = torch.zeros(K, p, dtype=dtype, device=device)
    Z = torch.zeros(K, p, dtype=dtype, device=device)  # C W, row by row
    scale = 0.0

    def extend(V: torch.Tensor, filled: int) -> int:
        """Orthonormalise the rows of ``V`` against ``W[:filled]`` and append them; returns the new fill."""
        nonlocal scale
        for _ in range(2):
            V = V - (V @ W[:filled].T) @ W[:filled]
        for v in V:
            if filled == K:
                break
            for _attempt in range(3):
                for _ in range(2):
                    v = v - (W[:filled] @ v) @ W[:filled]
                norm = float(v.norm())
                scale = max(scale, norm)
                if norm > tol * max(scale, 1e-300):
                    break
                log.info("Block Arnoldi: invariant Krylov space of dimension %d; a new random direction", filled)
                v = fresh(1)[0]
            W[filled] = v / v.norm()
            filled += 1
        return filled

    filled = extend(fresh(b), 0)
    start = 0
    steps = -(-K // b)
    for _ in track(range(steps), "block Arnoldi products", steps, progress):
        if start >= K:
            break
        end = filled
        Z[start:end] = matmat(W[start:end]).to(dtype)
        scale = max(scale, float(Z[start:end].norm(dim=1).max()))
        if end < K:
            filled = extend(Z[start:end][: K - end], end)
        start = end
    T = (W @ Z.T).to(torch.float64)
    return W, (T + T.T) / 2


def ritz_pairs(matvec: MatVec, p: int, iterations: int, block_size: int = 1,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (``[K]``, ascending, float64) and Ritz vectors (``[K, p]``, rows) of a symmetric operator, both on
    the device of the basis.

    ``block_size = 1``: ``matvec`` takes one vector ``[p]`` (:func:`arnoldi_iteration`); otherwise it takes a block
    of rows ``[b, p]`` (:func:`block_arnoldi_iteration`).
    """
    if block_size == 1:
        W, T = arnoldi_iteration(matvec, p, iterations, **kwargs)
    else:
        W, T = block_arnoldi_iteration(matvec, p, iterations, block_size, **kwargs)
    evals, evecs = torch.linalg.eigh(T)  # T: on the CPU (single vector) or the basis's device (block)
    U = evecs.T.to(device=W.device, dtype=W.dtype) @ W
    return evals.to(W.device), U


@register_solver("arnoldi")
class ArnoldiSolver(Preconditioner):
    """Low-rank inverse from the eigenpairs of a (block) Krylov space of the curvature (Schioppa et al. 2021).

    Args:
        damping: absolute ``λ`` added to the eigenvalues of the (mean-reduced) curvature.
        rank: ``k``, the number of eigen-directions kept (largest ``|μ|``); ``None`` (default) keeps all ``K``
            Ritz pairs: the Galerkin inverse of ``C + λI`` on the whole Krylov space, which is more accurate than
            the top half at no extra products (the small Ritz values carry the largest weights ``1/(μ + λ)``).
        iterations: ``K``, the Krylov dimension (curvature-vector products over the training set); ``None`` →
            ``min(p, 100)`` when ``rank`` is ``None``, else ``min(p, max(2·rank, rank + 20))``.
        block_size: ``b``, vectors per batched curvature product (block Krylov): ``⌈K/b⌉`` passes over the
            training data instead of ``K``. ``1`` is the classical single-vector iteration.
        seed: seed of the Gaussian start vectors. tol: breakdown tolerance.
        eig_floor: pairs with ``μ + λ <= eig_floor · max|μ|`` are dropped (never a square root of a
            non-positive number).
        dtype: dtype of the stored basis (float64 by default; float32 halves the ``K·p`` memory).

    After ``fit``: ``eigenvalues_`` (``[k']``, undamped, descending), ``eigenvectors_`` (``[k', p]``),
    ``ritz_values_`` (all ``K`` Ritz values) and ``dropped_`` (how many of the top ``k`` were discarded).
    The pairs are chosen with the damping at fit time; a later change of ``damping`` changes ``μ + λ`` only.
    """

    has_factors = True

    def __init__(
        self, damping: Any = 0.0, rank: int | None = None, iterations: int | None = None, seed: int = 0,
        tol: float = 1e-10, eig_floor: float = 1e-12, dtype: torch.dtype = torch.float64,
        progress: bool | None = None, curvature: str | None = None, block_size: int = 10,
    ) -> None:
        super().__init__(damping, curvature)
        if rank is not None and rank < 1:
            raise WherefromError(f"rank must be >= 1 (or None for every Ritz pair), got {rank}.")
        if block_size < 1:
            raise WherefromError(f"block_size must be >= 1, got {block_size}.")
        self.rank, self.iterations, self.seed, self.tol = rank, iterations, seed, tol
        self.eig_floor, self.dtype, self.progress, self.block_size = eig_floor, dtype, progress, block_size
        self.eigenvalues_: torch.Tensor | None = None
        self.eigenvectors_: torch.Tensor | None = None
        self.ritz_values_: torch.Tensor | None = None
        self.dropped_: int = 0

    def krylov_dimension(self, p: int) -> int:
        """``K`` for a curvature of dimension ``p`` (see ``iterations``)."""
        if self.iterations is not None:
            return self.iterations
        if self.rank is None:
            return min(p, 100)
        return min(p, max(2 * self.rank, self.rank + 20))

    def fit(self, objective: Any) -> ArnoldiSolver:
        super().fit(objective)
        p = objective.p
        K = self.krylov_dimension(p)
        rank = min(K, p) if self.rank is None else self.rank
        if rank > K:
            raise WherefromError(f"Arnoldi's rank ({rank}) exceeds its Krylov dimension K = {K} (iterations, at most "
                                 f"the number of parameters p = {p}): pass rank <= {min(K, p)}, or rank=None for "
                                 "every Ritz pair.")
        if min(p, 2 * rank) > K and rank < min(K, p):
            log.warning("Arnoldi with iterations=%d and rank=%d: the smaller kept Ritz pairs are poorly "
                        "converged; use iterations >= 2·rank, or rank=None to keep every Ritz pair.", K, rank)

        if self.block_size == 1:
            def product(v: torch.Tensor) -> torch.Tensor:
                return objective.hvp(v.to(objective.dtype).unsqueeze(0))[0]
        else:
            def product(V: torch.Tensor) -> torch.Tensor:
                return objective.hvp(V.to(objective.dtype))

        evals, U = ritz_pairs(product, p, K, block_size=self.block_size, seed=self.seed, tol=self.tol,
                              dtype=self.dtype, device=objective.device, progress=self.progress)
        self.ritz_values_ = evals
        order = torch.argsort(evals.abs(), descending=True)[:rank]
        top, Utop = evals[order], U[order]
        floor = self.eig_floor * max(float(evals.abs().max()), 1e-300)
        lam = self.effective_damping
        keep = top + lam > floor
        self.dropped_ = int((~keep).sum())
        if self.dropped_:
            warnings.warn(
                f"Arnoldi: {self.dropped_} of the top {len(top)} eigenvalues of the curvature are not positive "
                f"after damping (smallest {float(top.min()):.3g}, damping {lam:g}); they were dropped. "
                "Use a Gauss-Newton curvature or more damping.", stacklevel=2)
        keep_idx = torch.nonzero(keep).flatten()
        order2 = keep_idx[torch.argsort(top[keep_idx], descending=True)]
        self.eigenvalues_ = top[order2]
        self.eigenvectors_ = Utop[order2]
        log.info("Arnoldi kept %d eigenpairs; eigenvalues %.4g .. %.4g", len(order2),
                 float(self.eigenvalues_.max()) if len(order2) else float("nan"),
                 float(self.eigenvalues_.min()) if len(order2) else float("nan"))
        return self

    def _require_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.eigenvectors_ is None or self.eigenvalues_ is None:
            raise WherefromError("The arnoldi solver must be fitted (or loaded) before solve().")
        return self.eigenvalues_, self.eigenvectors_

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``U diag(1/(μ+λ)) Uᵀ V`` for ``V`` ``[m, p]``."""
        evals, U = self._require_factors()
        Vd = V.to(device=U.device, dtype=U.dtype)
        coef = (Vd @ U.T) / (evals + self.effective_damping).to(U.dtype)
        return (coef @ U).to(device=V.device, dtype=V.dtype)

    def features(self, V: torch.Tensor) -> torch.Tensor:
        """Whitened projection ``diag((μ+λ)^{-1/2}) Uᵀ v`` of each row of ``V`` ``[m, p]`` → ``[m, k]``."""
        evals, U = self._require_factors()
        return ((V.to(U.dtype) @ U.T) / (evals + self.effective_damping).sqrt().to(U.dtype)).to(V.dtype)

    def state_dict(self) -> dict:
        evals, U = self._require_factors()
        return {**super().state_dict(), "eigenvalues": evals, "eigenvectors": U, "ritz_values": self.ritz_values_}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.eigenvalues_ = state["eigenvalues"]
        self.eigenvectors_ = state["eigenvectors"]
        self.ritz_values_ = state.get("ritz_values")
