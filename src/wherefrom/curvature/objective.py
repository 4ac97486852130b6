"""The training objective and its Hessian-vector products, the one thing every curvature solver needs.

``R(θ) = (1/n) Σ_i ℓ(z_i; θ) + (wd/2)‖θ‖²`` over the task's selected parameters at one checkpoint. Its Hessian
``H = ∇²R(θ̂)`` is *mean-reduced*; ``hvp`` aggregates per-batch products over the whole training set before any
solve (never a sum of per-batch solutions). Products with many vectors at once are batched with ``vmap`` over
forward-over-reverse ``jvp(grad(·))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.func import grad, jvp, vmap
from torch.utils.data import DataLoader

from wherefrom.data.loaders import batch_length, collate_indices, dataset_size
from wherefrom.progress import track
from wherefrom.task import Task


class TrainingObjective:
    """``R(θ)`` of ``task`` on ``loader`` at the checkpoint ``state``; products with its Hessian.

    Attributes:
        n: number of training examples; p: number of selected parameters; theta: ``θ̂``, ``[p]``.
        vector_chunk: how many vectors one vmapped HVP call handles (bounds memory).
    """

    def __init__(
        self, task: Task, loader: DataLoader, state: Mapping[str, torch.Tensor], vector_chunk: int = 256,
        progress: bool | None = False,
    ) -> None:
        self.task = task
        self.loader = loader
        self.state = dict(state)
        self.n = dataset_size(loader)
        self.p = task.num_params
        self.theta = task.flat_params(self.state)
        self.vector_chunk = vector_chunk
        self.progress = progress
        self.hvp_count = 0  # number of (batch, vector) Hessian-vector products computed, for diagnostics

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

    def _batch_hvp_sum(self, V: torch.Tensor, batch: Any) -> torch.Tensor:
        """``Σ_{i∈batch} ∇²ℓ_i V`` for ``V`` ``[m, p]`` (no 1/n, no weight decay)."""
        f = self._batch_sum_loss(batch)
        g = grad(f)

        def one(v: torch.Tensor) -> torch.Tensor:
            return jvp(g, (self.theta,), (v,))[1]

        out = torch.cat([vmap(one)(Vc) for Vc in V.split(self.vector_chunk)], dim=0)
        self.hvp_count += V.shape[0] * batch_length(batch)
        return out

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``[m, p]`` (or ``[p]``), over the whole training set."""
        squeeze = V.ndim == 1
        V = V.reshape(-1, self.p).to(self.dtype)
        out = torch.zeros_like(V)
        with self.task.attribution_mode():
            for batch in track(self.loader, "Hessian-vector products", len(self.loader), self.progress):
                batch = self.task.prepare_batch(batch)
                out += self._batch_hvp_sum(V, batch)
        out = out / self.n + self.task.weight_decay * V
        return out[0] if squeeze else out

    def minibatch_hvp(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Stochastic ``H_S V`` on the training examples ``indices`` (mean over them, plus weight decay)."""
        batch = self.task.prepare_batch(collate_indices(self.loader, indices.tolist()))
        with self.task.attribution_mode():
            out = self._batch_hvp_sum(V.to(self.dtype), batch)
        return out / len(indices) + self.task.weight_decay * V

    def dense(self, chunk: int = 256) -> torch.Tensor:
        """The full ``[p, p]`` Hessian, column block by column block (``p`` HVPs with unit vectors)."""
        H = torch.empty(self.p, self.p, dtype=self.dtype, device=self.device)
        eye_cols = range(0, self.p, chunk)
        for c0 in track(eye_cols, "Hessian columns", len(eye_cols), self.progress):
            c1 = min(c0 + chunk, self.p)
            E = torch.zeros(c1 - c0, self.p, dtype=self.dtype, device=self.device)
            E[torch.arange(c1 - c0), torch.arange(c0, c1)] = 1.0
            H[c0:c1] = self.hvp(E)
        return (H + H.T) / 2

    def top_eigenvalue(self, iters: int = 30, seed: int = 0) -> float:
        """Largest-magnitude eigenvalue of ``H`` by power iteration (used to pick LiSSA's scale)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.p, generator=gen, dtype=self.dtype).to(self.device)
        v = v / v.norm()
        lam = 0.0
        for _ in range(iters):
            w = self.hvp(v)
            lam = float(v @ w)
            norm = w.norm()
            if norm == 0:
                return 0.0
            v = w / norm
        return lam
