"""Training features of one checkpoint of a composed attributor, written chunk by chunk to a zarr store.

:func:`build_zarr_store` is what :class:`~wherefrom.methods.composed.ComposedAttributor` calls when its
:class:`~wherefrom.execution.Execution` has ``store="zarr"``: the store lives at
``cache_dir/train_features_<c>.zarr``, is opened again when it was made for the same model, parameters,
checkpoint, gradient source (with its projection) and training function, and its missing or corrupted chunks are
computed — in this process, or as Dask tasks when a client is active (:func:`using_client`).

A chunk's rows are computed by :class:`ChunkFeaturizer`, a picklable function of the row range only (the rows are
cut into the same batches every time), so every run, resumed or distributed, writes the same bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from wherefrom.configurable import _key_value, callable_name, class_key
from wherefrom.errors import WherefromError
from wherefrom.persist import state_fingerprint
from wherefrom.scale.zarr_store import ZarrFeatureStore
from wherefrom.sources import GradientSource, feature_blocks

_CLIENT: ContextVar[Any] = ContextVar("wherefrom_dask_client", default=None)


@contextlib.contextmanager
def using_client(client: Any) -> Iterator[None]:
    """Run the featurisation of zarr stores started inside the ``with`` block as tasks of the Dask ``client``."""
    token = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(token)


def active_client() -> Any:
    """The Dask client set by :func:`using_client`, or ``None``."""
    return _CLIENT.get()


class ChunkFeaturizer:
    """``(start, stop) -> [stop − start, d]``: the source's features of training rows ``start .. stop``.

    Picklable (it is shipped to Dask workers): holds the bound source (with its task and model), the checkpoint's
    state, the training function, the dataset and how it is batched.
    """

    def __init__(self, source: GradientSource, state: Mapping[str, torch.Tensor], c: int, fn: Any,
                 dataset: Any, batch_size: int, collate_fn: Any, dtype: torch.dtype) -> None:
        self.source, self.state, self.c, self.fn = source, dict(state), c, fn
        self.dataset, self.batch_size, self.collate_fn, self.dtype = dataset, batch_size, collate_fn, dtype

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        loader = DataLoader(Subset(self.dataset, range(start, stop)), batch_size=self.batch_size,
                            shuffle=False, collate_fn=self.collate_fn)
        parts = [block.detach().to("cpu", self.dtype)
                 for _, block in feature_blocks(self.source, loader, self.state, self.c, self.fn,
                                                "training-loss", progress=False)]
        return torch.cat(parts, dim=0)


def store_meta(source: GradientSource, state: Mapping[str, torch.Tensor], fn: Any) -> dict[str, Any]:
    """What a store's rows are: model, selected parameters, checkpoint content, source (and projection), function."""
    task = source.require_setup()
    named = dict(task.model.named_parameters())
    return {
        "model": class_key(type(task.model)),
        "params": [[n, list(named[n].shape), str(named[n].dtype)] for n in task.param_names],
        "checkpoint": state_fingerprint(state),
        "source": _key_value(source.config()),
        "train_fn": callable_name(fn),
    }


def chunk_rows_for(rows_per_block: int, batch_size: int) -> int:
    """Rows per chunk: ``rows_per_block`` rounded up to whole batches (so chunks are cut into full batches)."""
    return batch_size * max(1, -(-rows_per_block // batch_size))


def build_zarr_store(attributor: Any, c: int, loader: DataLoader) -> ZarrFeatureStore:
    """Open or resume ``cache_dir/train_features_<c>.zarr`` for checkpoint ``c`` of ``attributor`` (see the module
    docstring) and return it complete."""
    ex = attributor.execution
    if ex.cache_dir is None:
        raise WherefromError("Execution(store='zarr') keeps training features in a zarr store under cache_dir: "
                             "give cache_dir= (a folder).")
    from wherefrom.data.loaders import dataset_size

    n, dim = dataset_size(loader), attributor.source.dim
    dtype = ex.dtype or attributor.task.dtype
    device = torch.device(ex.device) if ex.device is not None else attributor.task.device
    batch = loader.batch_size or ex.batch_size
    rows = chunk_rows_for(ex.rows_per_block, batch)
    fn = attributor.train_function
    state = attributor._states[c]
    path = os.path.join(ex.cache_dir, f"train_features_{c}.zarr")
    store = ZarrFeatureStore.create_or_open(path, store_meta(attributor.source, state, fn), n, dim, dtype, rows,
                                            device)
    featurizer = ChunkFeaturizer(attributor.source, state, c, fn, loader.dataset, batch, loader.collate_fn, dtype)
    fill_store(store, featurizer, client=active_client(), progress=attributor.progress)
    return store


def fill_store(store: ZarrFeatureStore, featurizer: Any, client: Any = None, progress: bool | None = None) -> None:
    """Compute the store's missing (or corrupted) chunks, here or as tasks of a Dask ``client``."""
    todo = store.missing_chunks(verify=True)
    if not todo:
        return
    if client is None:
        store.fill(featurizer, todo, progress)
    else:
        from wherefrom.scale.distributed import fill_chunks

        fill_chunks(client, store, featurizer, todo, progress)
    store.require_complete()
