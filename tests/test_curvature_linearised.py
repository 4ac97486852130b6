"""Hessian products through kept gradient graphs against the recomputed forward-over-reverse products and the dense
Hessian of brute-force autodiff, on nonlinear models with Linear, Conv2d and Embedding layers."""

import copy

import pytest
import torch

from layer_models import dense_hessian
from test_curvature_structured import _objectives
from wherefrom.curvature import ArnoldiSolver, ExplicitSolver


@pytest.mark.parametrize(("kind", "bias"), [("all", True), ("conv", True), ("conv", False), ("embedding", False)])
def test_kept_graph_products_equal_the_recomputed_products_and_the_dense_hessian(kind, bias):
    fast, slow, task, X, y = _objectives(kind, bias, curvature="hessian")
    assert fast.structured_operator() is None and fast.linearised_operator() is not None
    assert slow.linearised_operator() is None
    V = torch.randn(7, fast.p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = V @ dense_hessian(task, X, y)
    for _ in range(2):  # the kept graphs serve every product
        torch.testing.assert_close(fast.hvp(V), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(slow.hvp(V), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.hvp(V[0]), ref[0], rtol=1e-10, atol=1e-12)
    clone = copy.deepcopy(fast)  # the graphs stay behind and are rebuilt
    torch.testing.assert_close(clone.hvp(V), ref, rtol=1e-10, atol=1e-12)


def test_graphs_over_the_budget_fall_back_and_full_rank_arnoldi_is_the_explicit_solve():
    small, *_ = _objectives("conv", curvature="hessian", structured_budget_mb=0.0)
    assert small.linearised_operator() is None  # over the budget: recomputed products
    fast, *_ = _objectives("conv", curvature="hessian")
    V = torch.randn(3, fast.p, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(small.hvp(V), fast.hvp(V), rtol=1e-10, atol=1e-12)
    damping = 5.0  # makes the (indefinite) Hessian + λI positive definite
    arnoldi = ArnoldiSolver(damping=damping, rank=None, iterations=fast.p, block_size=8).fit(fast)
    explicit = ExplicitSolver(damping=damping).fit(small)
    torch.testing.assert_close(arnoldi.solve(V), explicit.solve(V), rtol=1e-8, atol=1e-10)
