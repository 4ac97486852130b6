"""Exact reference: the curvature formed as a dense matrix with torch.func, then a Cholesky solve.

``τ[i, j] = q_jᵀ (C + (wd + λ) I)⁻¹ g_i / n`` with ``C`` the Hessian (or Gauss-Newton matrix) of the mean training
loss, ``g_i`` the per-example training-loss gradients and ``q_j`` the per-example test-loss gradients, all in
float64. This is the "exact Hessian reference" of the explicit row, and (via ``prepare.py``) the exact scores
every influence row's agreement is measured against. It uses torch.func only (no attribution library).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import Context
from torch.func import functional_call, grad, jacrev, jvp, vmap


def _flat(model: torch.nn.Module) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    names = [(n, p.shape) for n, p in model.named_parameters()]
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), names


def _unflat(theta: torch.Tensor, names) -> dict[str, torch.Tensor]:
    out, k = {}, 0
    for n, shape in names:
        size = shape.numel()
        out[n] = theta[k:k + size].view(shape)
        k += size
    return out


def per_example_grads(model, X: torch.Tensor, y: torch.Tensor, theta, names, fn=F.cross_entropy) -> torch.Tensor:
    """``[n, p]`` gradients of ``fn(model(x_i), y_i)``."""
    def loss(t, x, yy):
        return fn(functional_call(model, _unflat(t, names), (x.unsqueeze(0),)), yy.unsqueeze(0))
    return vmap(grad(loss), in_dims=(None, 0, 0))(theta, X, y)


def curvature(model, X, y, theta, names, kind: str = "hessian", chunk: int = 256) -> torch.Tensor:
    """Dense ``[p, p]`` Hessian (blocks of forward-over-reverse HVPs) or Gauss-Newton matrix of the mean loss."""
    p = theta.numel()
    n = X.shape[0]
    if kind == "hessian":
        def loss(t):
            return F.cross_entropy(functional_call(model, _unflat(t, names), (X,)), y)

        def hvp(v):
            return jvp(grad(loss), (theta,), (v,))[1]

        eye = torch.eye(p, dtype=theta.dtype)
        H = torch.cat([vmap(hvp)(eye[s:s + chunk]) for s in range(0, p, chunk)])
        return (H + H.T) / 2
    G = torch.zeros(p, p, dtype=theta.dtype)
    for s in range(0, n, chunk // 8):
        xb = X[s:s + chunk // 8]
        J = jacrev(lambda t, xb=xb: functional_call(model, _unflat(t, names), (xb,)))(theta)  # [c, K, p]
        probs = torch.softmax(functional_call(model, _unflat(theta, names), (xb,)), dim=1)
        S = torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)  # [c, K, K]
        SJ = S @ J
        G += J.reshape(-1, p).T @ SJ.reshape(-1, p)
    return G / n


def exact_scores(ctx: Context, kind: str = "hessian") -> torch.Tensor:
    """``[n_train, n_test]`` exact influence in float64 (positive = helpful, scaled to leave-one-out)."""
    model = ctx.model().to(torch.float64)
    for q in model.parameters():
        q.requires_grad_(False)
    theta, names = _flat(model)
    X, y = ctx.x_train.to(torch.float64), ctx.y_train
    C = curvature(model, X, y, theta, names, kind)
    C.diagonal().add_(ctx.peer_damping)
    G = per_example_grads(model, X, y, theta, names)
    Q = per_example_grads(model, ctx.x_test.to(torch.float64), ctx.y_test, theta, names)
    return G @ torch.linalg.solve(C, Q.T) / X.shape[0]  # LU: the MLP Hessian + (wd + λ)I is indefinite


def explicit(ctx: Context) -> tuple[torch.Tensor, dict]:
    """The explicit row's reference library: dense Hessian + Cholesky, in the model's dtype."""
    model = ctx.model()
    for q in model.parameters():
        q.requires_grad_(False)
    theta, names = _flat(model)
    X, y = ctx.x_train, ctx.y_train

    def loss(t):
        return F.cross_entropy(functional_call(model, _unflat(t, names), (X,)), y)

    H = torch.func.hessian(loss)(theta)
    H.diagonal().add_(ctx.peer_damping)
    L = torch.linalg.cholesky(H)
    G = per_example_grads(model, X, y, theta, names)
    Q = per_example_grads(model, ctx.x_test, ctx.y_test, theta, names)
    return G @ torch.cholesky_solve(Q.T, L) / X.shape[0], {}


METHODS = {"explicit": explicit}
