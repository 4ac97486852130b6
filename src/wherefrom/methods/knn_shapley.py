"""KNN-Shapley (Jia et al. 2019): exact Shapley values of training points for a K-nearest-neighbour classifier.

For a test point ``(x', y')`` the utility of a subset ``S`` of the training set is the unweighted K-NN accuracy
``U(S) = (1/K) Σ_{r=1}^{min(K,|S|)} 1[y_{α_r(S)} = y']`` (``U(∅) = 0``), ``α_r(S)`` the ``r``-th nearest point of
``S`` in the embedding. Sorting the ``n`` training points by distance, ``α_1`` nearest … ``α_n`` farthest (1-indexed,
ties broken by training index, lower first), the Shapley values are exactly::

    s_{α_n} = 1[y_{α_n} = y'] / n
    s_{α_i} = s_{α_{i+1}} + (1[y_{α_i} = y'] − 1[y_{α_{i+1}} = y']) / K · min(K, i) / i,    i = n−1, …, 1

Cost ``O(n·m·d)`` for the distances and ``O(m·n log n)`` for the sorts. The paper's natural orientation is
``[n_test, n_train]``; :meth:`KNNShapley.score` returns the library's ``[n_train, n_test]``. Natural scale: a share
of the K-NN accuracy on test point ``j`` (each column sums to ``U(all) = `` the K-NN accuracy on ``j``, by the
efficiency axiom). Positive = helpful.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from wherefrom import targets
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.errors import WherefromError
from wherefrom.execution import Execution, resolve_execution
from wherefrom.methods.base import Attributor
from wherefrom.progress import track
from wherefrom.task import default_input_fn


def knn_shapley_values(distances: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor,
                       k: int) -> torch.Tensor:
    """Exact KNN-Shapley values ``[m, n]`` from distances ``[m, n]`` (test × train) and labels.

    Ties in distance are broken by training index (the lower index counts as nearer).
    """
    m, n = distances.shape
    order = torch.sort(distances, dim=1, stable=True).indices  # [m, n], nearest first
    match = (train_labels[order] == test_labels.unsqueeze(1)).to(torch.float64)  # [m, n] in sorted order
    s = torch.empty(m, n, dtype=torch.float64, device=distances.device)
    s[:, -1] = match[:, -1] / n
    if n > 1:
        i = torch.arange(1, n, dtype=torch.float64, device=distances.device)  # 1-indexed positions 1..n-1
        step = (match[:, :-1] - match[:, 1:]) / k * torch.clamp(i, max=k) / i  # [m, n-1]
        # s_i = s_n + Σ_{l=i}^{n-1} step_l: a reversed cumulative sum
        s[:, :-1] = s[:, -1:] + torch.flip(torch.cumsum(torch.flip(step, [1]), 1), [1])
    out = torch.empty_like(s)
    out.scatter_(1, order, s)
    return out


class KNNShapley(Attributor):
    """Exact KNN-Shapley values in the ``[n_train, n_test]`` orientation.

    Args:
        features_fn: ``features_fn(batch) -> Tensor[B, ...]``, the embedding (e.g. a trained network's penultimate
            layer); flattened per example. Default: the flattened model inputs ``batch[0]``.
        k: ``K``, the number of neighbours.
        labels_fn: ``labels_fn(batch) -> Tensor[B]``; default ``batch[1]``.
        batch_size: examples per batch when embedding, and test points per distance block.
        execution: :class:`~wherefrom.execution.Execution` options (``batch_size``, ``progress`` also accepted).

    Saved state holds the embeddings and labels; ``features_fn`` and ``labels_fn`` are saved by name, so a
    function defined outside wherefrom must be passed again to ``wf.load(path, features_fn=...)``.
    """

    def __init__(self, features_fn: Callable[[Any], torch.Tensor] | None = None, k: int = 5, *,
                 labels_fn: Callable[[Any], torch.Tensor] | None = None, execution: Execution | None = None,
                 batch_size: int | None = None, progress: bool | None = None) -> None:
        if not isinstance(k, int) or k < 1:
            raise WherefromError(f"k (number of neighbours) must be a positive integer, got {k!r}.")
        self.features_fn = features_fn if features_fn is not None else default_input_fn
        self.labels_fn = labels_fn if labels_fn is not None else targets.labels_of
        self.k = k
        self.execution = resolve_execution(execution, batch_size=batch_size, progress=progress)
        self.batch_size = self.execution.batch_size
        self.progress = self.execution.progress
        self.train_features_: torch.Tensor | None = None
        self.train_labels_: torch.Tensor | None = None

    def _embed(self, data: DataLike, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = as_loader(data, self.batch_size, what=what)
        feats, labels = [], []
        with torch.no_grad():
            for batch in track(loader, f"{what} embeddings", len(loader), self.progress):
                f = self.features_fn(batch)
                if not isinstance(f, torch.Tensor) or f.dim() < 1:
                    raise WherefromError("features_fn must return a tensor [B, ...] of embeddings.")
                feats.append(f.detach().reshape(f.shape[0], -1).to(torch.float64))
                labels.append(torch.as_tensor(self.labels_fn(batch)).reshape(-1).to(f.device))
        F, y = torch.cat(feats), torch.cat(labels)
        if F.shape[0] != y.shape[0]:
            raise WherefromError(f"The {what} embeddings have {F.shape[0]} rows but there are {y.shape[0]} labels.")
        return F, y

    def fit(self, train: DataLike) -> KNNShapley:
        """Embed the training set (``[n, d]``, kept in memory) and read its labels."""
        self.train_features_, self.train_labels_ = self._embed(train, "training")
        return self

    def _require_fit(self) -> None:
        if self.train_features_ is None:
            raise WherefromError("KNNShapley is not fitted: call fit(train) first.")

    def _fitted_state(self, directory: str) -> dict[str, Any]:
        self._require_fit()
        return {"features": self.train_features_, "labels": self.train_labels_}

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        self.train_features_, self.train_labels_ = state["features"], state["labels"]

    def score(self, test: DataLike) -> torch.Tensor:
        """KNN-Shapley values ``[n_train, n_test]``: column ``j`` holds the values for test point ``j``."""
        self._require_fit()
        Xt, yt = self._embed(test, "test")
        X, y = self.train_features_, self.train_labels_
        if Xt.shape[1] != X.shape[1]:
            raise WherefromError(f"Test embeddings have dimension {Xt.shape[1]}, training ones {X.shape[1]}.")
        out = torch.empty(X.shape[0], Xt.shape[0], dtype=torch.float64, device=X.device)
        for s in range(0, Xt.shape[0], self.batch_size):
            D = torch.cdist(Xt[s:s + self.batch_size].to(X.device), X)  # [m_b, n]
            out[:, s:s + D.shape[0]] = knn_shapley_values(D, y, yt[s:s + D.shape[0]].to(y.device), self.k).T
        return out

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        """Row blocks of :meth:`score` (each column needs every training point, so the matrix is formed first)."""
        S = self.score(test)
        for start in range(0, S.shape[0], 1024):
            yield start, S[start:start + 1024]

    def values(self, test: DataLike) -> torch.Tensor:
        """Data values of the training points for the whole test set: the mean of the per-test values, ``[n]``."""
        return self.score(test).mean(dim=1)

    def self_influence(self) -> torch.Tensor:
        raise WherefromError("KNN-Shapley has no self-influence: value the training set against held-out data "
                             "with values(test) (low values flag suspicious points).")
