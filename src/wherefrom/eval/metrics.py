"""Vectorised evaluation metrics: LOO correlation, LDS, noisy-label AUC, brittleness.

Orientation (see ``docs/conventions.md``): ``scores`` is ``[n_train, n_test]``, ``scores[i, j] > 0`` means train
example ``i`` helped test target ``j``.

- **LOO**: ground truth ``y[r, j] = f(z'_j; θ̂_{−i_r}) − f(z'_j; θ̂)`` for a loss-like target ``f``: the increase of
  test loss ``j`` when train example ``i_r`` is removed. It correlates *positively* with helpful scores.
- **LDS**: ground truth ``y[s, j]`` is a *goodness* (``−loss`` or the margin) of the model trained on subset ``S_s``;
  the prediction is ``ĝ[s, j] = Σ_{i∈S_s} τ[i, j]``. Both increase with helpfulness.

Correlations are computed column-wise in one pass (no Python loop over test points). A column whose ground truth or
prediction is constant has an undefined correlation: it is dropped from the average and counted in ``n_dropped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from wherefrom.errors import WherefromError

ArrayLike = np.ndarray | torch.Tensor | Sequence


def _np(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise WherefromError(f"{name} contains {bad} NaN or infinite values; fix them upstream (they would "
                             "silently bias the metric).")
    return arr


@dataclass
class MetricResult:
    """A metric averaged over test points.

    Attributes:
        value: mean of ``per_test`` over the valid (non-NaN) test points; NaN if none is valid.
        per_test: ``[n_test]`` values, NaN where undefined (constant column).
        n_dropped: how many test points were dropped because their value is undefined.
        ci: ``(low, high)`` 95% normal-approximation interval of the mean over valid test points
            (``value ± 1.96·sd/√m``); it reflects test-point variability only, not ground-truth noise.
    """

    value: float
    per_test: np.ndarray
    n_dropped: int
    ci: tuple[float, float] = (math.nan, math.nan)

    @classmethod
    def from_per_test(cls, per_test: np.ndarray) -> MetricResult:
        valid = per_test[~np.isnan(per_test)]
        if valid.size == 0:
            return cls(math.nan, per_test, int(per_test.size))
        mean = float(valid.mean())
        half = 1.96 * float(valid.std(ddof=1)) / math.sqrt(valid.size) if valid.size > 1 else math.nan
        return cls(mean, per_test, int(per_test.size - valid.size), (mean - half, mean + half))

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": list(self.ci), "n_dropped": self.n_dropped,
                "n_test": int(self.per_test.size)}


def _paired_columns(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as 2-D float arrays of one shape (vectors become single columns)."""
    A, B = _np(a, "a"), _np(b, "b")
    if A.ndim == 1:
        A = A[:, None]
    if B.ndim == 1:
        B = B[:, None]
    if A.shape != B.shape:
        raise WherefromError(f"Cannot correlate arrays of shapes {A.shape} and {B.shape}: they must be equal.")
    return A, B


def pearson_columns(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pearson correlation of each column pair ``(a[:, j], b[:, j])``, ``[m]``; NaN where a column is constant.

    ``ρ_j = Σ_r (a_rj − ā_j)(b_rj − b̄_j) / √(Σ_r (a_rj − ā_j)² · Σ_r (b_rj − b̄_j)²)``.
    """
    A, B = _paired_columns(a, b)
    if A.shape[0] < 2:
        raise WherefromError(f"Correlation needs at least 2 rows, got {A.shape[0]}.")
    scale_a, scale_b = np.abs(A).max(0), np.abs(B).max(0)
    A = A - A.mean(0)
    B = B - B.mean(0)
    # A column counts as constant when its spread is at rounding level relative to its magnitude.
    sa, sb = np.sqrt((A * A).sum(0)), np.sqrt((B * B).sum(0))
    tol = 1e-12 * math.sqrt(A.shape[0])
    out = np.full(A.shape[1], np.nan)
    ok = (sa > tol * scale_a) & (sb > tol * scale_b) & (sa > 0) & (sb > 0)
    out[ok] = (A[:, ok] * B[:, ok]).sum(0) / (sa[ok] * sb[ok])
    return np.clip(out, -1.0, 1.0)


def spearman_columns(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Spearman correlation of each column pair: Pearson of the average ranks (ties share their mean rank)."""
    A, B = _paired_columns(a, b)
    return pearson_columns(stats.rankdata(A, axis=0), stats.rankdata(B, axis=0))


def _check_scores(scores: ArrayLike, n_test: int, what: str) -> np.ndarray:
    S = _np(scores, "scores")
    if S.ndim != 2:
        raise WherefromError(f"scores must be a [n_train, n_test] matrix, got shape {S.shape}.")
    if S.shape[1] != n_test:
        hint = " (did you pass the transpose? scores are [n_train, n_test])" if S.shape[0] == n_test else ""
        raise WherefromError(f"scores have {S.shape[1]} test columns but the {what} ground truth has {n_test}"
                             f"{hint}.")
    return S


def loo_correlation(
    scores: ArrayLike, ground_truth: ArrayLike, indices: ArrayLike | None = None
) -> dict[str, MetricResult]:
    """Leave-one-out correlation, Pearson and Spearman per test point, averaged over test points.

    Args:
        scores: ``[n_train, n_test]`` attribution scores (positive = helpful).
        ground_truth: ``[R, n_test]``, row ``r`` = the increase of each test *loss* when train example
            ``indices[r]`` is removed and the model retrained (``loss(θ̂_{−i}) − loss(θ̂)``; any per-column shift
            is irrelevant). For a higher-is-better target pass ``−(change of the goodness)``.
        indices: ``[R]`` the train positions whose removal ``ground_truth`` records (default ``0..R−1``, then
            ``R`` must equal ``n_train``). Rows of ``scores`` are selected by these positions.

    Returns:
        ``{"pearson": MetricResult, "spearman": MetricResult}``.
    """
    Y = _np(ground_truth, "ground_truth")
    if Y.ndim != 2:
        raise WherefromError(f"LOO ground truth must be [n_removed, n_test], got shape {Y.shape}.")
    S = _check_scores(scores, Y.shape[1], "LOO")
    if indices is None:
        if S.shape[0] != Y.shape[0]:
            raise WherefromError(f"The LOO ground truth has {Y.shape[0]} rows but scores have {S.shape[0]}; "
                                 "pass indices= (the removed train positions) to align them.")
        rows = S
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.shape[0] != Y.shape[0]:
            raise WherefromError(f"indices has {idx.shape[0]} entries but the ground truth has {Y.shape[0]} rows.")
        if idx.size and (idx.min() < 0 or idx.max() >= S.shape[0]):
            raise WherefromError(f"indices must be train positions in [0, {S.shape[0]}).")
        rows = S[idx]
    return {
        "pearson": MetricResult.from_per_test(pearson_columns(rows, Y)),
        "spearman": MetricResult.from_per_test(spearman_columns(rows, Y)),
    }


def subset_masks(subsets: ArrayLike, n_train: int) -> np.ndarray:
    """``[M, n_train]`` boolean membership masks from masks or from ``[M, k]`` index arrays (or lists)."""
    if isinstance(subsets, torch.Tensor):
        subsets = subsets.detach().cpu().numpy()
    if isinstance(subsets, np.ndarray) and subsets.dtype == bool:
        if subsets.ndim != 2 or subsets.shape[1] != n_train:
            raise WherefromError(f"Subset masks must be [M, {n_train}], got {subsets.shape}.")
        return subsets
    masks = np.zeros((len(subsets), n_train), dtype=bool)
    for s, idx in enumerate(subsets):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_train):
            raise WherefromError(f"Subset {s} holds indices outside [0, {n_train}).")
        masks[s, idx] = True
    return masks


def lds(scores: ArrayLike, subsets: ArrayLike, ground_truth: ArrayLike) -> MetricResult:
    """Linear datamodeling score: ``mean_j Spearman_s( Σ_{i∈S_s} τ[i, j], y[s, j] )``.

    Args:
        scores: ``[n_train, n_test]`` (positive = helpful).
        subsets: ``[M, n_train]`` boolean masks or ``[M, k]`` train positions of each subset ``S_s``.
        ground_truth: ``[M, n_test]`` a *goodness* (higher is better, e.g. ``−loss``) of the model retrained on
            each subset, averaged over runs.

    Returns:
        :class:`MetricResult`; columns whose ground truth is constant over subsets are dropped and counted.
    """
    Y = _np(ground_truth, "ground_truth")
    if Y.ndim != 2:
        raise WherefromError(f"LDS ground truth must be [n_subsets, n_test], got shape {Y.shape}.")
    S = _check_scores(scores, Y.shape[1], "LDS")
    masks = subset_masks(subsets, S.shape[0])
    if masks.shape[0] != Y.shape[0]:
        raise WherefromError(f"{masks.shape[0]} subsets but the ground truth has {Y.shape[0]} rows.")
    predicted = masks.astype(np.float64) @ S  # [M, n_test]
    return MetricResult.from_per_test(spearman_columns(predicted, Y))


def flip_labels(
    labels: ArrayLike, fraction: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replace the labels of ``⌊fraction·n⌋`` seeded random examples by a *different* uniformly random class.

    Returns ``(new_labels [n] int64, flipped [n] bool)``.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    if not 0.0 <= fraction <= 1.0:
        raise WherefromError(f"fraction must be in [0, 1], got {fraction}.")
    if num_classes < 2:
        raise WherefromError("Label flipping needs at least 2 classes.")
    rng = np.random.default_rng(seed)
    k = math.floor(fraction * y.size)
    idx = rng.choice(y.size, size=k, replace=False)
    new = y.copy()
    new[idx] = (y[idx] + rng.integers(1, num_classes, size=k)) % num_classes
    flipped = np.zeros(y.size, dtype=bool)
    flipped[idx] = True
    return new, flipped


def noisy_label_auc(self_influence: ArrayLike, is_flipped: ArrayLike) -> float:
    """ROC-AUC of ranking train examples by self-influence (larger = more suspicious) against ``is_flipped``.

    Computed as the Mann–Whitney statistic with average ranks, ``AUC = (Σ_{i∈flipped} rank_i − P(P+1)/2) / (P·N)``,
    which counts ties as one half (equal to ``sklearn.metrics.roc_auc_score``).
    """
    s = _np(self_influence, "self_influence").reshape(-1)
    y = np.asarray(is_flipped.cpu() if isinstance(is_flipped, torch.Tensor) else is_flipped).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise WherefromError(f"self_influence has {s.size} entries but is_flipped has {y.size}.")
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        raise WherefromError("AUC needs both flipped and clean examples.")
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - P * (P + 1) / 2.0) / (P * N))


@dataclass
class BrittlenessResult:
    """Outcome of the brittleness test.

    Attributes:
        test_indices: the test points examined.
        search_space: the removal sizes ``k`` tried, increasing.
        flipped: ``[n_points, n_k]`` whether removing the top-``k`` helpful points flipped the prediction.
        min_k: ``[n_points]`` the smallest ``k`` that flipped it, ``-1`` when none did.
        random_flipped: the same for ``k`` random removals (baseline), when requested.
    """

    test_indices: np.ndarray
    search_space: np.ndarray
    flipped: np.ndarray
    min_k: np.ndarray
    random_flipped: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def fraction_flipped(self) -> np.ndarray:
        """``[n_k]``: fraction of examined test points flipped at each ``k``."""
        return self.flipped.mean(0)

    def to_dict(self) -> dict:
        out = {"test_indices": self.test_indices.tolist(), "search_space": self.search_space.tolist(),
               "min_k": self.min_k.tolist(), "fraction_flipped": self.fraction_flipped.tolist()}
        if self.random_flipped is not None:
            out["random_fraction_flipped"] = self.random_flipped.mean(0).tolist()
        return out


def _min_k(flipped: np.ndarray, ks: np.ndarray) -> np.ndarray:
    any_flip = flipped.any(1)
    first = flipped.argmax(1)
    return np.where(any_flip, ks[first], -1)


def brittleness(
    scores: ArrayLike,
    test_indices: Sequence[int],
    labels: ArrayLike,
    predict_without: Callable[[list[np.ndarray], list[int]], ArrayLike],
    search_space: Sequence[int] = tuple(range(20, 200, 20)),
    random_baseline: bool = False,
    seed: int = 0,
) -> BrittlenessResult:
    """Remove the top-``k`` most helpful train points of each test point, retrain, and check if it flips.

    Args:
        scores: ``[n_train, n_test]`` (positive = helpful).
        test_indices: test points to examine (normally ones the full model predicts correctly).
        labels: ``[n_test]`` true labels of the test points.
        predict_without: ``predict_without(removed, tests) -> predictions``: for each ``r``, retrain without the
            train positions ``removed[r]`` and return the predicted class of test point ``tests[r]``. All
            requests are passed in one call so that an implementation can retrain them in one batch.
        search_space: removal sizes ``k`` (sorted increasingly).
        random_baseline: also remove ``k`` seeded random points, as a baseline.

    Returns:
        :class:`BrittlenessResult`. A smaller ``min_k`` is better: the attribution found a small decisive set.
    """
    S = _np(scores, "scores")
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    tests = [int(t) for t in test_indices]
    ks = np.array(sorted(int(k) for k in search_space), dtype=np.int64)
    if ks.size == 0 or ks.min() < 0 or ks.max() > S.shape[0]:
        raise WherefromError(f"search_space must hold sizes in [0, {S.shape[0]}].")
    order = np.argsort(-S[:, tests], axis=0, kind="stable")  # [n_train, n_points] most helpful first
    removed, req_tests = [], []
    for p, t in enumerate(tests):
        for k in ks:
            removed.append(order[:k, p])
            req_tests.append(t)
    rng = np.random.default_rng(seed)
    if random_baseline:
        for t in tests:
            perm = rng.permutation(S.shape[0])
            for k in ks:
                removed.append(perm[:k])
                req_tests.append(t)
    preds = np.asarray(predict_without(removed, req_tests)).reshape(-1)
    if preds.size != len(removed):
        raise WherefromError(f"predict_without returned {preds.size} predictions for {len(removed)} requests.")
    truth = y[np.asarray(req_tests, dtype=np.int64)]
    flips = preds != truth
    n_main = len(tests) * ks.size
    flipped = flips[:n_main].reshape(len(tests), ks.size)
    rand = flips[n_main:].reshape(len(tests), ks.size) if random_baseline else None
    return BrittlenessResult(np.asarray(tests), ks, flipped, _min_k(flipped, ks), rand)
