"""RPS: the representer decomposition Θ* f_t = Σ_i α_i ⟨f_i, f_t⟩ holds exactly at the fine-tuned stationary point."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from wherefrom.errors import WherefromError


def _setup(bias=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3, bias=bias)).double()
    train = (torch.randn(60, 5, dtype=torch.float64), torch.randint(0, 3, (60,)))
    test = (torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,)))
    return model, train, test


@pytest.mark.parametrize("bias,labels,normalize", [(True, "model", False), (False, "true", True)])
def test_representer_decomposition_is_exact(bias, labels, normalize):
    model, train, test = _setup(bias)
    l2 = 0.01
    rps = wf.RepresenterPoints(wf.Task(model), l2=l2, labels=labels, normalize=normalize).fit(train)
    # features computed independently: the body of the network, normalised, with the bias 1 appended
    with torch.no_grad():
        f = model[:2](train[0])
        ft = model[:2](test[0])
    if normalize:
        f, ft = f / f.norm(dim=1, keepdim=True), ft / ft.norm(dim=1, keepdim=True)
    if bias:
        f, ft = torch.cat([f, torch.ones(60, 1, dtype=f.dtype)], 1), torch.cat([ft, torch.ones(9, 1, dtype=f.dtype)], 1)
    theta = rps.theta_
    # stationarity of J(Θ) = mean CE(Θ f_i, y_i) + λ‖Θ‖², written out here
    with torch.no_grad():
        y = F.softmax(model(train[0]), 1) if labels == "model" else F.one_hot(train[1], 3).double()
    th = theta.clone().requires_grad_(True)
    J = -(y * F.log_softmax(f @ th.T, 1)).sum(1).mean() + l2 * th.pow(2).sum()
    (g,) = torch.autograd.grad(J, th)
    assert float(g.abs().max()) < 1e-12
    # the representer theorem: Θ* f_t = Σ_i α_i ⟨f_i, f_t⟩ for every class, hence column sums of the scores
    scores = rps.score(test)
    assert scores.shape == (60, 9)
    logits_t = ft @ theta.T
    torch.testing.assert_close(scores.sum(0), logits_t[torch.arange(9), test[1]], rtol=1e-8, atol=1e-8)
    alpha = (y - F.softmax(f @ theta.T, 1)) / (2 * l2 * 60)
    torch.testing.assert_close(theta, alpha.T @ f, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(scores, alpha[:, test[1]] * (f @ ft.T), rtol=1e-8, atol=1e-10)


def test_predicted_class_and_self_influence():
    model, train, test = _setup()
    rps = wf.RepresenterPoints(wf.Task(model), l2=0.05, class_of_interest="predicted").fit(train)
    scores = rps.score(test)
    with torch.no_grad():
        pred = model(test[0]).argmax(1)
        ft = torch.cat([model[:2](test[0]), torch.ones(9, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(scores.sum(0), (ft @ rps.theta_.T)[torch.arange(9), pred], rtol=1e-8, atol=1e-8)
    si = rps.self_influence()
    # τ[i, i] of the true-label objective: α_{i, y_i} ‖f̃_i‖² with α refitted on one-hot labels (≥ 0)
    true = wf.RepresenterPoints(wf.Task(model), l2=0.05, labels="true").fit(train)
    expected = true.alpha_[torch.arange(60), train[1]] * true.features_.pow(2).sum(1)
    torch.testing.assert_close(true.self_influence(), expected)
    assert (si >= 0).all()


def test_bad_input():
    model, _, _ = _setup()
    with pytest.raises(WherefromError, match="l2"):
        wf.RepresenterPoints(wf.Task(model), l2=0)
    with pytest.raises(WherefromError, match=r"not an nn\.Linear"):
        wf.RepresenterPoints(wf.Task(model), last_layer="1")
    with pytest.raises(WherefromError, match="not fitted"):
        wf.RepresenterPoints(wf.Task(model)).score((torch.randn(2, 5), torch.tensor([0, 1])))
