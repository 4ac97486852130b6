"""LiSSA's mini-batch products from structured samples equal autodiff products; tail averaging lowers the residual."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.curvature.lissa import LissaSolver
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.data.loaders import as_loader


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x.reshape(-1, 1, 4, 4))).flatten(1))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.emb(x[:, 0].long())))


def _case(name):
    g = torch.Generator().manual_seed(0)
    if name == "embedding":
        X = torch.randint(0, 7, (30, 1), generator=g).double()
        return Embed().double(), X, "ggn"
    X = torch.randn(30, 16 if name == "conv" else 5, generator=g, dtype=torch.float64)
    if name == "lr":
        return nn.Linear(5, 3).double(), X, "hessian"
    if name == "mlp":
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3, bias=False)).double(), X, "ggn"
    return ConvNet().double(), X, "ggn"


@pytest.mark.parametrize("name", ["lr", "mlp", "conv", "embedding"])
def test_structured_minibatch_product_equals_autodiff(name):
    torch.manual_seed(0)
    model, X, curvature = _case(name)
    y = torch.randint(0, 3, (len(X),), generator=torch.Generator().manual_seed(1))
    task = wf.Task(model, weight_decay=0.05)
    loader = as_loader((X, y), 8)
    fast = TrainingObjective(task, loader, task.state(None), curvature=curvature)
    slow = TrainingObjective(task, loader, task.state(None), curvature=curvature, structured=False)
    assert fast.structured_operator() is not None and fast.structured_operator().cached
    V = torch.randn(4, task.num_params, dtype=torch.float64)
    idx = torch.tensor([3, 17, 0, 29, 11])
    torch.testing.assert_close(fast.minibatch_hvp(V, idx), slow.minibatch_hvp(V, idx), rtol=1e-10, atol=1e-12)
    # the full-data products still agree once the kept batches are views of the stacked samples
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), rtol=1e-10, atol=1e-12)


def test_tail_averaging_lowers_the_residual_of_a_noisy_series():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (200,), generator=g)
    task = wf.Task(nn.Linear(6, 3).double(), weight_decay=0.05)
    obj = TrainingObjective(task, as_loader((X, y), 50), task.state(None))
    V = torch.randn(5, task.num_params, dtype=torch.float64, generator=g)
    residuals = {}
    for average in (0.0, 0.5):
        solver = LissaSolver(damping=0.01, depth=300, hvp_batch_size=10, average=average, residual_tolerance=1.0)
        solver.fit(obj).solve(V)
        residuals[average] = float(solver.residuals_.max())
    assert residuals[0.5] < 0.5 * residuals[0.0]


def test_average_must_be_a_fraction():
    with pytest.raises(wf.errors.WherefromError, match="average must be in"):
        LissaSolver(average=1.0)
