"""Ground truth on tiny settings: correctness against independent retraining, caching, resume, sign convention."""

import os

import numpy as np
import pytest
import torch

import wherefrom as wf
from wherefrom.bench import Workspace, get_setting
from wherefrom.bench import lr as L
from wherefrom.bench import train as T
from wherefrom.errors import UnknownNameError
from wherefrom.eval import lds, loo_correlation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    s = get_setting("digits-lr", n_train=80, n_test=12)
    return Workspace(s, cache_dir=str(tmp_path_factory.mktemp("cache")), workers=1, shard_size=4, progress=False)


def test_unknown_setting_lists_valid_names():
    with pytest.raises(UnknownNameError, match="mnist-lr"):
        get_setting("mnist-lrr")


def test_key_depends_on_recipe_and_data():
    s = get_setting("digits-lr")
    assert s.key() == get_setting("digits-lr").key()
    assert s.key() != get_setting("digits-lr", weight_decay=0.02).key()
    assert s.key() != get_setting("digits-lr", n_train=100).key()
    assert s.key() != get_setting("digits-lr", label_noise=0.1).key()


def test_reference_is_the_exact_optimum(tiny):
    ref = tiny.reference()
    train, _ = tiny.datasets()
    X, y = train.tensors
    n = len(y)
    ones = torch.ones(1, n, dtype=torch.float64)
    _, G = L.objective_and_grad(L.augment(X), y, L.from_state(ref.state)[None], ones,
                                torch.tensor([float(n)], dtype=torch.float64), tiny.setting.recipe.weight_decay)
    assert G.norm() <= tiny.setting.recipe.tol
    assert len(ref.trajectory) == tiny.setting.recipe.epochs == len(ref.learning_rates)


def test_loo_matches_independent_retraining_and_resumes(tiny):
    idx = list(range(10))
    gt = tiny.loo(idx)
    assert gt.loss_change.shape == (10, 12)
    # independent retraining of removal 3 from the SGD start by the generic L-BFGS + solve path
    train, test = tiny.datasets()
    X, y = train.tensors
    keep = torch.ones(len(y), dtype=bool)
    keep[3] = False
    sub = torch.utils.data.TensorDataset(X[keep], y[keep])
    n = len(y)
    Xa = L.augment(X[keep])
    W0 = L.lbfgs(Xa, y[keep], tiny.setting.recipe.weight_decay, torch.zeros(65, 10, dtype=torch.float64), tol=1e-6)
    # the LOO objective keeps 1/n: (1/n) Σ_{k≠i} ℓ_k = ((n-1)/n) mean_{k≠i} ℓ_k  → equivalent to wd·n/(n−1) on the mean
    wd_eff = tiny.setting.recipe.weight_decay * n / (n - 1)
    H = L.hessian(Xa, W0, wd_eff)
    W, _ = L.solve(Xa, y[keep], torch.ones(1, n - 1, dtype=torch.float64), torch.tensor([n - 1.0],
                   dtype=torch.float64), wd_eff, W0, torch.cholesky_inverse(torch.linalg.cholesky(H)), tol=1e-12)
    out = T.lr_outputs(W, test)
    base = tiny.reference_outputs()
    np.testing.assert_allclose(gt.loss_change[3], (out.loss - base.loss).numpy()[0], atol=1e-8)
    assert np.abs(gt.loss_change[3]).max() > 1e-4
    del sub
    # resume: delete one shard, the others are not recomputed
    folder = next(p for p in os.listdir(tiny.root) if p.startswith("loo-"))
    shards = sorted(os.listdir(os.path.join(tiny.root, folder)))
    shards = [os.path.join(tiny.root, folder, s) for s in shards if s.startswith("shard-")]
    assert len(shards) == 3
    before = {p: os.path.getmtime(p) for p in shards}
    os.remove(shards[1])
    gt2 = tiny.loo(idx)
    np.testing.assert_allclose(gt2.loss_change, gt.loss_change, atol=1e-12)
    assert os.path.getmtime(shards[0]) == before[shards[0]] and os.path.exists(shards[1])


def test_influence_agrees_with_ground_truth_sign(tiny):
    """IF-explicit (positive = helpful) correlates positively with LOO loss increase and with LDS goodness."""
    train, test = tiny.datasets()
    task = tiny.setting.make_task(tiny.reference().state)
    scores = wf.InfluenceFunction(task, damping=0.0, progress=False).fit(train).score(test)
    gt = tiny.loo(list(range(10)))
    assert loo_correlation(scores, gt.loss_change, gt.indices)["pearson"].value > 0.95
    lgt = tiny.lds(n_subsets=12, fraction=0.5)
    assert lgt.masks.sum(1).tolist() == [40] * 12
    assert lds(scores, lgt.masks, lgt.goodness()).value > 0.5
    # subsets are reproducible
    assert tiny.lds_subsets(3) == tiny.lds_subsets(3)


def test_parallel_workers_give_the_same_shards(tmp_path):
    s = get_setting("digits-lr", n_train=40, n_test=5)
    one = Workspace(s, cache_dir=str(tmp_path / "a"), workers=1, shard_size=3, progress=False).loo(range(6))
    two = Workspace(s, cache_dir=str(tmp_path / "b"), workers=2, shard_size=3, progress=False).loo(range(6))
    np.testing.assert_allclose(one.loss_change, two.loss_change, atol=1e-10)


def test_mlp_setting_trains_deterministically(tmp_path):
    s = get_setting("mnist-mlp", n_train=64, n_test=8, epochs=1, hidden=16, dropout=0.1)
    ws = Workspace(s, cache_dir=str(tmp_path), workers=1, shard_size=2, progress=False)
    a = T.train_sgd(s, ws.datasets()[0], seed=3).state
    b = T.train_sgd(s, ws.datasets()[0], seed=3).state
    assert all(torch.equal(a[k], b[k]) for k in a)
    gt = ws.lds(n_subsets=3)
    assert gt.loss.shape == (3, 8) and np.isfinite(gt.loss).all()
    assert len(ws.ensemble(2)) == 2


def test_label_noise_is_seeded(tiny):
    s = tiny.setting.replace(label_noise=0.1)
    train, _ = s.datasets()
    clean, _ = tiny.setting.datasets()
    flipped = s.flipped_mask()
    assert flipped.sum() == 8
    assert (train.tensors[1].numpy()[flipped] != clean.tensors[1].numpy()[flipped]).all()
    assert (train.tensors[1].numpy()[~flipped] == clean.tensors[1].numpy()[~flipped]).all()
