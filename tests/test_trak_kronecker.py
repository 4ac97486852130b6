"""TRAK with projection="kronecker" against its formula with explicit (P_out ⊗ P_in) matrices built here."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.sources.base import FeatureBlock
from wherefrom.sources.kronecker import allocate_ranks, factor_pair


def _model():
    # Conv2d (bias, 16 positions) → LayerNorm (dense) → Linear (bias) → Linear (no bias)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.LayerNorm(48), nn.Linear(48, 5),
                         nn.Tanh(), nn.Linear(5, 3, bias=False)).double()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _margin_grads(model, state, X, y):
    """Per-example gradients of logit_y − logsumexp_{c≠y} logit_c by torch.func, ``{param: [n, *shape]}``."""
    def margin(ps, x, t):
        logits = functional_call(model, ps, (x.unsqueeze(0),))[0]
        mine = torch.arange(3) == t
        return (logits * mine).sum() - torch.logsumexp(torch.where(mine, -torch.inf, logits), 0)

    return vmap(grad(margin), in_dims=(None, 0, 0))(dict(state), X, y)


def _explicit_features(att, model, state, c, X, y):
    """``[n, d]``: per block, ``(P_out ⊗ P_in) vec([W | b])`` (Kronecker layers) or ``P g`` (LayerNorm)."""
    g = _margin_grads(model, state, X, y)
    src = att.source
    cols = []
    for name in ("0", "3", "4", "6"):
        if name == "3":  # LayerNorm: a dense Gaussian matrix on [∂w; ∂b]
            block = next(b for b in src.layout if b.name == name)
            P = src.dense_factor(c, block, 96, "cpu")
            cols.append(torch.cat([g["3.weight"], g["3.bias"]], 1) @ P.double().T)
            continue
        W = g[f"{name}.weight"].reshape(len(X), g[f"{name}.weight"].shape[1], -1)  # [n, d_out, d_in]
        G = torch.cat([W, g[f"{name}.bias"].unsqueeze(2)], 2) if f"{name}.bias" in g else W
        P_in, P_out = src.layer_factors(c, name, "cpu")
        K = torch.kron(P_out.double(), P_in.double())  # [k_out·k_in, d_out·(d_in+1)], row-major vec
        cols.append(G.reshape(len(X), -1) @ K.T)
    return torch.cat(cols, 1)


def _reference(att, model, states, train, test, damping):
    (X, y), (Xt, yt) = train, test
    A, Q = 0, 0
    for c, st in enumerate(states):
        Phi = _explicit_features(att, model, st, c, X, y)
        Psi = _explicit_features(att, model, st, c, Xt, yt)
        K = Phi.T @ Phi + damping * torch.eye(Phi.shape[1], dtype=torch.float64)
        A = A + Phi @ torch.linalg.solve(K, Psi.T)
        Q = Q + 1 - F.softmax(functional_call(model, st, (X,)), 1)[torch.arange(len(X)), y]
    M = len(states)
    return (Q / M).unsqueeze(1) * (A / M)


def test_trak_kronecker_equals_explicit_kronecker_matrices():
    model = _model()
    states = []
    for s in range(2):
        torch.manual_seed(10 + s)
        states.append({k: v.detach().clone() for k, v in _model().state_dict().items()})
    train, test = _data(100, 0), _data(7, 1)
    att = wf.TRAK(wf.Task(model), proj_dim=24, models=states, projection="kronecker", damping=0.5, seed=3)
    # 24 shared by four blocks: 6 each; conv (d_out 3, 10 cols) → 3·2, Linear 48→5 → 3·2, Linear 5→3 → 3·2
    assert att.source.ranks == {"0": (3, 2), "3": 6, "4": (3, 2), "6": (3, 2)} and att.source.dim == 24
    scores = att.fit(train).score(test)
    expected = _reference(att, model, states, train, test, 0.5)
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(att.self_influence(), torch.diagonal(_reference(att, model, states, train, train,
                                                                               0.5)), rtol=1e-9, atol=1e-12)


def test_rank_allocation_water_fills_and_factors():
    blocks = [FeatureBlock("small", torch.arange(4)), FeatureBlock("a", torch.arange(10)),
              FeatureBlock("b", torch.arange(1000))]
    assert allocate_ranks(20, blocks) == {"small": 4, "a": 8, "b": 8}  # small is full; 16 left for two
    assert factor_pair(32, 785, 64) == (8, 4) and factor_pair(32, 65, 10) == (8, 4)
    assert factor_pair(7, 100, 100) == (7, 1)  # a prime share: the whole of it, unbalanced
    assert factor_pair(50, 3, 2) == (3, 2)  # capped by the layer's own size
    with pytest.raises(WherefromError, match="at least one dimension each"):
        allocate_ranks(2, blocks)


class _Raw(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w


def test_trak_kronecker_refuses_a_model_without_layers():
    with pytest.raises(WherefromError, match=r"Kronecker structure.*\(w\)"):
        wf.TRAK(wf.Task(_Raw()), proj_dim=4, projection="kronecker")
    with pytest.raises(WherefromError, match=r"gradients=.vmap."):
        wf.TRAK(wf.Task(_model()), proj_dim=8, projection="kronecker", gradients="vmap")
