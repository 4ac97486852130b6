"""Turning user data into DataLoaders with a stable order, and moving batches to a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    Subset,
    TensorDataset,
)
from torch.utils.data.dataloader import default_collate

from wherefrom.errors import DataOrderError, EmptyDataError, WherefromError

DataLike = Dataset | DataLoader | tuple | list


def _sampler_is_sequential(loader: DataLoader) -> bool:
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:  # batch_size=None: the loader yields single items in sampler order
        return isinstance(loader.sampler, SequentialSampler)
    if not isinstance(batch_sampler, BatchSampler):
        return False
    return isinstance(batch_sampler.sampler, SequentialSampler)


def as_loader(data: DataLike, batch_size: int = 256, what: str = "data") -> DataLoader:
    """Return a DataLoader that visits ``data`` once, in index order.

    ``data`` may be a Dataset, an unshuffled DataLoader, or a tuple ``(X, y, ...)`` of tensors with equal first
    dimension. A loader whose sampler is not sequential (``shuffle=True``, a random or weighted sampler) raises
    :class:`DataOrderError`: row ``i`` of every score matrix must mean training example ``i``.
    """
    if isinstance(data, DataLoader):
        if not _sampler_is_sequential(data):
            raise DataOrderError(
                f"The {what} DataLoader does not visit examples in a fixed order (it is shuffled or uses a "
                "custom sampler), so score rows could not be matched to examples. Pass the Dataset itself, "
                "or build the loader with shuffle=False and no sampler."
            )
        if getattr(data, "drop_last", False):
            raise DataOrderError(
                f"The {what} DataLoader has drop_last=True and would skip examples. Build it with drop_last=False."
            )
        _check_not_empty(data.dataset, what)
        return data
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    if not isinstance(data, Dataset):
        raise WherefromError(
            f"Cannot read {what} of type {type(data).__name__}: pass a torch Dataset, an unshuffled DataLoader, "
            "or a tuple of tensors (X, y)."
        )
    _check_not_empty(data, what)
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _check_not_empty(dataset: Any, what: str) -> None:
    try:
        size = len(dataset)
    except TypeError:
        return
    if size == 0:
        raise EmptyDataError(f"The {what} data has no examples (length 0). Pass at least one example; check the "
                             "filtering or split that produced it.")


def dataset_size(loader: DataLoader) -> int:
    """Number of examples the loader yields."""
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise WherefromError("The dataset must have a length (implement __len__).") from exc


def collate_indices(loader: DataLoader, indices: Sequence[int]) -> Any:
    """Collate the examples ``indices`` of ``loader.dataset`` into one batch, with the loader's collate_fn.

    A TensorDataset is indexed directly (one gather per tensor); other datasets item by item (or through their
    ``__getitems__`` when they have one).
    """
    dataset = loader.dataset
    if isinstance(dataset, TensorDataset) and loader.collate_fn in (None, default_collate):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return [t[idx] for t in dataset.tensors]
    collate = loader.collate_fn or default_collate
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return collate(getitems(list(indices)))
    subset = Subset(dataset, list(indices))
    return collate([subset[k] for k in range(len(subset))])


def move_batch(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of a (nested) batch to ``device``; cast floating tensors to ``dtype`` when given."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device)
        if dtype is not None and batch.is_floating_point():
            batch = batch.to(dtype)
        return batch
    if isinstance(batch, (list, tuple)):
        moved = [move_batch(b, device, dtype) for b in batch]
        return type(batch)(moved) if isinstance(batch, tuple) and not hasattr(batch, "_fields") else moved
    if isinstance(batch, Mapping):  # a dict, or a Hugging Face BatchEncoding (becomes a plain dict)
        return {k: move_batch(v, device, dtype) for k, v in batch.items()}
    return batch


def batch_length(batch: Any) -> int:
    """Number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)):
        return batch_length(batch[0])
    if isinstance(batch, Mapping):
        return batch_length(next(iter(batch.values())))
    raise WherefromError(f"Cannot find a tensor in a batch of type {type(batch).__name__}.")
