"""Top-k from a score matrix already computed, and the checks every top-k shares.

``wf.top_k(scores, k)`` ranks a dense ``[n_train, n_test]`` matrix (positive = helpful) the way
:meth:`wherefrom.Attributor.top_k` ranks streamed score blocks, so ``score()`` followed by a ranking does the work
once::

    scores = att.score(test)        # [n_train, n_test]
    top = wf.top_k(scores, k=5)     # or att.top_k(scores=scores, k=5)
"""

from __future__ import annotations

import numbers

import torch

from wherefrom.errors import ArgumentError
from wherefrom.store import StreamingTopK, TopK


def check_k(k: object, n_train: int | None = None) -> int:
    """``k`` as an int, after checking ``1 <= k <= n_train`` (``n_train`` when known).

    Raises :class:`~wherefrom.errors.ArgumentError`: a ``k`` above ``n_train`` would put harmful examples in the
    helpful list (and helpful ones in the harmful list), so it is refused rather than clamped.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ArgumentError(f"k must be a positive integer, got {k!r}.")
    k = int(k)
    if k <= 0:
        raise ArgumentError(f"k must be at least 1, got {k}: it is how many helpful and harmful examples to list.")
    if n_train is not None and k > n_train:
        raise ArgumentError(
            f"k={k} is more than the {n_train} training examples: the helpful list would then hold harmful "
            f"examples too. Pass k <= {n_train}, or use score() for every training example's score."
        )
    return k


def top_k(scores: torch.Tensor, k: int = 10) -> TopK:
    """The ``k`` most helpful and harmful training examples of every test point of ``scores`` (``[n_train, n_test]``).

    Returns a :class:`~wherefrom.store.TopK` with ``[n_test, k]`` indices and values: ``helpful_*`` by decreasing
    score, ``harmful_*`` by increasing score. A 1-D ``scores`` (one test point, or self-influence) is one column.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ArgumentError(f"scores must be a [n_train, n_test] (or [n_train]) tensor, got {shape}.")
    matrix = scores.unsqueeze(1) if scores.dim() == 1 else scores
    k = check_k(k, matrix.shape[0])
    top = StreamingTopK(k)
    top.update(0, matrix)
    return top.result()
