"""LoGra equals the full per-example gradient times the Kronecker projection matrix; its preconditioners equal
explicit formulas built from that matrix."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.gradients import collect_gradients


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4, bias=False), nn.Tanh(), nn.Linear(4, 3))
    return model.double()


def _data(shape, n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _explicit_features(task, logra, data, fn=None):
    """Full per-example gradients (vmap) times the explicit Kronecker matrices (P_out ⊗ P_in), layer by layer."""
    G = collect_gradients(task, wf.data.as_loader(data), task.state(), fn)
    sl = task.param_slices()
    feats = []
    for name, (P_in, P_out) in logra.factors().items():
        W = G[:, sl[f"{name}.weight"]].reshape(len(G), P_out.shape[1], -1)
        if f"{name}.bias" in sl:
            W = torch.cat([W, G[:, sl[f"{name}.bias"]].unsqueeze(2)], dim=2)  # bias = last input column
        K = torch.kron(P_out.double(), P_in.double())  # [k_out·k_in, d_out·(d_in+1)]
        feats.append(W.reshape(len(G), -1) @ K.T)
    return torch.cat(feats, dim=1)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_logra_equals_kronecker_projection_of_full_gradient(kind):
    if kind == "mlp":
        model, train, test = _mlp(), _data((7,), 20, 3, 1), _data((7,), 5, 3, 2)
        rank = (3, 2)
    else:
        torch.manual_seed(0)
        model, train, test = ConvNet().double(), _data((1, 8, 8), 12, 5, 1), _data((1, 8, 8), 4, 5, 2)
        rank = (4, 2)
    task = wf.Task(model)
    logra = wf.LoGra(task, rank=rank, preconditioner="identity", seed=3, batch_size=7).fit(train)
    got = logra.projected_gradients(train)
    torch.testing.assert_close(got, _explicit_features(task, logra, train), rtol=1e-9, atol=1e-11)
    Phi, Psi = got, _explicit_features(task, logra, test, task.target_fn)
    torch.testing.assert_close(logra.score(test), Phi @ Psi.T, rtol=1e-9, atol=1e-11)
    # factors are genuinely random projections where k < d, identity where k >= d
    for P_in, P_out in logra.factors().values():
        assert P_in.shape[0] == min(rank[0], P_in.shape[1]) and P_out.shape[0] == min(rank[1], P_out.shape[1])


def test_logra_raw_and_kfac_preconditioners_match_explicit_formulas():
    model, train, test = _mlp(), _data((7,), 40, 3, 1), _data((7,), 6, 3, 2)
    task = wf.Task(model)
    damping = 0.3
    for precond in ("raw", "kfac"):
        logra = wf.LoGra(task, rank=(3, 2), preconditioner=precond, damping=damping, seed=1).fit(train)
        Phi = _explicit_features(task, logra, train)
        Psi = _explicit_features(task, logra, test, task.target_fn)
        n = Phi.shape[0]
        expected = torch.zeros(n, Psi.shape[0], dtype=torch.float64)
        off = 0
        state = task.state()
        for name, (P_in, P_out) in logra.factors().items():
            k = P_in.shape[0] * P_out.shape[0]
            g, q = Phi[:, off:off + k], Psi[:, off:off + k]
            off += k
            if precond == "raw":
                F = g.T @ g / n
            else:  # explicit Kronecker product of the projected factor covariances
                with task.attribution_mode():
                    io = wf.layers.capture_layers(task, state, task.prepare_batch(train))[name]
                a = io.a[:, 0] @ P_in.double().T
                d = io.delta[:, 0] @ P_out.double().T
                F = torch.kron(d.T @ d / n, a.T @ a / n)
            lam = damping * torch.trace(F) / k
            expected += g @ torch.linalg.inv(F + lam * torch.eye(k, dtype=F.dtype)) @ q.T / n
        torch.testing.assert_close(logra.score(test), expected, rtol=1e-7, atol=1e-10)
        self_expected = torch.diagonal(_self_explicit(logra, Phi, damping, precond, task, train))
        torch.testing.assert_close(logra.self_influence(), self_expected, rtol=1e-7, atol=1e-10)


def _self_explicit(logra, Phi, damping, precond, task, train):
    n = Phi.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    off = 0
    for name, (P_in, P_out) in logra.factors().items():
        k = P_in.shape[0] * P_out.shape[0]
        g = Phi[:, off:off + k]
        off += k
        if precond == "raw":
            F = g.T @ g / n
        else:
            with task.attribution_mode():
                io = wf.layers.capture_layers(task, task.state(), task.prepare_batch(train))[name]
            a, d = io.a[:, 0] @ P_in.double().T, io.delta[:, 0] @ P_out.double().T
            F = torch.kron(d.T @ d / n, a.T @ a / n)
        lam = damping * torch.trace(F) / k
        out += g @ torch.linalg.inv(F + lam * torch.eye(k, dtype=F.dtype)) @ g.T / n
    return out


def test_logra_inner_products_follow_jl():
    """Projected Grad-Dot with large factors approximates the exact gradient dot product."""
    model, train, test = _mlp(), _data((7,), 30, 3, 1), _data((7,), 6, 3, 2)
    task = wf.Task(model)
    G = collect_gradients(task, wf.data.as_loader(train), task.state())
    Q = collect_gradients(task, wf.data.as_loader(test), task.state(), task.target_fn)
    exact = G @ Q.T
    # ranks above every factor dimension: P = I, exact
    full = wf.LoGra(task, rank=64, preconditioner="identity").fit(train).score(test)
    torch.testing.assert_close(full, exact, rtol=1e-9, atol=1e-11)
    # averaging over independent seeds is unbiased: the mean converges to the exact dot products
    est = torch.stack([wf.LoGra(task, rank=(4, 3), preconditioner="identity", seed=s).fit(train).score(test)
                       for s in range(25)]).mean(0)
    rel = (est - exact).norm() / exact.norm()
    assert rel < 0.3, float(rel)


def test_logra_bad_input():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    # every layer type is covered (the LayerNorm by a dense projection of its exact gradients)
    assert list(wf.LoGra(wf.Task(model)).layer_dims()) == ["0", "1", "2"]
    wf.LoGra(wf.Task(model, params=["0", "2"]))
    with pytest.raises(wf.UnknownNameError):
        wf.LoGra(wf.Task(model, params=["0"]), preconditioner="ekfac")
    with pytest.raises(WherefromError, match="rank"):
        wf.LoGra(wf.Task(model, params=["0"]), rank=0)
