"""Featurisation, scoring, top-k and self-influence as Dask tasks over the chunks of zarr feature stores.

``client`` is any :class:`dask.distributed.Client` (a laptop's :func:`local_client`, a workstation, a cluster whose
workers see the store's folder). Every task works on one chunk of rows:

- featurisation: compute the chunk's features with a :class:`~wherefrom.scale.featurize.ChunkFeaturizer` and write
  them (and their checksum) to the shared store;
- scoring: read the chunk from every checkpoint's store and return the chunk's local top-k (``[k, m]`` values
  and row indices, largest and smallest) or self-influence (``[rows]``); the client merges them.

A task does exactly the arithmetic the single-process path does on that block (the attributor's own
``_score_block`` / ``_self_influence_block``), so the results agree to rounding; the top-k merge is exact, and
exactly tied scores are ordered by lower row index both here and in the single-process scan
(:class:`~wherefrom.store.StreamingTopK`), whatever order the tasks finish in. A worker that dies mid-run has its
tasks rerun elsewhere by the scheduler; since a chunk is a deterministic function of its rows and written with a
checksum, the result does not change.

Memory allocator: glibc's ``malloc`` raises its mmap threshold (up to 32 MiB) as large blocks are freed, so a loop
that allocates the same large tensors again and again reuses heap memory. Setting ``MALLOC_TRIM_THRESHOLD_``, as
Dask's nanny does for every worker it spawns (65536), switches that adaptation off: every block over 128 KiB is then
mapped and unmapped, and featurising a chunk of 8,192 rows pays about 57,000 page faults and 2–3× its CPU time.
:func:`local_client` therefore starts its workers with both thresholds fixed at the adapted values
(:data:`WORKER_MALLOC_ENV`), and every task sets them once per process (``mallopt``) on workers started otherwise.
"""

from __future__ import annotations

import copy
import ctypes
import os
import sys
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.progress import track
from wherefrom.scale.zarr_store import ZarrFeatureStore
from wherefrom.store import StreamingTopK, TopK

MMAP_THRESHOLD = 32 << 20
"""Bytes: blocks at least this large are mapped, smaller ones come from the reused heap (glibc's adaptive limit)."""
TRIM_THRESHOLD = 64 << 20
"""Bytes of free heap top kept before returning memory to the system (twice the mmap threshold, as glibc adapts)."""
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
"""What :func:`local_client` sets in its workers' environment before they start (see the module docstring)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
_malloc_tuned: bool | None = None


def local_client(n_workers: int = 2, threads_per_worker: int = 1, memory_limit: str | int = "2GB",
                 **kwargs: Any) -> Any:
    """A :class:`dask.distributed.Client` on a new ``LocalCluster`` of worker *processes* on this machine, started
    with the malloc thresholds of :data:`WORKER_MALLOC_ENV`."""
    import dask
    from dask.distributed import Client, LocalCluster

    environ = {**(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}), **WORKER_MALLOC_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               memory_limit=memory_limit, dashboard_address=None, **kwargs)
    return Client(cluster)


def tune_malloc() -> bool:
    """Once per process, on Linux with glibc and unless ``MALLOC_MMAP_THRESHOLD_`` is set (then the environment has
    decided): fix malloc's mmap and trim thresholds at :data:`MMAP_THRESHOLD` / :data:`TRIM_THRESHOLD`, so freed
    large blocks are reused rather than unmapped. Returns whether this call or an earlier one set them."""
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            try:
                mallopt = ctypes.CDLL(None).mallopt
                _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc
                pass
    return _malloc_tuned


def _prepare_task() -> None:
    """What every task does first: one torch thread, and malloc tuned (:func:`tune_malloc`)."""
    torch.set_num_threads(1)
    tune_malloc()


def _check_client(client: Any) -> Any:
    if client == "local":
        return local_client()
    if not (hasattr(client, "submit") and hasattr(client, "map") and hasattr(client, "scatter")):
        raise WherefromError(f"client must be a dask.distributed.Client (or 'local'), got {type(client).__name__}.")
    return client


def _write_chunk(path: str, i: int, featurizer: Any) -> str:
    _prepare_task()
    store = ZarrFeatureStore(path)
    return store.write_chunk(i, featurizer(*store.chunk_range(i)))


def fill_chunks(client: Any, store: ZarrFeatureStore, featurizer: Any, chunks: list[int],
                progress: bool | None = None) -> None:
    """Compute ``chunks`` of ``store`` as Dask tasks (one per chunk), waiting for all of them."""
    from dask.distributed import as_completed

    client = _check_client(client)
    shipped = client.scatter(featurizer, broadcast=True, hash=False)
    futures = client.map(_write_chunk, [store.path] * len(chunks), chunks, featurizer=shipped, pure=False)
    for future in track(as_completed(futures), "feature store chunks (dask)", len(futures), progress):
        future.result()


# ---------------------------------------------------------------------------------------------- scoring
def _zarr_stores(attributor: Any) -> list[ZarrFeatureStore]:
    attributor._require_fit()
    stores = attributor._stores
    if not stores or not all(isinstance(s, ZarrFeatureStore) for s in stores):
        raise WherefromError("Distributed scoring reads the training features from zarr stores: fit the attributor "
                             "with execution=Execution(store='zarr', cache_dir=...).")
    rows = {s.chunk_rows for s in stores}
    if len(rows) != 1:
        raise WherefromError(f"The checkpoints' stores have different chunk sizes {sorted(rows)}; build them with "
                             "the same Execution.")
    return stores


def _shippable(attributor: Any) -> Any:
    """A shallow copy without the training loader and curvature spaces (workers only read the stores)."""
    light = copy.copy(attributor)
    light._train_loader = None
    light.spaces_ = []
    return light


def _chunk_parts(stores: list[ZarrFeatureStore], i: int) -> list[tuple[int, torch.Tensor]]:
    parts = []
    for store in stores:
        start, stop = store.chunk_range(i)
        parts.append((start, store.read(start, stop)))
    return parts


def _chunk_top_k(attributor: Any, i: int, queries: list[tuple], k: int) -> tuple[torch.Tensor, ...]:
    _prepare_task()
    parts = _chunk_parts(attributor._stores, i)
    top = StreamingTopK(k)
    top.update(parts[0][0], attributor._score_block(parts, queries))
    return top._hi_v, top._hi_i, top._lo_v, top._lo_i


def _chunk_self_influence(attributor: Any, i: int) -> torch.Tensor:
    _prepare_task()
    return attributor._self_influence_block(_chunk_parts(attributor._stores, i))


def distributed_top_k(attributor: Any, test: Any, k: int, client: Any, progress: bool | None = None) -> TopK:
    """``attributor.top_k(test, k)`` with one Dask task per store chunk; the partial top-k are merged here."""
    from dask.distributed import as_completed

    from wherefrom.data.loaders import as_loader

    client = _check_client(client)
    stores = _zarr_stores(attributor)
    loader = as_loader(test, attributor.execution.batch_size, what="test")
    queries = [attributor._query(c, loader) for c in range(len(stores))]
    shipped = client.scatter(_shippable(attributor), broadcast=True, hash=False)
    queries = client.scatter(queries, broadcast=True, hash=False)  # once per worker, not once per task
    futures = client.map(_chunk_top_k, [shipped] * stores[0].n_chunks, range(stores[0].n_chunks),
                         queries=queries, k=k, pure=False)
    top = StreamingTopK(k)
    for future in track(as_completed(futures), "top-k chunks (dask)", len(futures), progress):
        hi_v, hi_i, lo_v, lo_i = future.result()
        top._hi_v, top._hi_i = _merge(top._hi_v, top._hi_i, hi_v, hi_i, k, True)
        top._lo_v, top._lo_i = _merge(top._lo_v, top._lo_i, lo_v, lo_i, k, False)
    return top.result()


def _merge(vals: torch.Tensor | None, idx: torch.Tensor | None, new_vals: torch.Tensor, new_idx: torch.Tensor,
           k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial top-k (``[k', m]`` each) as the single-process scan merges its blocks: by value, exact ties
    by lower row index (:class:`~wherefrom.store.StreamingTopK`), so the result does not depend on arrival order."""
    return StreamingTopK._merge(vals, idx, new_vals, new_idx, k, largest)


def distributed_self_influence(attributor: Any, client: Any, progress: bool | None = None) -> torch.Tensor:
    """``attributor.self_influence()`` with one Dask task per store chunk, ``[n_train]``."""
    client = _check_client(client)
    stores = _zarr_stores(attributor)
    shipped = client.scatter(_shippable(attributor), broadcast=True, hash=False)
    futures = client.map(_chunk_self_influence, [shipped] * stores[0].n_chunks, range(stores[0].n_chunks),
                         pure=False)
    parts = [f.result() for f in track(futures, "self-influence chunks (dask)", len(futures), progress)]
    return torch.cat(parts)
