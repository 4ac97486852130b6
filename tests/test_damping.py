"""One meaning of damping: the same λ (or "auto") gives the same regularised matrix in every preconditioner.

The problem is one Linear layer with squared error and weight decay, where the Hessian equals the Gauss-Newton matrix
and is exactly Kronecker-factored, so every preconditioner targets ``(H + λI)⁻¹`` or its structured counterpart:
DataInf ``(1/n) Σ_i (g_i g_iᵀ + (λ + wd) I)⁻¹``, the kernel solve ``(F + (wd + λ) I)⁻¹`` with the empirical Fisher
``F``, the diagonal ``(diag H + λ)⁻¹``.
"""

import pytest
import torch
from torch import nn

import wherefrom as wf
from layer_models import loop_grads
from wherefrom.curvature import TrainingObjective, make_solver

WD = 0.05


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X, Y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    task = wf.Task(model, loss_fn=wf.targets.mean_squared_error, weight_decay=WD)
    obj = TrainingObjective(task, wf.data.as_loader((X, Y), batch_size=7), task.state())
    H = obj.dense()  # includes wd·I
    G = loop_grads(task, X, Y)
    return obj, H, G


def _reference(name, H, G, damping):
    """The regularised matrix each preconditioner inverts, and its data term (for "auto")."""
    p, n = H.shape[0], G.shape[0]
    eye = torch.eye(p, dtype=H.dtype)
    if name == "kernel":
        data = G.T @ G / n
    elif name == "datainf":
        data = G.T @ G / n  # its curvature is the empirical Fisher (inverted per example)
    else:
        data = H - WD * eye
    lam = 0.1 * float(torch.trace(data)) / p if damping == "auto" else damping
    if name == "datainf":
        return sum(torch.linalg.inv(torch.outer(g, g) + (lam + WD) * eye) for g in G) / n
    if name == "diagonal":
        return torch.diag(1.0 / (torch.diagonal(data) + WD + lam))
    return torch.linalg.inv(data + (WD + lam) * eye)


# LiSSA: full-batch recursion with a scale just above the top eigenvalue of H + λI (≈ 5.2) converges like 0.78^t.
OPTIONS = {"cg": {"tol": 1e-13, "max_iter": 500}, "lissa": {"hvp_batch_size": 20, "depth": 110, "scale": 6.0},
           "arnoldi": {"rank": 15, "iterations": 15}}
NAMES = ["explicit", "cg", "lissa", "arnoldi", "kfac", "ekfac", "datainf", "kernel", "diagonal"]


CASES = [(name, damping) for damping in (0.3, "auto") for name in NAMES if (name, damping) != ("lissa", "auto")]


@pytest.mark.parametrize("name,damping", CASES)  # LiSSA's "auto" is CG's (one resolution); it is slow here
def test_same_damping_same_regularised_matrix(problem, name, damping):
    obj, H, G = problem
    solver = make_solver(name, damping, **OPTIONS.get(name, {})).fit(obj)
    eye = torch.eye(obj.p, dtype=torch.float64)
    tol = 1e-7 if name == "lissa" else 1e-9
    torch.testing.assert_close(solver.solve(eye), _reference(name, H, G, damping), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["explicit", "cg", "arnoldi", "kfac", "ekfac", "datainf", "kernel", "diagonal"])
def test_damping_is_a_settable_property(problem, name):
    """Changing damping after fit gives the solve of the new λ, without refitting."""
    obj, H, G = problem
    solver = make_solver(name, 0.3, **OPTIONS.get(name, {})).fit(obj)
    solver.damping = 1.2
    eye = torch.eye(obj.p, dtype=torch.float64)
    torch.testing.assert_close(solver.solve(eye), _reference(name, H, G, 1.2), rtol=1e-9, atol=1e-9)
    with pytest.raises(wf.WherefromError, match="damping"):
        solver.damping = -1.0


def test_bad_damping_values_are_refused():
    with pytest.raises(wf.WherefromError, match="no relative damping"):
        make_solver("cg", None)
    with pytest.raises(wf.WherefromError, match="'auto'"):
        make_solver("explicit", "tiny")
    assert make_solver("kfac", None).damping is None  # None is "auto" where it always was
    assert wf.curvature.resolve_damping(wf.curvature.relative(0.5), 4.0) == 2.0
    assert wf.curvature.resolve_damping(wf.curvature.relative(0.0), 4.0) == 0.0
    assert wf.curvature.resolve_damping("auto", 0.0) > 0  # floored, never zero
