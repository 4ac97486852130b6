"""Data: stable-order loaders, IDX readers for the original MNIST files, and the small shipped subsets."""

from wherefrom.data.augmented import AugmentedMNIST
from wherefrom.data.idx import load_idx_dataset, read_idx
from wherefrom.data.loaders import as_loader
from wherefrom.data.shipped import (
    available_subsets,
    denormalize,
    digits_datasets,
    load_subset,
    mnist_datasets,
    to_tensors,
)

__all__ = [
    "AugmentedMNIST",
    "as_loader",
    "available_subsets",
    "denormalize",
    "digits_datasets",
    "load_idx_dataset",
    "load_subset",
    "mnist_datasets",
    "read_idx",
    "to_tensors",
]
