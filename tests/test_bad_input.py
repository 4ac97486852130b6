"""The next ring of user mistakes: each raises its documented error type naming the culprit, before any heavy work;
the validated good path gives the same numbers as a brute-force computation."""

import warnings

import pytest
import torch
from torch import nn

import wherefrom as wf


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _data(n=20):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _fit(method="graddot", X=None, y=None, **task_kw):
    X0, y0 = _data()
    X = X0 if X is None else X
    y = y0 if y is None else y
    task = wf.Task(_model(), **task_kw)
    if method == "ekfac":
        return wf.InfluenceFunction(task, solver="ekfac", batch_size=8).fit((X, y))
    if method == "trak":
        return wf.TRAK(task, proj_dim=4, batch_size=8).fit((X, y))
    return wf.GradDot(task, batch_size=8).fit((X, y))


def _fitted():
    return _fit()


def _with_nan(X):
    X = X.clone()
    X[7, 2] = float("nan")
    return X


def _labels_with(y, index, value):
    y = y.clone()
    y[index] = value
    return y


def _frozen():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _on_meta():
    model = _model()
    model[2].to("meta")
    return model


X, Y = _data()

CASES = {
    # name: (action, error type, culprit regex)
    "empty training set": (lambda: _fit(X=X[:0], y=Y[:0]), wf.EmptyDataError, "training data has no examples"),
    "empty training set, EK-FAC": (lambda: _fit("ekfac", X[:0], Y[:0]), wf.EmptyDataError, "training"),
    "empty training set, TRAK": (lambda: _fit("trak", X[:0], Y[:0]), wf.EmptyDataError, "training"),
    "empty test set": (lambda: _fitted().score((X[:0], Y[:0])), wf.EmptyDataError, "test data has no examples"),
    "NaN input, EK-FAC": (lambda: _fit("ekfac", _with_nan(X)), wf.NonFiniteGradientError, r"examples \[7\]"),
    "uint8 inputs into a float model": (lambda: _fit(X=(X * 10).abs().to(torch.uint8)), wf.InputDtypeError,
                                        r"dtype uint8.*float32.*X\.float\(\) / 255"),
    "label out of range, later batch": (lambda: _fit(y=_labels_with(Y, 13, 10)), wf.LabelError,
                                        r"examples \[13\] are \[10\].*3 output classes"),
    "negative label": (lambda: _fit(y=_labels_with(Y, 2, -1)), wf.LabelError, r"examples \[2\] are \[-1\]"),
    "fractional label": (lambda: _fit(y=_labels_with(Y.double(), 4, 1.5)), wf.LabelError,
                         r"examples \[4\] are not whole numbers"),
    "test inputs of another shape": (lambda: _fitted().score((torch.randn(3, 6), Y[:3])), wf.InputShapeError,
                                     r"\{'inputs': \(6,\)\}.*\{'inputs': \(4,\)\}.*Linear\(4 → 5\)"),
    "training inputs of a wrong shape": (lambda: _fit(X=torch.randn(20, 7)), wf.InputMismatchError,
                                         r"shape, dtype.*\(8, 7\).*expects inputs \[B, \.\.\., 4\]"),
    "top_k with k > n_train": (lambda: _fitted().top_k((X[:2], Y[:2]), k=21), wf.ArgumentError,
                               r"k=21.*20 training examples"),
    "top_k with k = 0": (lambda: _fitted().top_k((X[:2], Y[:2]), k=0), wf.ArgumentError, "at least 1"),
    "wf.top_k with k > n_train": (lambda: wf.top_k(torch.randn(5, 2), k=6), wf.ArgumentError, r"k=6.*5 training"),
    "wf.top_k of a non-matrix": (lambda: wf.top_k(torch.randn(2, 2, 2), k=1), wf.ArgumentError, r"\(2, 2, 2\)"),
    "missing checkpoint path at Task(...)": (lambda: wf.Task(_model(), checkpoints=["/no/such/ckpt.pt"]),
                                             wf.CheckpointNotFoundError, r"checkpoints\[0\] = '/no/such/ckpt\.pt'"),
    "no trainable parameters": (lambda: wf.Task(_frozen()), wf.ParameterSelectionError, "requires_grad=False"),
    "params=[]": (lambda: wf.Task(_model(), params=[]), wf.ParameterSelectionError, r"params=\[\] selects no"),
    "params naming nothing": (lambda: wf.Task(_model(), params=["fc9"]), wf.ParameterSelectionError, "'fc9'"),
    "parameters on the meta device": (lambda: wf.Task(_on_meta()), wf.DeviceError, r"\['2\.weight', '2\.bias'\]"),
    "target not depending on the parameters": (
        lambda: wf.GradDot(wf.Task(_model(), target_fn=lambda out, b: torch.zeros(out.shape[0]))).fit((X, Y))
        .score((X, Y)), wf.DisconnectedFunctionError, "target function's values do not depend"),
    "TRAK on a regression loss": (lambda: wf.TRAK(wf.Task(_model(), loss_fn=wf.targets.mean_squared_error)),
                                  wf.WherefromError, "mean_squared_error"),
    "TRAK with models= and checkpoints=": (
        lambda: wf.TRAK(wf.Task(_model()), models=[_model().state_dict()], checkpoints=[_model().state_dict()]),
        wf.WherefromError, "not both"),
    "KNN-Shapley self-influence": (lambda: wf.KNNShapley(k=3).fit((X, Y)).self_influence(), wf.NotApplicableError,
                                   "no self-influence"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_its_error_naming_the_culprit(name):
    action, error, culprit = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=culprit) as info:
            action()
    assert isinstance(info.value, wf.WherefromError)


def test_errors_are_chained_to_the_torch_error():
    with pytest.raises(wf.InputDtypeError) as info:
        _fit(X=(X * 10).abs().to(torch.uint8))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_good_path_numbers_equal_brute_force():
    """Validation changes nothing: Grad-Dot equals per-example autograd gradients dotted, and top_k of the
    computed matrix equals the streamed top_k."""
    model = _model()
    att = wf.GradDot(wf.Task(model), batch_size=8, progress=False).fit((X, Y))
    scores = att.score((X[:5], Y[:5]))

    def grad(i):
        model.zero_grad()
        nn.functional.cross_entropy(model(X[i:i + 1]), Y[i:i + 1]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    G = torch.stack([grad(i) for i in range(20)])
    torch.testing.assert_close(scores, G @ G[:5].T, rtol=1e-5, atol=1e-6)
    streamed = att.top_k((X[:5], Y[:5]), k=4)
    for reused in (att.top_k(scores=scores, k=4), wf.top_k(scores, 4)):
        assert torch.equal(reused.helpful_indices, streamed.helpful_indices)
        assert torch.equal(reused.harmful_indices, streamed.harmful_indices)
        torch.testing.assert_close(reused.helpful_values, streamed.helpful_values)
    assert torch.equal(streamed.helpful_indices, scores.topk(4, dim=0).indices.T)


def test_ignore_index_labels_are_accepted_by_the_cross_entropy():
    y = _labels_with(Y, 3, -100)  # F.cross_entropy's ignore_index: contributes a zero loss
    scores = _fit(y=y).score((X[:2], Y[:2]))
    assert torch.isfinite(scores).all() and (scores[3] == 0).all()


def test_test_side_errors_name_the_test_data():
    att = _fitted()
    with pytest.raises(wf.LabelError, match=r"Labels of test examples \[1\] are \[7\]"):
        att.score((X[:3], _labels_with(Y[:3], 1, 7)))
    with pytest.raises(wf.WherefromError, match=r"reads? labels from batch\[1\]"):
        att.score((X[:3],))
