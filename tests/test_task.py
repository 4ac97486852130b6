"""Task: parameter selection, checkpoints, dtypes, eval mode, stores."""

import copy
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wherefrom as wf
from wherefrom.gradients import collect_gradients


def _data(n=30, m=7, d=5, c=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, c, (n,), generator=g)
    Xt, yt = torch.randn(m, d, generator=g, dtype=dtype), torch.randint(0, c, (m,), generator=g)
    return (X, y), (Xt, yt)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_last_layer_params_equal_frozen_model():
    train, test = _data()
    model = _mlp()
    frozen = copy.deepcopy(model)
    for p in frozen[0].parameters():
        p.requires_grad_(False)
    by_name = wf.Task(model, params=["2"], weight_decay=0.1)
    by_freeze = wf.Task(frozen, weight_decay=0.1)
    assert by_name.param_names == by_freeze.param_names == ["2.weight", "2.bias"]
    for solver in ("explicit", "cg"):
        a = wf.InfluenceFunction(by_name, solver=solver, damping=0.01).fit(train).score(test)
        b = wf.InfluenceFunction(by_freeze, solver=solver, damping=0.01).fit(train).score(test)
        torch.testing.assert_close(a, b)
    # and it equals the last-layer block of the full-model gradients
    full = collect_gradients(wf.Task(model), wf.data.as_loader(train), wf.Task(model).state())
    last = collect_gradients(by_name, wf.data.as_loader(train), by_name.state())
    torch.testing.assert_close(last, full[:, -last.shape[1]:])


def test_param_names_and_prefixes():
    model = _mlp()
    assert wf.Task(model, params="2.bias").param_names == ["2.bias"]
    assert wf.Task(model, params=["2.bias", "0"]).param_names == ["0.weight", "0.bias", "2.bias"]
    with pytest.raises(wf.WherefromError, match="matches no parameter"):
        wf.Task(model, params=["fc9"])


def test_float32_model_matches_float64():
    train, test = _data()
    model64 = _mlp()
    model32 = copy.deepcopy(model64).float()
    s64 = wf.InfluenceFunction(wf.Task(model64, weight_decay=0.1), damping=0.01).fit(train).score(test)
    train32 = tuple(t.float() if t.is_floating_point() else t for t in train)
    s32 = wf.InfluenceFunction(wf.Task(model32, weight_decay=0.1), damping=0.01).fit(train32).score(test)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=2e-3, atol=1e-5)


def test_checkpoint_state_is_used():
    train, test = _data()
    model = _mlp()
    other = _mlp()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(2.0)
    via_checkpoint = wf.GradDot(wf.Task(model, checkpoints=[other.state_dict()])).fit(train).score(test)
    direct = wf.GradDot(wf.Task(other)).fit(train).score(test)
    torch.testing.assert_close(via_checkpoint, direct)


def test_eval_mode_warning_and_restore():
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    model.train()
    train, test = _data()
    with pytest.warns(UserWarning, match="training mode"):
        scores = wf.GradDot(wf.Task(model)).fit(train).score(test)
    assert model.training  # restored
    model.eval()
    torch.testing.assert_close(wf.GradDot(wf.Task(model)).fit(train).score(test), scores)  # dropout was off


@pytest.mark.parametrize("memory_gb,use_cache", [(0.0, False), (0.0, True)])
def test_streaming_stores_match_memory(tmp_path, memory_gb, use_cache):
    train, test = _data()
    model = _mlp()
    ref = wf.InfluenceFunction(wf.Task(model), damping=0.1).fit(train)
    cache = str(tmp_path / "cache") if use_cache else None
    streamed = wf.InfluenceFunction(wf.Task(model), damping=0.1, memory_gb=memory_gb, cache_dir=cache,
                                    batch_size=8).fit(train)
    torch.testing.assert_close(streamed.score(test), ref.score(test))
    torch.testing.assert_close(streamed.self_influence(), ref.self_influence())
    if use_cache:
        path = os.path.join(cache, "train_features_0.npy")
        stamp = os.path.getmtime(path)
        again = wf.InfluenceFunction(wf.Task(model), damping=0.1, memory_gb=0.0, cache_dir=cache).fit(train)
        assert os.path.getmtime(path) == stamp  # reused, not recomputed
        torch.testing.assert_close(again.score(test), ref.score(test))


def test_dataloader_input_and_dataset_input_agree():
    train, test = _data()
    model = _mlp()
    a = wf.GradDot(wf.Task(model)).fit(DataLoader(TensorDataset(*train), batch_size=4)).score(test)
    b = wf.GradDot(wf.Task(model)).fit(TensorDataset(*train)).score(TensorDataset(*test))
    torch.testing.assert_close(a, b)
