"""Influence functions on projected gradients: the curvature lives in the ``k``-dimensional projected space.

With a projection ``P ∈ R^{p×k}`` (``φ(g) = Pᵀg``), restrict the model to the subspace ``θ = θ̂ + P u``. The
influence function of that restricted model is

    τ[i, j] = sign · φ(q_j)ᵀ (C̃ + λI)⁻¹ φ(g_i) / n

(the same scale and sign as :class:`~wherefrom.methods.influence.InfluenceFunction`: the first-order leave-one-out
change of the test target, positive = helpful), with the projected curvature ``C̃`` (``k×k``):

- ``curvature="fisher"`` (default, what TRAK and LoGra use): the projected empirical Fisher
  ``C̃ = (1/n) Σ_i φ(g_i) φ(g_i)ᵀ + wd·I``, built from the stored training features, no Hessian-vector products
  (the kernel preconditioner);
- ``curvature="hessian"``: the projected Hessian ``C̃ = Pᵀ H P`` of the training objective (``k`` Hessian-vector
  products over the training set; ``P`` is formed explicitly, ``p×k``) with the explicit preconditioner. With an
  orthogonal ``P`` of full rank (``PᵀP = I``, ``k = p``) this is exactly the influence function with damping ``λ``.

``λ`` is absolute, as in :class:`InfluenceFunction`. A preset of the composition: projected gradients × kernel or
explicit preconditioner × dot, scale ``1/n``.
"""

from __future__ import annotations

from typing import Any

from wherefrom.curvature import ExplicitSolver, KernelSolver
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.projection import Projection, make_projection
from wherefrom.task import Task

CURVATURES = ("fisher", "hessian")


class ProjectedInfluence(ComposedAttributor):
    """Influence function with curvature in the projected space (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task` (final checkpoint).
        proj_dim: ``k``.
        projection: ``"gaussian"`` (default), ``"rademacher"``, ``"sparse"`` or a projection object.
        curvature: ``"fisher"`` or ``"hessian"``.
        damping: absolute ``λ`` (or ``"auto"``).
        seed: projection seed.
        hvp_chunk: Hessian-vector products computed together (``curvature="hessian"``).
    The remaining keyword arguments are those of :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, proj_dim: int = 512, *, projection: Projection | str = "gaussian",
        curvature: str = "fisher", damping: Any = 0.01, seed: int = 0, hvp_chunk: int = 64, **execution: Any,
    ) -> None:
        if curvature not in CURVATURES:
            raise unknown_name("projected curvature", curvature, CURVATURES)
        if isinstance(damping, (int, float)) and damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        if curvature == "hessian":
            precond: Any = ExplicitSolver(damping, column_chunk=hvp_chunk, curvature="hessian")
        else:
            precond = KernelSolver(damping, label="projected fisher")
        super().__init__(task, preconditioner=precond, scale="1/n",
                         projection=make_projection(projection, proj_dim, seed), **execution)
        self.damping = damping
        self.hvp_chunk = hvp_chunk
