"""Small real data sets shipped inside the package (built by ``scripts/build_datasets.py``), and sklearn digits.

``load_subset("mnist")`` returns the first 5000 MNIST training images and the first 500 test images (the subset of
dattri's MNIST benchmarks), as uint8 arrays, after checking their sha256 against ``datasets.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch.utils.data import TensorDataset

from wherefrom.errors import WherefromError, unknown_name

# Normalisation constants of the full training sets (mean/255, std/255).
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


@dataclass
class ImageSubset:
    """uint8 images ``[n, 28, 28]`` and int64 labels ``[n]`` of a train and a test split."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def array_sha256(*arrays: np.ndarray) -> str:
    """sha256 of the raw bytes of ``arrays`` (C order), concatenated."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _manifest() -> dict:
    path = resources.files("wherefrom") / "_datafiles" / "datasets.json"
    return json.loads(path.read_text())


def available_subsets() -> list[str]:
    """Names of the shipped subsets."""
    return sorted(_manifest())


def load_subset(name: str = "mnist") -> ImageSubset:
    """Load a shipped subset (``"mnist"`` or ``"fashion-mnist"``) and verify its checksum."""
    manifest = _manifest()
    if name not in manifest:
        raise unknown_name("data subset", name, list(manifest))
    entry = manifest[name]
    path = resources.files("wherefrom") / "_datafiles" / entry["file"]
    with resources.as_file(path) as real, np.load(real) as z:
        arrays = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    digest = array_sha256(*arrays.values())
    if digest != entry["sha256"]:
        raise WherefromError(f"The shipped {name} subset is corrupt (sha256 {digest} != {entry['sha256']}). "
                             "Rebuild it with scripts/build_datasets.py.")
    return ImageSubset(name, **arrays)


def to_tensors(images: np.ndarray, labels: np.ndarray, name: str = "mnist", flatten: bool = True,
               dtype: torch.dtype = torch.float32, standardize: bool = True) -> TensorDataset:
    """Float images (flattened to ``[n, 784]`` or ``[n, 1, 28, 28]``) and int64 labels as a Dataset.

    ``standardize=True``: ``x = (pixel/255 − mean) / std`` with the full training set's ``NORMALISATION[name]``
    (unknown names: mean 0, std 1); ``standardize=False``: ``x = pixel/255`` in ``[0, 1]``.
    """
    x = torch.from_numpy(images.astype(np.float32)) / 255.0
    if standardize:
        mean, std = NORMALISATION.get(name, (0.0, 1.0))
        x = (x - mean) / std
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    return TensorDataset(x.to(dtype), torch.from_numpy(labels.astype(np.int64)))


def mnist_datasets(name: str = "mnist", flatten: bool = True, dtype: torch.dtype = torch.float32,
                   n_train: int | None = None, n_test: int | None = None, standardize: bool = True,
                   ) -> tuple[TensorDataset, TensorDataset]:
    """Train and test TensorDatasets ``(x, y)`` of a shipped subset (optionally the first ``n_train`` / ``n_test``).

    The images are **standardised** by default, as models are usually trained: ``x = (pixel/255 − mean) / std``
    with the mean and standard deviation of the full training set (``NORMALISATION``: MNIST 0.1307 / 0.3081,
    Fashion-MNIST 0.2860 / 0.3530), so values lie in about ``[−0.42, 2.82]`` (MNIST) and are not an image a
    plotting library shows as it is. For displayable images either pass ``standardize=False`` (pixels in
    ``[0, 1]``) or undo the standardisation of any batch with :func:`denormalize`::

        train, test = mnist_datasets("mnist")
        plt.imshow(denormalize(train.tensors[0][7], "mnist"), cmap="gray")   # [28, 28] in [0, 1]

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (see :func:`available_subsets`).
        flatten: ``x`` of shape ``[n, 784]`` (default) or ``[n, 1, 28, 28]``.
        dtype: floating dtype of ``x``; labels ``y`` are int64 ``[n]``.
        standardize: standardise (default) or only scale pixels to ``[0, 1]``.
    """
    s = load_subset(name)
    tr = to_tensors(s.train_images[:n_train], s.train_labels[:n_train], name, flatten, dtype, standardize)
    te = to_tensors(s.test_images[:n_test], s.test_labels[:n_test], name, flatten, dtype, standardize)
    return tr, te


def denormalize(x: torch.Tensor, name: str = "mnist") -> torch.Tensor:
    """Displayable images ``[..., 28, 28]`` with values in ``[0, 1]`` from standardised ones.

    Inverts :func:`mnist_datasets`' standardisation, ``pixel/255 = x·std + mean``, and reshapes flattened images
    (``[..., 784]`` or ``[..., 1, 28, 28]``) to ``[..., 28, 28]``; values are clamped to ``[0, 1]`` against
    rounding. ``(denormalize(x) * 255).round()`` gives back the original uint8 pixels.
    """
    if name not in NORMALISATION:
        raise unknown_name("data subset", name, list(NORMALISATION))
    if x.shape[-1] == 784:
        x = x.reshape(*x.shape[:-1], 28, 28)
    elif x.shape[-3:] == (1, 28, 28):
        x = x.squeeze(-3)
    elif x.shape[-2:] != (28, 28):
        raise WherefromError(f"denormalize expects images of shape [..., 784], [..., 1, 28, 28] or [..., 28, 28], "
                             f"got {tuple(x.shape)}.")
    mean, std = NORMALISATION[name]
    return (x * std + mean).clamp(0.0, 1.0)


def digits_datasets(n_train: int = 1200, dtype: torch.dtype = torch.float64,
                    ) -> tuple[TensorDataset, TensorDataset]:
    """sklearn's 8×8 digits (1797 images, 64 features scaled to [0, 1]) split into train / rest, in file order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise WherefromError("digits needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=dtype)
    y = torch.tensor(d.target, dtype=torch.long)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
