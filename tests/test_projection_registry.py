"""The projection family is registered under the bench names and builds from a MethodContext."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.registry import MethodContext, make_method, method_names

NAMES = ["trak", "trak-1", "trak-10", "trak-50", "logra", "logra-kfac", "rps", "knn-shapley", "tracin-proj",
         "grad-dot-proj", "if-proj"]


def _ctx(n_models=2, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    ensemble = []
    for s in range(n_models):
        torch.manual_seed(s + 1)
        ensemble.append({k: v.clone() for k, v in nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
                         .state_dict().items()})
    task = wf.Task(model)
    traj = [*ensemble[:1], model.state_dict()]
    return MethodContext(task, trajectory=traj, learning_rates=[0.1, 0.1], ensemble=ensemble,
                         options=options, seed=3)


def test_names_registered():
    assert set(NAMES) <= set(method_names())


@pytest.mark.parametrize("name", ["trak", "trak-1", "logra", "logra-kfac", "rps", "knn-shapley", "tracin-proj",
                                  "grad-dot-proj", "if-proj"])
def test_methods_build_and_score(name):
    ctx = _ctx()
    if name.startswith(("trak", "tracin", "grad-dot", "if-proj")):
        ctx.options = {"proj_dim": 8}
    if name.startswith("logra"):
        ctx.options = {"rank": 2}
    if name == "rps":
        ctx.options = {"max_iter": 50}
    train = (torch.randn(25, 4), torch.randint(0, 3, (25,)))
    test = (torch.randn(5, 4), torch.randint(0, 3, (5,)))
    scores = make_method(name, ctx).fit(train).score(test)
    assert scores.shape == (25, 5) and torch.isfinite(scores).all()


def test_trak_m_needs_enough_models():
    with pytest.raises(WherefromError, match="trak-10 needs 10"):
        make_method("trak-10", _ctx(n_models=3))
    with pytest.raises(WherefromError, match="ensemble"):
        make_method("trak-1", _ctx(n_models=0))
    trak = make_method("trak", _ctx(n_models=3, num_models=2))
    assert len(trak.checkpoints) == 2
