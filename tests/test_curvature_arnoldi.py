"""Arnoldi against the explicit inverse and the exact spectrum; diagnostics; CG/LiSSA residuals."""

import warnings

import pytest
import torch

import wherefrom as wf
from curvature_refs import classification_data, dense_ggn, mlp
from wherefrom.curvature import (
    ArnoldiSolver,
    CGSolver,
    ExplicitSolver,
    LissaSolver,
    TrainingObjective,
    check_conditioning,
    extreme_eigenvalues,
)
from wherefrom.curvature.arnoldi import ritz_pairs


def _objective(curvature="ggn", wd=0.0, batch_size=24):
    model = mlp(d_in=3, hidden=4)
    X, y = classification_data(d_in=3)
    task = wf.Task(model, weight_decay=wd)
    loader = wf.data.as_loader((X, y), batch_size=batch_size)
    return TrainingObjective(task, loader, task.state(), curvature=curvature), X, y


@pytest.mark.parametrize("block_size", [1, 4, 10])
def test_full_rank_arnoldi_equals_explicit_solve_on_the_gauss_newton_matrix(block_size):
    obj, X, y = _objective(batch_size=10)
    p = obj.p
    V = torch.randn(5, p, dtype=torch.float64)
    G = dense_ggn(obj.task, X, y)
    ref = torch.linalg.solve(G + 1e-3 * torch.eye(p, dtype=torch.float64), V.T).T
    # the softmax GGN has a null space (repeated zero eigenvalue): Arnoldi must restart to span it
    assert p % block_size != 0 or block_size == 1  # a partial last block
    arn = ArnoldiSolver(damping=1e-3, rank=p, iterations=p, block_size=block_size).fit(obj)
    torch.testing.assert_close(arn.solve(V), ref, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ExplicitSolver(damping=1e-3).fit(obj).solve(V), ref, rtol=1e-7, atol=1e-7)
    # whitened features give the same inner products: <P v, P w> = vᵀ (G + λI)⁻¹ w
    torch.testing.assert_close(arn.features(V) @ arn.features(V).T, V @ ref.T, rtol=1e-7, atol=1e-7)


def test_top_eigenvalues_match_the_exact_spectrum():
    obj, X, y = _objective(wd=0.01)
    exact = torch.linalg.eigvalsh(dense_ggn(obj.task, X, y)).flip(0)
    arn = ArnoldiSolver(damping=0.0, rank=5, iterations=obj.p).fit(obj)
    torch.testing.assert_close(arn.eigenvalues_, exact[:5], rtol=1e-8, atol=1e-10)
    # low rank: the solve is the projection onto the top eigenvectors
    U = arn.eigenvectors_
    torch.testing.assert_close(U @ U.T, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
    v = torch.randn(1, obj.p, dtype=torch.float64)
    torch.testing.assert_close(arn.solve(v), ((v @ U.T) / arn.eigenvalues_) @ U)


def test_negative_eigenvalues_are_dropped_never_nan():
    obj, _, _ = _objective(curvature="hessian")  # random-init MLP: indefinite Hessian
    H = obj.dense()
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-3
    with pytest.warns(UserWarning, match="not positive"):
        arn = ArnoldiSolver(damping=0.0, rank=obj.p, iterations=obj.p).fit(obj)
    assert arn.dropped_ > 0
    assert bool((arn.eigenvalues_ > 0).all())
    out = arn.solve(torch.randn(3, obj.p, dtype=torch.float64))
    assert torch.isfinite(out).all() and torch.isfinite(arn.features(out)).all()


def test_extreme_eigenvalues_and_conditioning_warning():
    obj, _, _ = _objective(curvature="hessian")
    ev = torch.linalg.eigvalsh(obj.dense())
    lo, hi = extreme_eigenvalues(obj, iterations=obj.p)
    assert lo == pytest.approx(float(ev[0]), rel=1e-8, abs=1e-10)
    assert hi == pytest.approx(float(ev[-1]), rel=1e-8)
    lo20, hi20 = extreme_eigenvalues(obj, iterations=20)  # Ritz values lie inside the spectrum
    assert float(ev[0]) - 1e-10 <= lo20 <= 0 and hi20 <= float(ev[-1]) + 1e-10 and hi20 > 0.9 * float(ev[-1])
    with pytest.warns(UserWarning, match="indefinite"):
        rep = check_conditioning(obj, damping=0.0, iterations=20)
    assert rep.indefinite and rep.condition == float("inf")
    shift = 1.0 - lo  # exactly 1 above the (exact, full-rank) smallest eigenvalue
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = check_conditioning(obj, damping=shift, iterations=obj.p)
    assert not rep.indefinite and rep.condition == pytest.approx(float(ev[-1]) + shift, rel=1e-6)
    with pytest.warns(UserWarning, match="badly conditioned"):
        check_conditioning(obj, damping=1e-9 - lo20, iterations=20)


def test_cg_and_lissa_residuals_are_the_true_residuals():
    obj, X, y = _objective(wd=0.05)
    G = dense_ggn(obj.task, X, y)
    V = torch.randn(3, obj.p, dtype=torch.float64)
    A = G + 0.1 * torch.eye(obj.p, dtype=torch.float64)

    def true_res(Xs):
        return (V - Xs @ A).norm(dim=1) / V.norm(dim=1)

    cg = CGSolver(damping=0.1, max_iter=5, tol=0.0).fit(obj)
    Xc = cg.solve(V)
    torch.testing.assert_close(cg.residuals_, true_res(Xc), rtol=1e-6, atol=1e-12)
    assert float(cg.residuals_.max()) > 1e-6  # only 5 iterations: not converged, and it says so
    lis = LissaSolver(damping=0.1, depth=30, hvp_batch_size=24).fit(obj)
    Xl = lis.solve(V)
    torch.testing.assert_close(lis.residuals_, true_res(Xl), rtol=1e-8, atol=1e-12)


def test_influence_function_check_curvature_and_arnoldi_solver_name():
    model = mlp(d_in=3, hidden=4)
    X, y = classification_data(d_in=3)
    task = wf.Task(model)
    with pytest.warns(UserWarning, match="indefinite"):
        inf = wf.InfluenceFunction(task, solver="arnoldi", damping=0.0, rank=10, iterations=20,
                                   check_curvature=True, batch_size=24).fit((X, y))
    assert inf.curvature_report_ is not None and inf.curvature_report_.lambda_min < 0
    ggn = wf.InfluenceFunction(task, solver="arnoldi", curvature="ggn", damping=1e-3, rank=task.num_params,
                               iterations=task.num_params, batch_size=24).fit((X, y))
    exp = wf.InfluenceFunction(task, solver="explicit", curvature="ggn", damping=1e-3, batch_size=24).fit((X, y))
    torch.testing.assert_close(ggn.score((X[:4], y[:4])), exp.score((X[:4], y[:4])), rtol=1e-6, atol=1e-9)


def test_block_arnoldi_takes_one_batched_product_per_block_and_full_rank_is_the_explicit_solve():
    obj, X, y = _objective(curvature="hessian", wd=0.5)  # Hessian + wd·I: positive definite here
    p = obj.p
    task, state = obj.task, obj.task.state()

    def objective(theta):  # R(θ) = mean loss + (wd/2)‖θ‖², differentiated twice by torch.func
        return task.per_example(task.loss_fn, theta, state, (X, y)).mean() + 0.25 * theta.dot(theta)

    H = torch.func.hessian(objective)(task.flat_params(state))
    calls = []
    hvp = obj.hvp
    obj.hvp = lambda V: calls.append(V.shape[0]) or hvp(V)  # type: ignore[method-assign]
    arn = ArnoldiSolver(damping=1e-2, block_size=7).fit(obj)  # rank None: every Ritz pair; K = min(p, 100) = p
    assert calls == [7] * (p // 7) + ([p % 7] if p % 7 else [])
    assert float(torch.linalg.eigvalsh(H).min()) > 0
    V = torch.randn(4, p, dtype=torch.float64)
    ref = torch.linalg.solve(H + 1e-2 * torch.eye(p, dtype=torch.float64), V.T).T
    torch.testing.assert_close(arn.solve(V), ref, rtol=1e-7, atol=1e-9)


def test_partial_block_krylov_space_gives_the_galerkin_inverse_of_all_its_ritz_pairs():
    obj, X, y = _objective(wd=0.01)
    G = dense_ggn(obj.task, X, y)  # includes wd·I
    arn = ArnoldiSolver(damping=1e-3, iterations=12, block_size=5).fit(obj)
    U = arn.eigenvectors_
    assert U.shape[0] == 12  # default rank: every Ritz pair kept
    torch.testing.assert_close(U @ U.T, torch.eye(12, dtype=torch.float64), atol=1e-10, rtol=0)
    # Galerkin: U (U (G + λI) Uᵀ)⁻¹ Uᵀ v, the projected matrix formed from the dense curvature
    v = torch.randn(3, obj.p, dtype=torch.float64)
    proj = U @ (G + 1e-3 * torch.eye(obj.p, dtype=torch.float64)) @ U.T
    ref = (torch.linalg.solve(proj, U @ v.T)).T @ U
    torch.testing.assert_close(arn.solve(v), ref, rtol=1e-8, atol=1e-10)
    # and a 12-dimensional Krylov space of the damped inverse beats the top half of its Ritz pairs
    exact = torch.linalg.solve(G + 1e-3 * torch.eye(obj.p, dtype=torch.float64), v.T).T
    half = ArnoldiSolver(damping=1e-3, rank=6, iterations=12, block_size=5).fit(obj)
    assert (arn.solve(v) - exact).norm() < (half.solve(v) - exact).norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("block_size", [1, 4])
def test_arnoldi_follows_the_device_of_the_data(block_size):
    dev = torch.device("cuda")
    A = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = (A @ A.T + torch.eye(12, dtype=torch.float64)).to(dev)
    matvec = (lambda v: A @ v) if block_size == 1 else (lambda V: V @ A)
    evals, U = ritz_pairs(matvec, 12, 12, block_size=block_size, device=dev)
    assert U.device.type == "cuda" and evals.device.type == "cuda"
    torch.testing.assert_close(evals.cpu(), torch.linalg.eigvalsh(A.cpu()), rtol=1e-8, atol=1e-8)


def test_arnoldi_rank_above_the_dimension_says_so():
    obj, _X, _y = _objective()
    with pytest.raises(wf.WherefromError, match=rf"rank \(100\) exceeds .* p = {obj.p}"):
        ArnoldiSolver(damping=1e-3, rank=100).fit(obj)
    with pytest.raises(wf.WherefromError, match=r"rank \(8\) exceeds .*K = 5"):
        ArnoldiSolver(damping=1e-3, rank=8, iterations=5).fit(obj)
