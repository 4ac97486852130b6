"""Scale: one chunked zarr feature store, FAISS top-k, Dask-distributed featurisation and scoring, a planner.

    ex = wf.Execution(store="zarr", cache_dir="features/")       # features in a resumable zarr store
    att = wf.LoGra(task, execution=ex)
    client = wf.scale.local_client(n_workers=2)                  # or any dask.distributed.Client
    wf.scale.fit(att, train, client=client)                      # chunks featurised as Dask tasks
    top = wf.scale.top_k(att, test, k=10)                        # FAISS exact inner-product search
    top = wf.scale.top_k(att, test, k=10, client=client)         # streaming top-k as Dask tasks
    si = wf.scale.self_influence(att, client=client)
    print(wf.scale.plan(task, n_train=1_000_000, dim=att.source.dim, n_test=1000))
    train, test = wf.scale.workload.datasets(1_000_000)          # the million-example augmented MNIST workload

See ``docs/scale.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.scale import workload
from wherefrom.scale.faiss_search import SearchTopK, faiss_top_k
from wherefrom.scale.featurize import ChunkFeaturizer, build_zarr_store, using_client
from wherefrom.scale.planner import Plan, plan
from wherefrom.scale.zarr_store import StoreMismatchError, ZarrFeatureStore
from wherefrom.store import TopK


def local_client(n_workers: int = 2, threads_per_worker: int = 1, memory_limit: str | int = "2GB",
                 **kwargs: Any) -> Any:
    """A Dask client on a new ``LocalCluster`` of ``n_workers`` worker processes (see :mod:`.distributed`)."""
    from wherefrom.scale.distributed import local_client as make

    return make(n_workers, threads_per_worker, memory_limit, **kwargs)


def fit(attributor: Any, train: Any, client: Any = None) -> Any:
    """``attributor.fit(train)``, its zarr feature stores featurised as tasks of the Dask ``client`` (``None``: in
    this process). The attributor must use ``Execution(store="zarr", cache_dir=...)``."""
    if getattr(getattr(attributor, "execution", None), "store", None) != "zarr":
        raise WherefromError("wf.scale.fit needs an attributor with execution=wf.Execution(store='zarr', "
                             "cache_dir=...).")
    if client is None:
        return attributor.fit(train)
    with using_client(client):
        return attributor.fit(train)


def top_k(attributor: Any, test: Any, k: int = 10, *, backend: str = "faiss", index: str = "exact",
          client: Any = None, progress: bool | None = None, **options: Any) -> TopK:
    """The ``k`` most helpful and harmful training examples of every test point, never forming ``[n, m]``.

    ``backend="faiss"`` (default): FAISS inner-product search (``index="exact"``, or ``"ivf"`` / ``"hnsw"`` /
    ``"approx"`` with its recall@k reported, see :func:`faiss_top_k`); ``backend="streaming"``: the running top-k
    of ``attributor.top_k``. With a Dask ``client``: the streaming top-k as one task per zarr chunk.
    """
    if client is not None:
        from wherefrom.scale.distributed import distributed_top_k

        return distributed_top_k(attributor, test, k, client, progress)
    if backend == "streaming":
        return attributor.top_k(test, k)
    if backend != "faiss":
        raise WherefromError(f"backend must be 'faiss' or 'streaming', got {backend!r}.")
    return faiss_top_k(attributor, test, k, index, progress=progress, **options)


def self_influence(attributor: Any, client: Any = None, progress: bool | None = None) -> torch.Tensor:
    """``attributor.self_influence()``, as one Dask task per zarr chunk when a ``client`` is given."""
    if client is None:
        return attributor.self_influence()
    from wherefrom.scale.distributed import distributed_self_influence

    return distributed_self_influence(attributor, client, progress)


__all__ = [
    "ChunkFeaturizer",
    "Plan",
    "SearchTopK",
    "StoreMismatchError",
    "ZarrFeatureStore",
    "build_zarr_store",
    "faiss_top_k",
    "fit",
    "local_client",
    "plan",
    "self_influence",
    "top_k",
    "using_client",
    "workload",
]
