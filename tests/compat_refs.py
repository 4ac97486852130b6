"""Small problems and brute-force references (explicit float64 Hessians) for the compat-front tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points in R^5 with three classes that a small model separates imperfectly (float64)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()
    flip = torch.rand(n, generator=gen) < 0.1
    y[flip] = (y[flip] + 1) % 3
    return X, y


def train_to_optimum(model: nn.Module, X: torch.Tensor, y: torch.Tensor, reg: float) -> nn.Module:
    """Minimise ``mean CE + reg·‖θ‖²`` with L-BFGS until the gradient vanishes (float64)."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, history_size=50, tolerance_grad=1e-13,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        loss = F.cross_entropy(model(X), y) + reg * theta.norm() ** 2
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    closure()
    grad_norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    assert grad_norm < 1e-8, f"L-BFGS did not converge: gradient norm {grad_norm:.2e}"
    return model


class BruteForce:
    """Explicit-Hessian references for ``R(θ) = mean CE(f(X; θ), y) + reg·‖θ‖²`` at the model's parameters."""

    def __init__(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, reg: float) -> None:
        self.model, self.X, self.y, self.reg = model, X, y, reg
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            out[name] = theta[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return out

    def outputs(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.unflatten(theta), (X,))

    def regulariser(self, theta: torch.Tensor) -> torch.Tensor:
        return self.reg * theta.norm() ** 2

    def hessian(self, with_reg: bool = True) -> torch.Tensor:
        """``∇²R(θ̂)`` (or of the mean loss only), ``[p, p]``."""
        def objective(theta):
            loss = F.cross_entropy(self.outputs(theta, self.X), self.y)
            return loss + self.regulariser(theta) if with_reg else loss

        return torch.autograd.functional.hessian(objective, self.theta)

    def gauss_newton(self) -> torch.Tensor:
        """``(1/n) Σ_i J_iᵀ Λ_i J_i + ∇²Ω``: J_i the output Jacobian, Λ_i the cross-entropy Hessian in the logits."""
        n, p = len(self.X), self.theta.numel()
        G = torch.zeros(p, p, dtype=self.theta.dtype)
        for i in range(n):
            x, t = self.X[i:i + 1], self.y[i:i + 1]
            J = torch.autograd.functional.jacobian(lambda th, x=x: self.outputs(th, x)[0], self.theta)
            logits = self.outputs(self.theta, x)[0].detach()
            Lam = torch.autograd.functional.hessian(lambda o, t=t: F.cross_entropy(o[None], t), logits)
            G += J.T @ Lam @ J
        return G / n + 2 * self.reg * torch.eye(p, dtype=G.dtype)

    def loss_grad(self, X: torch.Tensor, y: torch.Tensor, with_reg: bool) -> torch.Tensor:
        """``∇`` of the mean CE over ``(X, y)`` (plus the regulariser), ``[p]``."""
        theta = self.theta.clone().requires_grad_(True)
        loss = F.cross_entropy(self.outputs(theta, X), y)
        if with_reg:
            loss = loss + self.regulariser(theta)
        return torch.autograd.grad(loss, theta)[0]

    def example_grads(self, X: torch.Tensor, y: torch.Tensor, with_reg: bool) -> torch.Tensor:
        """Per-example gradients, ``[len(X), p]``."""
        return torch.stack([self.loss_grad(X[i:i + 1], y[i:i + 1], with_reg) for i in range(len(X))])
