"""Gauss-Newton / Fisher curvature options of TrainingObjective against brute-force dense matrices."""

import pytest
import torch
from torch.func import hessian

import wherefrom as wf
from curvature_refs import classification_data, dense_ggn, mlp, per_example_grads
from wherefrom.curvature import TrainingObjective
from wherefrom.errors import WherefromError


def _setup(wd=0.1):
    model = mlp()
    X, y = classification_data()
    task = wf.Task(model, weight_decay=wd)
    loader = wf.data.as_loader((X, y), batch_size=7)  # uneven batches on purpose
    return task, loader, X, y


def test_ggn_equals_sum_of_jacobian_products():
    task, loader, X, y = _setup()
    obj = TrainingObjective(task, loader, task.state(), curvature="ggn")
    torch.testing.assert_close(obj.dense(), dense_ggn(task, X, y), rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(obj.dense()).min()) >= task.weight_decay - 1e-10  # PSD + wd


def test_hessian_option_is_the_hessian():
    task, loader, X, y = _setup()
    state = task.state()
    theta = task.flat_params(state)
    H = hessian(lambda t: task.per_example(task.loss_fn, t, state, (X, y)).mean() + task.weight_decay / 2 * t @ t)(
        theta)
    torch.testing.assert_close(TrainingObjective(task, loader, state).dense(), H, rtol=1e-10, atol=1e-12)


def test_empirical_fisher_is_mean_outer_product_of_gradients():
    task, loader, X, y = _setup()
    G = per_example_grads(task, X, y)
    ref = G.T @ G / len(X) + task.weight_decay * torch.eye(G.shape[1], dtype=G.dtype)
    obj = TrainingObjective(task, loader, task.state(), curvature="empirical_fisher")
    torch.testing.assert_close(obj.dense(), ref, rtol=1e-10, atol=1e-12)


def test_true_fisher_uses_sampled_labels_and_is_unbiased_for_the_ggn():
    task, loader, X, y = _setup(wd=0.0)
    obj = TrainingObjective(task, loader, task.state(), curvature="fisher", fisher_seed=3)
    labels = obj.sampled_labels()
    assert labels.shape == (len(X),)
    G = per_example_grads(task, X, labels)
    torch.testing.assert_close(obj.dense(), G.T @ G / len(X), rtol=1e-10, atol=1e-12)
    # minibatch products use the same sampled labels
    idx = torch.tensor([3, 5, 11])
    V = torch.randn(2, task.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.minibatch_hvp(V, idx), V @ (G[idx].T @ G[idx]) / 3)
    # the expectation over labels of the Fisher is the GGN for softmax cross-entropy
    state = task.state()
    probs = torch.softmax(task.outputs(task.flat_params(state), state, (X, y)), -1).detach()
    F = sum(probs[:, c, None, None] * torch.einsum("np,nq->npq", per_example_grads(task, X, torch.full_like(y, c)),
                                                   per_example_grads(task, X, torch.full_like(y, c)))
            for c in range(3)).sum(0) / len(X)
    torch.testing.assert_close(F, dense_ggn(task, X, y), rtol=1e-9, atol=1e-12)


def test_unknown_curvature_is_a_clear_error():
    task, loader, _, _ = _setup()
    with pytest.raises(WherefromError, match="Unknown curvature"):
        TrainingObjective(task, loader, task.state(), curvature="newton")
