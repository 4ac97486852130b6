"""A chunked, compressed, resumable feature store on zarr: ``[n, d]`` training features in blocks of example rows.

Layout of a store folder ``path`` (a zarr v3 array)::

    path/zarr.json            shape [n, d], chunks [rows, d], zstd compression, dtype; attrs["wherefrom"] = meta
    path/c/<i>/0              chunk i: rows i·rows .. min((i+1)·rows, n)
    path/checksums/<i>        sha256 of chunk i's raw (uncompressed, C-order) bytes, written after the chunk

``meta`` says what the rows are: the task fingerprint, the gradient source and projection configuration, the
training function, the checkpoint's content hash, ``n``, ``d``, the dtype and the rows per chunk. Opening a store
whose ``meta`` differs from the one asked for raises :class:`StoreMismatchError` naming each difference.

**Crash safety.** A chunk counts as done only when its checksum file exists and matches the chunk's decoded bytes.
The checksum is written (atomically, by rename) after the chunk, so a run killed at any point leaves chunks that
are either complete and checked, or recomputed by the next run; a truncated or otherwise corrupted chunk fails the
check (or fails to decode) and is recomputed too. Chunks are computed by a deterministic function of their row
range, so a resumed store is byte-identical to an uninterrupted one.

Dtypes: ``float32``, ``float16``, ``float64`` natively; ``bfloat16`` is stored as its raw 16-bit pattern
(``uint16``) and read back as ``torch.bfloat16``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from wherefrom.errors import WherefromError
from wherefrom.store import BlockIter, FeatureStore

META_KEY = "wherefrom"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "float64": "float64"}

ChunkFn = Callable[[int, int], torch.Tensor]


class StoreMismatchError(WherefromError):
    """An existing feature store was made for another model, projection, checkpoint or shape."""


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.float16`` or ``"float16"`` -> ``"float16"`` (one of :data:`DTYPES`)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise WherefromError(f"Feature stores hold float32, float16, bfloat16 or float64 rows, not {name}.")
    return name


def to_numpy(block: torch.Tensor, name: str) -> np.ndarray:
    """A tensor as the numpy array the store keeps (bfloat16 as its uint16 bit pattern)."""
    block = block.detach().to("cpu", DTYPES[name]).contiguous()
    if name == "bfloat16":
        return block.view(torch.int16).numpy().view(np.uint16)
    return block.numpy()


def from_numpy(array: np.ndarray, name: str) -> torch.Tensor:
    """Inverse of :func:`to_numpy`."""
    array = np.ascontiguousarray(array)
    if name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def chunk_checksum(array: np.ndarray) -> str:
    """sha256 of a chunk's raw C-order bytes, prefixed by its shape and dtype."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.shape}:{array.dtype}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def _describe_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: store has {saved.get(k)!r}, asked for {wanted.get(k)!r}"
            for k in keys if saved.get(k) != wanted.get(k)]


class ZarrFeatureStore(FeatureStore):
    """Rows ``[n, d]`` in a zarr array at ``path`` (see the module docstring); read block by block.

    Args:
        path: the store folder.
        device: where :meth:`blocks` puts the rows.
        block_size: rows per block yielded by :meth:`blocks` (default: the chunk rows; a multiple of them is
            cheapest).
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", block_size: int | None = None) -> None:
        self.path = os.fspath(path)
        self.device = torch.device(device)
        self._array = None
        array = self.array
        self.n, self.dim = (int(s) for s in array.shape)
        self.chunk_rows = int(array.chunks[0])
        self.meta = dict(array.attrs.get(META_KEY, {}))
        self.dtype_name = self.meta.get("dtype", "float32")
        self.block_size = int(block_size or self.chunk_rows)

    # ------------------------------------------------------------------ pickling (Dask ships the path only)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    @property
    def array(self) -> Any:
        if self._array is None:
            import zarr

            self._array = zarr.open_array(store=self.path, mode="r+")
        return self._array

    # ------------------------------------------------------------------ creation and checks
    @classmethod
    def create_or_open(cls, path: str, meta: Mapping[str, Any], n: int, dim: int, dtype: torch.dtype | str,
                       chunk_rows: int, device: torch.device | str = "cpu") -> ZarrFeatureStore:
        """Open the store at ``path`` if it was made with the same ``meta``, shape and chunking; create it if
        there is none. A store made for something else raises :class:`StoreMismatchError`."""
        import zarr

        name = dtype_name(dtype)
        meta = {**dict(meta), "n": int(n), "dim": int(dim), "dtype": name, "chunk_rows": int(chunk_rows)}
        meta = json.loads(json.dumps(meta))  # the JSON round trip the stored copy went through
        if os.path.exists(os.path.join(path, "zarr.json")):
            store = cls(path, device)
            diffs = _describe_differences(store.meta, meta)
            if diffs:
                raise StoreMismatchError(
                    f"The feature store at {path!r} was made for something else: " + "; ".join(diffs)
                    + ". Use another folder (cache_dir) for this configuration, or delete that one to rebuild it.")
            return store
        if os.path.exists(path) and os.listdir(path):
            raise StoreMismatchError(f"{path!r} exists and is not a wherefrom feature store; choose an empty "
                                     "or new folder.")
        array = zarr.open_array(store=path, mode="w", shape=(n, dim), chunks=(chunk_rows, dim),
                                dtype=_NUMPY[name], fill_value=0)
        array.attrs[META_KEY] = meta
        os.makedirs(os.path.join(path, "checksums"), exist_ok=True)
        return cls(path, device)

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_rows)

    def chunk_range(self, i: int) -> tuple[int, int]:
        """Rows ``(start, stop)`` of chunk ``i``."""
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n)

    def _checksum_path(self, i: int) -> str:
        return os.path.join(self.path, "checksums", str(i))

    def saved_checksum(self, i: int) -> str | None:
        try:
            with open(self._checksum_path(i)) as fh:
                return fh.read().strip()
        except FileNotFoundError:
            return None

    def chunk_ok(self, i: int) -> bool:
        """Whether chunk ``i`` is written and its decoded bytes match its checksum."""
        saved = self.saved_checksum(i)
        if saved is None:
            return False
        start, stop = self.chunk_range(i)
        try:
            data = self.array[start:stop]
        except Exception:  # a truncated or garbled chunk fails to decode
            return False
        return chunk_checksum(data) == saved

    def missing_chunks(self, verify: bool = True) -> list[int]:
        """Chunks still to compute: without a checksum, or (``verify=True``) whose data do not match it."""
        if verify:
            return [i for i in range(self.n_chunks) if not self.chunk_ok(i)]
        return [i for i in range(self.n_chunks) if self.saved_checksum(i) is None]

    def write_chunk(self, i: int, block: torch.Tensor) -> str:
        """Write chunk ``i`` (``[rows, d]``), then its checksum (atomically). Returns the checksum."""
        start, stop = self.chunk_range(i)
        if tuple(block.shape) != (stop - start, self.dim):
            raise WherefromError(f"Chunk {i} of {self.path!r} must have shape {(stop - start, self.dim)}, "
                                 f"got {tuple(block.shape)}.")
        data = to_numpy(block, self.dtype_name)
        with contextlib.suppress(FileNotFoundError):  # a rewritten chunk is not done until its new checksum is
            os.remove(self._checksum_path(i))
        self.array[start:stop] = data
        digest = chunk_checksum(data)
        tmp = self._checksum_path(i) + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(digest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._checksum_path(i))
        return digest

    def fill(self, compute: ChunkFn, chunks: list[int] | None = None, progress: bool | None = None) -> None:
        """Compute and write ``chunks`` (default: the missing ones) one after another with ``compute(start, stop)``."""
        from wherefrom.progress import track

        todo = self.missing_chunks() if chunks is None else chunks
        for i in track(todo, "feature store chunks", len(todo), progress):
            self.write_chunk(i, compute(*self.chunk_range(i)))

    def require_complete(self) -> None:
        missing = self.missing_chunks(verify=False)
        if missing:
            raise WherefromError(f"The feature store at {self.path!r} is incomplete ({len(missing)} of "
                                 f"{self.n_chunks} chunks missing); build it again to resume.")

    # ------------------------------------------------------------------ reading
    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start .. stop`` as a tensor on the store's device."""
        return from_numpy(self.array[start:stop], self.dtype_name).to(self.device)

    def blocks(self) -> BlockIter:
        for start in range(0, self.n, self.block_size):
            yield start, self.read(start, min(start + self.block_size, self.n))

    def chunk_blocks(self, chunks: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        for i in chunks:
            start, stop = self.chunk_range(i)
            yield start, self.read(start, stop)

    def _dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    def nbytes_on_disk(self) -> int:
        """Bytes the store folder takes on disk."""
        total = 0
        for root, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    def write(self, stem: str) -> str:
        """Copy the store to ``stem + ".zarr"`` (saved attributors are self-contained); returns the folder name."""
        target = stem + ".zarr"
        if os.path.abspath(target) != os.path.abspath(self.path):
            shutil.copytree(self.path, target, dirs_exist_ok=True)
        return os.path.basename(target)
