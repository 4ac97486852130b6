"""Bad input raises a clear error that says what to do."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wherefrom as wf


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    return model, TensorDataset(X, y)


def test_shuffled_loader_is_rejected():
    model, ds = _setup()
    with pytest.raises(wf.DataOrderError, match="shuffle=False"):
        wf.GradDot(wf.Task(model)).fit(DataLoader(ds, batch_size=4, shuffle=True))
    with pytest.raises(wf.DataOrderError, match="drop_last"):
        wf.GradDot(wf.Task(model)).fit(DataLoader(ds, batch_size=3, drop_last=True))


def test_scalar_loss_is_rejected():
    model, ds = _setup()
    task = wf.Task(model, loss_fn=lambda out, batch: F.cross_entropy(out, batch[1]))
    with pytest.raises(wf.LossReductionError, match="reduction='none'"):
        wf.InfluenceFunction(task, solver="cg").fit(ds)


def test_scalar_target_is_rejected():
    model, ds = _setup()
    task = wf.Task(model, target_fn=lambda out, batch: out.sum())
    att = wf.GradDot(task).fit(ds)
    with pytest.raises(wf.LossReductionError, match="one value per example"):
        att.score(ds)


def test_nan_gradients_name_the_examples():
    model, ds = _setup()
    X, y = ds.tensors
    X = X.clone()
    X[13, 2] = float("nan")
    with pytest.raises(wf.NonFiniteGradientError, match=r"examples \[13\]"):
        wf.GradDot(wf.Task(model), batch_size=8).fit((X, y))


def test_mismatched_checkpoint_is_rejected(tmp_path):
    model, ds = _setup()
    wrong = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)).state_dict()
    with pytest.raises(wf.CheckpointMismatchError, match="shape mismatches"):
        wf.GradDot(wf.Task(model, checkpoints=[wrong])).fit(ds)
    renamed = {f"layer.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(wf.CheckpointMismatchError, match="missing keys"):
        wf.Task(model).state(renamed)
    with pytest.raises(wf.CheckpointMismatchError, match="does not exist"):
        wf.Task(model).state(str(tmp_path / "nope.pt"))


def test_unknown_solver_and_unfitted_use():
    model, ds = _setup()
    with pytest.raises(wf.UnknownNameError, match="Choose one of"):
        wf.InfluenceFunction(wf.Task(model), solver="cholesky")
    with pytest.raises(wf.WherefromError, match="not fitted"):
        wf.GradDot(wf.Task(model)).score(ds)


def test_non_dataset_input_is_rejected():
    model, _ = _setup()
    with pytest.raises(wf.WherefromError, match="Dataset"):
        wf.GradDot(wf.Task(model)).fit([1, 2, 3])
