"""DataInf against its closed form computed by brute force (explicit per-example inverses)."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from curvature_refs import classification_data, mlp, per_example_grads
from wherefrom.curvature import DataInfSolver, TrainingObjective
from wherefrom.errors import WherefromError


def _brute(G, V, groups, lams):
    """s_l = (1/n) Σ_i (λ_l I + g_il g_ilᵀ)⁻¹ q_l, with a dense inverse per example and group."""
    out = torch.zeros_like(V)
    n = G.shape[0]
    for g, idx in groups.items():
        eye = torch.eye(len(idx), dtype=G.dtype)
        for i in range(n):
            gi = G[i, idx]
            out[:, idx] += torch.linalg.solve(lams[g] * eye + torch.outer(gi, gi), V[:, idx].T).T / n
    return out


def _groups(task):
    sl = task.param_slices()
    return {"0": torch.cat([torch.arange(sl["0.weight"].start, sl["0.weight"].stop),
                            torch.arange(sl["0.bias"].start, sl["0.bias"].stop)]),
            "2": torch.cat([torch.arange(sl["2.weight"].start, sl["2.weight"].stop),
                            torch.arange(sl["2.bias"].start, sl["2.bias"].stop)])}


@pytest.mark.parametrize("memory_gb", [1.0, 0.0])  # gradients kept in memory / streamed on each solve
def test_datainf_equals_its_closed_form(memory_gb):
    model = mlp()
    X, y = classification_data(n=15)
    task = wf.Task(model, weight_decay=0.01)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=4), task.state())
    G = per_example_grads(task, X, y)
    V = torch.randn(3, task.num_params, dtype=torch.float64)
    groups = _groups(task)
    # default damping: 0.1 · mean squared gradient entry of each group, plus the weight decay
    solver = DataInfSolver(memory_gb=memory_gb).fit(obj)
    lams = {g: 0.1 * float(G[:, idx].pow(2).mean()) + 0.01 for g, idx in groups.items()}
    for g in groups:
        assert solver.lambdas_[g] == pytest.approx(lams[g], rel=1e-10)
    torch.testing.assert_close(solver.solve(V), _brute(G, V, groups, lams), rtol=1e-9, atol=1e-12)
    # absolute damping
    solver = DataInfSolver(damping=0.2, memory_gb=memory_gb).fit(obj)
    lams = {g: 0.21 for g in groups}
    torch.testing.assert_close(solver.solve(V), _brute(G, V, groups, lams), rtol=1e-9, atol=1e-12)
    assert (solver.gradients_ is None) == (memory_gb == 0.0)


def test_datainf_default_damping_never_divides_by_zero():
    class Unused(nn.Module):  # the second layer's output is multiplied by 0: its gradients are all zero
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x) + 0.0 * self.b(x)

    torch.manual_seed(0)
    task = wf.Task(Unused().double())
    X, y = classification_data(n=6, d_in=3, classes=2)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=6), task.state())
    solver = DataInfSolver().fit(obj)
    assert solver.lambdas_["b"] > 0
    out = solver.solve(torch.randn(2, task.num_params, dtype=torch.float64))
    assert torch.isfinite(out).all()
    with pytest.raises(WherefromError, match="damping"):
        DataInfSolver(damping=0.0).fit(obj)
    # and through the attributor
    inf = wf.InfluenceFunction(task, solver="datainf", damping=None).fit((X, y))
    assert torch.isfinite(inf.score((X, y))).all()
