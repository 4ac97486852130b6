"""Execution options: one dataclass accepted by every method, the older keywords still work, cache keys follow the
configuration."""

import os

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.projection import RandomProjection


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    make = lambda k: (torch.randn(k, 4, generator=g, dtype=torch.float64),  # noqa: E731
                      torch.randint(0, 3, (k,), generator=g))
    return model, make(12), make(3)


def test_every_method_takes_execution_options():
    model, train, test = _problem()
    task = wf.Task(model, checkpoints=[model.state_dict()])
    ex = wf.Execution(batch_size=5, memory_gb=0.5, progress=False)
    methods = [wf.GradDot(task, execution=ex), wf.GradCos(task, execution=ex), wf.TracInCP(task, execution=ex),
               wf.InfluenceFunction(task, execution=ex), wf.RelatIF(task, execution=ex),
               wf.TRAK(task, proj_dim=4, execution=ex), wf.LoGra(task, rank=2, execution=ex),
               wf.ProjectedInfluence(task, proj_dim=4, execution=ex), wf.RepresenterPoints(task, execution=ex),
               wf.KNNShapley(k=2, execution=ex)]
    for method in methods:
        assert method.execution.batch_size == 5
        assert torch.isfinite(method.fit(train).score(test)).all()
    # the older keywords override the dataclass's fields
    old = wf.GradDot(task, execution=ex, batch_size=7, cache_dir="somewhere")
    assert old.execution.batch_size == old.batch_size == 7 and old.cache_dir == "somewhere"
    with pytest.raises(wf.WherefromError, match="batch_size"):
        wf.Execution(batch_size=0)


def test_stored_features_dtype_and_block_size():
    model, train, test = _problem()
    task = wf.Task(model)
    exact = wf.GradDot(task).fit(train).score(test)
    low = wf.GradDot(task, execution=wf.Execution(dtype=torch.float32, block_size=5)).fit(train)
    assert low._stores[0].matrix.dtype == torch.float32
    assert [start for start, _ in low._stores[0].blocks()] == [0, 5, 10]
    torch.testing.assert_close(low.score(test).double(), exact, rtol=1e-5, atol=1e-6)


def test_disk_cache_key_follows_the_configuration(tmp_path):
    model, train, _ = _problem()
    task = wf.Task(model)
    cache = str(tmp_path)
    path = os.path.join(cache, "train_features_0.npy")
    wf.GradDot(task, projection=RandomProjection(6, seed=1), memory_gb=0.0, cache_dir=cache).fit(train)
    stamp = os.path.getmtime(path)
    wf.GradDot(task, projection=RandomProjection(6, seed=1), memory_gb=0.0, cache_dir=cache).fit(train)
    assert os.path.getmtime(path) == stamp  # same configuration: reused
    other = wf.GradDot(task, projection=RandomProjection(6, seed=2), memory_gb=0.0, cache_dir=cache).fit(train)
    assert os.path.getmtime(path) != stamp  # another projection seed: recomputed, never reused by mistake
    fresh = wf.GradDot(task, projection=RandomProjection(6, seed=2)).fit(train)
    torch.testing.assert_close(torch.cat([b for _, b in other._stores[0].blocks()]), fresh._stores[0].matrix)
