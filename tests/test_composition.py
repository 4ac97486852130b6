"""Every method on every layer type; exact compositions against brute force; new compositions in a few lines."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from curvature_refs import dense_ggn
from layer_models import all_layers_problem, bare_linear_problem, dense_hessian, loop_grads
from wherefrom.curvature import CGSolver, EKFACSolver, KernelSolver, KFACSolver
from wherefrom.projection import RandomProjection
from wherefrom.registry import MethodContext, make_method, method_names
from wherefrom.sources import KroneckerProjectedGradients, ProjectedGradients

OPTIONS = {
    "if-cg": {"curvature": "ggn"}, "if-lissa": {"curvature": "ggn", "depth": 30},
    "if-arnoldi": {"rank": 8, "iterations": 20}, "logra": {"rank": 2}, "logra-kfac": {"rank": 2},
    "rps": {"max_iter": 50}, "knn-shapley": {"k": 3},
    **{name: {"proj_dim": 8} for name in ("trak", "trak-1", "tracin-proj", "grad-dot-proj", "if-proj")},
}
# HYDRA presets need a recorded training run, which these contexts lack (tests/test_hydra_*.py cover them).
PRESETS = [name for name in method_names() if name not in ("trak-10", "trak-50") and not name.startswith("hydra")]


def _context(problem, name):
    model, train, test = problem()
    states = []
    for s in range(2):
        torch.manual_seed(10 + s)
        states.append({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    task = wf.Task(model, weight_decay=0.05)
    ctx = MethodContext(task, trajectory=states, learning_rates=[0.1, 0.2], ensemble=states,
                        options=dict(OPTIONS.get(name, {})), seed=1)
    return ctx, train, test


@pytest.mark.parametrize("problem", [all_layers_problem, bare_linear_problem], ids=["all-layers", "bare-linear"])
@pytest.mark.parametrize("name", PRESETS)
def test_every_method_on_every_layer_type_gives_finite_scores(problem, name):
    ctx, train, test = _context(problem, name)
    method = make_method(name, ctx).fit(train)
    scores = method.score(test)
    assert scores.shape == (len(train[0]), len(test[0])) and torch.isfinite(scores).all()
    if name != "knn-shapley":
        assert torch.isfinite(method.self_influence()).all()


def test_gradient_similarity_and_influence_equal_brute_force_on_every_layer_type():
    model, train, test = all_layers_problem(padding_idx=None)
    task = wf.Task(model, weight_decay=0.1)
    G, Q = loop_grads(task, *train), loop_grads(task, *test)
    n, lam = len(G), 0.7
    torch.testing.assert_close(wf.GradDot(task).fit(train).score(test), G @ Q.T, rtol=1e-9, atol=1e-12)
    H = dense_hessian(task, *train)
    expected = G @ torch.linalg.solve(H + lam * torch.eye(len(H), dtype=H.dtype), Q.T) / n
    got = wf.InfluenceFunction(task, damping=lam).fit(train).score(test)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    Cg = dense_ggn(task, *train)
    expected = G @ torch.linalg.solve(Cg + lam * torch.eye(len(Cg), dtype=Cg.dtype), Q.T) / n
    got = wf.InfluenceFunction(task, solver="cg", curvature="ggn", damping=lam, tol=1e-12).fit(train).score(test)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-11)


def test_full_rank_logra_equals_its_brute_force_formula_on_every_layer_type():
    """Identity factors: LoGra's features are the gradient entries, so Grad-Dot and the layer-wise projected
    Fisher (λ_l = 0.1·tr(F_l)/d_l per layer) equal their formulas on the full gradients."""
    model, train, test = all_layers_problem()
    task = wf.Task(model)
    G, Q = loop_grads(task, *train), loop_grads(task, *test)
    n = len(G)
    ident = wf.LoGra(task, rank=64, preconditioner="identity").fit(train)
    torch.testing.assert_close(ident.score(test), G @ Q.T, rtol=1e-9, atol=1e-12)
    raw = wf.LoGra(task, rank=64).fit(train)
    expected = torch.zeros(n, len(Q), dtype=torch.float64)
    for block in wf.sources.FullGradients().setup(task).layout:  # one block per layer, in parameter order
        g, q = G[:, block.index], Q[:, block.index]
        F = g.T @ g / n
        lam = 0.1 * torch.trace(F) / len(F)
        expected += g @ torch.linalg.solve(F + lam * torch.eye(len(F), dtype=F.dtype), q.T) / n
    torch.testing.assert_close(raw.score(test), expected, rtol=1e-8, atol=1e-12)


def test_kfac_and_ekfac_on_a_bare_linear_layer_equal_the_explicit_inverse():
    """One Linear layer with squared error: the Gauss-Newton matrix is exactly S ⊗ A."""
    model, (X, _), (Xt, _) = bare_linear_problem()
    Y, Yt = torch.randn(len(X), 3, dtype=torch.float64), torch.randn(len(Xt), 3, dtype=torch.float64)
    task = wf.Task(model, loss_fn=wf.targets.mean_squared_error, weight_decay=0.05)
    exact = wf.InfluenceFunction(task, damping=0.1).fit((X, Y)).score((Xt, Yt))
    for precond in (KFACSolver(0.1), EKFACSolver(0.1)):
        composed = wf.ComposedAttributor(task, preconditioner=precond, scale="1/n").fit((X, Y))
        torch.testing.assert_close(composed.score((Xt, Yt)), exact, rtol=1e-9, atol=1e-12)


def test_logra_features_with_a_cg_preconditioner_match_their_formula():
    model, train, test = all_layers_problem()
    task = wf.Task(model, weight_decay=0.1)
    source = KroneckerProjectedGradients(rank=(3, 2), seed=1)
    att = wf.ComposedAttributor(task, source, CGSolver(damping=0.2, tol=1e-12), scale="1/n").fit(train)
    M = KroneckerProjectedGradients(rank=(3, 2), seed=1).setup(task).matrix()  # [p, d], built from the factors
    Phi, Psi = loop_grads(task, *train) @ M, loop_grads(task, *test) @ M
    n, d = Phi.shape
    C = Phi.T @ Phi / n + 0.1 * torch.eye(d, dtype=Phi.dtype)  # the features' Fisher with the weight decay
    expected = Phi @ torch.linalg.solve(C + 0.2 * torch.eye(d, dtype=C.dtype), Psi.T) / n
    torch.testing.assert_close(att.score(test), expected, rtol=1e-7, atol=1e-11)


def test_trak_features_with_a_cg_preconditioner_match_their_formula():
    model, train, test = all_layers_problem(n=20)
    task = wf.Task(model)
    proj = RandomProjection(8, "gaussian", seed=2)
    att = wf.ComposedAttributor(task, ProjectedGradients(proj), CGSolver(damping=0.05, tol=1e-12), scale="1/n",
                                train_fn=wf.targets.margin, test_fn=wf.targets.margin).fit(train)
    P = proj.matrix(task.num_params, 0)
    Phi = loop_grads(task, *train, wf.targets.margin) @ P
    Psi = loop_grads(task, *test, wf.targets.margin) @ P
    C = Phi.T @ Phi / len(Phi) + 0.05 * torch.eye(8, dtype=Phi.dtype)
    torch.testing.assert_close(att.score(test), Phi @ torch.linalg.solve(C, Psi.T) / len(Phi), rtol=1e-7,
                               atol=1e-11)
    # the kernel solve is the same operator: TRAK's scores are these times Q = 1 − p (here with λ·n on ΦᵀΦ)
    kernel = wf.ComposedAttributor(task, ProjectedGradients(proj), KernelSolver(0.05), scale="1/n",
                                   train_fn=wf.targets.margin, test_fn=wf.targets.margin).fit(train)
    torch.testing.assert_close(kernel.score(test), att.score(test), rtol=1e-7, atol=1e-11)


def test_ekfac_preconditioned_logra_at_full_rank_equals_ekfac_influence():
    """EK-FAC in LoGra's feature space with identity factors is EK-FAC in parameter space (rows permuted)."""
    model, train, test = all_layers_problem()
    task = wf.Task(model)
    logra = wf.LoGra(task, rank=64, preconditioner=EKFACSolver(0.3, curvature="empirical_fisher")).fit(train)
    inf = wf.InfluenceFunction(task, solver="ekfac", damping=0.3, curvature="empirical_fisher").fit(train)
    torch.testing.assert_close(logra.score(test), inf.score(test), rtol=1e-9, atol=1e-12)


def test_composition_rejects_bad_parts():
    task = wf.Task(nn.Linear(3, 2))
    with pytest.raises(wf.UnknownNameError):
        wf.ComposedAttributor(task, similarity="euclid")
    with pytest.raises(wf.WherefromError, match="scale"):
        wf.ComposedAttributor(task, scale="per-example")
    with pytest.raises(wf.WherefromError, match="one per checkpoint"):
        wf.ComposedAttributor(task, checkpoints=[task.state()], weights=[1.0, 2.0])


def test_last_layer_source_equals_a_task_restricted_to_that_layer():
    model, train, test = all_layers_problem()
    task = wf.Task(model, weight_decay=0.1)
    last = wf.ComposedAttributor(task, wf.sources.LastLayerGradients(), "explicit", scale="1/n").fit(train)
    head = wf.Task(model, params=["head"], weight_decay=0.1)
    G, Q = loop_grads(head, *train), loop_grads(head, *test)
    H = dense_hessian(head, *train)  # the last layer's block of the Hessian, without damping (λ = 0)
    torch.testing.assert_close(last.score(test), G @ torch.linalg.solve(H, Q.T) / len(G), rtol=1e-8, atol=1e-12)
