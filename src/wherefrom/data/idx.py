"""Readers for the original IDX files of MNIST and Fashion-MNIST (gzip-compressed or not), from any path."""

from __future__ import annotations

import gzip
import os

import numpy as np

from wherefrom.errors import WherefromError

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array: images ``[n, 28, 28]`` or labels ``[n]``.

    Layout: big-endian magic ``0x0000 08 D`` (D = number of dimensions), then D uint32 sizes, then the bytes.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise WherefromError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise WherefromError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}.")
    return data.reshape(dims)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise WherefromError(f"Cannot find {stem}(.gz) under {root!r}: point root at the folder of the IDX files.")


def load_idx_dataset(root: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [n, 28, 28]`` and labels ``uint8 [n]`` of the ``split`` ("train" or "test") under ``root``.

    ``root`` is a folder holding the four original MNIST (or Fashion-MNIST) files, compressed or not.
    """
    if split not in _FILES:
        raise WherefromError(f"split must be 'train' or 'test', got {split!r}.")
    img_stem, lbl_stem = _FILES[split]
    images, labels = read_idx(_find(root, img_stem)), read_idx(_find(root, lbl_stem))
    if images.shape[0] != labels.shape[0]:
        raise WherefromError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels.")
    return images, labels
