"""Metrics against slow obvious references (scipy, sklearn, loops) and hand-worked cases."""

import numpy as np
import pytest
from scipy import stats

from wherefrom.errors import WherefromError
from wherefrom.eval import (
    brittleness,
    flip_labels,
    lds,
    loo_correlation,
    noisy_label_auc,
    pearson_columns,
    spearman_columns,
)


def test_pearson_spearman_match_scipy_on_random_columns():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 7))
    b = a * rng.normal(size=7) + rng.normal(size=(30, 7))
    b[:5] = np.round(b[:5])  # some ties
    a[:, 3] = np.round(a[:, 3])
    p, s = pearson_columns(a, b), spearman_columns(a, b)
    for j in range(7):
        assert p[j] == pytest.approx(stats.pearsonr(a[:, j], b[:, j])[0], abs=1e-12)
        assert s[j] == pytest.approx(stats.spearmanr(a[:, j], b[:, j])[0], abs=1e-12)


def test_constant_column_is_nan_and_counted():
    a = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    b = np.array([[1.0, 0.1], [2.0, 0.1], [4.0, 0.2]])
    out = loo_correlation(a, b)
    assert np.isnan(out["pearson"].per_test[1])
    assert out["pearson"].n_dropped == 1
    assert out["pearson"].value == pytest.approx(stats.pearsonr([1, 2, 3], [1, 2, 4])[0])


def test_loo_hand_worked():
    # Two test points; scores rows for train 0..3, ground truth for removed rows [3, 1, 0].
    scores = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 5.0], [3.0, 2.0]])
    gt = np.array([[30.0, 3.0], [20.0, 1.0], [10.0, 5.0]])  # perfectly aligned with column 0, reversed order
    out = loo_correlation(scores, gt, indices=[3, 1, 0])
    # column 0: (3,2,1) vs (30,20,10) → 1. column 1: (2,1,0) vs (3,1,5) → pearson by hand:
    # x−x̄ = (1,0,−1), y−ȳ = (0,−2,2) → Σ = −2; ‖x‖=√2, ‖y‖=√8 → −2/4 = −0.5
    assert out["pearson"].per_test == pytest.approx([1.0, -0.5])
    assert out["spearman"].per_test == pytest.approx([1.0, -0.5])
    assert out["pearson"].value == pytest.approx(0.25)


def test_loo_rejects_misaligned_and_transposed():
    with pytest.raises(WherefromError, match="indices"):
        loo_correlation(np.zeros((5, 2)), np.zeros((3, 2)))
    with pytest.raises(WherefromError, match="transpose"):
        loo_correlation(np.zeros((2, 5)), np.zeros((5, 2)))
    with pytest.raises(WherefromError, match="NaN"):
        loo_correlation(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_lds_matches_loop_reference():
    rng = np.random.default_rng(1)
    n, m, M = 20, 4, 15
    scores = rng.normal(size=(n, m))
    subsets = [rng.choice(n, size=10, replace=False) for _ in range(M)]
    gt = rng.normal(size=(M, m))
    ref = []
    for j in range(m):
        pred = [scores[idx, j].sum() for idx in subsets]
        ref.append(stats.spearmanr(pred, gt[:, j])[0])
    out = lds(scores, np.array(subsets), gt)
    assert out.per_test == pytest.approx(ref, abs=1e-12)
    assert out.value == pytest.approx(np.mean(ref))
    lo, hi = out.ci
    assert lo < out.value < hi


def test_lds_hand_worked():
    # n=3 train, 1 test; subsets {0,1}, {1,2}, {0,2}: sums 3, 5, 4 with scores (1,2,3).
    scores = np.array([[1.0], [2.0], [3.0]])
    masks = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=bool)
    assert lds(scores, masks, np.array([[0.1], [0.3], [0.2]])).value == pytest.approx(1.0)
    assert lds(scores, masks, np.array([[0.3], [0.1], [0.2]])).value == pytest.approx(-1.0)
    assert lds(scores, masks, np.array([[0.1], [0.2], [0.3]])).value == pytest.approx(0.5)


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=200), 1)
    y = rng.random(200) < 0.2
    assert noisy_label_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # hand-worked: positives score 3, 1; negatives 2, 0 → pairs (3>2,3>0,1<2,1>0) = 3/4
    assert noisy_label_auc([3, 2, 1, 0], [True, False, True, False]) == pytest.approx(0.75)


def test_flip_labels_is_seeded_and_changes_class():
    y = np.arange(100) % 10
    a, fa = flip_labels(y, 0.1, 10, seed=3)
    b, fb = flip_labels(y, 0.1, 10, seed=3)
    assert (a == b).all() and (fa == fb).all()
    assert fa.sum() == 10
    assert (a[fa] != y[fa]).all() and (a[~fa] == y[~fa]).all()
    assert ((a >= 0) & (a < 10)).all()


def test_brittleness_against_loop_reference():
    rng = np.random.default_rng(4)
    n, m = 12, 3
    scores = rng.normal(size=(n, m))
    labels = np.array([0, 1, 0])
    # A fake "retraining": the prediction flips when the removed set's score mass exceeds a threshold.
    def predict(removed, tests):
        out = []
        for r, t in zip(removed, tests):
            mass = scores[r, t].sum() if len(r) else 0.0
            out.append(1 - labels[t] if mass > 2.0 else labels[t])
        return np.array(out)

    ks = [0, 2, 4, 6]
    res = brittleness(scores, [0, 1, 2], labels, predict, ks, random_baseline=True)
    for p, t in enumerate([0, 1, 2]):
        order = sorted(range(n), key=lambda i: -scores[i, t])
        expected = -1
        for k in ks:
            if sum(scores[i, t] for i in order[:k]) > 2.0:
                expected = k
                break
        assert res.min_k[p] == expected
    assert res.random_flipped.shape == (3, 4)
    assert res.fraction_flipped.shape == (4,)
