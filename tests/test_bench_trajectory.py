"""Trajectory settings: batched weight-zeroed retraining equals separate runs; the recorded run; bench rows."""

import json

import numpy as np
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import wherefrom as wf
from wherefrom.bench import Workspace, get_setting
from wherefrom.bench import train as T
from wherefrom.bench.weighted import batch_order, train_weighted
from wherefrom.cli import app


def _tiny(**kw):
    return get_setting("mnist-mlp-sgd", **{"n_train": 44, "n_test": 6, "hidden": 8, "epochs": 2, "batch_size": 16,
                                           **kw})


def _separate_run(setting, train, w):
    """One plain torch.optim loop over the recipe's batches with the weighted batch-mean loss."""
    model = setting.make_model()
    r = setting.recipe
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    X, y = train.tensors
    for b in batch_order(setting, len(y)):
        opt.zero_grad()
        ((w[b] * F.cross_entropy(model(X[b]), y[b], reduction="none")).sum() / len(b)).backward()
        opt.step()
    return dict(model.named_parameters())


def test_batched_weighted_retraining_equals_separate_runs():
    s = _tiny(model="mlp-tanh")
    train, _ = s.datasets()
    n = len(train)
    W = torch.ones(3, n, dtype=torch.float64)
    W[1, 5] = 0.0  # leave one out (batches keep their size: the last one is ragged, 44 = 16 + 16 + 12)
    W[2, torch.randperm(n, generator=torch.Generator().manual_seed(0))[:20]] = 0.0
    stacked = train_weighted(s, train, W)
    reference = T.train_sgd(s, train).state  # the recipe's own loop is variant 0
    for k in range(3):
        separate = _separate_run(s, train, W[k])
        for name, value in separate.items():
            torch.testing.assert_close(stacked[name][k], value.detach(), rtol=0, atol=1e-12)
            if k == 0:
                torch.testing.assert_close(stacked[name][0], reference[name], rtol=0, atol=1e-12)


def test_trajectory_workspace_records_the_run_and_hydra_tracks_loo(tmp_path):
    s = _tiny(model="mlp-tanh", hidden=32)
    ws = Workspace(s, cache_dir=str(tmp_path), workers=1, progress=False)
    ref = ws.reference()
    traj = ws.recorded_trajectory()
    assert len(traj) == 2 * 3 and traj.optimizer == "sgd"
    torch.testing.assert_close(traj.final_theta, ws.setting.make_task(ref.state).flat_params(ref.state), rtol=0,
                               atol=0)
    loo = ws.loo()  # default: the first loo_default (100) examples, i.e. all 44 here
    assert loo.loss_change.shape == (44, 6)
    lds = ws.lds(n_subsets=3, fraction=0.99)
    assert lds.masks.sum(1).tolist() == [43, 43, 43]
    task, (train, test) = ws.setting.make_task(ref.state), ws.datasets()
    corr = {}
    for hessian in (True, False):
        scores = wf.HYDRA(task, traj, hessian=hessian).fit(train).score(test)
        corr[hessian] = np.corrcoef(scores.numpy().ravel(), loo.loss_change.ravel())[0, 1]
    # first-order agreement with the same run retrained without each example; the Hessian term matters
    assert corr[True] > 0.9 and corr[True] > corr[False]


def test_bench_reports_hydra_rows_and_lds_per_fraction(tmp_path):
    out = tmp_path / "out"
    args = ["bench", "mnist-mlp-sgd", "--n-train", "40", "--n-test", "5", "--methods", "hydra,hydra-approx,hydra-lean",
            "--metrics", "loo,lds", "--subsets", "6", "--workers", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "LDS α=0.99" in res.output and "LDS α=0.5" in res.output
    rows = {r["method"]: r for r in json.loads((out / "mnist-mlp-sgd.json").read_text())["rows"]}
    assert all(rows[m]["error"] is None for m in rows)
    assert rows["hydra-lean"]["metrics"]["lds@0.5"]["value"] == rows["hydra-approx"]["metrics"]["lds@0.5"]["value"]
    res = CliRunner().invoke(app, ["bench", "digits-lr", "--n-train", "30", "--n-test", "4", "--methods", "hydra",
                                   "--metrics", "loo", "--loo-first", "3", "--workers", "1", "--cache-dir",
                                   str(tmp_path / "cache"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "not the end of a recorded minibatch run" in res.output  # refused before work


def test_reporting_defaults_do_not_enter_the_cache_key():
    s = get_setting("mnist-mlp-sgd")
    assert "loo_default" not in s.spec() and "lds_fractions" not in s.spec()
    assert s.replace(loo_default=5, lds_fractions=(0.5,)).key() == s.key()
    assert get_setting("mnist-mlp-sgd-tanh").key() != s.key()


def test_lds_fractions_outside_zero_one_are_refused(tmp_path):
    from wherefrom.bench.runner import run_benchmark

    with np.testing.assert_raises_regex(wf.WherefromError, "kept fractions in"):
        run_benchmark(_tiny(), ["grad-dot"], ["lds"], fraction=[0.99, 1.5], cache_dir=str(tmp_path))
    res = CliRunner().invoke(app, ["bench", "mnist-mlp-sgd", "--fraction", "0.5,x", "--methods", "grad-dot"])
    assert res.exit_code == 2 and "--fraction" in res.output
