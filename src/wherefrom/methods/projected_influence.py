"""Influence functions on projected gradients: the curvature lives in the ``k``-dimensional projected space.

With a projection ``P ∈ R^{p×k}`` (``φ(g) = Pᵀg``), restrict the model to the subspace ``θ = θ̂ + P u``. The
influence function of that restricted model is

    τ[i, j] = sign · φ(q_j)ᵀ (C̃ + λI)⁻¹ φ(g_i) / n

(the same scale and sign as :class:`~wherefrom.methods.influence.InfluenceFunction`: the first-order leave-one-out
change of the test target, positive = helpful), with the projected curvature ``C̃`` (``k×k``):

- ``curvature="fisher"`` (default, what TRAK and LoGra use): the projected empirical Fisher
  ``C̃ = (1/n) Σ_i φ(g_i) φ(g_i)ᵀ + wd·I``, built from the stored training features, no Hessian-vector products;
- ``curvature="hessian"``: the projected Hessian ``C̃ = Pᵀ H P`` of the training objective (``k`` Hessian-vector
  products over the training set; ``P`` is formed explicitly, ``p×k``). With an orthogonal ``P`` of full rank
  (``PᵀP = I``, ``k = p``) this is exactly the influence function with damping ``λ``.

``λ`` is absolute, as in :class:`InfluenceFunction`. The solve is a float64 Cholesky factorisation of ``C̃ + λI``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from wherefrom.curvature import TrainingObjective
from wherefrom.data.loaders import DataLike
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.methods.base import GradientAttributor
from wherefrom.methods.trak import KernelSolve
from wherefrom.projection import Projection, make_projection
from wherefrom.task import Task

CURVATURES = ("fisher", "hessian")


class ProjectedInfluence(GradientAttributor):
    """Influence function with curvature in the projected space (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task` (final checkpoint).
        proj_dim: ``k``.
        projection: ``"gaussian"`` (default), ``"rademacher"``, ``"sparse"`` or a projection object.
        curvature: ``"fisher"`` or ``"hessian"``.
        damping: absolute ``λ``.
        seed: projection seed.
        hvp_chunk: Hessian-vector products computed together (``curvature="hessian"``).
    The remaining keyword arguments are those of :class:`GradientAttributor`.
    """

    def __init__(
        self, task: Task, proj_dim: int = 512, *, projection: Projection | str = "gaussian",
        curvature: str = "fisher", damping: float = 0.01, seed: int = 0, hvp_chunk: int = 64,
        batch_size: int = 256, memory_gb: float = 2.0, cache_dir: str | None = None, progress: bool | None = None,
    ) -> None:
        if curvature not in CURVATURES:
            raise unknown_name("projected curvature", curvature, CURVATURES)
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        super().__init__(task, batch_size=batch_size, memory_gb=memory_gb, cache_dir=cache_dir,
                         projection=make_projection(projection, proj_dim, seed), progress=progress)
        self.curvature = curvature
        self.damping = float(damping)
        self.hvp_chunk = hvp_chunk
        self._solves: list[KernelSolve] = []
        self._hessians: list[torch.Tensor] = []
        self._n = 1

    def _fit_checkpoint(self, c: int, state: dict[str, torch.Tensor], loader: DataLoader) -> None:
        if self.curvature != "hessian":
            return
        objective = TrainingObjective(self.task, loader, state, progress=False)
        P = self.projection.matrix(self.task.num_params, c, dtype=objective.dtype, device=objective.device)
        HP = torch.cat([objective.hvp(P[:, s:s + self.hvp_chunk].T.contiguous())
                        for s in range(0, P.shape[1], self.hvp_chunk)], dim=0)  # [k, p] = (H P)ᵀ
        H = (HP @ P).to(torch.float64)
        self._hessians.append((H + H.T) / 2)

    def fit(self, train: DataLike) -> ProjectedInfluence:
        """Project the training gradients and factor the damped projected curvature of every checkpoint."""
        self._hessians, self._solves = [], []
        super().fit(train)
        self._n = self.n_train
        for c, store in enumerate(self._stores):
            if self.curvature == "hessian":
                C, lam = self._hessians[c], self.damping
            else:
                C = None
                for _, F in store.blocks():
                    F64 = F.to(torch.float64)
                    C = F64.T @ F64 if C is None else C + F64.T @ F64
                C, lam = C / self._n, self.damping + self.task.weight_decay
            self._solves.append(KernelSolve(C, lam, f"projected {self.curvature}"))
        return self

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        return self._solves[c].solve(Q) / self._n
