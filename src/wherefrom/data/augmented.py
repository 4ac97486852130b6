"""A deterministic augmented MNIST of any size, generated on the fly from the shipped 5000 images and one seed.

Image ``i`` (``0 ≤ i < n``) is source image ``s = i mod 5000`` of the shipped subset (label ``y_s``; the 500 test
images with ``split="test"``), moved by a random rigid motion and given pixel noise, all drawn from ``(seed, i)``:

    u_r(i) = splitmix64(splitmix64(seed + r·φ) + i·φ) / 2⁶⁴      uniforms in [0, 1), one stream r per parameter
    θ_i = rotation · (2u_0 − 1)   (radians),   t_i = shift · (2u_1 − 1, 2u_2 − 1)   (pixels),   σ_i = noise · u_3
    x̃_i(p) = bilinear sample of x_s (pixel/255, 0 outside) at R(θ_i)·p + t_i       (p around the image centre)
    N[j, p] = √3 · (2 u_6(784·j + p) − 1)                       a bank of 4096 unit-variance noise images
    x_i = (clamp(x̃_i + σ_i · (N[a_i] + N[b_i]) / √2, 0, 1) − mean) / std      a_i, b_i = ⌊4096 · u_4,5(i)⌋, [784]

with ``φ = 0x9E3779B97F4A7C15`` (splitmix64 in wrapping ``uint64`` arithmetic). Nothing is stored but the seed (the
noise bank is made from it on first use): every image is recomputed on demand, by the same element-wise
arithmetic (separate operations, no fused multiply-add) whether it is fetched alone or in any block of indices, so
its bits do not depend on the block it is part of.

The dataset is a torch ``Dataset`` (``len``, ``ds[i] -> (x [784], y)``) with a vectorised block accessor
:meth:`AugmentedMNIST.block` (``[B, 784]``, ``[B]``) that DataLoaders use through ``__getitems__``; build loaders
with :meth:`AugmentedMNIST.loader` (or ``collate_fn=collate_blocks``) to skip the per-example collation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from wherefrom.data.shipped import NORMALISATION, load_subset
from wherefrom.errors import WherefromError

GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_N_PARAMS = 6  # streams 0..5: angle, shift x, shift y, noise level, two noise-bank rows; stream 6: the bank
BANK_ROWS = 4096


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on ``uint64`` (wrapping arithmetic): a bijective, well-mixed hash."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, index: np.ndarray, streams: np.ndarray | int) -> np.ndarray:
    """``u_r(i)`` in ``[0, 1)`` (float64) for every index ``i`` (``[B]``) and stream ``r`` (``[S]``): ``[B, S]``."""
    streams = np.atleast_1d(np.asarray(streams, dtype=np.uint64))
    with np.errstate(over="ignore"):
        keys = splitmix64(np.uint64(seed & (2**64 - 1)) + streams * np.uint64(GOLDEN))  # [S]
        z = keys[None, :] + np.asarray(index, dtype=np.uint64)[:, None] * np.uint64(GOLDEN)
    return (splitmix64(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class AugmentedMNIST(Dataset):
    """``n`` augmented MNIST images from the shipped subset and ``seed`` (see the module docstring).

    Args:
        n: number of examples (default one million).
        seed: the only state: image ``i`` is a function of ``(seed, i)``.
        rotation: largest rotation, degrees (uniform in ``[−rotation, rotation]``).
        shift: largest shift, pixels, per axis.
        noise: largest standard deviation of the pixel noise, on the ``[0, 1]`` pixel scale.
        standardize: standardise with MNIST's mean and std (default), or keep pixels in ``[0, 1]``.
        name: shipped subset (``"mnist"`` or ``"fashion-mnist"``).
        split: augment the subset's ``"train"`` images (5000, default) or its ``"test"`` images (500); image ``i``
            is made from source image ``i mod`` (their number).
    """

    def __init__(self, n: int = 1_000_000, seed: int = 0, *, rotation: float = 15.0, shift: float = 2.0,
                 noise: float = 0.1, standardize: bool = True, name: str = "mnist", split: str = "train") -> None:
        if not isinstance(n, int) or n < 1:
            raise WherefromError(f"AugmentedMNIST needs n >= 1 examples, got {n!r}.")
        if rotation < 0 or shift < 0 or noise < 0:
            raise WherefromError(f"rotation, shift and noise must be >= 0, got {rotation}, {shift}, {noise}.")
        if split not in ("train", "test"):
            raise WherefromError(f"split must be 'train' or 'test', got {split!r}.")
        self.n, self.seed, self.name, self.split = n, int(seed), name, split
        self.rotation, self.shift, self.noise = float(rotation), float(shift), float(noise)
        self.standardize = standardize
        subset = load_subset(name)
        images, labels = (subset.train_images, subset.train_labels) if split == "train" else (
            subset.test_images, subset.test_labels)
        self.images = torch.from_numpy(images.astype(np.float32) / 255.0)  # [S, 28, 28]
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.n_source = len(self.labels)
        self.mean, self.std = NORMALISATION.get(name, (0.0, 1.0)) if standardize else (0.0, 1.0)
        side = self.images.shape[-1]
        # pixel centres in grid_sample's normalised coordinates (align_corners=False): (2p + 1)/side − 1
        coords = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
        self._bank: torch.Tensor | None = None
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        self._gx, self._gy = gx.reshape(1, -1), gy.reshape(1, -1)  # [1, 784] each

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_bank"] = None  # made again from the seed where it is needed (keeps what Dask ships small)
        return state

    def noise_bank(self) -> torch.Tensor:
        """``[BANK_ROWS, 784]`` unit-variance uniform noise images, ``√3·(2 u_6(j·784 + p) − 1)``; made from the
        seed on first use."""
        if self._bank is None:
            side2 = self.images.shape[-1] ** 2
            cells = np.arange(BANK_ROWS * side2, dtype=np.int64)
            u = uniforms(self.seed, cells, _N_PARAMS).reshape(BANK_ROWS, side2)
            self._bank = torch.from_numpy(((2 * u - 1) * math.sqrt(3.0)).astype(np.float32))
        return self._bank

    def __repr__(self) -> str:
        return (f"AugmentedMNIST(n={self.n}, seed={self.seed}, rotation={self.rotation}, shift={self.shift}, "
                f"noise={self.noise}, name={self.name!r}, split={self.split!r})")

    def source_index(self, index: np.ndarray | Sequence[int] | int) -> np.ndarray:
        """Index of the shipped image each example is made from: ``i mod 5000``."""
        return np.asarray(index, dtype=np.int64) % self.n_source

    def _check(self, index: np.ndarray) -> None:
        if index.size and (index.min() < 0 or index.max() >= self.n):
            bad = int(index[(index < 0) | (index >= self.n)][0])
            raise WherefromError(f"Index {bad} is out of range for AugmentedMNIST of {self.n} examples.")

    def block(self, index: np.ndarray | Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 784]`` (float32) and labels ``[B]`` (int64) of the examples ``index`` (any order)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        self._check(index)
        B, side = len(index), self.images.shape[-1]
        src = torch.from_numpy(self.source_index(index))
        u64 = uniforms(self.seed, index, np.arange(_N_PARAMS))  # [B, 6]
        u = torch.from_numpy(u64.astype(np.float32))
        theta = (2 * u[:, 0] - 1) * math.radians(self.rotation)
        shifts = (2 * u[:, 1:3] - 1) * (2 * self.shift / side)  # pixels -> normalised units, [B, 2]
        cos, sin = torch.cos(theta).unsqueeze(1), torch.sin(theta).unsqueeze(1)
        # separate element-wise ops (no fused multiply-add), so an image's bits never depend on its block
        planes = torch.empty(B, 2, side * side)  # x and y planes of the sampling grid
        tmp = torch.empty(B, side * side)
        gx, gy = planes[:, 0], planes[:, 1]
        torch.mul(cos, self._gx, out=gx)
        gx.sub_(torch.mul(sin, self._gy, out=tmp)).add_(shifts[:, :1])
        torch.mul(sin, self._gx, out=gy)
        gy.add_(torch.mul(cos, self._gy, out=tmp)).add_(shifts[:, 1:])
        grid = planes.view(B, 2, side, side).permute(0, 2, 3, 1)  # [B, 28, 28, 2]
        x = F.grid_sample(self.images[src].unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False).view(B, side * side)
        if self.noise > 0:
            bank = self.noise_bank()
            rows = torch.from_numpy((u64[:, 4:6] * len(bank)).astype(np.int64))  # [B, 2]
            noise = torch.index_select(bank, 0, rows[:, 0]).add_(torch.index_select(bank, 0, rows[:, 1]))
            x.add_(noise.mul_((u[:, 3] * (self.noise / math.sqrt(2.0))).unsqueeze(1)))
        x.clamp_(0.0, 1.0)
        if self.standardize:
            x.sub_(self.mean).div_(self.std)
        return x, self.labels[src]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += self.n
        x, y = self.block([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> Block:
        """A DataLoader's batch as one vectorised :meth:`block` (still a list of ``(x, y)`` for any collate_fn)."""
        return Block(*self.block(indices))

    def loader(self, batch_size: int = 1024, **kwargs: Any) -> DataLoader:
        """An unshuffled DataLoader whose batches come straight from :meth:`block` (no per-example collation)."""
        return DataLoader(self, batch_size=batch_size, shuffle=False, collate_fn=collate_blocks, **kwargs)


class Block(Sequence):
    """A batch made by :meth:`AugmentedMNIST.block`: the stacked tensors (``.x`` ``[B, 784]``, ``.y`` ``[B]``) that
    :func:`collate_blocks` passes on as they are, and, for any other ``collate_fn``, a sequence of ``(x_i, y_i)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.x[i], self.y[i]


def collate_blocks(data: Any) -> Any:
    """``[x, y]`` straight from a :class:`Block`; any other batch goes to torch's ``default_collate``."""
    if isinstance(data, Block):
        return [data.x, data.y]
    return default_collate(data)
