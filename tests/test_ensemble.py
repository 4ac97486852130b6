"""Dropout ensemble: fixed masks per member, average of member scores, no silent no-op."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from wherefrom.ensemble import DropoutEnsemble, masked_copy


class Net(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _loop_grad_dot(model, mask, Xtr, ytr, Xte, yte):
    """Slow reference: per-example autograd of the network with features multiplied by ``mask``."""
    def grads(X, y):
        out = []
        for i in range(len(y)):
            model.zero_grad()
            h = torch.relu(model.fc1(X[i:i + 1])) * mask
            F.cross_entropy(model.fc2(h), y[i:i + 1]).backward()
            out.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
        return torch.stack(out)
    return grads(Xtr, ytr) @ grads(Xte, yte).T


def test_dropout_ensemble_matches_loop_reference():
    torch.manual_seed(0)
    model = Net(0.5).double().eval()
    Xtr, ytr = _data(12, 1)
    Xte, yte = _data(4, 2)
    ens = DropoutEnsemble(wf.Task(model), lambda t: wf.GradDot(t, progress=False), n_masks=3, seed=7)
    scores = ens.fit((Xtr, ytr)).score((Xte, yte))
    ref = 0
    for s in range(3):
        keep = np.random.default_rng([7, s, 0]).random((8,)) >= 0.5
        mask = torch.from_numpy(keep / 0.5)
        ref = ref + _loop_grad_dot(model, mask, Xtr, ytr, Xte, yte)
    torch.testing.assert_close(scores, ref / 3)
    # members differ from each other and from the model without dropout
    plain = wf.GradDot(wf.Task(model), progress=False).fit((Xtr, ytr)).score((Xte, yte))
    assert not torch.allclose(scores, plain)
    assert ens.self_influence().shape == (12,)


def test_zero_probability_equals_base_attributor():
    model = Net(0.0).double().eval()
    Xtr, ytr = _data(10, 3)
    Xte, yte = _data(3, 4)
    ens = DropoutEnsemble(wf.Task(model), lambda t: wf.GradDot(t, progress=False), n_masks=2)
    base = wf.GradDot(wf.Task(model), progress=False).fit((Xtr, ytr)).score((Xte, yte))
    torch.testing.assert_close(ens.fit((Xtr, ytr)).score((Xte, yte)), base)


def test_no_dropout_layer_is_an_error():
    model = nn.Sequential(nn.Linear(5, 3)).double()
    with pytest.raises(wf.WherefromError, match="no dropout"):
        DropoutEnsemble(wf.Task(model), lambda t: wf.GradDot(t), n_masks=2).fit(_data(4, 0))
    with pytest.raises(wf.WherefromError, match="not a dropout"):
        masked_copy(Net(), ["fc1"], None, [0])


def test_saved_ensemble_reloads_every_member_and_checks_the_task(tmp_path):
    torch.manual_seed(0)
    model = Net(0.5).double().eval()
    Xtr, ytr = _data(12, 1)
    Xte, yte = _data(4, 2)
    make = lambda t: wf.GradDot(t, progress=False)  # noqa: E731
    ens = DropoutEnsemble(wf.Task(model), make, n_masks=3, seed=7).fit((Xtr, ytr))
    ens.save(tmp_path / "ens")
    with pytest.raises(wf.WherefromError, match="make_attributor"):
        wf.load(tmp_path / "ens", wf.Task(model))
    again = wf.load(tmp_path / "ens", wf.Task(model), make_attributor=make)
    torch.testing.assert_close(again.score((Xte, yte)), ens.score((Xte, yte)), rtol=0, atol=0)
    torch.testing.assert_close(again.self_influence(), ens.self_influence(), rtol=0, atol=0)
    other = Net(0.5).double().eval()
    with pytest.raises(wf.WherefromError, match="another task"):
        wf.load(tmp_path / "ens", wf.Task(other), make_attributor=make)
