"""Randomly projected gradients ``Pᵀ g`` (``[B, k]``) on top of another source (full gradients by default).

Checkpoint ``c`` uses the projection's matrix ``P_c`` for train and test alike (see
:mod:`wherefrom.projection.random`); the feature vector is one dense block.

**Layer by layer.** When the base is :class:`FullGradients` taking its gradients from layer captures and the
projection can project a slice of rows (:meth:`RandomProjection.project_rows`), the ``[B, p]`` gradient block is
never assembled: since ``Pᵀg = Σ_π P[rows_π]ᵀ g_π`` over the parameters ``π`` (contiguous ranges of the flat
vector), each layer's per-example gradients are projected as soon as they are formed and the results added. The
features are the same (up to the order of floating-point additions); peak memory holds one layer's gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe
from wherefrom.layers.base import LayerCaptureError, LayerIO
from wherefrom.projection import Projection, make_projection
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch
from wherefrom.sources.full import FullGradients
from wherefrom.task import LossFn, Task

#: the largest ``p·k`` for which :meth:`ProjectedGradients.matrix` forms ``P`` explicitly.
MAX_MATRIX_ENTRIES = 50_000_000


class ProjectedGradients(GradientSource):
    """``projection.project(base features, c)``.

    Args:
        projection: a :class:`~wherefrom.projection.Projection` (or any object with ``project(block, c)``), or a
            kind name (``"gaussian"``, ``"rademacher"``, ``"sparse"``) with ``dim`` and ``seed``.
        base: the source that is projected (default :class:`FullGradients` ``("auto")``).
        dim: the projection dimension, for a projection given by kind name.
        seed: the projection seed, for a projection given by kind name.
    """

    def __init__(self, projection: Projection | str, base: GradientSource | None = None, *, dim: int | None = None,
                 seed: int = 0) -> None:
        self.projection = make_projection(projection, dim, seed)
        if self.projection is None:
            raise WherefromError("ProjectedGradients needs a projection.")
        self.base = base if base is not None else FullGradients()
        self.task = None  # type: ignore[assignment]

    def setup(self, task: Task) -> ProjectedGradients:
        self.base.setup(task)
        self.task = self.base.task
        dim = getattr(self.projection, "dim", -1)
        self.dim = dim if isinstance(dim, int) and dim > 0 else self.base.dim
        self.layout = [FeatureBlock("projection", torch.arange(self.dim))]
        return self

    @property
    def use_layers(self) -> bool:
        return bool(getattr(self.base, "use_layers", False))

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        if (isinstance(self.base, FullGradients) and self.base.use_layers
                and hasattr(self.projection, "project_rows")):
            try:
                return self._layer_by_layer(state, batch, fn, c)
            except LayerCaptureError:
                pass  # the base falls back to vmap (or raises) on its own
        return self.projection.project(self.base.batch_features(state, batch, fn, c), c)

    def _layer_by_layer(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                        c: int) -> torch.Tensor:
        """``Σ_π P[rows_π]ᵀ g_π`` over the parameters of every captured layer (see the module docstring)."""
        layers, slices, p = self.base.layers, self.task.param_slices(), self.base.dim  # type: ignore[attr-defined]
        out = None
        for name, io in layers.capture(state, batch, fn).items():
            grads = layers.layers[name].to_flat(io.gradients()) if isinstance(io, LayerIO) else io.grads
            for pname, rows in grads.items():
                out = self.projection.project_rows(rows, slices[pname].start, p, c, out)
        if out is None:
            raise LayerCaptureError("no layer was captured")
        return out

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        rows = self.base.batch_sample(state, batch, probe, c).rows(self.base.layout, self.base.dim)
        return SampleBatch(dense={"projection": self.projection.project(rows, c)})

    def matrix(self, c: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
        if not self.base.parameter_space or self.base.dim * self.dim > MAX_MATRIX_ENTRIES:
            return None
        p, rows = self.base.dim, 1024
        parts = []
        for start in range(0, p, rows):  # P = project(I), a band of unit rows at a time
            eye = torch.zeros(min(rows, p - start), p, dtype=dtype, device=device)
            eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1.0
            parts.append(self.projection.project(eye, c))
        return torch.cat(parts)
