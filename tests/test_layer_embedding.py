"""``nn.Embedding`` captured from ids: the same gradients, projections and factors as explicit one-hot inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from wherefrom.layers import IndexedIO, LayerIO, LayerSet


def test_indexed_capture_equals_one_hot_inputs_and_single_example_autograd():
    torch.manual_seed(0)
    emb = nn.Embedding(7, 3, padding_idx=2).double()
    model = nn.Sequential(emb, nn.Tanh(), nn.Flatten(), nn.Linear(12, 2).double())
    x = torch.tensor([[1, 2, 2, 6], [3, 3, 0, 2], [5, 4, 1, 1]])
    y = torch.tensor([0, 1, 1])
    task = wf.Task(model)
    layers = LayerSet(task)
    assert type(layers.layers["0"]).__name__ == "IndexedEmbeddingLayer"
    io = layers.capture(task.state(None), (x, y))["0"]
    assert isinstance(io, IndexedIO)
    # explicit one-hot inputs (zero at padding_idx), built here independently
    a = F.one_hot(x, 7).double() * (x != 2).unsqueeze(-1).double()
    dense = LayerIO("0", a, io.delta, False, True)
    torch.testing.assert_close(io.gradients(), dense.gradients())
    torch.testing.assert_close(io.a, a)
    P = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(io.project_inputs(P), a @ P.T)
    drop = torch.zeros(3, 4, dtype=torch.bool)
    drop[0, 3] = drop[2, 0] = True
    torch.testing.assert_close(io.without_positions(drop).project_inputs(P),
                               (a * (~drop).unsqueeze(-1).double()) @ P.T)
    # per-example weight gradients against one backward pass per example
    flat = layers.flat({"0": io})[:, task.param_slices()["0.weight"]]
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i: i + 1]), y[i: i + 1]).backward()
        torch.testing.assert_close(flat[i], emb.weight.grad.reshape(-1))
