"""The scalable-curvature methods are registered and run with their defaults."""

import pytest
import torch

import wherefrom as wf
from curvature_refs import classification_data, mlp
from wherefrom.registry import MethodContext, make_method, method_names


@pytest.mark.parametrize("name", ["if-arnoldi", "if-kfac", "if-ekfac", "if-datainf", "relatif"])
def test_registered_curvature_methods_score(name):
    assert name in method_names()
    X, y = classification_data(n=16)
    task = wf.Task(mlp())
    method = make_method(name, MethodContext(task=task, options={"batch_size": 8}))
    scores = method.fit((X, y)).score((X[:3], y[:3]))
    assert scores.shape == (16, 3) and torch.isfinite(scores).all()
    # a training point is, on average, a proponent of itself
    assert float(torch.diagonal(scores[:3]).mean()) > 0


def test_relative_damping_only_where_a_solver_defines_it():
    task = wf.Task(mlp())
    for name in ("kfac", "ekfac", "datainf"):
        wf.InfluenceFunction(task, solver=name, damping=None)
    for name in ("explicit", "cg", "lissa", "arnoldi"):
        with pytest.raises(wf.WherefromError, match="no relative damping"):
            wf.InfluenceFunction(task, solver=name, damping=None)
