"""Shared fixtures: L2-regularised multinomial logistic regression on sklearn digits, trained to its optimum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wherefrom.data import digits_datasets


def lr_objective(model: nn.Module, X, y, wd: float, n_norm: int, weights=None) -> torch.Tensor:
    """``(1/n_norm) Σ_k w_k CE_k + (wd/2)‖θ‖²`` (weights default to 1)."""
    losses = F.cross_entropy(model(X), y, reduction="none")
    if weights is not None:
        losses = losses * weights
    reg = sum((p * p).sum() for p in model.parameters())
    return losses.sum() / n_norm + 0.5 * wd * reg


def fit_lbfgs(model: nn.Module, X, y, wd: float, n_norm: int | None = None, weights=None) -> nn.Module:
    """Minimise :func:`lr_objective` with full-batch L-BFGS to a tight tolerance (float64)."""
    n_norm = len(X) if n_norm is None else n_norm
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=1000, history_size=50,
                            tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = lr_objective(model, X, y, wd, n_norm, weights)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    closure()
    grad_norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    assert grad_norm < 1e-7, f"L-BFGS did not converge: gradient norm {grad_norm:.2e}"
    return model


def digits_lr(n_train: int = 200, n_test: int = 60, wd: float = 0.05, seed: int = 0):
    """A trained float64 digits LR model with its train and test datasets."""
    train, rest = digits_datasets(n_train=n_train, dtype=torch.float64)
    test = torch.utils.data.TensorDataset(*(t[:n_test] for t in rest.tensors))
    torch.manual_seed(seed)
    model = nn.Linear(64, 10).double()
    X, y = train.tensors
    fit_lbfgs(model, X, y, wd)
    return model, train, test
