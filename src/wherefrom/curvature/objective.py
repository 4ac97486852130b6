"""The training objective and its Hessian-vector products: the parameter space of the curvature preconditioners.

``R(θ) = (1/n) Σ_i ℓ(z_i; θ) + (wd/2)‖θ‖²`` over the task's selected parameters at one checkpoint. Its Hessian
``H = ∇²R(θ̂)`` is *mean-reduced*; ``hvp`` aggregates per-batch products over the whole training set before any
solve (never a sum of per-batch solutions). Products with many vectors at once are batched with ``vmap`` over
forward-over-reverse ``jvp(grad(·))``.

``curvature`` selects the matrix the products are taken with (see :mod:`wherefrom.curvature.gauss_newton`):
``"hessian"`` (default), ``"ggn"`` (generalised Gauss-Newton ``(1/n) Σ J_iᵀ Λ_i J_i``), ``"fisher"`` (true Fisher
with one label per example sampled from the model, seeded) or ``"empirical_fisher"`` (``(1/n) Σ g_i g_iᵀ``), each
plus ``wd·I``. Every HVP-based solver (explicit, CG, LiSSA, Arnoldi) therefore works with each of them. This class
is the parameter-space implementation of the curvature-space interface (:mod:`wherefrom.curvature.space`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap
from torch.utils.data import DataLoader

from wherefrom.batches import batch_loop
from wherefrom.curvature.gauss_newton import check_curvature, cross_entropy_output_product, is_cross_entropy
from wherefrom.curvature.linearised import LinearisedHessian
from wherefrom.curvature.space import CurvatureOperator
from wherefrom.curvature.structured import StructuredCurvature
from wherefrom.data.loaders import batch_length, collate_indices, dataset_size
from wherefrom.errors import WherefromError
from wherefrom.gradients import per_example_grad_fn
from wherefrom.sources.full import FullGradients
from wherefrom.store import FeatureStore
from wherefrom.task import Task

log = logging.getLogger(__name__)


class TrainingObjective(CurvatureOperator):
    """``R(θ)`` of ``task`` on ``loader`` at the checkpoint ``state``; products with its curvature.

    Attributes:
        n: number of training examples; p: number of selected parameters; theta: ``θ̂``, ``[p]``.
        vector_chunk: how many vectors one vmapped HVP call handles (bounds memory).
        curvature: ``"hessian"`` | ``"ggn"`` | ``"fisher"`` | ``"empirical_fisher"``: the matrix ``hvp`` uses.
        fisher_seed: seed of the labels sampled for the true Fisher (drawn once, reused by every product).
        weight_decay: ``wd`` of the objective (default: the task's).
        features: stored per-example training gradients (read by :meth:`feature_blocks` instead of recomputing).
        structured: ``"auto"`` (default): products and the dense matrix come from factored curvature samples taken
            once (:mod:`wherefrom.curvature.structured`) whenever the model and curvature allow it (every curvature
            but the Hessian of a model that is not affine in its selected parameters or whose loss is not convex in
            the outputs); otherwise Hessian-vector
            products through per-batch gradient graphs built once and kept (:mod:`wherefrom.curvature.linearised`),
            or recomputed for every product when they do not fit; ``True``: the same, but an error when the
            structure is missing; ``False``: always recomputed Hessian-vector products.
        structured_budget_mb: memory for the kept samples (or kept gradient graphs); beyond it they are taken again
            for every product.
    """

    def __init__(
        self, task: Task, loader: DataLoader | None, state: Mapping[str, torch.Tensor], vector_chunk: int = 256,
        progress: bool | None = False, curvature: str = "hessian", fisher_seed: int = 0,
        weight_decay: float | None = None, features: FeatureStore | None = None, source: FullGradients | None = None,
        n: int | None = None, structured: bool | str = "auto", structured_budget_mb: float = 1024.0,
    ) -> None:
        self.loader = loader
        self.state = dict(state)
        self.source = source if source is not None else FullGradients().setup(task)
        self.n = n if n is not None else dataset_size(self.require_data())
        self.p = task.num_params
        self.theta = task.flat_params(self.state)
        self.vector_chunk = vector_chunk
        self.progress = progress
        self.hvp_count = 0  # number of (batch, vector) Hessian-vector products computed, for diagnostics
        self.curvature = check_curvature(curvature)
        self.fisher_seed = fisher_seed
        self.weight_decay = task.weight_decay if weight_decay is None else float(weight_decay)
        self.features = features
        self.fn = None
        self.c = 0
        self._sampled: torch.Tensor | None = None
        if structured not in ("auto", True, False):
            raise WherefromError(f"structured must be 'auto', True or False; got {structured!r}.")
        self.structured = structured
        self.structured_budget_mb = float(structured_budget_mb)
        self._structured: StructuredCurvature | bool | None = None  # None: not tried yet; False: unavailable
        self._linearised: LinearisedHessian | bool | None = None

    @property
    def task(self) -> Task:
        return self.source.task

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def _batch_sum_loss(self, batch: Any):
        task, state = self.task, self.state

        def f(flat: torch.Tensor) -> torch.Tensor:
            return task.per_example(task.loss_fn, flat, state, batch).sum()

        return f

    def curvature_batch(self, batch: Any, indices: torch.Tensor) -> Any:
        """The batch as the curvature sees it: with sampled labels for the true Fisher, unchanged otherwise."""
        if self.curvature == "fisher":
            from wherefrom.curvature.gauss_newton import with_labels

            return with_labels(batch, self.sampled_labels()[indices.to(self.sampled_labels().device)])
        return batch

    def _batch_hvp_sum(self, V: torch.Tensor, batch: Any, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_{i∈batch} C_i V`` for ``V`` ``[m, p]`` (no 1/n, no weight decay), ``C_i`` the per-example curvature.

        ``indices`` (positions of the batch's examples in the training set) are needed for the true Fisher.
        """
        if self.curvature == "hessian":
            out = self._batch_hessian_sum(V, batch)
        elif self.curvature == "ggn":
            out = self._batch_ggn_sum(V, batch)
        else:
            if self.curvature == "fisher":
                if indices is None:
                    raise ValueError("indices are needed for the true Fisher")
                batch = self.curvature_batch(batch, indices)
            G = per_example_grad_fn(self.task, self.task.loss_fn, self.state)(self.theta, batch).detach()
            out = (V @ G.T) @ G
        self.hvp_count += V.shape[0] * batch_length(batch)
        return out

    def _batch_hessian_sum(self, V: torch.Tensor, batch: Any) -> torch.Tensor:
        f = self._batch_sum_loss(batch)
        g = grad(f)

        def one(v: torch.Tensor) -> torch.Tensor:
            return jvp(g, (self.theta,), (v,))[1]

        return torch.cat([vmap(one)(Vc) for Vc in V.split(self.vector_chunk)], dim=0)

    def _batch_ggn_sum(self, V: torch.Tensor, batch: Any) -> torch.Tensor:
        """``Σ_i J_iᵀ Λ_i J_i V``: forward-mode ``J v``, the output-space Hessian, reverse-mode ``Jᵀ``."""
        task, state = self.task, self.state

        def out_fn(flat: torch.Tensor) -> torch.Tensor:
            return task.outputs(flat, state, batch)

        outputs, vjp_fn = vjp(out_fn, self.theta)
        outputs = outputs.detach()
        g_out = grad(lambda o: task.loss_fn(o, batch).sum())
        closed = is_cross_entropy(task.loss_fn) and outputs.ndim == 2  # Λ u = π ⊙ u − π (πᵀu), no autodiff

        def one(v: torch.Tensor) -> torch.Tensor:
            Jv = jvp(out_fn, (self.theta,), (v,))[1]
            LJv = cross_entropy_output_product(outputs, batch, Jv) if closed else jvp(g_out, (outputs,), (Jv,))[1]
            return vjp_fn(LJv)[0]

        return torch.cat([vmap(one)(Vc) for Vc in V.split(self.vector_chunk)], dim=0)

    def structured_operator(self) -> StructuredCurvature | None:
        """The structured form of the data term (built on first use), or ``None`` when the model has none."""
        if self._structured is None:
            op = None
            if self.structured is not False:
                op = StructuredCurvature.for_objective(self, int(self.structured_budget_mb * (1 << 20)))
                if op is None and self.structured is True:
                    reason = StructuredCurvature.unsupported(self) or "its layers could not be captured"
                    raise WherefromError(f"structured=True, but the {self.curvature} of this model has no structured "
                                         f"form: {reason}. Use structured='auto' (Hessian-vector products then).")
            self._structured = op if op is not None else False
        return self._structured or None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the kept gradient graphs behind (autograd graphs cannot be copied; they are
        rebuilt on first use)."""
        state = self.__dict__.copy()
        state["_linearised"] = None
        return state

    def linearised_operator(self) -> LinearisedHessian | None:
        """Hessian products from gradient graphs kept across products (:mod:`wherefrom.curvature.linearised`),
        built on first use when there is no structured form; ``None`` when unavailable or over the budget."""
        if self._linearised is None:
            op = None
            if self.structured is not False:
                op = LinearisedHessian.for_objective(self, int(self.structured_budget_mb * (1 << 20)))
            self._linearised = op if op is not None else False
        return self._linearised or None

    def dense(self, chunk: int = 256) -> torch.Tensor:
        """The full ``[p, p]`` curvature: in closed form from the structured samples when the model allows it,
        else column block by column block (``p`` products with unit vectors)."""
        op = self.structured_operator()
        if op is None:
            return super().dense(chunk)
        H = op.dense().div_(self.n)  # exactly symmetric by construction
        H.diagonal().add_(self.weight_decay)
        self.hvp_count += self.p * self.n
        return H

    def hvp(self, V: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        """``C V + shift · V`` for ``V`` of shape ``[m, p]`` (or ``[p]``) over the whole training set; ``C`` the
        curvature (weight decay included). ``shift`` is CG's damping, added in the same pass as the weight decay."""
        squeeze = V.ndim == 1
        V = V.reshape(-1, self.p).to(self.dtype)
        diagonal = self.weight_decay + shift
        op = self.structured_operator()
        if op is not None and op.worth_it(V.shape[0]):
            out = op.product(V, scale=1.0 / self.n, shift=diagonal)
            self.hvp_count += V.shape[0] * self.n
            return out[0] if squeeze else out
        lin = self.linearised_operator() if op is None else None
        if lin is not None:
            try:
                out = lin.product(V).div_(self.n).add_(V, alpha=diagonal)
            except (RuntimeError, NotImplementedError) as exc:  # an operation without a second derivative
                log.info("Hessian products through kept gradient graphs failed (%s); recomputing them", exc)
                self._linearised = False
            else:
                self.hvp_count += V.shape[0] * self.n
                return out[0] if squeeze else out
        out = torch.zeros_like(V)
        for start, batch in batch_loop(self.task, self.require_data(), self.state, check=False, progress=self.progress,
                                       desc="Hessian-vector products"):
            size = batch_length(batch)
            out += self._batch_hvp_sum(V, batch, torch.arange(start, start + size))
        out = out.div_(self.n).add_(V, alpha=diagonal)
        return out[0] if squeeze else out

    def minibatch_hvp(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Stochastic ``C_S V`` on the training examples ``indices`` (mean over them, plus weight decay).

        From the kept structured samples when the model has them (two matrix products per layer on the rows of
        ``indices``, no autodiff), else by Hessian-vector products on the collated mini-batch."""
        op = self.structured_operator()
        if op is not None:
            out = op.subset_product(V.to(self.dtype), indices)
            if out is not None:
                self.hvp_count += V.shape[0] * len(indices)
                return out / len(indices) + self.weight_decay * V
        batch = self.task.prepare_batch(collate_indices(self.require_data(), indices.tolist()))
        with self.task.attribution_mode():
            out = self._batch_hvp_sum(V.to(self.dtype), batch, indices)
        return out / len(indices) + self.weight_decay * V
