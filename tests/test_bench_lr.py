"""The batched exact LR trainer against independent references (autograd Hessian, scipy L-BFGS from zero)."""

import numpy as np
import pytest
import torch
from scipy import optimize

from wherefrom.bench import lr as L
from wherefrom.data import digits_datasets

WD = 1e-2


@pytest.fixture(scope="module")
def problem():
    tr, _ = digits_datasets(n_train=60)
    X, y = tr.tensors
    return L.augment(X), y


def _scipy_fit(Xa, y, mask, denom):
    """Independent reference: scipy L-BFGS-B from zero on the plain (numpy) objective."""
    n, Dp = Xa.shape
    Xn, yn, w = Xa.numpy(), y.numpy(), mask.numpy()

    def f(v):
        W = v.reshape(Dp, 10)
        Z = Xn @ W
        Z = Z - Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        loss = -(w * logp[np.arange(n), yn]).sum() / denom + 0.5 * WD * (W ** 2).sum()
        R = np.exp(logp)
        R[np.arange(n), yn] -= 1
        return loss, (Xn.T @ (R * w[:, None] / denom) + WD * W).reshape(-1)

    res = optimize.minimize(f, np.zeros(Dp * 10), jac=True, method="L-BFGS-B",
                            options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000, "maxcor": 30})
    return torch.from_numpy(res.x.reshape(Dp, 10))


def test_hessian_matches_autograd(problem):
    Xa, y = problem
    Xa, y = Xa[:15, :9].contiguous(), y[:15]
    W = torch.randn(9, 10, dtype=torch.float64) * 0.1
    ones = torch.ones(1, 15, dtype=torch.float64)

    def obj(v):  # independent formula: mean cross-entropy + (wd/2)‖W‖²
        return torch.nn.functional.cross_entropy(Xa @ v.view(9, 10), y) + 0.5 * WD * v.pow(2).sum()

    ref = torch.autograd.functional.hessian(obj, W.reshape(-1))
    torch.testing.assert_close(L.hessian(Xa, W, WD), ref)
    # and the gradient matches autograd
    v = W.reshape(-1).clone().requires_grad_(True)
    obj(v).backward()
    _, G = L.objective_and_grad(Xa, y, W[None], ones, torch.tensor([15.0], dtype=torch.float64), WD)
    torch.testing.assert_close(G.reshape(-1), v.grad)


def test_batched_solve_reaches_independent_optima(problem):
    Xa, y = problem
    n = len(y)
    W_ref = _scipy_fit(Xa, y, torch.ones(n, dtype=torch.float64), float(n))
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(L.hessian(Xa, W_ref, WD)))
    removed = torch.tensor([0, 5, 17])
    masks = torch.ones(4, n, dtype=torch.float64)
    masks[torch.arange(3), removed] = 0
    masks[3, n // 2:] = 0  # a half-subset model, normalised by its size
    denom = torch.tensor([n, n, n, n // 2], dtype=torch.float64)
    W, info = L.solve(Xa, y, masks, denom, WD, W_ref, Hinv, tol=1e-11)
    assert info.max_grad_norm <= 1e-11
    for k in range(4):
        expected = _scipy_fit(Xa, y, masks[k], float(denom[k]))
        torch.testing.assert_close(W[k], expected, atol=1e-7, rtol=0)
    # the LOO removal actually moved the optimum (not a no-op)
    assert (W[0] - W_ref).abs().max() > 1e-4
    # the Woodbury-corrected preconditioner gives the same optima
    low = L.loo_correction(Xa, W_ref, Hinv, removed, n)
    W2, info2 = L.solve(Xa, y, masks[:3], denom[:3], WD, W_ref, Hinv, tol=1e-11, low_rank=low)
    torch.testing.assert_close(W2, W[:3], atol=1e-9, rtol=0)
    assert info2.evaluations <= info.evaluations


def test_state_round_trip():
    W = torch.randn(65, 10, dtype=torch.float64)
    s = L.to_state(W)
    assert s["fc.weight"].shape == (10, 64) and s["fc.bias"].shape == (10,)
    torch.testing.assert_close(L.from_state(s), W)
