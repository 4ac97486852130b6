"""Top-k helpful / harmful training examples by FAISS inner-product search over stored features.

Every composed gradient score is one inner product once its factors are folded into the two sides
(see :mod:`wherefrom.methods.composed`)::

    τ[i, j] = sign · ρ_i · Σ_c w_c · r_ci · F_c[i] · TQ_c[j] · col_cj  =  x_i · y_j
    x_i = ρ_i · concat_c (r_ci · F_c[i])                      [D = Σ_c d_c]   (training side, stored rows)
    y_j = sign · concat_c (w_c · col_cj · TQ_c[j])            [D]             (query side)

so the most helpful examples of query ``j`` are the largest ``x_i · y_j`` (FAISS ``METRIC_INNER_PRODUCT``
search with ``y_j``) and the most harmful the largest ``x_i · (−y_j)``.

- ``index="exact"`` (default): brute-force search block by block (``faiss.knn`` on each block of stored rows, the
  partial top-k merged), so memory stays ``O(block · D + m · k)`` whatever ``n``; equal to the streaming top-k.
- ``index="ivf"`` / ``"hnsw"`` / ``"approx"``: an approximate index over all ``x_i`` (IVF-flat with ``4·√n``
  lists, ``nprobe`` of them searched; HNSW with 32 links; ``"approx"`` picks IVF from 100,000 rows, HNSW below).
  The index holds all ``n × D`` float32 rows in memory. Its recall@k against the exact search on (up to) 100
  queries is returned as ``recall``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wherefrom.errors import WherefromError
from wherefrom.progress import track
from wherefrom.store import TopK

INDEXES = ("exact", "ivf", "hnsw", "approx")


@dataclass
class SearchTopK(TopK):
    """:class:`~wherefrom.store.TopK` with the index used and, for approximate ones, the measured recall@k
    (mean over helpful and harmful lists of sampled queries, in ``[0, 1]``)."""

    index: str = "exact"
    recall: float | None = None


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise WherefromError("FAISS top-k needs faiss-cpu: pip install faiss-cpu.") from err
    return faiss


def query_side(attributor: Any, test: Any) -> torch.Tensor:
    """``y_j`` for every test point, ``[m, D]`` float32 (see the module docstring)."""
    from wherefrom.data.loaders import as_loader

    attributor._require_fit()
    loader = as_loader(test, attributor.execution.batch_size, what="test")
    parts = []
    for c in range(len(attributor._stores)):
        TQ, col = attributor._query(c, loader)
        y = attributor._weights[c] * attributor.source.dot_rows(TQ).to(torch.float64)
        if col is not None:
            y = y * col.to(y).unsqueeze(1)
        parts.append(y)
    return (attributor.sign * torch.cat(parts, dim=1)).to("cpu", torch.float32)


def training_blocks(attributor: Any):
    """``(start, x [B, D])`` row blocks of the folded training side, float32 on the CPU.

    Rows with weights (``r_ci``, ``ρ_i``) are weighted in float64 and then rounded; unweighted rows of one
    checkpoint are only converted to float32 (exact for float16 / bfloat16 / float32 stores), without the float64
    copies."""
    attributor._require_fit()
    rho = attributor._row_weights
    for parts in zip(*[store.blocks() for store in attributor._stores]):
        start = parts[0][0]
        rows = [attributor._similarity_states[c].get("row") for c in range(len(parts))]
        if len(parts) == 1 and rows[0] is None and rho is None:
            yield start, attributor.source.dot_rows(parts[0][1]).to("cpu", torch.float32)
            continue
        cols = []
        for (_, F), row in zip(parts, rows):
            x = attributor.source.dot_rows(F).to(torch.float64)
            if row is not None:
                x = x * row[start: start + F.shape[0]].to(x).unsqueeze(1)
            cols.append(x)
        x = torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]
        if rho is not None:
            x = x * rho[start: start + x.shape[0]].to(x).unsqueeze(1)
        yield start, x.to("cpu", torch.float32)


def _merge(best_v: np.ndarray | None, best_i: np.ndarray | None, v: np.ndarray, i: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` largest of two ``[m, k']`` candidate lists per row (ties: lower index first)."""
    if best_v is not None:
        v = np.concatenate([best_v, v], axis=1)
        i = np.concatenate([best_i, i], axis=1)
    order = np.lexsort((i, -v), axis=1)[:, :k]
    return np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)


def exact_search(blocks, Y: np.ndarray, k: int, progress: bool | None = None, n: int | None = None):
    """Exact top-k inner products of ``Y`` ``[m, D]`` against row blocks ``(start, X)``: ``(values, indices)``
    ``[m, k]`` for ``+Y`` (largest) and for ``−Y``."""
    faiss = _faiss()
    hi = lo = (None, None)
    for start, X in track(blocks, "faiss top-k blocks", None, progress):
        X = np.ascontiguousarray(X.numpy() if isinstance(X, torch.Tensor) else X, dtype=np.float32)
        kk = min(k, X.shape[0])
        for sign in (1.0, -1.0):
            v, i = faiss.knn(np.ascontiguousarray(sign * Y), X, kk, metric=faiss.METRIC_INNER_PRODUCT)
            i = i.astype(np.int64) + start
            if sign > 0:
                hi = _merge(*hi, v, i, k)
            else:
                lo = _merge(*lo, v, i, k)
    return hi, lo


def _approx_index(kind: str, X: np.ndarray, nprobe: int | None, seed: int) -> Any:
    faiss = _faiss()
    n, D = X.shape
    if kind == "approx":
        kind = "ivf" if n >= 100_000 else "hnsw"
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
        index.add(X)
        return index, "hnsw"
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(D)
    index = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = X[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else X
    index.train(np.ascontiguousarray(sample))
    index.add(X)
    index.nprobe = nprobe or max(1, nlist // 8)
    return index, "ivf"


def faiss_top_k(attributor: Any, test: Any, k: int = 10, index: str = "exact", *, nprobe: int | None = None,
                recall_queries: int = 100, seed: int = 0, progress: bool | None = None) -> SearchTopK:
    """The ``k`` most helpful and harmful training examples of every test point by FAISS (see the module
    docstring). Works for every fitted composed gradient attributor (any source, preconditioner, similarity,
    checkpoints, row weights). Returns a :class:`SearchTopK` (``[m, k]`` indices and scores)."""
    if index not in INDEXES:
        raise WherefromError(f"index must be one of {INDEXES}, got {index!r}.")
    if not isinstance(k, int) or k < 1:
        raise WherefromError(f"k must be a positive integer, got {k!r}.")
    if not hasattr(attributor, "_stores"):
        raise WherefromError(f"FAISS top-k needs stored gradient features; {type(attributor).__name__} has none. "
                             "Use attributor.top_k(test, k).")
    Y = query_side(attributor, test).numpy()
    if index == "exact":
        (hv, hi), (lv, li) = exact_search(training_blocks(attributor), Y, k, progress)
        return SearchTopK(torch.from_numpy(hi), torch.from_numpy(hv), torch.from_numpy(li), torch.from_numpy(-lv),
                          index="exact")
    X = np.concatenate([x.numpy() for _, x in training_blocks(attributor)], axis=0)
    built, kind = _approx_index(index, X, nprobe, seed)
    k_eff = min(k, X.shape[0])
    hv, hi = built.search(np.ascontiguousarray(Y), k_eff)
    lv, li = built.search(np.ascontiguousarray(-Y), k_eff)
    sample = np.random.default_rng(seed).choice(len(Y), size=min(len(Y), recall_queries), replace=False)
    (_, ehi), (_, eli) = exact_search([(0, X)], Y[sample], k_eff)
    hits = sum(len(set(a) & set(b)) for a, b in zip(hi[sample], ehi)) + sum(
        len(set(a) & set(b)) for a, b in zip(li[sample], eli))
    recall = hits / (2 * len(sample) * k_eff)
    return SearchTopK(torch.from_numpy(hi.astype(np.int64)), torch.from_numpy(hv),
                      torch.from_numpy(li.astype(np.int64)), torch.from_numpy(-lv), index=kind, recall=recall)
