"""Warnings point at the user's line and come once per cause; TRAK says what it uses and which models it ensembles;
RPS self-influence ranks mislabelled points first."""

import warnings

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.eval.metrics import noisy_label_auc


def _setup(n=20, dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 5), nn.Tanh()] + ([nn.Dropout(0.1)] if dropout else []) + [nn.Linear(5, 3)]
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_warning_points_at_the_user_line_and_comes_once_per_cause():
    model, X, y = _setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        att = wf.InfluenceFunction(wf.Task(model), solver="explicit", damping=0.0, progress=False).fit((X, y))
        att.score((X, y))
        att.score((X[:3], y[:3]))
        att.top_k((X, y), k=2)
    ours = [w for w in caught if "not positive definite" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert ours[0].filename == __file__


def test_train_mode_warning_once_per_task_at_the_user_line():
    model, X, y = _setup(dropout=True)
    task = wf.Task(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        att = wf.GradDot(task, progress=False).fit((X, y))
        att.score((X, y))
        wf.GradCos(task, progress=False).fit((X, y)).score((X, y))
    ours = [w for w in caught if "training mode" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__
    assert model.training  # the mode is restored


def _trained_copies(model, X, y, k):
    """``k`` models trained from different seeds (independently trained members)."""
    states = []
    for s in range(k):
        torch.manual_seed(10 + s)
        m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(m(X), y).backward()
            opt.step()
        states.append(m.state_dict())
    return states


def test_trak_models_and_checkpoints_and_default():
    model, X, y = _setup(n=40)
    states = _trained_copies(model, X, y, 2)
    task = wf.Task(model, checkpoints=states)
    a = wf.TRAK(task, proj_dim=4, models=states, progress=False)
    b = wf.TRAK(task, proj_dim=4, checkpoints=states, progress=False)
    assert (a.ensemble_kind, b.ensemble_kind, a.num_models) == ("models", "checkpoints", 2)
    torch.testing.assert_close(a.fit((X, y)).score((X[:3], y[:3])), b.fit((X, y)).score((X[:3], y[:3])))
    with pytest.warns(UserWarning, match="final model only") as rec:
        c = wf.TRAK(task, proj_dim=4, progress=False)
    assert rec[0].filename == __file__ and c.ensemble_kind == "final" and c.num_models == 1
    final = wf.TRAK(task, proj_dim=4, models=states[-1:], progress=False).fit((X, y)).score((X[:3], y[:3]))
    torch.testing.assert_close(c.fit((X, y)).score((X[:3], y[:3])), final)


def test_trak_warns_on_a_custom_loss_and_a_too_large_projection():
    model, X, y = _setup(n=40)
    task = wf.Task(model, loss_fn=lambda out, b: nn.functional.cross_entropy(out, b[1], reduction="none"))
    with pytest.warns(UserWarning, match="TRAK ignores the task's loss_fn"):
        wf.TRAK(task, proj_dim=4)
    with pytest.warns(UserWarning, match=r"proj_dim=30 is above min\(n_train=40, parameters=43\) / 4"):
        wf.TRAK(wf.Task(model), proj_dim=30, progress=False).fit((X, y))


def test_rps_self_influence_ranks_flipped_labels_first():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 4, generator=g)
    y = torch.arange(90) % 3
    X = centres[y] + 0.5 * torch.randn(90, 4, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X.double()), y).backward()
        opt.step()
    flipped = torch.zeros(90, dtype=torch.bool)
    flipped[::9] = True
    noisy = torch.where(flipped, (y + 1) % 3, y)
    for labels in ("model", "true"):
        si = wf.RepresenterPoints(wf.Task(model), labels=labels).fit((X.double(), noisy)).self_influence()
        assert (si >= 0).all()
        assert noisy_label_auc(si, flipped) > 0.95, labels
