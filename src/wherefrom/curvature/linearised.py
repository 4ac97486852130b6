"""Hessian-vector products from gradient graphs built once and kept (reverse-over-reverse).

For the Hessian of a model that is not affine in its parameters (no structured form, see
:mod:`wherefrom.curvature.structured`) every product ``H V`` needs second derivatives. The generic path recomputes,
per batch and per product, a forward pass, a backward pass and their tangents (``vmap`` over forward-over-reverse
``jvp(grad(·))``). Iterative solvers (Arnoldi, CG) multiply by the same ``H`` tens of times, so here the first
derivative is built **once** per batch with its graph (``g_b = ∇_θ Σ_{i∈b} ℓ_i`` with ``create_graph=True``) and
kept; each product is then one batched backward pass through it:

    H_b V = ∂(g_bᵀ v)/∂θ  for every row v of V (``[m, p]``)   →   Σ_b H_b V  (no ``1/n``, no weight decay),

with ``is_grads_batched=True`` (one vectorised backward for ``m`` vectors; a loop over them where an operation has
no batching rule). The kept graphs hold the activations of a forward and a backward pass per batch; their size is
measured while they are built (the tensors autograd saves), and beyond ``budget_bytes`` the operator is not used
(the objective falls back to the generic products).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from wherefrom.batches import batch_loop

log = logging.getLogger(__name__)


class LinearisedHessian:
    """``Σ_i ∇²ℓ_i V`` from per-batch gradient graphs kept across products.

    Build it with :meth:`for_objective` (``None`` when the objective does not qualify or the graphs exceed the
    budget). Attributes: ``theta`` (the leaf ``[p]`` the graphs differentiate), ``graphs`` (one ``g_b`` ``[p]`` per
    batch), ``nbytes`` (measured size of the saved tensors).
    """

    def __init__(self, objective: Any) -> None:
        self.objective = objective
        self.theta = objective.theta.detach().clone().requires_grad_(True)
        self.graphs: list[torch.Tensor] = []
        self.nbytes = 0
        self.batched = True  # becomes False if an operation of the model has no batching rule

    @staticmethod
    def unsupported(objective: Any) -> str | None:
        """Why ``objective`` gets no linearised products (``None``: it does)."""
        if objective.curvature != "hessian":
            return f"the {objective.curvature} has sample-based products"
        if objective.task.train_mode_modules:
            return "modules are kept in training mode (a stochastic objective)"
        if objective.loader is None:
            return "no training data"
        return None

    @classmethod
    def for_objective(cls, objective: Any, budget_bytes: int) -> LinearisedHessian | None:
        reason = cls.unsupported(objective)
        if reason is not None:
            log.info("Hessian products are recomputed for every product: %s", reason)
            return None
        op = cls(objective)
        if not op._build(budget_bytes):
            log.info("kept gradient graphs exceed %d MB: Hessian products are recomputed for every product",
                     budget_bytes >> 20)
            return None
        return op

    def _build(self, budget_bytes: int) -> bool:
        obj = self.objective
        task, state = obj.task, obj.state

        def pack(t: torch.Tensor) -> torch.Tensor:
            self.nbytes += t.numel() * t.element_size()
            return t

        for _start, batch in batch_loop(task, obj.require_data(), state, check=False, progress=obj.progress,
                                        desc="gradient graphs"):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = task.per_example(task.loss_fn, self.theta, state, batch).sum()
                (g,) = torch.autograd.grad(loss, self.theta, create_graph=True)
            if self.nbytes > budget_bytes:
                self.graphs = []
                return False
            if g.requires_grad:  # else the loss is affine in θ on this batch: H_b = 0
                self.graphs.append(g)
        return True

    def product(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ_b H_b V`` for ``V`` ``[m, p]`` (sum over the training set, no ``1/n``, no weight decay)."""
        out = torch.zeros_like(V)
        chunk = max(1, int(self.objective.vector_chunk))
        for g in self.graphs:
            for c0 in range(0, V.shape[0], chunk):
                out[c0: c0 + chunk] += self._batch_product(g, V[c0: c0 + chunk])
        return out

    def _batch_product(self, g: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if self.batched:
            try:
                return torch.autograd.grad(g, self.theta, grad_outputs=V.to(g.dtype), retain_graph=True,
                                           is_grads_batched=True)[0].to(V.dtype)
            except (RuntimeError, NotImplementedError) as exc:  # an operation without a batching rule
                log.info("batched Hessian products unavailable (%s); one backward pass per vector", exc)
                self.batched = False
        return torch.stack([torch.autograd.grad(g, self.theta, grad_outputs=v.to(g.dtype), retain_graph=True)[0]
                            for v in V]).to(V.dtype)
