"""KNN-Shapley equals brute-force Shapley values (enumerating every subset) on tiny sets."""

import itertools
import math

import pytest
import torch

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.methods.knn_shapley import knn_shapley_values


def _utility(subset, dist, y_train, y_test, K):
    if not subset:
        return 0.0
    nearest = sorted(subset, key=lambda i: (dist[i], i))[:K]  # ties: lower index nearer
    return sum(float(y_train[i] == y_test) for i in nearest) / K


def _brute_shapley(dist, y_train, y_test, K):
    n = len(dist)
    values = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        v = 0.0
        for size in range(n):
            w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for S in itertools.combinations(others, size):
                v += w * (_utility([*S, i], dist, y_train, y_test, K) - _utility(list(S), dist, y_train, y_test, K))
        values.append(v)
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("n,K", [(7, 3), (6, 1), (5, 5), (8, 2)])
def test_knn_shapley_equals_brute_force(n, K):
    g = torch.Generator().manual_seed(n * 10 + K)
    Xtr = torch.randn(n, 2, generator=g, dtype=torch.float64)
    ytr = torch.randint(0, 2, (n,), generator=g)
    Xte = torch.randn(3, 2, generator=g, dtype=torch.float64)
    yte = torch.randint(0, 2, (3,), generator=g)
    scores = wf.KNNShapley(k=K).fit((Xtr, ytr)).score((Xte, yte))
    assert scores.shape == (n, 3)  # [n_train, n_test]
    for j in range(3):
        dist = torch.cdist(Xte[j:j + 1], Xtr)[0].tolist()
        expected = _brute_shapley(dist, ytr.tolist(), int(yte[j]), K)
        torch.testing.assert_close(scores[:, j], expected, rtol=1e-12, atol=1e-12)
        # efficiency: the values sum to the utility of the whole training set
        assert abs(float(scores[:, j].sum()) - _utility(list(range(n)), dist, ytr.tolist(), int(yte[j]), K)) < 1e-12


def test_ties_broken_by_training_index():
    dist = torch.tensor([[1.0, 1.0, 0.5, 1.0, 2.0, 1.0]], dtype=torch.float64)
    y_train = torch.tensor([0, 1, 1, 0, 1, 0])
    got = knn_shapley_values(dist, y_train, torch.tensor([1]), 2)[0]
    expected = _brute_shapley(dist[0].tolist(), y_train.tolist(), 1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_features_fn_and_errors():
    Xtr, ytr = torch.randn(10, 1, 3, 3), torch.randint(0, 3, (10,))
    Xte, yte = torch.randn(4, 1, 3, 3), torch.randint(0, 3, (4,))
    a = wf.KNNShapley(k=3).fit((Xtr, ytr)).score((Xte, yte))  # images flattened per example
    b = wf.KNNShapley(lambda batch: batch[0].reshape(len(batch[0]), -1) * 2.0, k=3).fit((Xtr, ytr)).score((Xte, yte))
    torch.testing.assert_close(a, b)
    with pytest.raises(WherefromError, match="positive integer"):
        wf.KNNShapley(k=0)
    with pytest.raises(WherefromError, match="not fitted"):
        wf.KNNShapley().score((Xte, yte))
