"""RelatIF against its formulas with an explicit inverse."""

import pytest
import torch
from torch.func import hessian

import wherefrom as wf
from curvature_refs import classification_data, mlp, per_example_grads


def _setup():
    model = mlp()
    X, y = classification_data(n=20)
    task = wf.Task(model, weight_decay=0.05)
    state = task.state()
    theta = task.flat_params(state)
    H = hessian(lambda t: task.per_example(task.loss_fn, t, state, (X, y)).mean() + 0.025 * t @ t)(theta)
    return task, X, y, H


@pytest.mark.parametrize("normalization", ["l", "theta"])
def test_relatif_equals_its_formula(normalization):
    task, X, y, H = _setup()
    lam = 0.5
    Hinv = torch.linalg.inv(H + lam * torch.eye(H.shape[0], dtype=torch.float64))
    G = per_example_grads(task, X, y)
    Q = per_example_grads(task, X[:5], y[:5])
    num = G @ Hinv @ Q.T  # q_jᵀ H⁻¹ g_i
    quad = torch.einsum("ip,pq,iq->i", G, Hinv, G)
    den = quad.sqrt() if normalization == "l" else (G @ Hinv).norm(dim=1)
    rel = wf.RelatIF(task, damping=lam, normalization=normalization).fit((X, y))
    torch.testing.assert_close(rel.score((X[:5], y[:5])), num / den[:, None], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(rel.self_influence(), quad / den, rtol=1e-8, atol=1e-12)
    parts = rel.score_by_module((X[:5], y[:5]))
    torch.testing.assert_close(sum(parts.values()), num / den[:, None], rtol=1e-8, atol=1e-12)


def test_relatif_sign_follows_a_higher_is_better_target():
    task, X, y, H = _setup()
    margin_task = wf.Task(task.model, target_fn=wf.targets.log_probability, weight_decay=0.05)
    rel = wf.RelatIF(margin_task, damping=0.5).fit((X, y))
    Hinv = torch.linalg.inv(H + 0.5 * torch.eye(H.shape[0], dtype=torch.float64))
    G = per_example_grads(task, X, y)
    st = margin_task.state()
    th = margin_task.flat_params(st)
    qm = torch.stack([torch.func.grad(lambda t, i=i: margin_task.per_example(
        margin_task.target_fn, t, st, (X[i:i + 1], y[i:i + 1])).sum())(th) for i in range(3)])
    den = torch.einsum("ip,pq,iq->i", G, Hinv, G).sqrt()
    torch.testing.assert_close(rel.score((X[:3], y[:3])), -(G @ Hinv @ qm.T) / den[:, None], rtol=1e-8, atol=1e-12)


def test_relatif_rejects_unknown_normalization():
    task, *_ = _setup()
    with pytest.raises(wf.WherefromError, match="normalization"):
        wf.RelatIF(task, normalization="x")
