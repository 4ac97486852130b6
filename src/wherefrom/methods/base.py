"""The attributor protocol and the machinery shared by gradient inner-product methods.

Every attributor: ``fit(train) -> self``; ``score(test) -> Tensor[n_train, n_test]``; ``self_influence() ->
Tensor[n_train]``; ``top_k(test, k)`` streams. ``scores[i, j]`` is the predicted improvement of test target ``j``
caused by training example ``i``: **positive = helpful**. See ``docs/conventions.md``.

A gradient inner-product method is a composition, per checkpoint ``c`` with weight ``w_c``:

    τ[i, j] = sign · Σ_c w_c ⟨ φ_c(g_i), T_c(φ_c(q_j)) ⟩

where ``g_i`` is a training-loss gradient, ``q_j`` a target gradient, ``φ_c`` a featuriser (identity, a random
projection, normalisation) and ``T_c`` a query transform (identity, an inverse-Hessian solve, ...). ``sign`` is
``−1`` for a higher-is-better target. Subclasses override the hooks ``_checkpoints``, ``_fit_checkpoint``,
``_featurize`` and ``_transform_query``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.data.loaders import DataLike, as_loader, dataset_size
from wherefrom.errors import WherefromError
from wherefrom.gradients import iter_gradient_blocks
from wherefrom.progress import track
from wherefrom.store import (
    DiskStore,
    FeatureStore,
    MemoryStore,
    RecomputeStore,
    StreamingTopK,
    TopK,
    tensor_fingerprint,
)
from wherefrom.task import Task


class Attributor:
    """Base protocol. Subclasses implement :meth:`fit`, :meth:`iter_score_blocks` and :meth:`self_influence`."""

    def fit(self, train: DataLike) -> Attributor:  # pragma: no cover - interface
        raise NotImplementedError

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:  # pragma: no cover
        """Yield ``(start, scores[start:start+B, :])`` row blocks of the ``[n_train, n_test]`` score matrix."""
        raise NotImplementedError

    def self_influence(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, test: DataLike) -> torch.Tensor:
        """The dense ``[n_train, n_test]`` score matrix (positive = helpful)."""
        blocks = [b for _, b in self.iter_score_blocks(test)]
        return torch.cat(blocks, dim=0)

    def top_k(self, test: DataLike, k: int = 10) -> TopK:
        """The ``k`` most helpful and harmful training examples of every test point, without the full matrix."""
        top = StreamingTopK(k)
        for start, block in self.iter_score_blocks(test):
            top.update(start, block)
        return top.result()


class GradientAttributor(Attributor):
    """Shared machinery for methods of the form ``τ = sign · Σ_c w_c φ_c(G) T_c(φ_c(Q))ᵀ``.

    Args:
        task: the :class:`~wherefrom.task.Task`.
        batch_size: examples per per-example-gradient block.
        memory_gb: training features are kept in memory when ``n·d`` fits this budget (GB); otherwise they go
            to ``cache_dir`` on disk when it is given, and are recomputed on each pass when it is not.
        cache_dir: where training features are saved (and found again by a later run on the same checkpoint).
        projection: an object with ``project(block [B, p], checkpoint_index) -> [B, k]`` applied to every
            gradient (train and test alike), or ``None``.
        progress: show progress bars (``None``: the library default).
    """

    def __init__(
        self, task: Task, *, batch_size: int = 256, memory_gb: float = 2.0, cache_dir: str | None = None,
        projection: Any = None, progress: bool | None = None,
    ) -> None:
        self.task = task
        self.batch_size = batch_size
        self.memory_gb = memory_gb
        self.cache_dir = cache_dir
        self.projection = projection
        self.progress = progress
        self._train_loader: DataLoader | None = None
        self._states: list[dict[str, torch.Tensor]] = []
        self._weights: list[float] = []
        self._stores: list[FeatureStore] = []

    # ------------------------------------------------------------------ hooks
    def _checkpoints(self) -> list[tuple[dict[str, torch.Tensor], float]]:
        """``[(state, weight)]``: by default the task's final checkpoint with weight 1."""
        return [(self.task.state(None), 1.0)]

    def _fit_checkpoint(self, c: int, state: dict[str, torch.Tensor], loader: DataLoader) -> None:
        """Per-checkpoint fitting beyond the training features (e.g. a curvature solver)."""

    def _featurize(self, c: int, block: torch.Tensor) -> torch.Tensor:
        """``φ_c``: map raw gradients ``[B, p]`` to features ``[B, d]`` (projection when given)."""
        if self.projection is not None:
            return self.projection.project(block, c)
        return block

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        """``T_c``: transform query features ``[m, d]`` (identity by default)."""
        return Q

    # ------------------------------------------------------------------ fitting
    @property
    def n_train(self) -> int:
        self._require_fit()
        return dataset_size(self._train_loader)  # type: ignore[arg-type]

    def _require_fit(self) -> None:
        if self._train_loader is None:
            raise WherefromError(f"{type(self).__name__} is not fitted: call fit(train) first.")

    def _feature_blocks(self, c: int, loader: DataLoader, fn=None, what: str = "training-loss"):
        state = self._states[c]
        for start, block in iter_gradient_blocks(self.task, loader, state, fn, what, self.progress):
            yield start, self._featurize(c, block)

    def _build_store(self, c: int, loader: DataLoader) -> FeatureStore:
        n = dataset_size(loader)
        first = next(iter(self._feature_blocks(c, DataLoader(torch.utils.data.Subset(loader.dataset, [0]),
                                                              batch_size=1, collate_fn=loader.collate_fn)))) [1]
        dim, dtype = first.shape[1], first.dtype
        nbytes = n * dim * first.element_size()
        if nbytes <= self.memory_gb * 1e9:
            matrix = torch.cat([b for _, b in self._feature_blocks(c, loader)], dim=0)
            return MemoryStore(matrix, block_size=max(self.batch_size, 1024))
        if self.cache_dir is not None:
            key = "-".join([type(self).__name__, tensor_fingerprint(self.task.flat_params(self._states[c])),
                            str(n), str(dim), repr(self.projection)])
            path = os.path.join(self.cache_dir, f"train_features_{c}.npy")
            return DiskStore.open_or_build(path, key, self._feature_blocks(c, loader), n, dim, dtype,
                                           self.task.device)
        return RecomputeStore(lambda: self._feature_blocks(c, loader), n, dim)

    def fit(self, train: DataLike) -> GradientAttributor:
        """Compute (or plan to stream) the training features at every checkpoint and fit per-checkpoint state."""
        loader = as_loader(train, self.batch_size, what="training")
        self._train_loader = loader
        pairs = self._checkpoints()
        self._states = [s for s, _ in pairs]
        self._weights = [float(w) for _, w in pairs]
        self._stores = []
        show = len(pairs) > 1 and self.progress is not False
        for c in track(range(len(pairs)), "checkpoints", len(pairs), show):
            self._fit_checkpoint(c, self._states[c], loader)
            self._stores.append(self._build_store(c, loader))
        return self

    # ------------------------------------------------------------------ scoring
    def query_features(self, test: DataLike) -> list[torch.Tensor]:
        """``T_c(φ_c(q_j))`` for every checkpoint ``c``: a list of ``[m, d_c]`` tensors."""
        self._require_fit()
        loader = as_loader(test, self.batch_size, what="test")
        out = []
        for c in range(len(self._states)):
            Q = torch.cat([b for _, b in self._feature_blocks(c, loader, self.task.target_fn, "target")], dim=0)
            out.append(self._transform_query(c, Q))
        return out

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        queries = self.query_features(test)
        sign = self.task.target_sign
        streams = [store.blocks() for store in self._stores]
        for parts in zip(*streams):
            start = parts[0][0]
            acc = None
            for c, (_, F) in enumerate(parts):
                term = self._weights[c] * (F @ queries[c].T.to(F.dtype))
                acc = term if acc is None else acc + term
            yield start, sign * acc

    def self_influence(self) -> torch.Tensor:
        """``Σ_c w_c ⟨φ_c(g_i), T_c(φ_c(g_i))⟩`` with training-loss gradients on both sides, ``[n_train]``."""
        self._require_fit()
        streams = [store.blocks() for store in self._stores]
        out = []
        for parts in zip(*streams):
            acc = None
            for c, (_, F) in enumerate(parts):
                term = self._weights[c] * (F * self._transform_query(c, F)).sum(1)
                acc = term if acc is None else acc + term
            out.append(acc)
        return torch.cat(out)
