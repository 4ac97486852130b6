"""TRAK against a brute-force implementation of its formula (explicit matrices, explicit inverse)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

import wherefrom as wf
from wherefrom.errors import WherefromError


def _margin_grads(model, state, X, y):
    """Per-example gradients of logit_y − logsumexp_{c≠y} logit_c, one example at a time."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: state[n] for n in names}

    def margin(ps, x, t):
        logits = functional_call(model, ps, (x.unsqueeze(0),))[0]
        others = torch.cat([logits[:t], logits[t + 1:]])
        return logits[t] - torch.logsumexp(others, 0)

    rows = []
    for x, t in zip(X, y):
        g = grad(margin)(params, x, int(t))
        rows.append(torch.cat([g[n].reshape(-1) for n in names]))
    return torch.stack(rows)


def _setup(M=3, n=40, m=6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    states = []
    for s in range(M):
        torch.manual_seed(100 + s)
        fresh = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        states.append({k: v.detach().clone() for k, v in fresh.state_dict().items()})
    X, y = torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 3, (n,))
    Xt, yt = torch.randn(m, 4, dtype=torch.float64), torch.randint(0, 3, (m,))
    return model, states, (X, y), (Xt, yt)


def _brute_force(model, states, proj, train, test, damping):
    (X, y), (Xt, yt) = train, test
    p = sum(v.numel() for v in model.parameters())
    A = torch.zeros(len(X), len(Xt), dtype=torch.float64)
    Q = torch.zeros(len(X), dtype=torch.float64)
    for s, st in enumerate(states):
        P = proj.matrix(p, s)  # explicit [p, k] matrix of model s
        Phi = _margin_grads(model, st, X, y) @ P
        phi_t = _margin_grads(model, st, Xt, yt) @ P
        K = Phi.T @ Phi + damping * torch.eye(P.shape[1], dtype=torch.float64)
        A += Phi @ torch.linalg.inv(K) @ phi_t.T
        probs = F.softmax(functional_call(model, st, (X,)), dim=1)
        Q += 1 - probs[torch.arange(len(X)), y]
    M = len(states)
    return (Q / M).unsqueeze(1) * (A / M)  # Q and the kernel term averaged separately


@pytest.mark.parametrize("kind,damping", [("rademacher", 0.0), ("gaussian", 0.3), ("sparse", 0.1)])
def test_trak_equals_brute_force(kind, damping):
    model, states, train, test = _setup()
    task = wf.Task(model)
    trak = wf.TRAK(task, proj_dim=16, checkpoints=states, projection=kind, damping=damping, seed=4)
    scores = trak.fit(train).score(test)
    expected = _brute_force(model, states, trak.projection, train, test, damping)
    assert scores.shape == (40, 6)
    torch.testing.assert_close(scores, expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(trak.self_influence(), torch.diagonal(
        _brute_force(model, states, trak.projection, train, train, damping)), rtol=1e-7, atol=1e-9)


def test_trak_sign_follows_task_target():
    """With a loss-like test target the helpful direction is reversed so that positive stays helpful."""
    model, states, train, test = _setup(M=1)
    task = wf.Task(model, target_fn=wf.targets.cross_entropy)
    s_margin = wf.TRAK(task, proj_dim=12, checkpoints=states).fit(train).score(test)
    s_ce = wf.TRAK(task, proj_dim=12, checkpoints=states, target="task").fit(train).score(test)
    # ∇CE = −(1 − p)∇margin per test point, so CE-target scores are margin scores times (1 − p_test) > 0
    probs = F.softmax(functional_call(model, states[0], (test[0],)), dim=1)
    w = 1 - probs[torch.arange(len(test[1])), test[1]]
    torch.testing.assert_close(s_ce, s_margin * w.unsqueeze(0), rtol=1e-7, atol=1e-9)


def test_trak_models_get_independent_projections():
    model, states, train, _test = _setup(M=2)
    trak = wf.TRAK(wf.Task(model), proj_dim=8, checkpoints=states).fit(train)
    p = sum(v.numel() for v in model.parameters())
    assert not torch.allclose(trak.projection.matrix(p, 0), trak.projection.matrix(p, 1))


def test_trak_singular_kernel_warns_and_bad_input():
    model, states, train, _test = _setup(M=1, n=10)
    with pytest.warns(UserWarning, match="singular or indefinite"):
        wf.TRAK(wf.Task(model), proj_dim=30, checkpoints=states).fit(train)
    with pytest.raises(WherefromError):
        wf.TRAK(wf.Task(model), proj_dim=0)
    with pytest.raises(WherefromError, match="damping"):
        wf.TRAK(wf.Task(model), damping=-1.0)
    with pytest.raises(WherefromError, match="target"):
        wf.TRAK(wf.Task(model), target="loss")


def test_trak_layer_captures_equal_vmap_gradients():
    model, states, train, test = _setup(M=2)
    task = wf.Task(model)
    a = wf.TRAK(task, proj_dim=10, checkpoints=states, gradients="vmap")
    b = wf.TRAK(task, proj_dim=10, checkpoints=states, gradients="layers")
    assert not a.use_layers and b.use_layers
    torch.testing.assert_close(a.fit(train).score(test), b.fit(train).score(test), rtol=1e-8, atol=1e-10)
    normed = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    assert wf.TRAK(wf.Task(normed)).use_layers  # LayerNorm has a layer type: captures cover it

    class Scaled(nn.Module):  # a free parameter belongs to no layer type
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.scale * self.body(x)

    scaled = Scaled().double()
    assert not wf.TRAK(wf.Task(scaled)).use_layers  # auto falls back to vmap
    with pytest.raises(WherefromError, match="gradients='layers'"):
        wf.TRAK(wf.Task(scaled), gradients="layers")
