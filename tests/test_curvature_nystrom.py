"""Randomized Nyström: exact at full rank, the top of the spectrum at low rank, and a CG preconditioner."""

import pytest
import torch

import wherefrom as wf
from curvature_refs import classification_data, dense_ggn, mlp
from wherefrom.curvature import CGSolver, NystromSolver, TrainingObjective


def _objective(wd=0.0):
    model = mlp(d_in=3, hidden=4)
    X, y = classification_data(d_in=3)
    task = wf.Task(model, weight_decay=wd)
    loader = wf.data.as_loader((X, y), batch_size=10)
    return TrainingObjective(task, loader, task.state(), curvature="ggn"), X, y


def test_full_rank_nystrom_is_the_explicit_inverse():
    obj, X, y = _objective()
    G = dense_ggn(obj.task, X, y)
    V = torch.randn(4, obj.p, dtype=torch.float64)
    ref = torch.linalg.solve(G + 1e-2 * torch.eye(obj.p, dtype=torch.float64), V.T).T
    ny = NystromSolver(damping=1e-2, rank=obj.p).fit(obj)
    torch.testing.assert_close(ny.solve(V), ref, rtol=1e-7, atol=1e-7)


def test_low_rank_nystrom_keeps_the_top_eigenvalues_and_deflates_them():
    obj, X, y = _objective(wd=1e-3)
    G = dense_ggn(obj.task, X, y)  # includes the weight decay, as the objective does
    exact = torch.linalg.eigvalsh(G).flip(0)
    rank = obj.p // 2
    ny = NystromSolver(damping=0.0, rank=rank).fit(obj)
    # a sketch of half the dimension: the top eigenvalues to a few per cent, never above the exact ones
    assert torch.all(ny.eigenvalues_ <= exact[:rank] * (1 + 1e-10))
    torch.testing.assert_close(ny.eigenvalues_[:3], exact[:3], rtol=5e-2, atol=0)
    # Nyström never overshoots: C − U diag(Λ) Uᵀ is positive semi-definite
    approx = ny.eigenvectors_ @ torch.diag(ny.eigenvalues_) @ ny.eigenvectors_.T
    assert float(torch.linalg.eigvalsh(G - approx).min()) > -1e-8
    # the solve inverts M = U(Λ + λ)Uᵀ + (Λ_ℓ + λ)(I − UUᵀ)
    lam = 1e-2
    ny.damping = lam
    U, ev = ny.eigenvectors_, ny.eigenvalues_
    M = U @ torch.diag(ev + lam) @ U.T + (ev[-1] + lam) * (torch.eye(obj.p, dtype=torch.float64) - U @ U.T)
    V = torch.randn(3, obj.p, dtype=torch.float64)
    torch.testing.assert_close(ny.solve(V), torch.linalg.solve(M, V.T).T, rtol=1e-8, atol=1e-10)


def test_nystrom_preconditioned_cg_takes_fewer_iterations_to_the_same_solution():
    obj, X, y = _objective(wd=1e-3)
    lam = 1e-3
    G = dense_ggn(obj.task, X, y)  # includes the weight decay, as the objective does
    V = torch.randn(6, obj.p, dtype=torch.float64)
    ref = torch.linalg.solve(G + lam * torch.eye(obj.p, dtype=torch.float64), V.T).T
    plain = CGSolver(damping=lam, tol=1e-10, max_iter=500).fit(obj)
    pre = NystromSolver(damping=lam, rank=obj.p // 2)
    pcg = CGSolver(damping=lam, tol=1e-10, max_iter=500, preconditioner=pre).fit(obj)
    x_plain, x_pcg = plain.solve(V), pcg.solve(V)
    scale = float(ref.abs().max())
    torch.testing.assert_close(x_pcg, ref, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(x_plain, ref, rtol=0, atol=1e-6 * scale)
    assert pcg.iterations_ < plain.iterations_
    # by name with options: the same preconditioner, built with CG's damping
    named = CGSolver(damping=lam, tol=1e-10, max_iter=500, preconditioner="nystrom",
                     preconditioner_options={"rank": obj.p // 2}).fit(obj)
    torch.testing.assert_close(named.solve(V), x_pcg, rtol=0, atol=1e-8 * scale)
    assert named.iterations_ == pcg.iterations_ and named._precond.rank == obj.p // 2
    with pytest.raises(wf.WherefromError, match="by name"):
        CGSolver(preconditioner=pre, preconditioner_options={"rank": 3})


def test_nystrom_by_name_through_influence_function_and_bad_input():
    obj, X, y = _objective()
    att = wf.InfluenceFunction(obj.task, solver="nystrom", damping=1e-2, rank=obj.p, curvature="ggn", progress=False)
    scores = att.fit((X, y)).score((X[:3], y[:3]))
    ref = wf.InfluenceFunction(obj.task, solver="explicit", damping=1e-2, curvature="ggn", progress=False)
    torch.testing.assert_close(scores, ref.fit((X, y)).score((X[:3], y[:3])), rtol=1e-6, atol=1e-8)
    with pytest.raises(wf.WherefromError, match="rank"):
        NystromSolver(rank=0)
    with pytest.raises(wf.WherefromError, match="fitted"):
        NystromSolver().solve(torch.zeros(1, 3))
    hessian = TrainingObjective(obj.task, wf.data.as_loader((X, y), batch_size=10), obj.task.state(),
                                curvature="hessian")
    if float(torch.linalg.eigvalsh(hessian.dense()).min()) < -1e-6:
        with pytest.raises(wf.WherefromError, match="positive semi-definite"):
            NystromSolver(rank=hessian.p).fit(hessian)


def test_nystrom_relative_damping_means_what_it_means_for_every_other_solver():
    """``relative(f)`` is ``f · tr(C_data)/p`` (without the weight decay), whatever the sketch size."""
    obj, X, y = _objective(wd=0.3)
    data = dense_ggn(obj.task, X, y) - 0.3 * torch.eye(obj.p, dtype=torch.float64)
    lam = 0.5 * float(torch.trace(data)) / obj.p
    V = torch.randn(3, obj.p, dtype=torch.float64)
    ref = torch.linalg.solve(data + (0.3 + lam) * torch.eye(obj.p, dtype=torch.float64), V.T).T
    full = NystromSolver(damping=wf.curvature.relative(0.5), rank=obj.p).fit(obj)
    assert full.effective_damping == pytest.approx(lam, rel=1e-10)
    torch.testing.assert_close(full.solve(V), ref, rtol=1e-7, atol=1e-7)
    low = NystromSolver(damping=wf.curvature.relative(0.5), rank=5).fit(obj)
    assert low.effective_damping == pytest.approx(lam, rel=1e-10)


def test_full_rank_nystrom_of_a_singular_curvature_in_float32_is_the_damped_inverse():
    """The stabilising shift follows the precision of the products: float32 rounding of a singular C (the softmax
    GGN without weight decay) is not mistaken for a curvature that is not positive semi-definite."""
    obj64, X, y = _objective()
    task = wf.Task(mlp(d_in=3, hidden=4).float(), weight_decay=0.0)
    obj = TrainingObjective(task, wf.data.as_loader((X.float(), y), batch_size=10), task.state(), curvature="ggn")
    G = dense_ggn(obj64.task, X, y)
    assert float(torch.linalg.eigvalsh(G)[0]) < 1e-12  # singular
    V = torch.randn(3, obj.p, dtype=torch.float64)
    ref = torch.linalg.solve(G + 1e-2 * torch.eye(obj.p, dtype=torch.float64), V.T).T
    ny = NystromSolver(damping=1e-2, rank=obj.p).fit(obj)
    torch.testing.assert_close(ny.solve(V), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
