"""Influence scores predict real leave-one-out retraining of L2-regularised logistic regression.

Convention checked here: ``scores[i, j] ≈ loss_j(θ̂ without i) − loss_j(θ̂)`` (positive = helpful, because
removing a helpful example raises the test loss). Retraining keeps the ``1/n`` normalisation of the remaining
examples, which is exactly the ``ε = −1/n`` up-weighting the influence function linearises.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wherefrom as wf
from lr_fixtures import digits_lr, fit_lbfgs

WD = 0.05
N_TRAIN, N_TEST, N_LOO = 400, 60, 40


@pytest.fixture(scope="module")
def loo_problem():
    model, train, test = digits_lr(N_TRAIN, N_TEST, WD)
    X, y = train.tensors
    Xt, yt = test.tensors
    with torch.no_grad():
        base = F.cross_entropy(model(Xt), yt, reduction="none")
    rng = np.random.default_rng(0)
    removed = np.sort(rng.choice(N_TRAIN, N_LOO, replace=False))
    actual = torch.empty(N_LOO, N_TEST, dtype=torch.float64)
    for r, i in enumerate(removed):
        weights = torch.ones(N_TRAIN, dtype=torch.float64)
        weights[i] = 0.0
        loo = fit_lbfgs(copy.deepcopy(model), X, y, WD, n_norm=N_TRAIN, weights=weights)
        with torch.no_grad():
            actual[r] = F.cross_entropy(loo(Xt), yt, reduction="none") - base
    return model, train, test, torch.as_tensor(removed), actual


def _agreement(pred: torch.Tensor, actual: torch.Tensor):
    p, a = pred.flatten().numpy(), actual.flatten().numpy()
    pearson = np.corrcoef(p, a)[0, 1]
    slope = float(np.dot(p, a) / np.dot(p, p))  # least squares through the origin
    sign_agreement = float(np.mean(np.sign(p) == np.sign(a)))
    return pearson, slope, sign_agreement


@pytest.mark.parametrize("solver,options,min_pearson", [
    ("explicit", {}, 0.97),
    ("cg", {}, 0.97),
    ("lissa", {}, 0.90),
])
def test_influence_predicts_leave_one_out(loo_problem, solver, options, min_pearson):
    model, train, test, removed, actual = loo_problem
    task = wf.Task(model, weight_decay=WD)
    scores = wf.InfluenceFunction(task, solver=solver, damping=0.0, **options).fit(train).score(test)
    assert scores.shape == (N_TRAIN, N_TEST)
    pearson, slope, signs = _agreement(scores[removed], actual)
    print(f"{solver}: Pearson {pearson:.4f} slope {slope:.3f} signs {signs:.3f}")
    assert pearson >= min_pearson, f"{solver}: Pearson {pearson:.4f}"
    assert 0.9 <= slope <= 1.1, f"{solver}: slope {slope:.3f}"
    assert signs >= 0.9, f"{solver}: sign agreement {signs:.3f}"


def test_per_test_point_correlation_and_top_k(loo_problem):
    model, train, test, removed, actual = loo_problem
    influence = wf.InfluenceFunction(wf.Task(model, weight_decay=WD), solver="explicit", damping=0.0).fit(train)
    scores = influence.score(test)
    per_test = [np.corrcoef(scores[removed, j].numpy(), actual[:, j].numpy())[0, 1] for j in range(N_TEST)]
    assert np.mean(per_test) >= 0.95
    top = influence.top_k(test, k=7)
    order = torch.argsort(scores, dim=0, descending=True)
    torch.testing.assert_close(top.helpful_values, torch.gather(scores, 0, order[:7]).T)
    torch.testing.assert_close(top.harmful_values, torch.gather(scores, 0, order.flip(0)[:7]).T)
    assert torch.equal(scores[top.helpful_indices[3], 3], top.helpful_values[3])


def test_self_influence_is_explicit_quadratic_form(loo_problem):
    model, train, _, _, _ = loo_problem
    task = wf.Task(model, weight_decay=WD)
    influence = wf.InfluenceFunction(task, solver="explicit", damping=1e-3).fit(train)
    G = wf.gradients.collect_gradients(task, wf.data.as_loader(train), task.state())
    H = influence.solver.hessian_ + 1e-3 * torch.eye(G.shape[1], dtype=torch.float64)
    expected = torch.einsum("ip,ip->i", G, torch.linalg.solve(H, G.T).T) / N_TRAIN
    torch.testing.assert_close(influence.self_influence(), expected)
