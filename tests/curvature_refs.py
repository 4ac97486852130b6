"""Brute-force references for the curvature tests: dense matrices built from per-example Jacobians."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import hessian, jacrev

import wherefrom as wf


def mlp(d_in: int = 4, hidden: int = 5, d_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


def classification_data(n: int = 24, d_in: int = 4, classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def jacobians(task: wf.Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``J_i = ∂o_i/∂θ`` of every example, ``[n, C, p]``."""
    state = task.state()
    theta = task.flat_params(state)
    return jacrev(lambda t: task.outputs(t, state, (X, y)))(theta)


def output_hessians(task: wf.Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Λ_i = ∂²ℓ_i/∂o_i²`` by autograd on each example separately, ``[n, C, C]``."""
    state = task.state()
    out = task.outputs(task.flat_params(state), state, (X, y)).detach()
    return torch.stack([hessian(lambda o, i=i: task.loss_fn(o.unsqueeze(0), (X[i:i + 1], y[i:i + 1])).sum())(out[i])
                        for i in range(len(X))])


def dense_ggn(task: wf.Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1/n) Σ_i J_iᵀ Λ_i J_i + wd·I``."""
    J = jacobians(task, X, y)
    Lam = output_hessians(task, X, y)
    G = torch.einsum("ncp,ncd,ndq->pq", J, Lam, J) / len(X)
    return G + task.weight_decay * torch.eye(G.shape[0], dtype=G.dtype)


def per_example_grads(task: wf.Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example training-loss gradients by a plain loop over examples (no vmap), ``[n, p]``."""
    state = task.state()
    theta = task.flat_params(state)
    rows = []
    for i in range(len(X)):
        t = theta.clone().requires_grad_(True)
        loss = task.per_example(task.loss_fn, t, state, (X[i:i + 1], y[i:i + 1])).sum()
        rows.append(torch.autograd.grad(loss, t)[0])
    return torch.stack(rows)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
