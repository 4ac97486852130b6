"""TracInCP's factored layer products equal explicit per-example-gradient dot products (float64)."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.sources.factored import FactoredGradients, factored_is_cheaper


class Mixed(nn.Module):
    """Embedding (one id and a 3-id sequence), Conv2d with and without bias, Linear with and without bias, a free
    parameter: factored and explicit blocks side by side."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)          # one id: factored
        self.seq = nn.Embedding(6, 2)          # three ids: explicit
        self.conv = nn.Conv2d(1, 2, 3)         # 16 positions: explicit
        self.conv_nb = nn.Conv2d(2, 1, 2, bias=False)
        self.fc = nn.Linear(3 + 2 + 9, 4, bias=False)
        self.out = nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.tensor(1.3))  # no layer type: explicit (vmap) rows

    def forward(self, x):
        ids, seq = x[:, 0].long(), x[:, 1:4].long()
        img = x[:, 4:].reshape(-1, 1, 6, 6)
        h = torch.tanh(self.conv(img))
        h = self.conv_nb(h).flatten(1)           # [B, 9]
        z = torch.cat([self.emb(ids), self.seq(seq).sum(1), h], dim=1)
        return self.gain * self.out(torch.tanh(self.fc(z)))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.cat([torch.randint(0, 5, (n, 1), generator=g), torch.randint(0, 6, (n, 3), generator=g),
                   torch.randn(n, 36, generator=g)], dim=1).double()
    return X, torch.randint(0, 3, (n,), generator=g)


def _brute(model, state, X, y):
    model.load_state_dict(state)
    rows = []
    for k in range(len(X)):
        model.zero_grad()
        nn.functional.cross_entropy(model(X[k:k + 1]), y[k:k + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def _checkpoints(model, k):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(k):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out.append({n: v.clone() for n, v in model.state_dict().items()})
    return out


def test_factored_tracincp_equals_explicit_dot_products():
    torch.manual_seed(0)
    model = Mixed().double()
    cks = _checkpoints(model, 3)
    lrs = [0.3, 0.1, 0.02]
    (X, y), (Xt, yt) = _data(21, 2), _data(7, 3)
    grads = [(_brute(model, ck, X, y), _brute(model, ck, Xt, yt)) for ck in cks]
    expected = sum(lr * G @ Q.T for (G, Q), lr in zip(grads, lrs))
    tracin = wf.TracInCP(wf.Task(model), checkpoints=cks, learning_rates=lrs, batch_size=8).fit((X, y))
    src = tracin.source
    assert isinstance(src, FactoredGradients)
    assert sorted(f.name for f in src.factored_) == ["emb", "fc", "out"]   # conv and the sequence stay explicit
    torch.testing.assert_close(tracin.score((Xt, yt)), expected, rtol=1e-10, atol=1e-12)
    self_expected = sum(lr * G.pow(2).sum(1) for (G, _), lr in zip(grads, lrs))
    torch.testing.assert_close(tracin.self_influence(), self_expected, rtol=1e-10, atol=1e-12)
    full = wf.TracInCP(wf.Task(model), checkpoints=cks, learning_rates=lrs, gradients="full").fit((X, y))
    torch.testing.assert_close(full.score((Xt, yt)), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(wf.errors.WherefromError, match="gradients='full'"):
        tracin.score_by_module((Xt, yt))


def test_factored_positions_and_save_load(tmp_path, monkeypatch):
    """Multi-position layers kept factored (a forced plan: the ``T²`` products) and a saved, reloaded TracInCP give
    the explicit scores."""
    torch.manual_seed(0)
    model = Mixed().double()
    cks = _checkpoints(model, 2)
    (X, y), (Xt, yt) = _data(10, 4), _data(5, 5)
    expected = sum(0.1 * _brute(model, ck, X, y) @ _brute(model, ck, Xt, yt).T for ck in cks)
    shapes = {"conv": (16, 10, 2), "seq": (3, 6, 2), "out": (1, 5, 3)}
    monkeypatch.setattr(FactoredGradients, "plan", lambda self, *a: self.set_plan(list(shapes), shapes))
    tracin = wf.TracInCP(wf.Task(model), checkpoints=cks, learning_rates=0.1, batch_size=4).fit((X, y))
    assert sorted(f.name for f in tracin.source.factored_) == ["conv", "out", "seq"]
    torch.testing.assert_close(tracin.score((Xt, yt)), expected, rtol=1e-10, atol=1e-12)
    self_expected = sum(0.1 * _brute(model, ck, X, y).pow(2).sum(1) for ck in cks)
    torch.testing.assert_close(tracin.self_influence(), self_expected, rtol=1e-10, atol=1e-12)
    tracin.save(tmp_path / "t")
    loaded = wf.load(tmp_path / "t", task=wf.Task(model))
    torch.testing.assert_close(loaded.score((Xt, yt)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("T", "cols", "d_out", "cheaper"), [(1, 65, 10, True), (1, 2, 2, False),
                                                              (16, 10, 2, False), (2, 100, 100, True)])
def test_cost_rule(T, cols, d_out, cheaper):
    assert factored_is_cheaper(T, cols, d_out) is cheaper


def test_planning_does_not_build_one_hot_inputs_of_an_explicit_embedding(monkeypatch):
    """An embedding over many positions stays explicit (scatter-added gradients); reading its shape for the plan
    must not materialise its ``[B, T, vocabulary]`` one-hot inputs."""
    from wherefrom.layers.embedding import IndexedIO

    built = []
    original = IndexedIO.a.fget
    monkeypatch.setattr(IndexedIO, "a", property(lambda io: built.append(io.name) or original(io)))
    torch.manual_seed(0)
    model = Mixed().double()
    X, y = _data(8, 1)
    task = wf.Task(model, checkpoints=[model.state_dict()])
    src = FactoredGradients().setup(task)
    src.plan(task.state(), task.prepare_batch((X, y)), task.loss_fn)
    assert "emb" in [f.name for f in src.factored_] and "seq" not in [f.name for f in src.factored_]
    assert "seq" not in built
