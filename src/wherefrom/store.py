"""Stores of per-example feature blocks (gradients or their projections) and streaming top-k search.

A store has ``n`` rows of dimension ``dim``, yields ``(start, block)`` pairs from :meth:`FeatureStore.blocks`
(``block`` of shape ``[B, d]`` for rows ``start .. start+B``) and writes itself to a file with
:meth:`FeatureStore.write` (:func:`read_store` opens it again). Three kinds:

- :class:`MemoryStore` keeps the whole ``[n, d]`` matrix (when it fits the memory budget);
- :class:`DiskStore` keeps it in a ``.npy`` file read by memory map, so it is computed once and reused, also by a
  later process (``cache_dir=`` of the attributors);
- :class:`RecomputeStore` keeps nothing and recomputes the blocks each time they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

BlockIter = Iterator[tuple[int, torch.Tensor]]


class FeatureStore:
    """Interface: ``n`` rows of dimension ``dim``, read block by block with :meth:`blocks`, saved by :meth:`write`."""

    n: int
    dim: int
    block_size: int = 1024

    def blocks(self) -> BlockIter:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, stem: str) -> str:
        """Write the rows to ``stem + ".npy"`` (streamed, block by block); returns the file name."""
        path = stem + ".npy"
        write_npy(path, self.blocks(), self.n, self.dim, self._dtype())
        return os.path.basename(path)

    def _dtype(self) -> torch.dtype:
        for _, block in self.blocks():
            return block.dtype
        return torch.float32


def write_npy(path: str, blocks: Iterable[tuple[int, torch.Tensor]], n: int, dim: int, dtype: torch.dtype) -> None:
    """Stream ``blocks`` into a ``[n, dim]`` ``.npy`` file at ``path`` (through a temporary file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    tmp = path + ".partial.npy"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(n, dim))
    for start, block in blocks:
        array[start : start + block.shape[0]] = block.detach().cpu().numpy()
    array.flush()
    del array
    os.replace(tmp, path)


def read_store(path: str, device: torch.device | str = "cpu", block_size: int = 1024) -> FeatureStore:
    """Open a store written by :meth:`FeatureStore.write`: ``.safetensors`` in memory, ``.npy`` by memory map,
    ``.zarr`` as a chunked zarr store (:class:`wherefrom.scale.ZarrFeatureStore`)."""
    if path.endswith(".zarr"):
        from wherefrom.scale.zarr_store import ZarrFeatureStore

        return ZarrFeatureStore(path, device, block_size)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return MemoryStore(load_file(path)["features"].clone().to(device), block_size)
    return DiskStore(path, device, block_size)


class MemoryStore(FeatureStore):
    """All rows in one in-memory tensor ``[n, d]``, yielded in blocks of ``block_size`` rows."""

    def __init__(self, matrix: torch.Tensor, block_size: int = 1024) -> None:
        self.matrix = matrix
        self.n, self.dim = matrix.shape
        self.block_size = block_size

    def blocks(self) -> BlockIter:
        for start in range(0, self.n, self.block_size):
            yield start, self.matrix[start : start + self.block_size]

    def write(self, stem: str) -> str:
        """Write the matrix to ``stem + ".safetensors"``."""
        from safetensors.torch import save_file

        path = stem + ".safetensors"
        save_file({"features": self.matrix.detach().cpu().contiguous()}, path)
        return os.path.basename(path)


class RecomputeStore(FeatureStore):
    """Rows recomputed by calling ``make_blocks()`` each time they are read (nothing is kept)."""

    def __init__(self, make_blocks: Callable[[], BlockIter], n: int, dim: int) -> None:
        self.make_blocks = make_blocks
        self.n, self.dim = n, dim

    def blocks(self) -> BlockIter:
        yield from self.make_blocks()


class DiskStore(FeatureStore):
    """Rows in ``path`` (a ``.npy`` file read by memory map) with a JSON sidecar that says what they are.

    :meth:`open_or_build` reuses the file when its sidecar's ``key`` matches (a hash of the configuration that
    produced it), so a second run (or a run that was interrupted after the store was complete) does not recompute it.
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", block_size: int = 1024) -> None:
        self.path = path
        self.array = np.load(path, mmap_mode="r")
        self.n, self.dim = self.array.shape
        self.device = torch.device(device)
        self.block_size = block_size

    def blocks(self) -> BlockIter:
        for start in range(0, self.n, self.block_size):
            chunk = np.ascontiguousarray(self.array[start : start + self.block_size])
            yield start, torch.from_numpy(chunk).to(self.device)

    @staticmethod
    def open_or_build(
        path: str, key: str, blocks: Iterable[tuple[int, torch.Tensor]], n: int, dim: int,
        dtype: torch.dtype, device: torch.device | str = "cpu", block_size: int = 1024,
    ) -> DiskStore:
        """Open ``path`` if it holds the store named ``key``; otherwise write ``blocks`` there first."""
        meta_path = path + ".json"
        if os.path.exists(path) and os.path.exists(meta_path):
            with open(meta_path) as fh:
                meta = json.load(fh)
            if meta.get("key") == key and meta.get("complete"):
                return DiskStore(path, device, block_size)
        write_npy(path, blocks, n, dim, dtype)
        with open(meta_path, "w") as fh:
            json.dump({"key": key, "n": n, "dim": dim, "complete": True}, fh)
        return DiskStore(path, device, block_size)


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short content hash of tensors (used to key cached stores to the exact checkpoint they came from)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TopK:
    """The ``k`` most helpful and most harmful training examples of each test point.

    ``helpful_indices[j]`` are training indices sorted by decreasing score for test point ``j`` and
    ``helpful_values[j]`` their scores; ``harmful_*`` likewise by increasing score. All have shape ``[m, k]``.
    """

    helpful_indices: torch.Tensor
    helpful_values: torch.Tensor
    harmful_indices: torch.Tensor
    harmful_values: torch.Tensor


class StreamingTopK:
    """Running top-k (largest and smallest) over row blocks of an ``[n, m]`` score matrix, never storing it.

    Exactly tied scores are ordered by training index, lowest first, and a tie at the ``k``-th place keeps the
    lowest indices: the result depends on the scores only, not on how the rows are cut into blocks, in which order
    the blocks arrive, or in which order partial top-k of disjoint rows are merged (as Dask tasks' results are).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self._hi_v: torch.Tensor | None = None
        self._hi_i: torch.Tensor | None = None
        self._lo_v: torch.Tensor | None = None
        self._lo_i: torch.Tensor | None = None

    @staticmethod
    def _merge(vals, idx, new_vals, new_idx, k, largest):
        """The ``min(k, N)`` best of ``N`` candidates per column — the previous best ``vals`` / ``idx``
        (``[k', m]``, or ``None``) stacked on ``new_vals`` / ``new_idx`` (``[B, m]``; an expanded view is fine, it is
        never materialised) — ordered by value, exact ties by lower index."""
        cand = new_vals if vals is None else torch.cat([vals, new_vals], dim=0)  # [N, m]
        n = cand.shape[0]
        kk = min(k, n)
        # one place more than needed: where it ties with the last kept one, a tie straddles the cut
        top_v, pos = torch.topk(cand, min(kk + 1, n), dim=0, largest=largest, sorted=True)
        top_i = _candidate_index(idx, new_idx, pos)
        if top_v.shape[0] > kk:
            cols = torch.nonzero(top_v[kk] == top_v[kk - 1]).flatten()
            top_v, top_i = top_v[:kk], top_i[:kk]
            if cols.numel():
                top_i[:, cols] = _lowest_tied_at_cut(cand[:, cols], idx, new_idx, cols, top_v[:, cols],
                                                     top_i[:, cols], largest)
        # order by (value, index): stable sort by index, then stable sort by value
        by_index = torch.argsort(top_i, dim=0, stable=True)
        top_v, top_i = torch.gather(top_v, 0, by_index), torch.gather(top_i, 0, by_index)
        by_value = torch.sort(top_v, dim=0, descending=largest, stable=True).indices
        return torch.gather(top_v, 0, by_value), torch.gather(top_i, 0, by_value)

    def update(self, start: int, block: torch.Tensor) -> None:
        """Add score rows ``start .. start+B`` (``block`` is ``[B, m]``)."""
        rows = torch.arange(start, start + block.shape[0], device=block.device).unsqueeze(1).expand_as(block)
        self._hi_v, self._hi_i = self._merge(self._hi_v, self._hi_i, block, rows, self.k, True)
        self._lo_v, self._lo_i = self._merge(self._lo_v, self._lo_i, block, rows, self.k, False)

    def result(self) -> TopK:
        """The top-k found so far, transposed to ``[m, k]``."""
        if self._hi_v is None:
            raise ValueError("No scores were added.")
        return TopK(self._hi_i.T.contiguous(), self._hi_v.T.contiguous(),
                    self._lo_i.T.contiguous(), self._lo_v.T.contiguous())


def _candidate_index(idx: torch.Tensor | None, new_idx: torch.Tensor, pos: torch.Tensor,
                     cols: torch.Tensor | None = None) -> torch.Tensor:
    """Training index of candidate rows ``pos`` (``[r, c]``) of ``cat([idx, new_idx])``, in columns ``cols`` (or
    all)."""
    if cols is not None:
        new_idx = new_idx[:, cols]
        idx = None if idx is None else idx[:, cols]
    if idx is None:
        return torch.gather(new_idx, 0, pos)
    k0 = idx.shape[0]
    return torch.where(pos < k0, torch.gather(idx, 0, pos.clamp(max=k0 - 1)),
                       torch.gather(new_idx, 0, (pos - k0).clamp(min=0)))


def _lowest_tied_at_cut(cand: torch.Tensor, idx: torch.Tensor | None, new_idx: torch.Tensor, cols: torch.Tensor,
                        top_v: torch.Tensor, top_i: torch.Tensor, largest: bool) -> torch.Tensor:
    """``top_i`` (``[kk, c]``, the sorted top-``kk`` of the candidates ``cand`` ``[N, c]`` of columns ``cols``) with
    the places taken by the ``kk``-th value ``t`` given to the lowest indices among *all* candidates equal to ``t``."""
    kk, n = top_v.shape[0], cand.shape[0]
    cut = top_v[-1:]  # [1, c]
    n_better = ((cand > cut) if largest else (cand < cut)).sum(0, keepdim=True)  # [1, c]: all of them are kept
    every = torch.arange(n, device=cand.device).unsqueeze(1).expand(n, len(cols))
    index = _candidate_index(idx, new_idx, every, cols)  # [N, c]
    tied = torch.where(cand == cut, index, torch.full_like(index, torch.iinfo(index.dtype).max))
    lowest = torch.topk(tied, kk, dim=0, largest=False, sorted=True).values  # [kk, c]: tied indices, ascending
    place = torch.arange(kk, device=cand.device).unsqueeze(1)  # [kk, 1]
    return torch.where(place < n_better, top_i, torch.gather(lowest, 0, (place - n_better).clamp(min=0)))
