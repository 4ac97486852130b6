"""LoGra (Choe et al. 2024): layer-wise Kronecker projection of per-example gradients, never forming them.

The features are those of :class:`~wherefrom.sources.KroneckerProjectedGradients`: per layer,
``vec(G̃) = (P_out ⊗ P_in) vec(G)`` computed from the layer captures as ``Σ_t (P_out δ_t)(P_in ã_t)ᵀ``, with
``k_l = k_in·k_out`` features (dense layers and fallback parameters projected to ``k_in·k_out`` by one Gaussian
matrix). The cost per example is ``O(T·((d_in+1)·k_in + d_out·k_out) + T·k_in·k_out)`` on top of one forward and
backward pass.

**Score** (per layer ``l``, summed over layers; ``g̃`` training-loss, ``q̃`` test-target projected gradients)::

    τ[i, j] = sign · Σ_l g̃_ilᵀ (F̃_l + λ_l I)⁻¹ q̃_jl / n

with the preconditioner ``F̃_l``:

- ``"raw"``: the projected empirical Fisher ``F̃_l = (1/n) Σ_i g̃_il g̃_ilᵀ`` (``k_l×k_l``) — the kernel
  preconditioner with one block per layer (:class:`~wherefrom.curvature.KernelSolver` ``blocks="layout"``);
- ``"kfac"``: ``F̃_l ≈ S̃_l ⊗ Ã_l`` with ``Ã_l = (1/(nT)) Σ_{i,t} (P_in ã)(P_in ã)ᵀ`` and
  ``S̃_l = (1/n) Σ_{i,t} (P_out δ)(P_out δ)ᵀ`` — K-FAC (empirical Fisher) in the projected space, one extra pass;
- ``"identity"``: no preconditioner, ``τ = sign · Σ_l g̃_ilᵀ q̃_jl`` (projected Grad-Dot; no ``1/n``);
- any :class:`~wherefrom.curvature.Preconditioner` instance (e.g. ``EKFACSolver(curvature="empirical_fisher")``
  for EK-FAC in the projected space), with the ``1/n`` scale.

LoGra's curvature is the Fisher of the data term only (no weight decay). ``damping`` keeps the paper's relative
meaning for this preset: a number ``f`` is ``relative(f)``, ``λ_l = f · tr(F̃_l)/k_l`` — the library's ``"auto"``
heuristic is ``f = 0.1``, the default. Pass ``wf.curvature.relative(f)`` or an absolute value through a
preconditioner instance for the library's units. With ``"raw"``/``"kfac"`` the natural scale is that of an
influence function (the predicted leave-one-out change of the test target under a mean-reduced objective, with the
Fisher as curvature). ``sign`` makes positive = helpful.
"""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.curvature import IdentityPreconditioner, KernelSolver, KFACSolver, Preconditioner
from wherefrom.curvature.damping import Relative, relative
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.sources import KroneckerProjectedGradients
from wherefrom.task import Task

PRECONDITIONERS = ("raw", "kfac", "identity")


def logra_preconditioner(kind: str | Preconditioner, damping: Any) -> Preconditioner:
    """LoGra's named preconditioners with a relative damping (``f`` → ``relative(f)``)."""
    if isinstance(kind, Preconditioner):
        return kind
    if kind not in PRECONDITIONERS:
        raise unknown_name("LoGra preconditioner", kind, PRECONDITIONERS)
    if isinstance(damping, (int, float)) and not isinstance(damping, bool):
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        damping = relative(damping)
    if kind == "raw":
        return KernelSolver(damping, blocks="layout", label="LoGra projected Fisher")
    if kind == "kfac":
        return KFACSolver(damping, curvature="empirical_fisher")
    return IdentityPreconditioner()


class LoGra(ComposedAttributor):
    """LoGra scores ``[n_train, n_test]`` at the task's final checkpoint (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task`; every layer type is covered (Linear, Conv1d, Conv2d, Embedding by
            their Kronecker factors; LayerNorm and other parameters by a dense projection).
        rank: ``k_in = k_out = rank`` for every layer, or a pair ``(k_in, k_out)``; ``k_l = k_in·k_out``.
        preconditioner: ``"raw"`` (default), ``"kfac"``, ``"identity"`` or a Preconditioner instance.
        damping: relative damping (a multiple of the mean eigenvalue of each layer's preconditioner), or
            ``"auto"`` / ``relative(f)`` / a Preconditioner's own.
        seed: seed of the factor projections.
    The remaining keyword arguments (``execution``, ``batch_size``, ``memory_gb``, ``cache_dir``, ``progress``)
    are those of :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, rank: int | tuple[int, int] = 16, *, preconditioner: str | Preconditioner = "raw",
        damping: float | str | Relative = 0.1, seed: int = 0, **execution: Any,
    ) -> None:
        source = KroneckerProjectedGradients(rank, seed)
        precond = logra_preconditioner(preconditioner, damping)
        scale = 1.0 if isinstance(precond, IdentityPreconditioner) else "1/n"
        super().__init__(task, source, precond, "dot", scale=scale, weight_decay=False, **execution)
        self.rank = source.rank
        self.seed = seed
        if not self.source.layout:
            raise WherefromError("LoGra found no parameters to project: the task selects none.")

    # ------------------------------------------------------------------ projection
    def factors(self, c: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (P_in [k_in, d_in(+1)], P_out [k_out, d_out])}`` of checkpoint ``c`` for the Kronecker layers
        (identity where ``k ≥ d``)."""
        out = {}
        src: KroneckerProjectedGradients = self.source  # type: ignore[assignment]
        for block in src.layout:
            if block.spec is None:
                continue
            P_in, P_out = src.layer_factors(c, block.name, self.task.device)
            d_in, d_out = src._dims[block.name]
            out[block.name] = (torch.eye(d_in) if P_in is None else P_in, torch.eye(d_out) if P_out is None else P_out)
        return out

    def projected_gradients(self, data: DataLike, target: bool = False, checkpoint: int = 0) -> torch.Tensor:
        """Projected per-example gradients ``[n, Σ_l k_l]`` of the training loss (or of the target) of ``data``."""
        self._require_fit()
        loader = as_loader(data, self.batch_size)
        fn = self.task.target_fn if target else None
        return torch.cat([b for _, b in self._feature_blocks(checkpoint, loader, fn)], dim=0)

    def layer_dims(self) -> dict[str, int]:
        """``{block: k_l}`` in feature order."""
        return {block.name: block.size for block in self.source.layout}
