"""TracInCP, Grad-Dot and Grad-Cos equal brute-force formulas built from per-example backward passes."""

import pytest
import torch
from torch import nn

import wherefrom as wf


def _mlp():
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _brute_grads(model, state, X, y, fn=None):
    """Per-example gradients by one backward pass per example (the slow obvious reference)."""
    model.load_state_dict(state)
    rows = []
    for k in range(len(X)):
        model.zero_grad()
        out = model(X[k : k + 1])
        value = nn.functional.cross_entropy(out, y[k : k + 1]) if fn is None else fn(out, (X[k:k + 1], y[k:k + 1]))[0]
        value.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (23,), generator=g)
    Xt = torch.randn(9, 5, dtype=torch.float64, generator=g)
    yt = torch.randint(0, 3, (9,), generator=g)
    return (X, y), (Xt, yt)


def _checkpoints(model, k=3):
    out = []
    for _ in range(k):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        out.append({n: v.clone() for n, v in model.state_dict().items()})
    return out


def test_tracincp_equals_brute_force(data):
    (X, y), (Xt, yt) = data
    model = _mlp()
    cks = _checkpoints(model)
    lrs = [0.1, 0.05, 0.01]
    expected = sum(lr * _brute_grads(model, ck, X, y) @ _brute_grads(model, ck, Xt, yt).T for ck, lr in zip(cks, lrs))
    got = wf.TracInCP(wf.Task(model), checkpoints=cks, learning_rates=lrs, batch_size=8).fit((X, y)).score((Xt, yt))
    torch.testing.assert_close(got, expected)
    self_expected = sum(lr * _brute_grads(model, ck, X, y).pow(2).sum(1) for ck, lr in zip(cks, lrs))
    tracin = wf.TracInCP(wf.Task(model, checkpoints=cks), learning_rates=lrs).fit((X, y))
    torch.testing.assert_close(tracin.self_influence(), self_expected)


def test_tracincp_checkpoint_files(tmp_path, data):
    (X, y), (Xt, yt) = data
    model = _mlp()
    cks = _checkpoints(model, 2)
    paths = []
    for k, ck in enumerate(cks):
        paths.append(tmp_path / f"ck{k}.pt")
        torch.save(ck, paths[-1])
    from_files = wf.TracInCP(wf.Task(model), checkpoints=paths, learning_rates=0.1).fit((X, y)).score((Xt, yt))
    from_dicts = wf.TracInCP(wf.Task(model), checkpoints=cks, learning_rates=0.1).fit((X, y)).score((Xt, yt))
    torch.testing.assert_close(from_files, from_dicts)


def test_grad_dot_and_grad_cos_equal_brute_force(data):
    (X, y), (Xt, yt) = data
    model = _mlp()
    state = {n: v.clone() for n, v in model.state_dict().items()}
    G, Q = _brute_grads(model, state, X, y), _brute_grads(model, state, Xt, yt)
    torch.testing.assert_close(wf.GradDot(wf.Task(model)).fit((X, y)).score((Xt, yt)), G @ Q.T)
    cos = (G / G.norm(dim=1, keepdim=True)) @ (Q / Q.norm(dim=1, keepdim=True)).T
    grad_cos = wf.GradCos(wf.Task(model)).fit((X, y))
    torch.testing.assert_close(grad_cos.score((Xt, yt)), cos)
    torch.testing.assert_close(grad_cos.self_influence(), torch.ones(len(X), dtype=torch.float64))


def test_margin_target_flips_sign(data):
    """For a higher-is-better target a helpful example is one whose step raises the target: τ = −g·∇f."""
    (X, y), (Xt, yt) = data
    model = _mlp()
    state = {n: v.clone() for n, v in model.state_dict().items()}
    G = _brute_grads(model, state, X, y)
    Qm = _brute_grads(model, state, Xt, yt, fn=wf.targets.margin)
    got = wf.GradDot(wf.Task(model, target_fn=wf.targets.margin)).fit((X, y)).score((Xt, yt))
    torch.testing.assert_close(got, -(G @ Qm.T))


def test_tracin_learning_rate_count_must_match(data):
    model = _mlp()
    with pytest.raises(wf.WherefromError, match="one per checkpoint"):
        wf.TracInCP(wf.Task(model), checkpoints=_checkpoints(model, 2), learning_rates=[0.1, 0.2, 0.3])
    with pytest.raises(wf.WherefromError, match="needs checkpoints"):
        wf.TracInCP(wf.Task(model))
